"""Faults around a sweep: Ctrl-C / SIGTERM, a locked sqlite store, a missing image, an unreachable
tracking server, which Ray cluster is used, and the trials' scratch folders. Nothing is lost, nothing
runs that was not asked for, and every mistake is one line."""

from __future__ import annotations

import os
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from sweep_helpers import free_port, runs, write_spec

from ablate.cli import main
from ablate.errors import ConfigError, DataError, TrackingError
from ablate.sweep import init_ray, ray_address, run_sweep, work_root
from ablate.tracking import TrackingContext, TrialRun, connect, ensure_experiment, start_parent_run
from ablate.tracking import store as tracking  # the patience constants and retry counts live there

ROOT = Path(__file__).resolve().parents[1]
HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


@pytest.fixture()
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def create_store(db: Path) -> None:
    """In another process: this one's MLflow would keep the store open, and an open store waits out
    locks on its own (20 s); a sweep's first call opens it afresh."""
    code = "import sys; from ablate.tracking import connect; connect(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{db}"], check=True, timeout=120)


def hold_lock(db: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the sqlite store exclusively (no reader or writer gets in)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db), str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def sweep_process(spec: Path, tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)  # the default: a private local Ray, never a cluster found on the machine
    log = tmp_path / f"sweep{len(list(tmp_path.glob('sweep*.log')))}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", "sweep", "--spec", str(spec), *args],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    return proc, log


def wait_for_logged_epoch(proc: subprocess.Popen, tmp_path: Path, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(1)
        assert proc.poll() is None, "the sweep ended before it could be interrupted:\n" + log.read_text()[-3000:]
        if not (tmp_path / "mlflow.db").exists():
            continue
        try:
            _, children = runs(tmp_path)
        except Exception:  # schema still being created
            continue
        if any("train_loss" in c.data.metrics for c in children):
            return
    raise AssertionError("no trial logged an epoch in time:\n" + log.read_text()[-3000:])


def interrupt(proc: subprocess.Popen, sig: int, log: Path) -> str:
    proc.send_signal(sig)
    try:
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    return log.read_text()


def trial_folders(tmp_path: Path) -> list[Path]:
    return list(tmp_path.rglob("ablate-trial-*"))


# ---- item: an interrupted sweep stops loudly, is recorded as KILLED and resumes cleanly ----------------

@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_as_killed_and_resume_logs_every_epoch_once(tmp_path, cache_dir):
    spec = write_spec(tmp_path, cache_dir, base={"dataset_options": {"synthetic_images": 120}, "epochs": 6},
                      grid={"method": ["baseline", "dualembed"], "label_ratio": [0.3, 0.7]})
    before = set(Path(tempfile.gettempdir()).glob("ablate-trial-*"))
    proc, log = sweep_process(spec, tmp_path)
    wait_for_logged_epoch(proc, tmp_path, log)
    out = interrupt(proc, signal.SIGINT, log)
    assert proc.returncode == 130, out[-3000:]
    resume = f"ablate sweep --spec {spec} --resume"
    assert f"error: sweep interrupted (SIGINT); finished trials are kept, resume with: {resume}" in out
    assert "Traceback" not in out
    parents, children = runs(tmp_path)
    assert parents[0].info.status == "KILLED" and parents[0].data.tags["ablate.resume"] == resume
    note = parents[0].data.tags["mlflow.note.content"]
    assert "**Stopped**" in note and resume in note and "**Running.**" not in note
    assert children and not [c for c in children if c.info.status == "RUNNING"]
    assert sum(c.info.status == "FINISHED" for c in children) < 4

    proc, log = sweep_process(spec, tmp_path, "--resume")
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    parents, children = runs(tmp_path)
    assert parents[0].info.status == "FINISHED" and "ablate.resume" not in parents[0].data.tags
    assert "**Stopped**" not in parents[0].data.tags["mlflow.note.content"]
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    client = connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for child in children:
        assert "ablate.stopped" not in child.data.tags
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, 7)), (child.data.tags["ablate.arm"], steps)
    # the trials' scratch folders went with the sweep, none were left in the temporary directory
    assert trial_folders(tmp_path) == []
    assert not work_root(str(tmp_path / "ray"), "t", parents[0].info.run_id).exists()
    assert set(Path(tempfile.gettempdir()).glob("ablate-trial-*")) <= before


