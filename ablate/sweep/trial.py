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

from ..errors import TrialDiverged
from ..pack import pack_id
from ..pareto import SAMPLE_TAG
from ..spec import STORED, TrialConfig
from ..tracking import ERROR_TAG, FINAL_STEP, TrackingContext, TrialRun, retried, run_name
from .costs import ARM_SHAPE_TAG, DEVICE_TAG, PACK_TAG, STREAM_SHAPE_TAG, Sizes, arm_shape, batches, stream_shape
from .spec import import_plugins

SAMPLE_KEY = "sample"  # config key: an Optuna trial's sample (the seeds of one configuration share it; .search)
WORK_DIR = ".work"  # beside the Tune results: the trials' scratch folders, removed whenever no trial runs
TRIAL_DIR_PREFIX = "ablate-trial-"


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

    from ..trainer import arm_folder

    torch.set_num_threads(max(1, int(cpus)))
    import_plugins(list(plugins))  # the names the spec's plugins register exist in this process too
    members = list(packs[config["pack"]]) if "pack" in config else [config.get("arm", 0)]
    packed = len(members) > 1
    sampled = {k: v for k, v in config.items() if k not in ("arm", "pack", SAMPLE_KEY)}
    trial_id = tune.get_context().get_trial_id()
    # a retry (or resume) of a pack trains only the arms not settled by an earlier attempt
    slots = [j for j, i in enumerate(members) if not (packed and _settled(tracking, trial_id, str(i)))]
    cfgs = [TrialConfig.model_validate({**arms[members[j]], **sampled}, context=STORED) for j in slots]
    runs = _attach_runs(tracking, cfgs, [members[j] for j in slots], config, labels, names, sampled, trial_id,
                        len(members))
    workdir = trial_workdir(Path(workroot), trial_id)
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as src:
            shutil.copytree(src, workdir, dirs_exist_ok=True)
    folders = [arm_folder(workdir, j, len(members)) for j in slots]
    pack, results = _train(cfgs, runs, workdir, folders, probes, probe_limit, packed) if cfgs else (None, [])
    wall = time.monotonic() - started
    finals = _log_finals(runs, pack, results, wall, gpus, cpus)
    if not packed:  # the selection metrics again, so Optuna and ASHA read the trial's final standing
        result = results[0]
        assert result is not None, "a trial of one arm raises when it fails"
        selection = {"val_map": result.best_val_map} if result.best_val_map is not None else {}
        tune.report({**finals[0], **selection, "loss": result.last_loss, "epoch": result.epochs, "done": True})
        return
    failed = [(members[j], arm.error) for j, arm in zip(slots, pack.arms if pack else []) if arm.error is not None]
    retry = [(i, err) for i, err in failed if not isinstance(err, TrialDiverged)]
    if retry:  # Tune counts the failure, and retries (max_failures) the arms it names
        raise ArmsFailed(f"{len(retry)} of {len(members)} arms of this pack failed (each error is on its own run): "
                         + "; ".join(f"{names[i]}: {type(err).__name__}: {err}" for i, err in retry))
    tune.report({"arms": len(members), "arms_failed": len(failed), **device_time(wall, gpus, cpus), "done": True})


class ArmsFailed(RuntimeError):
    """Arms of a pack failed (not by diverging, which a retry would repeat) while the others finished."""


def _settled(tracking: TrackingContext, trial_id: str, member: str) -> bool:
    """Whether this arm of a pack needs no further training: its run FINISHED, or FAILED by diverging."""
    run = TrialRun.find(tracking, trial_id, member)
    if run is None:
        return False
    found = retried(run.client.get_run, run.run_id)
    return found.info.status == "FINISHED" or (
        found.info.status == "FAILED" and found.data.tags.get(ERROR_TAG, "").startswith(TrialDiverged.__name__))


def _attach_runs(tracking: TrackingContext, cfgs: list[TrialConfig], members: list[int], config: dict,
                 labels: list[dict], names: list[str], sampled: dict, trial_id: str, size: int) -> list[TrialRun]:
    """Each arm's MLflow run, found again or created; a packed arm's (of a pack of `size` arms) is keyed by
    its arm and tagged with its pack, an Optuna seed run with its sample."""
    packed = size > 1
    runs = [TrialRun.attach(tracking, cfg, trial_id, {**labels[i], **sampled},
                            trial_run_name(names[i], sampled, trial_id), member=str(i) if packed else None,
                            params=False)  # the trainer's resolved config, once it is built (_train)
            for cfg, i in zip(cfgs, members)]
    # which Ray trial trained each arm, and with how many others (an arm alone is a pack of one: zero-shot and
    # searched trials carry the tag and the pack figures too, so the bill counts every Ray trial once)
    pack = f"{pack_id(cfgs[0])}-{config['pack']} ({size} arms)" if "pack" in config else \
        f"{pack_id(cfgs[0])}-{trial_id} (1 arm)"
    for run in runs:
        run.set_tag(PACK_TAG, pack)
    if SAMPLE_KEY in config:  # the seeds of one sampled configuration share it
        runs[0].set_tag(SAMPLE_TAG, str(config[SAMPLE_KEY]))
    return runs


