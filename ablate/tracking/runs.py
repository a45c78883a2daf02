"""Run lifecycle: the sweep's parent run and each trial's child run (re-attached, never duplicated)."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import math
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from ..errors import TrackingError
from ..result import TrialResult
from ..secret_uri import mask
from ..spec import METHODS, TrialConfig, method_info
from .names import (
    BATCH_LIMIT,
    CONFIG_ARTIFACT,
    EPOCH_METRICS,
    ERROR_TAG,
    FINAL_STEP,
    GIT_DIRTY_TAG,
    NODE_LOSSES_TAG,
    NOTE_TAG,
    REPO_URL_TAG,
    RESUME_TAG,
    ROLE_TAG,
    RUN_COLOR_TAG,
    SOURCE_TAGS,
    SPEC_TAGS,
    STEP_LOSS,
    STOPPED_TAG,
    SWEEP_TAG,
    SYSTEM_METRICS_INTERVAL_S,
    TRIAL_KEY,
    arm_tags,
    children_filter,
    flatten_config,
    method_colour,
    parent_run_name,
    run_name,
    trial_key,
)
from .notes import RERUN_HEADING, RUNNING_NOTE, rerun_note, set_sweep_note, split_input, sweep_note, trial_note
from .store import TrackingContext, _retry_duplicate, open_client, retried
from .view import save_view


def _git(cwd: Path | None, *args: str) -> str | None:
    """A git command's output in `cwd` (None outside a checkout or without git)."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(cwd: Path | None = None) -> str | None:
    return _git(cwd, "rev-parse", "HEAD") or None


def git_state(cwd: Path | None = None) -> dict[str, str]:
    """The checkout's remote URL (MLflow's `mlflow.source.git.repoURL`) and whether it has uncommitted
    changes (`ablate.git_dirty`): a commit alone does not say what code ran."""
    tags = {}
    url = _git(cwd, "remote", "get-url", "origin")
    if url:
        tags[REPO_URL_TAG] = url
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    if status is not None:
        tags[GIT_DIRTY_TAG] = "true" if status else "false"
    return tags


def repo_relative(path: Path) -> str:
    """`path` relative to the git checkout holding it (what a reader with another clone can open), else as
    given."""
    top = _git(Path(path).parent, "rev-parse", "--show-toplevel")
    try:
        return Path(path).resolve().relative_to(Path(top).resolve()).as_posix() if top else str(path)
    except ValueError:  # a symlink out of the checkout
        return str(path)


def source_tags(spec_path: Path) -> dict[str, str]:
    """MLflow's user / source / version tags (its fluent API sets them; the client API does not): the
    source is the spec (relative to its repository), the commit that of ablate's own code, else of the folder
    holding the spec."""
    tags = {"mlflow.user": getpass.getuser(), "mlflow.source.name": repo_relative(spec_path),
            "mlflow.source.type": "LOCAL"}
    where = Path(__file__).parent if git_commit(Path(__file__).parent) else spec_path.parent
    commit = git_commit(where)
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags.update(git_state(where))
    return tags


def start_parent_run(client: MlflowClient, experiment_id: str, sweep_name: str, spec_path: Path,
                     spec_text: str, description: str = "") -> str:
    tags = {ROLE_TAG: "sweep", SWEEP_TAG: sweep_name, SPEC_TAGS[0]: hashlib.sha256(spec_text.encode()).hexdigest(),
            SPEC_TAGS[1]: repo_relative(spec_path), **source_tags(spec_path)}
    run = retried(client.create_run, experiment_id, tags=tags, run_name=parent_run_name(sweep_name))
    # the MLflow UI serves artifacts to whoever reaches it: the spec's URIs without their passwords
    retried(client.log_text, run.info.run_id, mask(spec_text), "spec.yaml")
    set_sweep_note(client, experiment_id, run.info.run_id, sweep_note(description, RUNNING_NOTE))
    save_view(client, experiment_id, run.info.run_id)
    return run.info.run_id


