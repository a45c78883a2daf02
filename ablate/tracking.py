"""MLflow tracking: one experiment per sweep name, a parent run per sweep, a child run per trial.

Everything goes through `MlflowClient` with explicit experiment and run ids (never the global
`mlflow.set_experiment`, which redirects other integrations). Child runs are keyed by a hash of
(parent run, canonical trial config): a resumed or retried trial re-attaches to its run instead of
creating a duplicate. The driver creates the store schema, experiment and parent run before any
trial starts, so parallel trials never race to create them.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from .data.base import file_lock
from .errors import TrackingError
from .result import TrialResult
from .spec import TrialConfig

TRIAL_KEY = "ablate.trial_key"
SWEEP_TAG = "ablate.sweep"
ROLE_TAG = "ablate.role"
ERROR_TAG = "ablate.error"
STOPPED_TAG = "ablate.stopped"
ARM_FIELDS = ("method", "dataset", "label_ratio", "backbone", "pretrained", "n_ctx", "csc", "seed")
DEFAULT_DB = "mlflow.db"
RESUME_TAG = "ablate.resume"
# A sqlite store allows one writer; another process (a backup, `sqlite3`, a report) may hold it for a
# while. Every call waits up to this long before the lock counts as a fault.
LOCK_PATIENCE_S = 60.0
PROBE_TIMEOUT_S = 5.0


def resolve_tracking_uri(flag: str | None = None, spec: str | None = None) -> str:
    """Flag, then spec, then MLFLOW_TRACKING_URI, then a sqlite file in the working directory."""
    uri = flag or spec or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Trials run in other working directories: pin the file to an absolute path.
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).expanduser().absolute())
    return uri


def connect(uri: str) -> MlflowClient:
    """A client whose store answers (for sqlite: the schema exists afterwards). Opening a sqlite store
    creates or migrates its schema, and two processes doing that at once collide in alembic ("table
    _alembic_tmp_metrics already exists"), so for sqlite one process at a time opens it, under a lock."""
    if uri.startswith(("http://", "https://")):
        probe_server(uri)
    db = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    with file_lock(Path(f"{db}.lock")) if db else contextlib.nullcontext():
        try:
            client = open_client(uri)
            _retry(client.search_experiments, max_results=1)
        except Exception as err:  # the store raises many types; all mean "not usable"
            if is_locked(err):
                raise TrackingError(f"MLflow tracking store {uri} stayed locked by another process for "
                                    f"{LOCK_PATIENCE_S:.0f} s; close what holds it and run again") from err
            raise TrackingError(f"MLflow tracking store {uri} is not reachable: {err}") from err
    return client


def probe_server(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """MLflow's own client retries an unreachable server for minutes; a short probe says so at once.
    Any HTTP answer (even 401 or 404) means a server is there."""
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as err:  # URLError, refused, timeout, bad URL
        reason = getattr(err, "reason", err)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            raise TrackingError(f"MLflow tracking server {uri} did not answer within {timeout:.0f} s; "
                                "is it running and reachable from here?") from None
        raise TrackingError(f"MLflow tracking server {uri} is not reachable ({reason}); "
                            "is it running and reachable from here?") from None


def artifact_location(tracking_uri: str, name: str) -> str | None:
    """Where a new experiment's artifacts go: beside a sqlite store's file (MLflow's default, `./mlruns`,
    would follow whatever the working directory is), else the server's or store's own default."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri.removeprefix("sqlite:///")).absolute()
    return (db.parent / "mlruns" / re.sub(r"[^\w.-]", "_", name)).as_uri()


def ensure_experiment(client: MlflowClient, name: str) -> str:
    exp = _retry(client.get_experiment_by_name, name)
    if exp is None:
        try:
            return _retry(client.create_experiment, name,
                          artifact_location=artifact_location(client.tracking_uri, name))
        except MlflowException as err:  # another process created it since we looked
            exp = _retry(client.get_experiment_by_name, name)
            if exp is None:
                raise TrackingError(f"cannot create experiment '{name}': {err}") from err
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment '{name}' is deleted; restore it in MLflow or rename the spec")
    return exp.experiment_id


def flatten_config(cfg: TrialConfig) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in cfg.model_dump(mode="json").items()}


def trial_key(parent_run_id: str, trial_id: str) -> str:
    """A Ray trial keeps its id across retries and `Tuner.restore`, so this finds its run again."""
    return hashlib.sha256(f"{parent_run_id}/{trial_id}".encode()).hexdigest()[:24]


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def start_parent_run(client: MlflowClient, experiment_id: str, sweep_name: str, spec_path: Path,
                     spec_text: str) -> str:
    tags = {ROLE_TAG: "sweep", SWEEP_TAG: sweep_name, "ablate.spec_sha256":
            hashlib.sha256(spec_text.encode()).hexdigest(), "ablate.spec_path": str(spec_path)}
    commit = git_commit(spec_path.parent)
    if commit:
        tags["ablate.git_commit"] = commit
    run = _retry(client.create_run, experiment_id, tags=tags, run_name=sweep_name)
    _retry(client.log_text, run.info.run_id, spec_text, "spec.yaml")
    return run.info.run_id


def end_parent_run(client: MlflowClient, parent_run_id: str, status: str, metrics: dict[str, float],
                   resume_command: str | None = None) -> None:
    """Counts and final status of a sweep; an interrupted one says how to continue it."""
    for key, value in metrics.items():
        _retry(client.log_metric, parent_run_id, key, value)
    if resume_command:
        _retry(client.set_tag, parent_run_id, RESUME_TAG, resume_command)
    _retry(client.set_terminated, parent_run_id, status)


def reopen_parent_run(client: MlflowClient, parent_run_id: str) -> None:
    """A resumed sweep runs again; the note on how to resume it goes."""
    if RESUME_TAG in _retry(client.get_run, parent_run_id).data.tags:
        _retry(client.delete_tag, parent_run_id, RESUME_TAG)
    _retry(client.update_run, parent_run_id, status="RUNNING")


def close_running_children(client: MlflowClient, experiment_id: str, parent_run_id: str, reason: str) -> int:
    """A killed trial cannot close its own run: the driver marks what is still RUNNING as KILLED."""
    found = _retry(client.search_runs, [experiment_id], max_results=10000,
                   filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'")
    for run in found:
        TrialRun(client, run.info.run_id, True).close("KILLED", reason)
    return len(found)


@dataclass(frozen=True)
class TrackingContext:
    """What a trial needs to find its run; plain data so it travels to Ray workers."""

    uri: str
    experiment_id: str
    parent_run_id: str


def is_locked(err: BaseException) -> bool:
    return "locked" in str(err).lower()


def open_client(uri: str) -> MlflowClient:
    """Opening a sqlite store reads its schema, which a lock holds up too."""
    return _retry(MlflowClient, tracking_uri=uri)


def _retry(fn, *args, **kwargs):
    """sqlite allows one writer at a time: wait for it (backing off, up to LOCK_PATIENCE_S in all) instead
    of failing the trial or the sweep."""
    deadline = time.monotonic() + LOCK_PATIENCE_S
    for attempt in itertools.count():
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            pause = min(0.2 * 2**attempt, 4.0)
            if not is_locked(err) or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)


class TrialRun:
    """The child run of one trial: found by its key, or created once."""

    def __init__(self, client: MlflowClient, run_id: str, resumed: bool, logged_epochs: int = 0) -> None:
        self.client, self.run_id, self.resumed = client, run_id, resumed
        self.logged_epochs = logged_epochs  # epochs already in the run: a resumed trial never logs them twice

    @classmethod
    def find(cls, ctx: TrackingContext, trial_id: str) -> TrialRun | None:
        client = open_client(ctx.uri)
        key = trial_key(ctx.parent_run_id, trial_id)
        found = _retry(client.search_runs, [ctx.experiment_id],
                       filter_string=f"tags.`{TRIAL_KEY}` = '{key}'", max_results=1)
        return cls(client, found[0].info.run_id, True) if found else None

    @classmethod
    def attach(cls, ctx: TrackingContext, cfg: TrialConfig, trial_id: str, arm: dict) -> TrialRun:
        """Re-attach to this trial's run (retry, resume) or create it with params and arm tags."""
        run = cls.find(ctx, trial_id)
        if run is not None:
            run.reopen()
            return run
        client = open_client(ctx.uri)
        tags = {"mlflow.parentRunId": ctx.parent_run_id, TRIAL_KEY: trial_key(ctx.parent_run_id, trial_id),
                ROLE_TAG: "trial", "ablate.trial_id": trial_id, "ablate.arm": json.dumps(arm, sort_keys=True),
                "ablate.selected_on": cfg.select_on,
                **{f"ablate.{k}": str(getattr(cfg, k)) for k in ARM_FIELDS}}
        name = "-".join(str(v) for v in arm.values()) or cfg.method
        run_id = _retry(client.create_run, ctx.experiment_id, tags=tags, run_name=name).info.run_id
        params = [Param(k, v) for k, v in flatten_config(cfg).items()]
        for i in range(0, len(params), 100):
            _retry(client.log_batch, run_id, params=params[i : i + 100])
        return cls(client, run_id, False)

    def status(self) -> str:
        return _retry(self.client.get_run, self.run_id).info.status

    def reopen(self) -> None:
        """Running again (retry, resume): the old stop reason goes, the epochs it logged stay counted."""
        tags = _retry(self.client.get_run, self.run_id).data.tags
        for key in (ERROR_TAG, STOPPED_TAG):
            if key in tags:
                _retry(self.client.delete_tag, self.run_id, key)
        _retry(self.client.update_run, self.run_id, status="RUNNING")
        self.logged_epochs = self.last_step("loss")

    def last_step(self, key: str) -> int:
        history = _retry(self.client.get_metric_history, self.run_id, key)
        return max((m.step for m in history), default=0)

    def log_epoch(self, row: dict) -> None:
        """One epoch's row at step `epoch`; skipped when the run has it already (the trial was killed
        after logging it but before Tune kept that epoch's checkpoint, and ran it again)."""
        if row["epoch"] <= self.logged_epochs:
            return
        self.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
        self.logged_epochs = row["epoch"]

    def log_metrics(self, values: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if v is not None]
        _retry(self.client.log_batch, self.run_id, metrics=metrics)

    def log_result(self, result: TrialResult, final: dict[str, float]) -> None:
        """The end of a trial: `final` metrics at the last epoch's step, per-class AP and the whole result
        (without per-class AP) as artifacts."""
        self.log_metrics(final, step=result.epochs)
        self.log_dict(result.per_class_ap, "per_class_ap.json")
        self.log_dict({k: v for k, v in result.to_dict().items() if k != "per_class_ap"}, "metrics.json")

    def log_dict(self, data: dict, name: str) -> None:
        _retry(self.client.log_dict, self.run_id, data, name)

    def log_artifact(self, path: Path) -> None:
        _retry(self.client.log_artifact, self.run_id, str(path))

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        _retry(self.client.log_artifacts, self.run_id, str(folder), artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        _retry(self.client.set_tag, self.run_id, key, value[:5000])

    def finish(self) -> None:
        _retry(self.client.set_terminated, self.run_id, "FINISHED")

    def close(self, status: str, reason: str) -> None:
        _retry(self.client.set_tag, self.run_id, ERROR_TAG if status == "FAILED" else STOPPED_TAG, reason[:5000])
        _retry(self.client.set_terminated, self.run_id, status)

    def fail(self, reason: str) -> None:
        self.close("FAILED", reason)


def trial_table(uri: str, experiment_id: str, parent_run_id: str) -> list[dict]:
    """One row per child run of a sweep: arm, status and the headline numbers."""
    client = open_client(uri)
    runs = _retry(client.search_runs, [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                  max_results=10000)
    rows = []
    for run in runs:
        tags, m = run.data.tags, run.data.metrics
        rows.append({"method": tags.get("ablate.method"), "dataset": tags.get("ablate.dataset"),
                     "label_ratio": tags.get("ablate.label_ratio"), "seed": tags.get("ablate.seed"),
                     "status": run.info.status, "test_map": m.get("test_map"),
                     "trainable_params": m.get("trainable_params"), "train_time_s": m.get("train_time_s")})
    return sorted(rows, key=lambda r: tuple(str(r[k]) for k in ("dataset", "method", "label_ratio", "seed")))
