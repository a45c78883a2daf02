"""The cluster rehearsal: what `ray submit cluster/gpu.yaml ablate/run.py` meets, on one machine.

A real PostgreSQL behind `mlflow server` with proxied artifacts (`ablate server`), a local multi-node
Ray cluster (a head with no CPUs + two one-CPU workers, all on 127.0.0.1), one shared folder for
Ray results, caches and data, and `run.py` copied alone into another folder and run against the
cluster. Faults are injected as a spot cluster throws them; after each, every trial has exactly one
FINISHED run, no metric point is lost or logged twice, and no more than the interrupted epoch is
trained again. `make rehearse` runs this module alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from sweep_helpers import free_port

from ablate.cli import main
from ablate.errors import ConfigError
from ablate.tracking import EPOCH_METRICS, NODE_LOSSES_TAG, STEP_LOSS, connect

pytestmark = [pytest.mark.rehearsal, pytest.mark.usefixtures("one_thread")]
ROOT = Path(__file__).resolve().parents[1]
LOSS = EPOCH_METRICS["loss"]
# the server stays stopped this long; its restart (imports, schema check) adds ~15 s on 2 busy cores
OUTAGE_S = 5


@pytest.fixture(scope="module")
def server() -> Iterator[dict]:
    """`ablate server` in a folder under the temporary directory that the postgres system user can enter
    (pytest's own folders are closed to other users); stopped and removed afterwards."""
    from ablate.server import ServerError, ServerSettings, pg_bin_dir, start, stop

    try:
        pg_bin_dir()
    except ServerError as err:
        pytest.skip(f"no PostgreSQL server binaries on this machine: {err}")
    root = Path(tempfile.mkdtemp(prefix="ablate-rehearsal-"))
    root.chmod(0o755)
    settings = ServerSettings(port=free_port(), db_port=free_port(), workers=2, artifacts=str(root / "artifacts"))
    try:
        yield {"settings": settings, **start(root / "server", settings)}  # + status: tracking_uri, root...
    finally:
        with contextlib.suppress(ServerError):  # start failed before it saved its settings: nothing runs
            stop(root / "server")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    """Head without CPUs (it takes no trials, like cluster/gpu.yaml's) and two one-CPU workers."""
    from ray.cluster_utils import Cluster

    ray_cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        ray_cluster.add_node(num_cpus=1)
    ray_cluster.wait_for_nodes()
    yield ray_cluster
    ray_cluster.shutdown()


@pytest.fixture()
def shared(tmp_path_factory) -> Path:
    """The one shared folder: Ray results, the feature/weights cache, generated data."""
    return tmp_path_factory.mktemp("shared")


def write_spec(folder: Path, shared: Path, uri: str, name: str, grid: dict, **spec) -> Path:
    base = dict(dataset="synthetic", dataset_options={"synthetic_images": 96},
                backbone="ablate-tiny-vit", n_ctx=4, epochs=6,
                warmup_epochs=0, batch_size=16, num_workers=0, augment=False, lr=3e-4, device="cpu",
                cache_dir=str(shared / "cache"))
    base.update(spec.pop("base", {}))
    data = {"name": name, "base": base, "grid": grid, "storage_path": str(shared / "ray"), "tracking_uri": uri,
            "max_failures": 1, **spec}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def submit(cluster, spec: Path, workdir: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """run.py copied alone into `workdir` and started there against the cluster, as `ray submit` does."""
    script = workdir / "run.py"
    if not script.exists():
        shutil.copy(ROOT / "ablate/run.py", script)
    log = workdir / f"driver{len(list(workdir.glob('driver*.log')))}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(script), "--spec", str(spec), "--ray-address", cluster.address,
                                 *args], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def finish(proc: subprocess.Popen, log: Path, timeout: float = 400) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return log.read_text()


def trial_runs(uri: str, name: str) -> list:
    client = connect(uri)
    exp = client.get_experiment_by_name(name)
    found = client.search_runs([exp.experiment_id]) if exp else []
    return [r for r in found if r.data.tags.get("ablate.role") == "trial"]


def wait_until(what: str, check, proc: subprocess.Popen, log: Path, timeout: float = 300, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the sweep ended before {what}:\n{log.read_text()[-4000:]}"
        try:
            found = check()
        except Exception:  # the store or folder is still being created
            found = None
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")


def checkpointed_trials(shared: Path, name: str) -> set[str]:
    """Trial folders that hold a checkpoint (Tune keeps one per epoch on the shared storage)."""
    return {p.parent.name for p in (shared / "ray" / name).glob("*/checkpoint_*")}


def tune_rows(shared: Path, name: str) -> dict[str, list[int]]:
    """Per trial folder, the epochs Tune received (every attempt's, in order) from its result.json."""
    rows: dict[str, list[int]] = {}
    for result in (shared / "ray" / name).glob("*/result.json"):
        epochs = [json.loads(line).get("epoch") for line in result.read_text().splitlines() if line.strip()]
        rows[result.parent.name] = [e for e in epochs if e is not None]
    return rows


def redone_epochs(shared: Path, name: str) -> int:
    """Epochs trained more than once across attempts (a trial's final report repeats its last epoch)."""
    redone = 0
    for epochs in tune_rows(shared, name).values():
        counts = Counter(epochs)
        redone += sum(n - 1 for n in counts.values()) - (1 if epochs and counts[epochs[-1]] > 1 else 0)
    return redone


def assert_complete(uri: str, name: str, trials: int, epochs: int) -> list:
    """Every trial one FINISHED run; every epoch's row and every step's loss in it exactly once."""
    client = connect(uri)
    found = trial_runs(uri, name)
    keys = Counter(r.data.tags["ablate.trial_key"] for r in found)
    assert len(found) == trials and set(keys.values()) == {1}, [(r.info.run_name, r.info.status) for r in found]
    for run in found:
        assert run.info.status == "FINISHED", (run.info.run_name, run.data.tags)
        losses = [m.step for m in client.get_metric_history(run.info.run_id, LOSS)]
        assert sorted(losses) == list(range(1, epochs + 1)), (run.info.run_name, losses)
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, STEP_LOSS))
        assert steps and steps == list(range(1, len(steps) + 1)) and len(steps) % epochs == 0, run.info.run_name
    return found


