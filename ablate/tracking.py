"""MLflow tracking: one experiment per sweep name, a parent run per sweep, a child run per trial.

Everything goes through `MlflowClient` with explicit experiment and run ids (never the global
`mlflow.set_experiment`, which redirects other integrations). Child runs are keyed by a hash of
(parent run, canonical trial config): a resumed or retried trial re-attaches to its run instead of
creating a duplicate. The driver creates the store schema, experiment and parent run before any
trial starts, so parallel trials never race to create them.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import itertools
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
from mlflow.exceptions import MlflowException

from .data.base import file_lock
from .errors import TrackingError
from .result import TrialResult
from .spec import TrialConfig, ignored_fields

TRIAL_KEY = "ablate.trial_key"
SWEEP_TAG = "ablate.sweep"
ROLE_TAG = "ablate.role"
ERROR_TAG = "ablate.error"
STOPPED_TAG = "ablate.stopped"
ARM_FIELDS = ("method", "dataset", "label_ratio", "backbone", "pretrained", "n_ctx", "csc", "seed")
DEFAULT_DB = "mlflow.db"
RESUME_TAG = "ablate.resume"
NODE_LOSSES_TAG = "ablate.node_losses"
STEP_LOSS = "train_step_loss"  # per-step training loss, at the global step
BATCH_LIMIT = 1000  # metrics per log_batch call (MLflow's limit)
NOTE_TAG = "mlflow.note.content"  # the description the MLflow UI shows (and edits) on runs and experiments
# MLflow's own tags behind the UI's User / Source / Version columns; the parent sets them, trials copy them
SOURCE_TAGS = ("mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit")
# the value of a param whose field the trial's method does not read: filters on it match no run of that method
NOT_READ = "n/a"
NAME_ORDER = ("method", "dataset", "backbone", "pretrained", "label_ratio", "n_ctx", "csc")  # axes in run names
# per-epoch metric names in MLflow: `lr` and `loss` are also params (the TrialConfig fields), and `time_s`
# is the cumulative training time so far, not an epoch's
EPOCH_METRICS = {"loss": "train_loss", "lr": "epoch_lr", "time_s": "cum_train_time_s"}
UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` serves a store file
FINAL_STEP = 0  # end-of-trial figures: one value at step 0, which MLflow's chart view draws as per-run bars
SYSTEM_METRICS_INTERVAL_S = 5.0  # MLflow's system metrics monitor: one sample (system/...) this often
# A sqlite store allows one writer; another process (a backup, `sqlite3`, a report) may hold it for a
# while. Every call waits up to this long before the lock counts as a fault.
LOCK_PATIENCE_S = 60.0
PROBE_TIMEOUT_S = 5.0
# A tracking server that stops answering (restarted, its database failing over) is waited for this
# long by every call before the trial fails with a TrackingError (and Tune retries it from its last
# checkpoint). Bounded from below: MLflow's own HTTP retries are cut to a few seconds (below) so that
# this deadline, not MLflow's minutes of backoff, decides.
SERVER_PATIENCE_S = float(os.environ.get("ABLATE_TRACKING_PATIENCE_S", 300))
# MLflow's defaults retry one request 7 times with doubling back-off (minutes) and wait 120 s for an
# answer; these bound one MLflow call to about 2 + 4 s of back-off or 2 x 30 s of a silent server.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
# What a retry waited for, by kind ("lock", "server"): the load benchmark reports them.
retries_done: Counter[str] = Counter()


def resolve_tracking_uri(flag: str | None = None, spec: str | None = None) -> str:
    """Flag, then spec, then MLFLOW_TRACKING_URI, then a sqlite file in the working directory."""
    uri = flag or spec or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Trials run in other working directories: pin the file to an absolute path.
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).expanduser().absolute())
    return uri


def redact_uri(uri: str) -> str:
    """The URI with its password (if any) replaced by ***: what messages and logs may show."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def connect(uri: str) -> MlflowClient:
    """A client whose store answers (for sqlite: the schema exists afterwards). Opening a sqlite store
    creates or migrates its schema, and two processes doing that at once collide in alembic ("table
    _alembic_tmp_metrics already exists"), so for sqlite one process at a time opens it, under a lock."""
    probe_store(uri)
    db = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    with file_lock(Path(f"{db}.lock")) if db else contextlib.nullcontext():
        try:
            client = open_client(uri)
            _retry(client.search_experiments, max_results=1)
        except Exception as err:  # the store raises many types; all mean "not usable"
            if is_locked(err):
                raise TrackingError(f"MLflow tracking store {uri} stayed locked by another process for "
                                    f"{LOCK_PATIENCE_S:.0f} s; close what holds it and run again") from err
            raise TrackingError(f"MLflow tracking store {redact_uri(uri)} is not reachable: {err}") from err
    return client