def end_parent_run(client: MlflowClient, parent_run_id: str, status: str, metrics: dict[str, float],
                   resume_command: str | None = None, reason: str | None = None) -> None:
    """Counts and final status of a sweep; an interrupted one says how to continue it, a failed or stopped
    one why (ERROR_TAG / STOPPED_TAG)."""
    try:
        for key, value in metrics.items():
            retried(client.log_metric, parent_run_id, key, value)
        if resume_command:
            retried(client.set_tag, parent_run_id, RESUME_TAG, resume_command)
        if reason:
            retried(client.set_tag, parent_run_id, ERROR_TAG if status == "FAILED" else STOPPED_TAG, reason[:5000])
        retried(client.set_terminated, parent_run_id, status)
    except MlflowException:
        check_not_deleted(client, parent_run_id)
        raise


def check_not_deleted(client: MlflowClient, parent_run_id: str) -> None:
    """TrackingError saying what happened and what is kept when the sweep's parent run or its experiment
    was deleted in MLflow while the sweep ran (MLflow refuses to log to it)."""
    run = retried(client.get_run, parent_run_id)
    experiment = retried(client.get_experiment, run.info.experiment_id)
    deleted = [what for what, stage in ((f"experiment '{experiment.name}'", experiment.lifecycle_stage),
                                        (f"sweep run {parent_run_id}", run.info.lifecycle_stage)) if stage == "deleted"]
    if deleted:
        raise TrackingError(
            f"the {' and the '.join(deleted)} were deleted in MLflow while the sweep ran, so its end could not be "
            "recorded; kept: every trial run (deleted runs stay in the store until `mlflow gc`) and Ray Tune's "
            f"results; restore with `mlflow experiments restore --experiment-id {experiment.experiment_id}` / "
            f"`mlflow runs restore --run-id {parent_run_id}`, then `ablate report` reads them")


def reopen_parent_run(client: MlflowClient, parent_run_id: str) -> None:
    """A resumed sweep runs again; the note on how to resume it, and why it ended, go."""
    tags = retried(client.get_run, parent_run_id).data.tags
    for key in (RESUME_TAG, ERROR_TAG, STOPPED_TAG):
        if key in tags:
            retried(client.delete_tag, parent_run_id, key)
    retried(client.update_run, parent_run_id, status="RUNNING")


def close_running_children(client: MlflowClient, experiment_id: str, parent_run_id: str, reason: str) -> int:
    """A killed trial cannot close its own run: the driver marks what is still RUNNING as KILLED."""
    found = retried(client.search_runs, [experiment_id], max_results=10000,
                   filter_string=f"{children_filter(parent_run_id)} and attributes.status = 'RUNNING'")
    for run in found:
        TrialRun(client, run.info.run_id, True).close("KILLED", reason)
    return len(found)