def _log_finals(runs: list[TrialRun], pack, results: list, wall: float, gpus: float, cpus: float) -> list[dict]:
    """Each finished arm's end-of-trial metrics and result, its run closed FINISHED (FAILED with its own
    error, the others going on, when that fails in a pack). Its cost is its attributed share, what it would
    take alone: the pack's time less the other arms' own compute; every arm also gets its Ray trial's real
    figures (pack_*), which the sweep's bill counts once per trial."""
    own = [arm.own_s for arm in pack.arms] if pack else []  # each arm's own work, the stream's time aside
    finals: list[dict] = []
    for i, (run, result, arm) in enumerate(zip(runs, results, pack.arms if pack else [])):
        if result is None:
            continue
        alone = wall - sum(t for j, t in enumerate(own) if j != i)
        final = {**result.final_metrics(), "peak_memory_mb": _peak_memory_mb(result.device),
                 **device_time(alone, gpus, cpus)}
        final |= {f"pack_{k}": v for k, v in device_time(wall, gpus, cpus).items()}
        with pack.isolate(arm):
            run.log_result(result, final)
            _log_costs(run, arm, result, wall)
            run.finish()
            finals.append(final)
        if arm.error is not None:
            run.fail(_reason(arm.error))
    return finals


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _log_costs(run: TrialRun, arm, result, wall: float) -> None:
    """What the next plan calibrates from (ablate.sweep.costs): the arm's stream and own seconds, the
    batches and steps they were spent on, its shapes and the device's name."""
    sizes = result.split_sizes
    steps, reads = batches(arm.cfg, Sizes(sizes.get("train", 0), sizes.get("val", 0), sizes.get("test", 0), ""))
    run.log_metrics({"stream_time_s": arm.shared_s, "own_time_s": arm.own_s, "train_steps": steps,
                     "stream_batches": reads, "trial_wall_time_s": wall}, step=FINAL_STEP)
    for key, value in ((DEVICE_TAG, device_name(result.device)), (STREAM_SHAPE_TAG, stream_shape(arm.cfg)),
                       (ARM_SHAPE_TAG, arm_shape(arm.cfg))):
        run.set_tag(key, value)


def device_name(device: str) -> str:
    """A CUDA device's name as torch gives it (`NVIDIA A10G`), else the device type (`cpu`)."""
    import torch

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else device.split(":")[0]


def _train(cfgs: list[TrialConfig], runs: list[TrialRun], workdir: Path, folders: list[Path], probes: Sequence[str],
           probe_limit: int | None, packed: bool):
    """Train the arms in `workdir` (each in its folder), logging each epoch to each arm's run and reporting
    it to Tune with the pack's checkpoint. In a pack, an arm that fails (diverges, or raises in its own
    step, scoring or logging) is marked FAILED with its own error and the others go on; an error outside
    the arms' own work (or the one arm of a plain trial) fails every arm's run and the Ray trial (Tune
    retries it from its last checkpoint)."""
    from ray import tune

    from ..trainer import STEP_LOSSES, TRAINED, run_pack

    def report(rows: list[dict | None], ckpt_dir: Path | None) -> dict[int, Exception]:
        failed: dict[int, Exception] = {}
        for i, (run, row) in enumerate(zip(runs, rows)):
            try:
                if row is not None:
                    run.log_epoch(row, row.pop(STEP_LOSSES, ()))
            except Exception as err:
                if not packed:
                    raise
                failed[i] = err
        checkpoint = tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
        if not packed and rows[0] is not None:  # one arm: its row, for Optuna and ASHA
            tune.report(rows[0], checkpoint=checkpoint)
        else:
            tune.report({"epoch": max((r["epoch"] for r in rows if r is not None), default=0), "arms": len(rows)},
                        checkpoint=checkpoint)
        return failed

    def ready(pack) -> None:  # what each arm runs with: defaults, device and weights resolved
        for run, arm in zip(runs, pack.arms):
            run.log_config(arm.resolved)

    try:
        with runs[0].system_metrics():
            pack, results = run_pack(cfgs, workdir, report=report, strict=not packed, folders=folders,
                                     on_ready=ready)
            for i, (run, cfg, arm, folder) in enumerate(zip(runs, cfgs, pack.arms, folders)):
                start = time.perf_counter()
                if results[i] is not None:
                    with pack.isolate(arm):
                        trained = folder / "trained" / TRAINED
                        run.log_artifact(trained)  # the selected parameters, for `ablate analyze`
                        if probes:
                            run_trial_probes(run, cfg, probes, trained, trained.parent.parent / "probes", probe_limit)
                if arm.error is not None:
                    results[i] = None
                    run.fail(_reason(arm.error))
                arm.own_s += time.perf_counter() - start  # this arm's own work, too
    except Exception as err:
        for run, cfg in zip(runs, cfgs):
            run.log_params(cfg)  # failed before it was built: the config as given (the params it lacks)
            if run.status() == "RUNNING":
                run.fail(f"{_reason(err)}\n{traceback.format_exc(limit=5)}")
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
