"""The headline command, as a user runs it, on one machine: `ray up` on cluster/onprem.yaml over SSH,
`ray submit ... ablate/run.py --spec`, the runs in the server's PostgreSQL, `ray exec "ablate report"`,
`ray down`. `make cluster-rehearsal` runs it (as root: it starts sshd in a PID namespace of its own).

What one machine demands, and nothing else, is changed in onprem.yaml: the head is 127.0.0.1 (sshd there
with a generated key and a login folder of its own), no workers (the head takes the trials), free ports
instead of the fixed ones (other Rays may run here), the MLflow server on 127.0.0.1 instead of 0.0.0.0, a
folder instead of the NFS mount, and no pip install (the login shell has the project's environment, with
the copied project first on PYTHONPATH). Everything the cluster runs lives in sshd's PID namespace, so
the `ray stop` that `ray up` and `ray down` run can stop only this cluster's processes: a sentinel Ray
outside it survives. Token authentication is on as onprem.yaml sets it; a client without the token is
refused (the GCS: this environment has no `ray[default]`, so no dashboard / Jobs API runs here).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from sweep_helpers import free_port

pytestmark = [pytest.mark.cluster_rehearsal, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment the login shell gets
SSHD = Path("/usr/sbin/sshd")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (starts sshd in its own PID namespace)"
    for tool in ("ssh", "ssh-keygen", "rsync", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not SSHD.exists():
        return "openssh-server is not installed"
    if _listening(22):
        return "port 22 on 127.0.0.1 is taken (Ray's SSH runner has no port option)"
    if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode:
        return "cannot make a PID namespace here"
    from ablate.server import ServerError, pg_bin_dir

    try:
        pg_bin_dir()
    except ServerError as err:
        return str(err)
    return None


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def run(cmd: list[str], timings: dict, what: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    timings[what] = round(time.monotonic() - t0, 1)
    assert out.returncode == 0, f"{what} failed ({out.returncode}):\n{out.stdout[-5000:]}\n{out.stderr[-5000:]}"
    return out


@pytest.fixture(scope="module")
def machine() -> Iterator[dict]:
    """sshd on 127.0.0.1:22 letting in one generated key, in a PID namespace of its own, with a login folder
    of its own (HOME). Everything the cluster runs (Ray, the MLflow server, PostgreSQL) starts from its
    SSH sessions, so it lives in that namespace: the `ray stop` of `ray up` and `ray down` sees only
    those processes, and ending the namespace ends them all and nothing else."""
    if why := _missing():
        pytest.skip(why)
    top = Path(tempfile.mkdtemp(prefix="aop-"))  # short: Ray's socket paths live under it
    top.chmod(0o755)  # PostgreSQL runs as the postgres system user, under the login folder
    home = top / "h"
    (home / "t").mkdir(parents=True)
    home.chmod(0o755)
    key = top / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(top / "host_key")], check=True)
    (top / "authorized_keys").write_text((top / "id_ed25519.pub").read_text())
    shared = top / "shared"  # stands for the lab's NFS export
    shared.mkdir()
    # the login shell: the project's Python, the copied project first on the path, Ray's switch that keeps
    # every process of this one-machine cluster on loopback, and a Ray folder of its own (RAY_TMPDIR: /tmp/ray
    # is every other Ray's, and `--ray-address auto` must find this cluster). Ray's runner sources ~/.bashrc.
    (home / ".bashrc").write_text(f"export PATH={BIN}:$PATH PYTHONPATH=$HOME/ablate\n"
                                  "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_TMPDIR=$HOME/t\ncd \"$HOME\"\n")
    (home / ".bash_profile").write_text(". ~/.bashrc\n")
    config = top / "sshd_config"
    config.write_text(f"ListenAddress 127.0.0.1\nPort 22\nHostKey {top / 'host_key'}\nPidFile {top / 'sshd.pid'}\n"
                      f"AuthorizedKeysFile {top / 'authorized_keys'}\nAllowUsers root\n"
                      "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                      f"UsePAM no\nStrictModes no\nX11Forwarding no\nSetEnv HOME={home}\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation folder
    sshd = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", str(SSHD), "-D", "-f", str(config),
                             "-E", str(top / "sshd.log")])
    try:
        deadline = time.monotonic() + 30
        while not _listening(22):
            assert sshd.poll() is None and time.monotonic() < deadline, (top / "sshd.log").read_text()
            time.sleep(0.2)
        init = psutil.Process(sshd.pid).children()[0]  # sshd, the namespace's first process
        yield {"top": top, "home": home, "key": key, "shared": shared, "init": init}
    finally:
        # the namespace's first process (sshd) killed: the kernel ends every process in it, and only those
        for init in psutil.Process(sshd.pid).children():
            init.kill()
        sshd.wait(timeout=60)
        shutil.rmtree(top, ignore_errors=True)


def rehearsal_config(machine: dict, ports: dict, token: Path) -> dict:
    """cluster/onprem.yaml with only what one machine demands changed (the module's docstring lists it)."""
    config = yaml.safe_load((ROOT / "cluster/onprem.yaml").read_text())
    shared = str(machine["shared"])

    def local(command: str) -> str:
        return (command.replace("/mnt/shared", shared).replace("--port=6379", f"--port={ports['gcs']}")
                .replace(":6379", f":{ports['gcs']}").replace("--object-manager-port=8076",
                                                               f"--object-manager-port={ports['objects']}")
                .replace("--num-cpus=0 --num-gpus=0", f"--num-cpus=2 --num-gpus=0 --dashboard-port={ports['dash']}")
                .replace("--host 0.0.0.0 --port 5000", f"--host 127.0.0.1 --port {ports['mlflow']} "
                                                       f"--db-port {ports['db']}"))

    config["cluster_name"] = f"ablate-rehearsal-{machine['top'].name}"
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["max_workers"] = 0
    config["auth"] = {"ssh_user": "root", "ssh_private_key": str(machine["key"])}
    config["file_mounts"] = {"~/ablate": str(ROOT), "~/.ray/auth_token": str(token)}
    config["initialization_commands"] = []
    config["setup_commands"] = [local(c) for c in config["setup_commands"] if "pip install" not in c]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        config[key] = [local(c) for c in config[key]]
    return config


def trial_statuses(password: str, db_port: int, experiment: str) -> list[str]:
    """The trial runs' statuses, read from the server's PostgreSQL itself."""
    import psycopg2

    with contextlib.closing(psycopg2.connect(host="127.0.0.1", port=db_port, user="ablate", password=password,
                                             dbname="mlflow")) as db, db.cursor() as cur:
        cur.execute("SELECT r.status FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
                    "JOIN tags t ON t.run_uuid = r.run_uuid WHERE e.name = %s AND t.key = 'ablate.role' "
                    "AND t.value = 'trial'", (experiment,))
        return sorted(row[0] for row in cur.fetchall())


def connects(address: str, env: dict) -> subprocess.CompletedProcess:
    """A Ray client from elsewhere (another user, no ablate), connecting to the cluster's GCS."""
    code = f"import ray; ray.init(address={address!r}); print('CONNECTED', ray.cluster_resources())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)


def test_ray_up_submit_report_down_on_the_onprem_config(machine, tmp_path):
    from ray.cluster_utils import Cluster

    ports = {name: free_port() for name in ("gcs", "objects", "dash", "mlflow", "db")}
    token = machine["top"] / "auth_token"  # `ray get-auth-token --generate` on the user's machine
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    config_path = machine["top"] / "onprem.yaml"
    config_path.write_text(yaml.safe_dump(rehearsal_config(machine, ports, token)))
    config_path.chmod(0o644)
    name = "onprem"
    spec = machine["top"] / "spec.yaml"
    cache = machine["shared"] / "cache"
    spec.write_text(yaml.safe_dump({
        "name": name, "grid": {"method": ["baseline", "dualembed"]},
        "base": dict(dataset="synthetic", dataset_options={"synthetic_images": 48},
                     backbone="ablate-tiny-vit", n_ctx=4, epochs=2,
                     warmup_epochs=0, batch_size=16, num_workers=0, augment=False, lr=3e-4, device="cpu",
                     cache_dir=str(cache)),
        "storage_path": str(machine["shared"] / "ray_results"), "tracking_uri": f"http://localhost:{ports['mlflow']}"}))
    spec.chmod(0o644)
    ray_cli = str(BIN / "ray")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env["RAY_TMPDIR"] = str(machine["top"])  # the local provider's record of the nodes: removed with the folder
    timings: dict[str, float] = {}
    # another user's Ray on this machine (like other people's jobs): teardown must leave it running
    sentinel = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    t0 = time.monotonic()
    try:
        run([ray_cli, "up", "-y", "--no-config-cache", str(config_path)], timings, "ray up", env=env, cwd=ROOT)
        submitted = run([ray_cli, "submit", str(config_path), str(ROOT / "ablate/run.py"), "--spec", str(spec)],
                        timings, "ray submit (2 trials)", env=env, cwd=ROOT)
        log = submitted.stdout + submitted.stderr
        assert f"tracking: trials log to http://127.0.0.1:{ports['mlflow']}" in log, log[-4000:]
        password = (machine["home"] / "ablate-server/db_password").read_text().strip()
        assert trial_statuses(password, ports["db"], name) == ["FINISHED", "FINISHED"]

        run([ray_cli, "exec", str(config_path), f"ablate report --experiment {name} --tracking-uri "
             f"http://localhost:{ports['mlflow']}"], timings, "ray exec ablate report", env=env, cwd=ROOT)
        assert (machine["home"] / "reports" / name / "report.html").exists()  # the login folder, on the head

        # token authentication: a client without the token (or with another) is refused, one with it is let in
        gcs = f"127.0.0.1:{ports['gcs']}"
        # someone on the machine (its Ray's switch as the cluster's: the GCS listens on loopback only here)
        stranger = {**env, "HOME": str(tmp_path), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        refused = connects(gcs, stranger)
        assert refused.returncode != 0 and "CONNECTED" not in refused.stdout, refused.stdout
        wrong = connects(gcs, {**stranger, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
        assert wrong.returncode != 0 and "CONNECTED" not in wrong.stdout, wrong.stdout
        assert "token-auth" in refused.stderr and "token-auth" in wrong.stderr, (refused.stderr + wrong.stderr)[-3000:]
        admitted = connects(gcs, {**stranger, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token.read_text()})
        assert "CONNECTED" in admitted.stdout, admitted.stderr[-3000:]

        run([ray_cli, "exec", str(config_path), "ablate server stop --root ~/ablate-server"], timings,
            "ray exec ablate server stop", env=env, cwd=ROOT)
    finally:
        with contextlib.suppress(subprocess.SubprocessError, AssertionError):
            run([ray_cli, "down", "-y", str(config_path)], timings, "ray down", env=env, cwd=ROOT, timeout=300)
        alive = sentinel.head_node.all_processes["gcs_server"][0].process.poll() is None
        sentinel.shutdown()
    timings["total"] = round(time.monotonic() - t0, 1)
    left = [p.name() for p in machine["init"].children(recursive=True)]
    assert alive, "ray down stopped a Ray that is not this cluster's"
    assert not [n for n in left if n in ("raylet", "gcs_server") or n.startswith("ray::")], left
    print(f"\ncluster rehearsal timings (s): {timings}")
