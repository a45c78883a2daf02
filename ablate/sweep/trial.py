"""The trial as Ray runs it: one grid arm (or Optuna sample) or a pack of arms sharing one image stream,
reported every epoch, each arm logged to its own MLflow child run; the trainer is the one `ablate train`
uses."""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from ..pack import pack_id
from ..pareto import SAMPLE_TAG
from ..spec import STORED, TrialConfig
from ..tracking import FINAL_STEP, TrackingContext, TrialRun, run_name
from .spec import import_plugins

SAMPLE_KEY = "sample"  # config key: an Optuna trial's sample (the seeds of one configuration share it; .search)
WORK_DIR = ".work"  # beside the Tune results: the trials' scratch folders, removed whenever no trial runs
TRIAL_DIR_PREFIX = "ablate-trial-"
PACK_TAG = "ablate.pack"  # on each arm's run: the Ray trial (pack) that trained it, and its size


def _peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def ray_trial(config: dict, *, arms: list[dict], labels: list[dict], names: list[str], tracking: TrackingContext,
              gpus: float, cpus: float, workroot: str, packs: Sequence[Sequence[int]] = (), probes: Sequence[str] = (),
              probe_limit: int | None = None, plugins: Sequence[str] = ()) -> None:
    """Ray Tune function trainable: one arm, or a pack of arms sharing one image stream, reported every
    epoch, each arm logged to its own MLflow run (MLflow's system metrics on the first arm's while it runs).

    `config` holds the grid arm's index ("arm") and any Optuna-sampled fields, or a pack's index ("pack")
    into `packs`, the arms of each pack.
    """
    started = time.monotonic()
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(cpus)))
    import_plugins(list(plugins))  # the names the spec's plugins register exist in this process too
    members = list(packs[config["pack"]]) if "pack" in config else [config.get("arm", 0)]
    sampled = {k: v for k, v in config.items() if k not in ("arm", "pack", SAMPLE_KEY)}
    cfgs = [TrialConfig.model_validate({**arms[i], **sampled}, context=STORED) for i in members]
    trial_id = tune.get_context().get_trial_id()
    runs = _attach_runs(tracking, cfgs, members, config, labels, names, sampled, trial_id)
    workdir = trial_workdir(Path(workroot), trial_id)
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as src:
            shutil.copytree(src, workdir, dirs_exist_ok=True)
    pack, results = _train(cfgs, runs, workdir, probes, probe_limit)
    wall = time.monotonic() - started
    finals = _log_finals(runs, pack, results, wall, gpus, cpus)
    if len(members) == 1:  # the selection metrics again, so Optuna and ASHA read the trial's final standing
        result = results[0]
        assert result is not None, "a trial of one arm raises when it fails"
        selection = {"val_map": result.best_val_map} if result.best_val_map is not None else {}
        tune.report({**finals[0], **selection, "loss": result.last_loss, "epoch": result.epochs, "done": True})
    else:
        tune.report({"arms": len(members), "arms_failed": sum(r is None for r in results),
                     **device_time(wall, gpus, cpus), "done": True})


def _attach_runs(tracking: TrackingContext, cfgs: list[TrialConfig], members: list[int], config: dict,
                 labels: list[dict], names: list[str], sampled: dict, trial_id: str) -> list[TrialRun]:
    """Each arm's MLflow run, found again or created; a packed arm's is keyed by its arm and tagged with
    its pack, an Optuna seed run with its sample."""
    packed = len(members) > 1
    runs = [TrialRun.attach(tracking, cfg, trial_id, {**labels[i], **sampled},
                            trial_run_name(names[i], sampled, trial_id), member=str(i) if packed else None,
                            params=False)  # the trainer's resolved config, once it is built (_train)
            for cfg, i in zip(cfgs, members)]
    if packed:
        for run in runs:  # which Ray trial trained this arm, and with how many others
            run.set_tag(PACK_TAG, f"{pack_id(cfgs[0])}-{config['pack']} ({len(members)} arms)")
    if SAMPLE_KEY in config:  # the seeds of one sampled configuration share it
        runs[0].set_tag(SAMPLE_TAG, str(config[SAMPLE_KEY]))
    return runs


def _log_finals(runs: list[TrialRun], pack, results: list, wall: float, gpus: float, cpus: float) -> list[dict]:
    """Each finished arm's end-of-trial metrics and result, its run closed FINISHED. Its cost is what it
    would take alone: the pack's time less the other arms' own compute; a packed arm also gets the
    pack's real figures."""
    own = [arm.own_s for arm in pack.arms]  # each arm's own work in this process, the stream's time aside
    finals: list[dict] = []
    for i, (run, result) in enumerate(zip(runs, results)):
        if result is None:
            continue
        alone = wall - sum(t for j, t in enumerate(own) if j != i)
        final = {**result.final_metrics(), "peak_memory_mb": _peak_memory_mb(result.device),
                 **device_time(alone, gpus, cpus)}
        if len(runs) > 1:
            final |= {f"pack_{k}": v for k, v in device_time(wall, gpus, cpus).items()}
        run.log_result(result, final)
        run.finish()
        finals.append(final)
    return finals

def _train(cfgs: list[TrialConfig], runs: list[TrialRun], workdir: Path, probes: Sequence[str],
           probe_limit: int | None):
    """Train the arms in `workdir`, logging each epoch to each arm's run and reporting it to Tune with the
    pack's checkpoint; an arm that diverged is marked FAILED, the others go on. Any other error fails
    every arm's run and the Ray trial (Tune retries it from its last checkpoint)."""
    from ray import tune

    from ..trainer import STEP_LOSSES, run_pack, trained_path

    def report(rows: list[dict | None], ckpt_dir: Path | None) -> None:
        for run, row in zip(runs, rows):
            if row is not None:
                run.log_epoch(row, row.pop(STEP_LOSSES, ()))
        checkpoint = tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
        if len(rows) == 1 and rows[0] is not None:  # one arm: its row, for Optuna and ASHA
            tune.report(rows[0], checkpoint=checkpoint)
        else:
            tune.report({"epoch": max(r["epoch"] for r in rows if r is not None), "arms": len(rows)},
                        checkpoint=checkpoint)

    def ready(pack) -> None:  # what each arm runs with: defaults, device and weights resolved
        for run, arm in zip(runs, pack.arms):
            run.log_config(arm.resolved)

    try:
        with runs[0].system_metrics():
            pack, results = run_pack(cfgs, workdir, report=report, strict=len(cfgs) == 1, on_ready=ready)
            for i, (run, cfg, result, arm) in enumerate(zip(runs, cfgs, results, pack.arms)):
                if result is None:
                    run.fail(f"{type(arm.error).__name__}: {arm.error}")
                    continue
                start = time.perf_counter()
                trained = trained_path(workdir, i, len(cfgs))
                run.log_artifact(trained)  # the selected parameters, for `ablate analyze`
                if probes:
                    run_trial_probes(run, cfg, probes, trained, trained.parent.parent / "probes", probe_limit)
                arm.own_s += time.perf_counter() - start  # this arm's own work, too
    except Exception as err:
        for run, cfg in zip(runs, cfgs):
            run.log_params(cfg)  # failed before it was built: the config as given (the params it lacks)
            if run.status() == "RUNNING":
                run.fail(f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=5)}")
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return pack, results


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