def worker_node_of(cluster, pid: int):
    """The cluster's worker node whose raylet started process `pid` (a trial's actor)."""
    import psutil

    parents = {p.pid for p in psutil.Process(pid).parents()}
    for node in cluster.worker_nodes:
        raylet = node.all_processes["raylet"][0].process.pid
        if raylet in parents:
            return node
    return None


def trial_processes(cluster) -> list[int]:
    """The pids of the trial actors running on this cluster's worker nodes."""
    import psutil

    pids = []
    for node in cluster.worker_nodes:
        raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
        pids += [p.pid for p in raylet.children(recursive=True) if "ImplicitFunc" in " ".join(p.cmdline())]
    return pids


# ---- a worker node lost mid-trial, then the tracking server down for 20 s --------------------------

@pytest.mark.slow
def test_node_loss_and_server_outage_lose_nothing_and_match_an_uninterrupted_run(server, cluster, shared, tmp_path):
    from ablate.server import start, stop
    from ablate.sweep import expand
    from ablate.sweep.spec import load_sweep_spec
    from ablate.trainer import run_trial

    uri = server["tracking_uri"]
    spec = write_spec(tmp_path, shared, uri, "rehearsal", {"method": ["baseline", "dualembed"]})
    t0 = time.monotonic()
    proc, log = submit(cluster, spec, tmp_path)
    wait_until("a checkpoint", lambda: checkpointed_trials(shared, "rehearsal"), proc, log)
    pids = wait_until("a trial process", lambda: trial_processes(cluster), proc, log)
    victim = worker_node_of(cluster, pids[0])
    assert victim is not None
    cluster.remove_node(victim, allow_graceful=False)  # as a spot instance goes: no drain
    cluster.add_node(num_cpus=1)  # the autoscaler's replacement
    stop(Path(server["root"]), keep_database=True)
    outage = time.monotonic()
    time.sleep(OUTAGE_S)
    start(Path(server["root"]), server["settings"])
    outage = time.monotonic() - outage
    out = finish(proc, log)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, out[-4000:]
    runs = assert_complete(uri, "rehearsal", trials=2, epochs=6)
    lost = [r for r in runs if r.data.tags.get(NODE_LOSSES_TAG)]
    assert len(lost) == 1 and lost[0].data.tags[NODE_LOSSES_TAG] == "1"
    redone = redone_epochs(shared, "rehearsal")
    assert redone <= 1  # at most the epoch the node was lost in

    # the interrupted trial ends exactly where the same config run without interruption ends
    arms = {a.config.method: a.config for a in expand(load_sweep_spec(spec))}
    cfg = arms[lost[0].data.tags["ablate.method"]]
    reference = run_trial(cfg, progress=False)
    client = connect(uri)
    losses = [m.value for m in sorted(client.get_metric_history(lost[0].info.run_id, LOSS), key=lambda m: m.step)]
    assert losses == pytest.approx([row["loss"] for row in reference.history], rel=1e-6, abs=1e-9)
    assert lost[0].data.metrics["test_map"] == pytest.approx(reference.test_map, rel=1e-6)
    print(f"\nFAULT node loss + server down {outage:.0f} s: runs lost 0, duplicate runs 0, "
          f"epochs re-done {redone}, wall {wall:.0f} s")

    # the report reads the runs and their artifacts through the server (proxied, on the shared folder)
    assert main(["report", "--experiment", "rehearsal", "--tracking-uri", uri, "--out", str(tmp_path / "report"),
                 "--no-log"]) == 0
    assert (tmp_path / "report" / "report.html").exists()
    assert lost[0].info.artifact_uri.startswith("mlflow-artifacts:")
    assert list(Path(server["artifacts"]).rglob("per_class_ap.json"))