@pytest.mark.slow
def test_sigterm_stops_the_sweep_like_ctrl_c(tmp_path, cache_dir):
    spec = write_spec(tmp_path, cache_dir, base={"dataset_options": {"synthetic_images": 120}, "epochs": 6},
                      grid={"method": ["baseline", "dualembed"]})
    proc, log = sweep_process(spec, tmp_path)
    wait_for_logged_epoch(proc, tmp_path, log)
    out = interrupt(proc, signal.SIGTERM, log)
    assert proc.returncode == 143, out[-3000:]
    assert "sweep interrupted (SIGTERM)" in out and "--resume" in out and "Traceback" not in out
    parents, children = runs(tmp_path)
    assert parents[0].info.status == "KILLED"
    assert children and not [c for c in children if c.info.status == "RUNNING"]
    assert trial_folders(tmp_path) == []


def test_a_resumed_trial_does_not_log_an_epoch_its_run_has(tmp_path, tiny_cfg):
    """The epoch that ended after Tune's last checkpoint but before the kill runs again on resume."""
    client = connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = ensure_experiment(client, "t")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\n")
    ctx = TrackingContext(f"sqlite:///{tmp_path / 'mlflow.db'}", exp,
                          start_parent_run(client, exp, "t", spec, spec.read_text()))
    cfg = tiny_cfg()
    first = TrialRun.attach(ctx, cfg, "trial_1", {})
    for epoch in (1, 2):
        first.log_epoch({"epoch": epoch, "loss": 1.0 / epoch})
    first.close("KILLED", "sweep interrupted")
    again = TrialRun.attach(ctx, cfg, "trial_1", {})
    assert again.run_id == first.run_id and again.logged_epochs == 2
    for epoch in (2, 3):  # restored from the epoch-1 checkpoint
        again.log_epoch({"epoch": epoch, "loss": 0.1})
    assert [m.step for m in client.get_metric_history(first.run_id, "train_loss")] == [1, 2, 3]
    run = client.get_run(first.run_id)
    assert run.info.status == "RUNNING" and "ablate.stopped" not in run.data.tags


# ---- item: a locked sqlite store makes MLflow calls wait, not fail --------------------------------

@pytest.mark.slow
def test_a_store_locked_by_another_process_delays_the_sweep_but_loses_nothing(tmp_path, cache_dir, local_ray):
    spec = write_spec(tmp_path, cache_dir, grid={"method": ["baseline", "dualembed"]})
    db = tmp_path / "mlflow.db"
    create_store(db)  # the store exists; another process then holds it
    holders = [hold_lock(db, 8)]

    def lock_again_mid_sweep() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            time.sleep(0.5)
            try:
                if any("train_loss" in c.data.metrics for c in runs(tmp_path)[1]):
                    holders.append(hold_lock(db, 8))
                    return
            except Exception:
                continue

    thread = threading.Thread(target=lock_again_mid_sweep, daemon=True)
    thread.start()
    summary = run_sweep(spec)
    thread.join(timeout=30)
    for holder in holders:
        holder.wait(timeout=30)
    assert len(holders) == 2  # the store was locked at the start and again while trials logged
    assert summary["trials"] == 2 and summary["errored"] == 0
    parents, children = runs(tmp_path)
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)