class TrialRun:
    """The child run of one trial: found by its key, or created once."""

    def __init__(self, client: MlflowClient, run_id: str, resumed: bool, logged_epochs: int = 0) -> None:
        self.client, self.run_id, self.resumed = client, run_id, resumed
        self.logged_epochs = logged_epochs  # epochs already in the run: a resumed trial never logs them twice
        self.logged_steps = 0  # the same for the per-step training loss

    @classmethod
    def find(cls, ctx: TrackingContext, trial_id: str, member: str | None = None) -> TrialRun | None:
        """The run of a Ray trial, or of one arm (`member`) of a Ray trial that trains a pack of arms."""
        client = open_client(ctx.uri)
        key = trial_key(ctx.parent_run_id, trial_id if member is None else f"{trial_id}/{member}")
        found = retried(client.search_runs, [ctx.experiment_id],
                       filter_string=f"tags.`{TRIAL_KEY}` = '{key}'", max_results=1)
        return cls(client, found[0].info.run_id, True) if found else None

    @classmethod
    def find_all(cls, ctx: TrackingContext, trial_id: str) -> list[TrialRun]:
        """Every run a Ray trial holds: its own, or each arm's of its pack."""
        client = open_client(ctx.uri)
        found = retried(client.search_runs, [ctx.experiment_id], max_results=10_000,
                       filter_string=f"tags.`ablate.trial_id` = '{trial_id}' and "
                                     f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}'")
        return [cls(client, r.info.run_id, True) for r in found]

    @classmethod
    def attach(cls, ctx: TrackingContext, cfg: TrialConfig, trial_id: str, arm: dict,
               name: str | None = None, member: str | None = None, params: bool = True) -> TrialRun:
        """Re-attach to this trial's run (retry, resume) or create it, named `name` (default: every arm
        value, labelled), with arm tags, the sweep's source tags and (`params`) `cfg` as params; a trainer
        logs them itself once it has resolved them (`log_params`). `member` names the arm within a Ray
        trial that trains a pack."""
        run = cls.find(ctx, trial_id, member)
        if run is not None:
            run.reopen()
            return run
        client = open_client(ctx.uri)
        parent_tags = retried(client.get_run, ctx.parent_run_id).data.tags
        key = trial_key(ctx.parent_run_id, trial_id if member is None else f"{trial_id}/{member}")
        tags = {"mlflow.parentRunId": ctx.parent_run_id, TRIAL_KEY: key,
                ROLE_TAG: "trial", "ablate.trial_id": trial_id, RUN_COLOR_TAG: method_colour(cfg.method),
                "ablate.arm": json.dumps(arm, sort_keys=True),
                "ablate.selected_on": cfg.select_on,
                **arm_tags(cfg), **{k: parent_tags[k] for k in (*SOURCE_TAGS, *SPEC_TAGS) if k in parent_tags}}
        run_id = retried(client.create_run, ctx.experiment_id, tags=tags,
                        run_name=name or run_name(arm) or cfg.method).info.run_id
        run = cls(client, run_id, False)
        if params:
            run.log_params(cfg)
        return run

    def log_config(self, cfg: TrialConfig) -> None:
        """The config as it runs: params (those the run lacks), the artifact CONFIG_ARTIFACT that `ablate train
        --config` retrains, and a description saying how."""
        self.log_params(cfg)
        data = cfg.model_dump(mode="json")
        retried(self.client.log_text, self.run_id, yaml.safe_dump(data, sort_keys=False), CONFIG_ARTIFACT)
        tags = retried(self.client.get_run, self.run_id).data.tags
        if RERUN_HEADING not in tags.get(NOTE_TAG, ""):
            self.set_tag(NOTE_TAG, self.rerun_note(tags))

    def rerun_note(self, tags: dict[str, str] | None = None) -> str:
        if tags is None:
            tags = retried(self.client.get_run, self.run_id).data.tags
        return rerun_note(self.run_id, self.client.tracking_uri, tags)

    def log_params(self, cfg: TrialConfig) -> None:
        """The flattened config as params, those the run lacks: a param keeps its first value (MLflow
        refuses another), so a resumed or failing trial never contradicts what its run says ran."""
        logged = retried(self.client.get_run, self.run_id).data.params
        params = [Param(k, v) for k, v in flatten_config(cfg).items() if k not in logged]
        for i in range(0, len(params), 100):
            retried(self.client.log_batch, self.run_id, params=params[i : i + 100])

    def status(self) -> str:
        return retried(self.client.get_run, self.run_id).info.status

    def reopen(self) -> None:
        """Running again (retry, resume): the old stop reason goes, the epochs it logged stay counted."""
        tags = retried(self.client.get_run, self.run_id).data.tags
        for key in (ERROR_TAG, STOPPED_TAG):
            if key in tags:
                retried(self.client.delete_tag, self.run_id, key)
        retried(self.client.update_run, self.run_id, status="RUNNING")
        self.logged_epochs = self.last_step(EPOCH_METRICS["loss"])
        self.logged_steps = self.last_step(STEP_LOSS)

    def last_step(self, key: str) -> int:
        history = retried(self.client.get_metric_history, self.run_id, key)
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
            retried(self.client.log_batch, self.run_id, metrics=metrics[i : i + BATCH_LIMIT])
        self.logged_epochs, self.logged_steps = epoch, first + len(step_losses)

    def count_node_loss(self) -> None:
        """The trial lost its node and continues elsewhere: how often is a tag on its run."""
        tags = retried(self.client.get_run, self.run_id).data.tags
        self.set_tag(NODE_LOSSES_TAG, str(int(tags.get(NODE_LOSSES_TAG, 0)) + 1))

    def log_metrics(self, values: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if v is not None]
        retried(self.client.log_batch, self.run_id, metrics=metrics)

    def log_result(self, result: TrialResult, final: dict[str, float]) -> None:
        """The end of a trial: `final` metrics at FINAL_STEP, the splits it read as dataset inputs, per-class
        AP and the whole result (without per-class AP) as artifacts."""
        self.log_metrics(final, step=FINAL_STEP)
        self.set_tag(NOTE_TAG, f"{trial_note(result)}\n\n{self.rerun_note()}")
        self.log_splits(result)
        self.log_dict(result.per_class_ap, "per_class_ap.json")
        self.log_dict({k: v for k, v in result.to_dict().items() if k != "per_class_ap"}, "metrics.json")

    def log_splits(self, result: TrialResult) -> None:
        """Each split the trial read as an MLflow dataset input (the UI's Dataset column and filter), named so
        a person tells them apart (`world · train · 10% labels`), with its size and labelled count in the
        profile; context = split. A method that trains nothing has no train input."""
        trains = method_info(result.method).trains if result.method in METHODS else True
        inputs = [split_input(result, split, digest) for split, digest in result.split_digests.items()
                  if split != "train" or trains]
        if inputs:
            _retry_duplicate(self.client.log_inputs, self.run_id, inputs)

    @contextlib.contextmanager
    def system_metrics(self, interval_s: float = SYSTEM_METRICS_INTERVAL_S) -> Iterator[None]:
        """MLflow's own monitor (system/cpu_utilization_percentage, system/gpu_*, memory, disk, network)
        samples this process's machine into the run while the block runs; a resumed run continues its steps.
        A trial shorter than one interval still gets one sample (the UI would show NaN), and a value
        that is not a number is never logged."""
        try:
            monitor = _system_monitor()(self.run_id, sampling_interval=interval_s, resume_logging=self.resumed,
                                        tracking_uri=self.client.tracking_uri)
        except ImportError:  # psutil (the sweep extra brings it) is missing: train without the monitor
            yield
            return
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def log_dict(self, data: dict, name: str) -> None:
        retried(self.client.log_dict, self.run_id, data, name)

    def log_artifact(self, path: Path) -> None:
        retried(self.client.log_artifact, self.run_id, str(path))

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        retried(self.client.log_artifacts, self.run_id, str(folder), artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        retried(self.client.set_tag, self.run_id, key, value[:5000])

    def finish(self) -> None:
        retried(self.client.set_terminated, self.run_id, "FINISHED")

    def close(self, status: str, reason: str) -> None:
        retried(self.client.set_tag, self.run_id, ERROR_TAG if status == "FAILED" else STOPPED_TAG, reason[:5000])
        retried(self.client.set_terminated, self.run_id, status)

    def fail(self, reason: str) -> None:
        self.close("FAILED", reason)


def _system_monitor() -> type:
    """MLflow's system metrics monitor, made to log finite values only and at least one sample."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class Monitor(SystemMetricsMonitor):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.first_step = self._logging_step

        def publish_metrics(self, metrics: dict) -> None:
            super().publish_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})

        def finish(self) -> None:
            super().finish()
            if self._logging_step == self.first_step:  # stopped before its first sample was logged
                self.collect_metrics()
                self.publish_metrics(self.aggregate_metrics())
                self.mlflow_logger.flush()

    return Monitor