# ---- 8 trials logging at once; a trial process SIGKILLed; the driver SIGKILLed, then --resume --------

@pytest.mark.slow
def test_eight_trials_a_killed_trial_and_a_killed_driver_resume_into_one_run_each(server, cluster, shared,
                                                                                    tmp_path):
    uri = server["tracking_uri"]
    spec = write_spec(tmp_path, shared, uri, "load", {"method": ["baseline", "dualembed"],
                      "label_ratio": [0.2, 0.4, 0.6, 0.8]}, resources={"cpu": 0.25}, max_concurrent_trials=8,
                      base={"epochs": 4})
    t0 = time.monotonic()
    proc, log = submit(cluster, spec, tmp_path)
    wait_until("an epoch logged", lambda: any(LOSS in r.data.metrics for r in trial_runs(uri, "load")), proc, log)
    os.kill(trial_processes(cluster)[0], signal.SIGKILL)  # one trial's process, mid-epoch
    wait_until("Tune to see the killed trial", lambda: list((shared / "ray" / "load").glob("*/error.txt")),
               proc, log)
    reported = sum(map(len, tune_rows(shared, "load").values()))
    wait_until("more epochs", lambda: sum(map(len, tune_rows(shared, "load").values())) >= reported + 3, proc, log)
    proc.send_signal(signal.SIGKILL)  # the driver, without a chance to record anything
    proc.wait(timeout=60)
    killed_at = time.monotonic()
    finished_before = sum(r.info.status == "FINISHED" for r in trial_runs(uri, "load"))
    proc, log = submit(cluster, spec, tmp_path, "--resume")
    out = finish(proc, log, timeout=500)
    assert proc.returncode == 0, out[-4000:]
    wall = time.monotonic() - t0
    runs = assert_complete(uri, "load", trials=8, epochs=4)
    assert not [r for r in runs if r.data.tags.get(NODE_LOSSES_TAG)]  # a killed process is not a lost node
    redone = redone_epochs(shared, "load")
    assert redone <= 8  # at most the one interrupted epoch of each trial cut off by a kill
    print(f"\nFAULT trial SIGKILL + driver SIGKILL, resume: runs lost 0, duplicate runs 0, epochs re-done "
          f"{redone}, finished before the driver kill {finished_before}/8, resume took "
          f"{time.monotonic() - killed_at:.0f} s, wall {wall:.0f} s")


# ---- bad input: fails before anything launches, naming what is wrong ------------------------------