def test_a_lock_that_outlasts_the_retries_is_one_tracking_error_line(tmp_path, cache_dir, capsys, monkeypatch):
    spec = write_spec(tmp_path, cache_dir, grid={"method": ["baseline"]})
    db = tmp_path / "mlflow.db"
    create_store(db)
    monkeypatch.setattr(tracking, "LOCK_PATIENCE_S", 1.0)
    holder = hold_lock(db, 120)  # past the pre-flight (data, Ray) on a busy machine; killed once main returns
    try:
        assert main(["sweep", "--spec", str(spec)]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert f"error: MLflow tracking store sqlite:///{db} stayed locked by another process" in err
    assert "Traceback" not in err
    import ray

    assert not ray.is_initialized()  # the Ray the pre-flight started went with the failed launch


# ---- item: the pre-flight check finds a missing image before anything is recorded or started ----------

def test_a_missing_image_stops_the_sweep_before_ray_or_mlflow(tmp_path, cache_dir):
    import ray

    from ablate.data.coco import coco_files
    from ablate.data.synthetic import generate_synthetic

    data = generate_synthetic(tmp_path / "data", 60, 30)
    images = sorted(coco_files(data, "train")[1].iterdir())
    images[7].unlink()
    spec = write_spec(tmp_path, cache_dir, base={"data_root": str(data)}, grid={"method": ["baseline"]})
    assert not ray.is_initialized()
    with pytest.raises(DataError, match="synthetic") as err:
        run_sweep(spec)
    assert str(images[7]) in str(err.value)
    assert not ray.is_initialized()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()


# ---- item: an HTTP tracking server that does not answer fails fast ---------------------------------

def _connect_within(uri: str, seconds: float) -> BaseException | None:
    """connect(uri) in a thread: its error, or a failure of the test when it takes longer than `seconds`."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            connect(uri)
            outcome.append(None)
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"connect({uri}) took more than {seconds} s"
    return outcome[0]


def test_a_silent_tracking_server_fails_within_seconds():
    with socket.socket() as server:  # accepts connections (the kernel does) but never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        err = _connect_within(uri, 15)
    assert isinstance(err, TrackingError)
    assert str(err).startswith(f"MLflow tracking server {uri} did not answer within 5 s")


def test_a_closed_tracking_port_fails_at_once():
    port = free_port()
    t0 = time.monotonic()
    err = _connect_within(f"http://127.0.0.1:{port}", 15)
    assert isinstance(err, TrackingError) and f"http://127.0.0.1:{port} is not reachable" in str(err)
    assert time.monotonic() - t0 < 5


def test_a_server_gone_past_the_deadline_fails_the_trial_with_how_long(monkeypatch):
    """A trial's logging waits out a server that went away (retries counted), then gives up with one clear
    error naming the wait, which Ray Tune answers by retrying the trial from its checkpoint."""
    from mlflow import MlflowClient

    monkeypatch.setattr(tracking, "SERVER_PATIENCE_S", 2.0)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port = free_port()
    run = TrialRun(MlflowClient(f"http://127.0.0.1:{port}"), "0" * 32, False)
    before = tracking.retries_done["server"]
    with pytest.raises(TrackingError, match=r"the MLflow tracking server did not answer for 2 s .*Ray Tune retries it"):
        run.log_metrics({"test_map": 1.0})
    assert tracking.retries_done["server"] - before >= 3  # waited (0.2 + 0.4 + 0.8 s ...) before giving up


# ---- item: which Ray cluster a sweep uses is asked for, never found by chance ------------------------

def test_ray_address_comes_from_the_flag_then_the_environment_then_local(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(None) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ray_address(None) == "10.0.0.1:6379" and ray_address("auto") == "auto"


def test_init_ray_without_an_address_starts_a_private_local_ray(monkeypatch, capsys):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    try:
        init_ray(None)
        assert ray.is_initialized()
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("ray: a private local Ray (") and "1 node(s)" in line and "CPUs" in line
    finally:
        ray.shutdown()


def _sweep_address(monkeypatch, argv: list[str], script: Path | None = None) -> str | None:
    """The ray_address `ablate sweep` (or run.py, with `script`) hands run_sweep."""
    import ablate.sweep

    seen: dict = {}

    def fake_run_sweep(spec, **kwargs):
        seen.update(kwargs)
        raise ConfigError("stop here")

    monkeypatch.setattr(ablate.sweep, "run_sweep", fake_run_sweep)
    if script is None:
        assert main(["sweep", *argv]) == 2
    else:
        monkeypatch.setattr(sys, "argv", [str(script), *argv])
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(str(script), run_name="__main__")
        assert stop.value.code == 2
    return seen["ray_address"]


def test_the_cli_passes_the_ray_address_and_run_py_joins_the_running_cluster(monkeypatch):
    # --yes: the size check would read the (absent) spec before run_sweep is reached
    assert _sweep_address(monkeypatch, ["--spec", "x.yaml", "--yes"]) is None  # resolved by init_ray: env, else local
    assert _sweep_address(monkeypatch, ["--spec", "x.yaml", "--yes", "--ray-address", "10.0.0.1:6379"]) == \
        "10.0.0.1:6379"
    assert _sweep_address(monkeypatch, ["--spec", "x.yaml", "--yes"], ROOT / "ablate/run.py") == "auto"


def test_a_file_the_driver_built_that_a_node_cannot_see_is_refused_before_trials(local_ray, tmp_path):
    """The world CLIPs are built by the driver and only loaded by trials: a checkpoint on a disk some node does
    not share is one error line before anything starts, not a failure in every trial on that node."""
    from ablate.sweep.cluster import check_files_on_nodes

    here = tmp_path / "clip.pt"
    here.write_bytes(b"weights")
    check_files_on_nodes([here], "the world CLIP checkpoint", "share cache_dir")  # every node sees it: passes
    gone = tmp_path / "elsewhere.pt"
    with pytest.raises(ConfigError, match=rf"the world CLIP checkpoint {gone} is not there on 1 of 1 Ray node.*"
                                          "share cache_dir"):
        check_files_on_nodes([here, gone], "the world CLIP checkpoint", "share cache_dir")
