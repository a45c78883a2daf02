"""The names a trial is recorded under: tags, run names, flattened params."""

from __future__ import annotations

import hashlib
import time

from ..spec import TrialConfig, ignored_fields

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


def flatten_config(cfg: TrialConfig) -> dict[str, str]:
    """The trial's params: every TrialConfig field, NOT_READ for the fields its method ignores (their value
    is a default that changes nothing, and would match filters and compare views as if it did)."""
    ignored = ignored_fields(cfg.method)
    dumped = cfg.model_dump(mode="json")
    options = dumped.pop("options")  # the method's own settings, one param each: options.<name>
    return {**{k: NOT_READ if k in ignored else "" if v is None else str(v) for k, v in dumped.items()},
            **{f"options.{k}": "" if v is None else str(v) for k, v in options.items()}}


def trial_key(parent_run_id: str, trial_id: str) -> str:
    """A Ray trial keeps its id across retries and `Tuner.restore`, so this finds its run again."""
    return hashlib.sha256(f"{parent_run_id}/{trial_id}".encode()).hexdigest()[:24]


def parent_run_name(sweep_name: str) -> str:
    """Unique per launch: two sweeps of one spec differ by their start time."""
    return f"{sweep_name} · {time.strftime('%Y-%m-%d %H:%M:%S')}"


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
