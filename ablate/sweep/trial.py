"""The trial as Ray runs it: one grid arm (or Optuna sample), reported every epoch, logged to its own
MLflow child run; `run_trial` is the same function `ablate train` uses."""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from ..pareto import SAMPLE_TAG
from ..spec import TrialConfig, import_plugins
from ..tracking import FINAL_STEP, TrackingContext, TrialRun, run_name

SAMPLE_KEY = "sample"  # config key: an Optuna trial's sample (the seeds of one configuration share it; .search)
WORK_DIR = ".work"  # beside the Tune results: the trials' scratch folders, removed whenever no trial runs
TRIAL_DIR_PREFIX = "ablate-trial-"


def _peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def ray_trial(config: dict, *, arms: list[dict], labels: list[dict], names: list[str], tracking: TrackingContext,
              gpus: float, cpus: float, workroot: str, probes: Sequence[str] = (), probe_limit: int | None = None,
              plugins: Sequence[str] = ()) -> None:
    """Ray Tune function trainable: one trial, reported every epoch, logged to its MLflow run (with MLflow's
    system metrics while it runs).

    `config` holds the grid arm's index ("arm") and any Optuna-sampled fields.
    """
    started = time.monotonic()
    import torch
    from ray import tune

    from ..trainer import STEP_LOSSES, TRAINED, run_trial

    torch.set_num_threads(max(1, int(cpus)))
    import_plugins(list(plugins))  # the names the spec's plugins register exist in this process too
    index = config.get("arm", 0)
    sampled = {k: v for k, v in config.items() if k not in ("arm", SAMPLE_KEY)}
    cfg = TrialConfig.model_validate({**arms[index], **sampled})
    trial_id = tune.get_context().get_trial_id()
    run = TrialRun.attach(tracking, cfg, trial_id, {**labels[index], **sampled},
                          trial_run_name(names[index], sampled, trial_id))
    if SAMPLE_KEY in config:  # the seeds of one sampled configuration share it
        run.set_tag(SAMPLE_TAG, str(config[SAMPLE_KEY]))
    workdir = trial_workdir(Path(workroot), trial_id)
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as src:
            shutil.copytree(src, workdir, dirs_exist_ok=True)

    def report(row: dict, ckpt_dir: Path | None) -> None:
        run.log_epoch(row, row.pop(STEP_LOSSES, ()))
        checkpoint = tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
        tune.report(row, checkpoint=checkpoint)

    trained = workdir / "trained" / TRAINED
    try:
        with run.system_metrics():
            result = run_trial(cfg, checkpoint_dir=workdir, report=report, progress=False, trained_path=trained)
            run.log_artifact(trained)  # the selected parameters, for `ablate analyze`
            if probes:
                run_trial_probes(run, cfg, probes, trained, workdir / "probes", probe_limit)
    except Exception as err:
        run.fail(f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=5)}")
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    final = {**result.final_metrics(gpus), "peak_memory_mb": _peak_memory_mb(result.device),
             **device_time(time.monotonic() - started, gpus, cpus)}
    run.log_result(result, final)
    run.finish()
    # the selection metrics again, so Optuna and ASHA read the trial's final standing
    selection = {"val_map": result.best_val_map} if result.best_val_map is not None else {}
    tune.report({**final, **selection, "loss": result.last_loss, "epoch": result.epochs, "done": True})


def device_time(wall_s: float, gpus: float, cpus: float) -> dict[str, float]:
    """The trial's whole time in its worker (data, training, evaluation, probes) and what it held for it:
    device-hours count the GPUs it held, else its CPUs, so CPU sweeps have a cost figure too."""
    return {"wall_time_s": wall_s, "device_hours": wall_s * (gpus if gpus > 0 else cpus) / 3600}


def trial_run_name(arm_name: str, sampled: dict, trial_id: str) -> str:
    """The arm's name, plus (Optuna) the sampled values and the trial's number within its arm's Tuner."""
    if not sampled:
        return arm_name
    number = trial_id.rsplit("_", 1)[-1]
    return " · ".join([arm_name, run_name(sampled), f"#{int(number) if number.isdigit() else trial_id}"])


def run_trial_probes(run: TrialRun, cfg: TrialConfig, probes: Sequence[str], trained: Path, out: Path,
                     limit: int | None) -> None:
    """Diagnostics next to the trial's metrics (final figures, at FINAL_STEP); a failing probe is recorded,
    the trial still counts."""
    from ..probes import run_probes_for_trial

    try:
        run.log_metrics(run_probes_for_trial(cfg, probes, trained, out, limit=limit), step=FINAL_STEP)
        run.log_artifacts(out, "probes")
    except Exception as err:  # diagnostics must not fail a finished trial
        run.set_tag("ablate.probe_error", f"{type(err).__name__}: {err}")


def trial_workdir(workroot: Path, trial_id: str) -> Path:
    """The trial's scratch folder, named by its id: what a killed attempt left there is dropped."""
    workdir = workroot / f"{TRIAL_DIR_PREFIX}{trial_id}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    return workdir


def work_root(storage: str, name: str, parent_run_id: str) -> Path:
    """One folder per sweep for the trials' scratch: beside the Tune results, or (bucket storage) in the
    temporary directory, named by the sweep's run."""
    if "://" not in storage:
        return Path(storage) / name / WORK_DIR
    return Path(tempfile.gettempdir()) / "ablate-sweeps" / f"{name}-{parent_run_id}"