def test_a_database_that_refuses_the_password_fails_before_anything_launches(server, shared, tmp_path, capsys):
    import ray

    port = server["settings"].db_port
    uri = f"postgresql+psycopg2://ablate:wrong-secret@127.0.0.1:{port}/mlflow"
    spec = write_spec(tmp_path, shared, uri, "badpw", {"method": ["baseline"]})
    assert main(["sweep", "--spec", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"postgresql+psycopg2://ablate:***@127.0.0.1:{port}/mlflow refuses the password" in err
    assert "wrong-secret" not in err and "Traceback" not in err
    assert not ray.is_initialized() and not (shared / "ray").exists()


def test_a_tracking_server_that_is_not_up_fails_before_anything_launches(shared, tmp_path, capsys):
    import ray

    uri = f"http://127.0.0.1:{free_port()}"
    spec = write_spec(tmp_path, shared, uri, "noserver", {"method": ["baseline"]})
    assert main(["sweep", "--spec", str(spec)]) == 2
    assert f"MLflow tracking server {uri} is not reachable" in capsys.readouterr().err
    assert not ray.is_initialized() and not (shared / "ray").exists()


def test_a_storage_path_the_workers_cannot_write_fails_before_trials_start(server, cluster, shared, tmp_path,
                                                                             capsys):
    import ray

    blocked = shared / "not-a-folder"
    blocked.write_text("a file where the storage folder should be")
    spec = write_spec(tmp_path, shared, server["tracking_uri"], "nostorage", {"method": ["baseline"]},
                      storage_path=str(blocked / "ray"))
    try:
        assert main(["sweep", "--spec", str(spec), "--ray-address", cluster.address]) == 2
    finally:
        ray.shutdown()
    err = capsys.readouterr().err
    assert f"storage path {blocked / 'ray' / 'nostorage'} is not writable on 3 of 3 Ray node(s)" in err
    assert not trial_runs(server["tracking_uri"], "nostorage")  # nothing recorded either


# ---- autoscaled workers: they join after the driver started, and log to the head's server ----------

@pytest.mark.slow
def test_workers_that_join_after_the_driver_log_to_the_drivers_node(server, shared, tmp_path):
    """cluster/gpu.yaml right after `ray up`: a head with no CPUs and no workers. The driver starts alone,
    the workers arrive later (as the autoscaler adds them); `localhost` in the spec's URI still means the
    driver's node for them, and every trial logs there."""
    from ray.cluster_utils import Cluster

    port = urlparse(server["tracking_uri"]).port
    spec = write_spec(tmp_path, shared, f"http://localhost:{port}", "latejoin", {"method": ["baseline", "dualembed"]},
                      base={"epochs": 2})
    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        proc, log = submit(head, spec, tmp_path)
        wait_until("the driver on a cluster of one node", lambda: "1 node(s), 0 CPUs" in log.read_text(), proc, log)
        for _ in range(2):
            head.add_node(num_cpus=1)  # the autoscaler's workers, after the driver decided the URI
        out = finish(proc, log)
    finally:
        head.shutdown()
    assert proc.returncode == 0, out[-4000:]
    # the node's address here is 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, conftest); on a real cluster
    # the head's LAN address. Either way never `localhost`, which a worker resolves to itself.
    assert f"tracking: trials log to http://127.0.0.1:{port} (localhost in the tracking URI means this " \
           "driver's node, 127.0.0.1)" in out
    assert_complete(server["tracking_uri"], "latejoin", trials=2, epochs=2)


def test_a_server_that_answers_the_driver_only_on_loopback_is_refused():
    """A server listening on 127.0.0.1 answers the driver as `localhost` but not on the node's address
    that workers get: refused with one line, before the sweep is recorded."""
    import ray
    from ray.cluster_utils import Cluster

    from ablate.sweep.cluster import reachable_from_workers

    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        ray.init(address=head.address)
        # the node's address is 127.0.0.1 here, so [::1] stands for "the driver reaches it, workers not":
        # ablate's rewrite gives workers 127.0.0.1, where nothing listens on this port
        with socket.create_server(("::1", 0), family=socket.AF_INET6) as only_v6:
            port = only_v6.getsockname()[1]
            with pytest.raises(ConfigError, match=r"trials on other nodes would call http://127\.0\.0\.1:\d+"):
                reachable_from_workers(f"http://[::1]:{port}", head.address)
        assert reachable_from_workers("sqlite:////tmp/x.db", head.address) == "sqlite:////tmp/x.db"
        assert reachable_from_workers("http://localhost:5000", "local") == "http://localhost:5000"
    finally:
        ray.shutdown()
        head.shutdown()
