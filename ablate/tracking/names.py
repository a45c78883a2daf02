"""The names a trial is recorded under: tags, run names, flattened params."""

from __future__ import annotations

import hashlib
import time

from ..catalogue import epoch_names
from ..spec import FIELD_ROLES, METHODS, TrialConfig, fields_where, ignored_fields

TRIAL_KEY = "ablate.trial_key"
SWEEP_TAG = "ablate.sweep"
ROLE_TAG = "ablate.role"
ERROR_TAG = "ablate.error"
STOPPED_TAG = "ablate.stopped"
# the fields whose Role says `tag`: each also an `ablate.<field>` tag on a trial's run (the UI's filters)
ARM_FIELDS = fields_where(tag=True)
# the prepared UI view's columns and parallel axes: the tags but the data set and weights (they split sweeps)
# and yes/no settings (csc: a filter, not an axis)
SWEPT_AXES = tuple(f for f in ARM_FIELDS if not FIELD_ROLES[f].weights and f != "dataset"
                   and TrialConfig.model_fields[f].annotation is not bool)
DEFAULT_DB = "mlflow.db"
RESUME_TAG = "ablate.resume"
NODE_LOSSES_TAG = "ablate.node_losses"
STEP_LOSS = "train_step_loss"  # per-step training loss, at the global step
BATCH_LIMIT = 1000  # metrics per log_batch call (MLflow's limit)
NOTE_TAG = "mlflow.note.content"  # the description the MLflow UI shows (and edits) on runs and experiments
# MLflow's own tags behind the UI's User / Source / Version columns; the parent sets them, trials copy them
REPO_URL_TAG = "mlflow.source.git.repoURL"
GIT_DIRTY_TAG = "ablate.git_dirty"  # "true" when the checkout had uncommitted changes: the commit is not the code
SOURCE_TAGS = ("mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit", REPO_URL_TAG,
               GIT_DIRTY_TAG)
SPEC_TAGS = ("ablate.spec_sha256", "ablate.spec_path")  # the spec that made the sweep, on every run of it
CONFIG_ARTIFACT = "config.yaml"  # a trial run's resolved TrialConfig: `ablate train --config` retrains it
# the value of a param whose field the trial's method does not read: filters on it match no run of that method
NOT_READ = "n/a"
UNSET = "none"  # the value of a param whose field the method reads but that is not set (e.g. ctx_init: random)
NAME_ORDER = tuple(f for f in fields_where(identity=True) if f != "seed")  # axes in run names; the seed last
# per-epoch metric names in MLflow (the catalogue's): `lr` and `loss` are also params (the TrialConfig
# fields), and `time_s` is the cumulative training time so far, not an epoch's
EPOCH_METRICS = epoch_names()
UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` serves a store file
FINAL_STEP = 0  # end-of-trial figures: one value at step 0, which MLflow's chart view draws as per-run bars
SYSTEM_METRICS_INTERVAL_S = 5.0  # MLflow's system metrics monitor: one sample (system/...) this often


def flatten_config(cfg: TrialConfig) -> dict[str, str]:
    """The trial's params: every TrialConfig field, NOT_READ for the fields its method ignores (their value
    is a default that changes nothing, and would match filters and compare views as if it did); an unset
    field the method reads is UNSET, never an empty string. The method's and the dataset's own settings
    are one param each: options.<name> and dataset_options.<name>."""
    ignored = ignored_fields(cfg.method)
    dumped = cfg.model_dump(mode="json")
    own = {f"{group}.{k}": v for group in ("options", "dataset_options") for k, v in dumped.pop(group).items()}
    return {**{k: NOT_READ if k in ignored else UNSET if v is None else str(v) for k, v in dumped.items()},
            **{k: UNSET if v is None else str(v) for k, v in own.items()}}


def arm_tags(cfg: TrialConfig) -> dict[str, str]:
    """The `ablate.<axis>` tags naming a trial's arm: the same values as its params (NOT_READ where the
    method ignores the axis), so a tag never states a value the params deny."""
    params = flatten_config(cfg)
    return {f"ablate.{k}": params[k] for k in ARM_FIELDS}


RUN_COLOR_TAG = "mlflow.runColor"  # the UI draws a run (table dot, chart points and lines) in this colour
# one colour per method (matplotlib's tab10), so the UI's charts read by method, not by run
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def method_colour(method: str) -> str:
    names = sorted(METHODS)
    return COLOURS[names.index(method) % len(COLOURS)] if method in names else COLOURS[-1]


def children_filter(parent_run_id: str) -> str:
    """The MLflow search filter for a sweep's trial runs (and the prepared view's search)."""
    return f"tags.mlflow.parentRunId = '{parent_run_id}'"


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