def probe_store(uri: str) -> None:
    """A tracking server or database that does not answer, or refuses the password, is said in seconds;
    a sqlite file is left alone (probing would create it)."""
    if uri.startswith(("http://", "https://")):
        probe_server(uri)
    elif "://" in uri and not uri.startswith(("sqlite:", "file:")):
        probe_database(uri)


def probe_database(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """One connection attempt to a database URI (postgresql://, mysql://): MLflow's store retries a
    failing connection ten times over about 100 s; a refused password or a closed port is said at once."""
    import sqlalchemy

    shown = redact_uri(uri)
    args = {"connect_timeout": int(timeout)} if uri.startswith("postgresql") else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=args, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except ModuleNotFoundError as err:
        raise TrackingError(f"no driver for {shown} ({err.name} is missing); the cluster extra (pip install "
                            "'ablate[cluster]') brings psycopg2: write the URI as postgresql+psycopg2://...") from None
    except sqlalchemy.exc.ArgumentError as err:
        raise TrackingError(f"{shown} is not a database URI ({err})") from None
    except sqlalchemy.exc.OperationalError as err:
        reason = " ".join(line.strip() for line in str(err.orig or err).splitlines() if line.strip())
        if "password" in reason or "authentication" in reason:
            raise TrackingError(f"the database of tracking URI {shown} refuses the password ({reason}); fix "
                                "the user or password in the URI") from None
        raise TrackingError(f"the database of tracking URI {shown} is not reachable ({reason}); is it running "
                            "and reachable from here?") from None


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
    """The trial's params: every TrialConfig field, NOT_READ for the fields its method ignores (their value
    is a default that changes nothing, and would match filters and compare views as if it did)."""
    ignored = ignored_fields(cfg.method)
    return {k: NOT_READ if k in ignored else "" if v is None else str(v)
            for k, v in cfg.model_dump(mode="json").items()}


def trial_key(parent_run_id: str, trial_id: str) -> str:
    """A Ray trial keeps its id across retries and `Tuner.restore`, so this finds its run again."""
    return hashlib.sha256(f"{parent_run_id}/{trial_id}".encode()).hexdigest()[:24]


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def source_tags(spec_path: Path) -> dict[str, str]:
    """MLflow's user / source / version tags (its fluent API sets them; the client API does not): the
    source is the spec, the commit that of ablate's own code, else of the folder holding the spec."""
    tags = {"mlflow.user": getpass.getuser(), "mlflow.source.name": str(spec_path), "mlflow.source.type": "LOCAL"}
    commit = git_commit(Path(__file__).parent) or git_commit(spec_path.parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def parent_run_name(sweep_name: str) -> str:
    """Unique per launch: two sweeps of one spec differ by their start time."""
    return f"{sweep_name} · {time.strftime('%Y-%m-%d %H:%M:%S')}"


def start_parent_run(client: MlflowClient, experiment_id: str, sweep_name: str, spec_path: Path,
                     spec_text: str, description: str = "") -> str:
    tags = {ROLE_TAG: "sweep", SWEEP_TAG: sweep_name, "ablate.spec_sha256":
            hashlib.sha256(spec_text.encode()).hexdigest(), "ablate.spec_path": str(spec_path),
            **source_tags(spec_path)}
    run = _retry(client.create_run, experiment_id, tags=tags, run_name=parent_run_name(sweep_name))
    _retry(client.log_text, run.info.run_id, spec_text, "spec.yaml")
    set_sweep_note(client, experiment_id, run.info.run_id, sweep_note(description, RUNNING_NOTE))
    return run.info.run_id


RUNNING_NOTE = "**Running.** The trials' table follows when the sweep ends."


def note_sweep_stopped(client: MlflowClient, experiment_id: str, parent_run_id: str, command: str) -> None:
    """An interrupted sweep's description stops saying it runs and says how to continue it."""
    note = _retry(client.get_run, parent_run_id).data.tags.get(NOTE_TAG, "")
    description = note.split(RUNNING_NOTE)[0]
    set_sweep_note(client, experiment_id, parent_run_id,
                   sweep_note(description, f"**Stopped** before every trial finished. Resume with: `{command}`"))


def sweep_note(description: str, *sections: str) -> str:
    """The markdown the UI shows as the sweep's (and its experiment's) description."""
    return "\n\n".join(part for part in (description.strip(), *sections) if part)


def set_sweep_note(client: MlflowClient, experiment_id: str, parent_run_id: str, text: str) -> None:
    """The description of the parent run and of the experiment (which shows its newest sweep's)."""
    _retry(client.set_tag, parent_run_id, NOTE_TAG, text)
    _retry(client.set_experiment_tag, experiment_id, NOTE_TAG, text)


def ui_address(tracking_uri: str, experiment_id: str, parent_run_id: str) -> str:
    """The MLflow UI page of a sweep's trial runs in the training view (the UI opens on its GenAI view),
    flat and best test mAP first (MLflow nests, and so folds, child runs only when sorted by start time).
    A server URI is the UI's own address; for a store file, `mlflow ui` serves it at the default port."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else UI_DEFAULT
    query = urllib.parse.urlencode({"workflowType": "machine_learning",
                                    "searchFilter": f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                    "orderByKey": "metrics.`test_map`", "orderByAsc": "false"},
                                   quote_via=urllib.parse.quote)
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def ui_hint(tracking_uri: str, experiment_id: str, parent_run_id: str) -> str:
    """What `ablate sweep` and `ablate report` print: the address, and for a store file how to serve it."""
    line = f"MLflow UI: {ui_address(tracking_uri, experiment_id, parent_run_id)}"
    if tracking_uri.startswith(("http://", "https://")):
        return line
    return f"{line}\n  (serve it first: mlflow ui --backend-store-uri {tracking_uri})"


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


def server_unavailable(err: BaseException) -> bool:
    """A tracking server that did not answer, or answered with a transient 5xx (MLflow's client gave up
    its own retries): the server is restarting or overloaded, not refusing the request."""
    from requests import exceptions

    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, exceptions.ConnectionError | exceptions.Timeout):
            return True
        cause = cause.__cause__ or cause.__context__
    text = str(err)
    return "Max retries exceeded" in text or bool(re.search(r"error code 5\d\d|too many 5\d\d error", text))


def _retry(fn, *args, **kwargs):
    """Wait out what passes instead of failing the trial or the sweep: a sqlite store locked by another
    writer (up to LOCK_PATIENCE_S) and a tracking server that is down or answers 5xx (up to
    SERVER_PATIENCE_S; past it a TrackingError says for how long). A logged batch carries its own
    timestamps, so one sent again after a lost answer is recognised by the store, never stored twice."""
    started = time.monotonic()
    for attempt in itertools.count():
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            kind = "lock" if is_locked(err) else "server" if server_unavailable(err) else None
            if kind is None:
                raise
            patience = LOCK_PATIENCE_S if kind == "lock" else SERVER_PATIENCE_S
            pause = min(0.2 * 2**attempt, 4.0 if kind == "lock" else 10.0)
            if time.monotonic() + pause - started > patience:
                if kind == "lock":
                    raise
                raise TrackingError(f"the MLflow tracking server did not answer for {patience:.0f} s "
                                    f"({type(err).__name__}: {str(err)[:300]}); the trial fails and Ray Tune "
                                    "retries it from its last checkpoint") from err
            retries_done[kind] += 1
            time.sleep(pause)


def is_duplicate(err: BaseException) -> bool:
    """Another writer inserted the same row between the store's look-up and its insert (sqlite's and
    PostgreSQL's wording, directly or relayed by a tracking server)."""
    text = str(err)
    return "UNIQUE constraint failed" in text or "duplicate key value violates unique constraint" in text


def _retry_duplicate(fn, *args, attempts: int = 5, **kwargs):
    """MLflow stores a dataset once per experiment by looking it up, then inserting it: trials that log the
    same split at once race, and the loser's insert fails. Asked again, the store finds the winner's row."""
    for attempt in range(attempts):
        try:
            return _retry(fn, *args, **kwargs)
        except Exception as err:
            if not is_duplicate(err) or attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


def axis_label(field: str, value: object) -> str:
    """One axis of a run name: short and labelled where a bare value would be ambiguous."""
    if field in ("method", "dataset", "backbone", "pretrained"):
        return str(value)
    if field == "label_ratio":
        return f"{float(str(value)) * 100:g}%"
    if field == "n_ctx":
        return f"ctx{value}"
    if field == "seed":
        return f"s{value}"
    if field == "csc":
        return "csc" if value in (True, "True", "true") else "shared-ctx"
    return f"{field}={value:.3g}" if isinstance(value, float) else f"{field}={value}"


def run_name(axes: dict) -> str:
    """`dualcoop · coco2014 · 50% · ctx16 · s0`: the given axes labelled, in NAME_ORDER, then any others in
    their given order, the seed last."""
    def rank(field: str) -> int:
        return NAME_ORDER.index(field) if field in NAME_ORDER else len(NAME_ORDER) + (field == "seed")

    return " · ".join(axis_label(k, axes[k]) for k in sorted(axes, key=rank))


class TrialRun:
    """The child run of one trial: found by its key, or created once."""

    def __init__(self, client: MlflowClient, run_id: str, resumed: bool, logged_epochs: int = 0) -> None:
        self.client, self.run_id, self.resumed = client, run_id, resumed
        self.logged_epochs = logged_epochs  # epochs already in the run: a resumed trial never logs them twice
        self.logged_steps = 0  # the same for the per-step training loss

    @classmethod
    def find(cls, ctx: TrackingContext, trial_id: str) -> TrialRun | None:
        client = open_client(ctx.uri)
        key = trial_key(ctx.parent_run_id, trial_id)
        found = _retry(client.search_runs, [ctx.experiment_id],
                       filter_string=f"tags.`{TRIAL_KEY}` = '{key}'", max_results=1)
        return cls(client, found[0].info.run_id, True) if found else None

    @classmethod
    def attach(cls, ctx: TrackingContext, cfg: TrialConfig, trial_id: str, arm: dict,
               name: str | None = None) -> TrialRun:
        """Re-attach to this trial's run (retry, resume) or create it, named `name` (default: every arm
        value, labelled), with params, arm tags and the sweep's source tags."""
        run = cls.find(ctx, trial_id)
        if run is not None:
            run.reopen()
            return run
        client = open_client(ctx.uri)
        parent_tags = _retry(client.get_run, ctx.parent_run_id).data.tags
        tags = {"mlflow.parentRunId": ctx.parent_run_id, TRIAL_KEY: trial_key(ctx.parent_run_id, trial_id),
                ROLE_TAG: "trial", "ablate.trial_id": trial_id, "ablate.arm": json.dumps(arm, sort_keys=True),
                "ablate.selected_on": cfg.select_on,
                **{f"ablate.{k}": str(getattr(cfg, k)) for k in ARM_FIELDS},
                **{k: parent_tags[k] for k in SOURCE_TAGS if k in parent_tags}}
        run_id = _retry(client.create_run, ctx.experiment_id, tags=tags,
                        run_name=name or run_name(arm) or cfg.method).info.run_id
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
        self.logged_epochs = self.last_step(EPOCH_METRICS["loss"])
        self.logged_steps = self.last_step(STEP_LOSS)

    def last_step(self, key: str) -> int:
        history = _retry(self.client.get_metric_history, self.run_id, key)
        return max((m.step for m in history), default=0)

    def log_epoch(self, row: dict, step_losses: Sequence[float] = ()) -> None:
        """One epoch's row at step `epoch` and its per-step training losses (STEP_LOSS at the global
        step), in as few log_batch calls as MLflow's 1000-metric limit allows, the row last: an epoch
        whose row is in the run is complete. Skipped when the run has it already (the trial was killed
        after logging it but before Tune kept that epoch's checkpoint, and ran it again)."""
        epoch = row["epoch"]
        if epoch <= self.logged_epochs:
            return
        now = int(time.time() * 1000)
        first = (epoch - 1) * len(step_losses)  # global step before this epoch's first step
        metrics = [Metric(STEP_LOSS, float(v), now, first + i + 1) for i, v in enumerate(step_losses)
                   if first + i + 1 > self.logged_steps]
        metrics += [Metric(EPOCH_METRICS.get(k, k), float(v), now, epoch) for k, v in row.items()
                    if k != "epoch" and v is not None]
        for i in range(0, len(metrics), BATCH_LIMIT):
            _retry(self.client.log_batch, self.run_id, metrics=metrics[i : i + BATCH_LIMIT])
        self.logged_epochs, self.logged_steps = epoch, first + len(step_losses)

    def count_node_loss(self) -> None:
        """The trial lost its node and continues elsewhere: how often is a tag on its run."""
        tags = _retry(self.client.get_run, self.run_id).data.tags
        self.set_tag(NODE_LOSSES_TAG, str(int(tags.get(NODE_LOSSES_TAG, 0)) + 1))

    def log_metrics(self, values: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if v is not None]
        _retry(self.client.log_batch, self.run_id, metrics=metrics)

    def log_result(self, result: TrialResult, final: dict[str, float]) -> None:
        """The end of a trial: `final` metrics at FINAL_STEP, the splits it read as dataset inputs, per-class
        AP and the whole result (without per-class AP) as artifacts."""
        self.log_metrics(final, step=FINAL_STEP)
        self.log_splits(result)
        self.log_dict(result.per_class_ap, "per_class_ap.json")
        self.log_dict({k: v for k, v in result.to_dict().items() if k != "per_class_ap"}, "metrics.json")

    def log_splits(self, result: TrialResult) -> None:
        """Each split the trial read as an MLflow dataset input (the UI's Dataset column and filter): the
        data set's name, the split's digest (images, partial labels, classes), its size; context = split.
        MLflow keeps one record per (name, digest) for every run that reads it, so the source names only the
        split: the ratio and seed that made its labels are the run's own params."""
        inputs = [DatasetInput(Dataset(name=result.dataset, digest=digest, source_type="ablate",
                                       source=json.dumps({"dataset": result.dataset, "split": split}),
                                       profile=json.dumps({"num_rows": result.split_sizes.get(split, 0)})),
                                [InputTag("mlflow.data.context", split)])
                  for split, digest in result.split_digests.items()]
        if inputs:
            _retry_duplicate(self.client.log_inputs, self.run_id, inputs)

    @contextlib.contextmanager
    def system_metrics(self, interval_s: float = SYSTEM_METRICS_INTERVAL_S) -> Iterator[None]:
        """MLflow's own monitor (system/cpu_utilization_percentage, system/gpu_*, memory, disk, network)
        samples this process's machine into the run while the block runs; a resumed run continues its steps."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError:  # psutil (the sweep extra brings it) is missing: train without the monitor
            yield
            return
        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s, resume_logging=self.resumed,
                                       tracking_uri=self.client.tracking_uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

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
                     "trainable_params": m.get("trainable_params"), "train_time_s": m.get("train_time_s"),
                     "device_hours": m.get("device_hours"), "run_name": run.info.run_name})
    return sorted(rows, key=lambda r: tuple(str(r[k]) for k in ("dataset", "method", "label_ratio", "seed")))


def trials_markdown(rows: list[dict]) -> str:
    """trial_table's rows as the markdown table of a sweep's description, best test mAP first."""
    def fmt(value: float | None, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    lines = ["| run | status | test mAP | trainable params | train s | device-h |", "|---|---|--:|--:|--:|--:|"]
    for r in sorted(rows, key=lambda r: -(r["test_map"] if r["test_map"] is not None else -1.0)):
        lines.append(f"| {r['run_name']} | {r['status']} | {fmt(r['test_map'], '.2f')} | "
                     f"{fmt(r['trainable_params'], ',.0f')} | {fmt(r['train_time_s'], '.1f')} | "
                     f"{fmt(r['device_hours'], '.4f')} |")
    return "\n".join(lines)


def report_link(experiment_id: str, parent_run_id: str) -> str:
    """The report's page in the MLflow UI, relative to the UI (works on any host serving it)."""
    return f"#/experiments/{experiment_id}/runs/{parent_run_id}/artifacts/report/report.html"
