"""Ray Tune sweeps from a SweepSpec: grid, Optuna per grid arm, ASHA, resources, resume.

This is the only module that imports Ray. A sweep is a list of arms (grid combinations, with
trials that differ only in fields their method ignores merged); without Optuna one Tuner runs a
grid search over the arms, with Optuna each arm gets its own Tuner and the same number of
samples (OptunaSearch cannot be mixed with `tune.grid_search`). Each trial runs `run_trial`, the
same function `ablate train` uses, and logs to its own MLflow child run.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .data.manifest import DatasetManifest
from .errors import AblateError, DataError
from .spec import (
    ConfigError,
    Resources,
    SweepSpec,
    TrialConfig,
    arm_config,
    canonical,
    ignored_fields,
    import_plugins,
    load_sweep_spec,
)
from .tracking import (
    FINAL_STEP,
    RUNNING_NOTE,
    TrackingContext,
    TrialRun,
    close_running_children,
    connect,
    end_parent_run,
    ensure_experiment,
    note_sweep_stopped,
    probe_store,
    reopen_parent_run,
    resolve_tracking_uri,
    run_name,
    set_sweep_note,
    start_parent_run,
    sweep_note,
    trial_table,
    trials_markdown,
    ui_address,
)

STATE_FILE = "ablate_sweep.json"
WORK_DIR = ".work"  # beside the Tune results: the trials' scratch folders, removed whenever no trial runs
TRIAL_DIR_PREFIX = "ablate-trial-"
# how Ray words an actor that died with its node (ActorDiedError's text)
NODE_DIED = re.compile(r"node (has )?died|node \S+ (is )?dead|NodeDiedError", re.IGNORECASE)
# up to this many listed images per split are each checked before a sweep starts; more: a seeded sample
IMAGE_CHECK_CAP = 20_000
# One checkpoint per epoch is the design; Tune's warning about frequent snapshots is noise here.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


# ---- expansion (no Ray needed: also serves --dry-run) --------------------------------------------

@dataclass
class Arm:
    overrides: dict[str, Any]  # the grid values that matter for this arm's method
    config: TrialConfig  # canonical base + overrides
    search: dict[str, Any] = field(default_factory=dict)  # Optuna fields that this method reads

    @property
    def slug(self) -> str:
        return "-".join(f"{k}={v}" for k, v in self.overrides.items()) or "base"

    def name(self, spec: SweepSpec) -> str:
        """The MLflow run name: the values of the grid axes that vary in the sweep and that this arm's
        method reads, labelled (`dualcoop · 50% · ctx16 · s0`); the method alone when none vary."""
        varying = {k: v for k, v in self.overrides.items() if len(spec.grid.get(k, [])) > 1}
        return run_name(varying) or self.config.method


def expand(spec: SweepSpec) -> list[Arm]:
    keys = list(spec.grid)
    arms: dict[str, Arm] = {}
    searched = spec.optuna or spec.asha
    for values in itertools.product(*(spec.grid[k] for k in keys)) if keys else [()]:
        combo = dict(zip(keys, values))
        cfg = _absolute_paths(canonical(arm_config(spec, combo)))
        if searched and searched.metric == "val_map" and cfg.val_fraction == 0:
            raise ConfigError(f"arm {combo}: {'optuna' if spec.optuna else 'asha'}.metric val_map needs a validation "
                              "split, but val_fraction is 0; hold one out (val_fraction > 0) or drop the search")
        ignored = ignored_fields(cfg.method)
        overrides = {k: v for k, v in combo.items() if k not in ignored}
        search = {k: v for k, v in (spec.optuna.space.items() if spec.optuna else []) if k not in ignored}
        arms.setdefault(json.dumps(cfg.model_dump(mode="json"), sort_keys=True), Arm(overrides, cfg, search))
    return list(arms.values())


def _absolute_paths(cfg: TrialConfig) -> TrialConfig:
    """Trials run in other working directories: pin relative paths to the launching one."""
    root = Path(cfg.data_root).expanduser().absolute() if cfg.data_root else None
    return cfg.model_copy(update={"cache_dir": cfg.resolved_cache_dir().expanduser().absolute(), "data_root": root})


def samples_per_arm(spec: SweepSpec, arm: Arm) -> int:
    return spec.optuna.num_samples if spec.optuna and arm.search else 1


def describe(spec: SweepSpec) -> dict:
    arms = expand(spec)
    rows = [{"arm": a.slug, "trials": samples_per_arm(spec, a), "search": sorted(a.search)} for a in arms]
    return {"name": spec.name, "arms": len(arms), "trials": sum(r["trials"] for r in rows), "arm_list": rows}


def resolve_spec_path(path: str | Path) -> Path:
    """As given (relative to the working directory), else relative to the installed project."""
    candidates = [Path(path).expanduser()]
    if not candidates[0].is_absolute():
        candidates.append(Path(__file__).resolve().parents[1] / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"spec file not found; tried {', '.join(str(c) for c in candidates)}")


# ---- the trial, as Ray runs it ---------------------------------------------------------------------

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

    from .trainer import STEP_LOSSES, TRAINED, run_trial

    torch.set_num_threads(max(1, int(cpus)))
    import_plugins(list(plugins))  # the names the spec's plugins register exist in this process too
    index = config.get("arm", 0)
    sampled = {k: v for k, v in config.items() if k != "arm"}
    cfg = TrialConfig.model_validate({**arms[index], **sampled})
    trial_id = tune.get_context().get_trial_id()
    run = TrialRun.attach(tracking, cfg, trial_id, {**labels[index], **sampled},
                          trial_run_name(names[index], sampled, trial_id))
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
    from .probes import run_probes_for_trial

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


# ---- the driver ----------------------------------------------------------------------------------

def ray_address(flag: str | None = None) -> str:
    """--ray-address, else RAY_ADDRESS, else `local`: a sweep never silently joins another job's cluster."""
    return flag or os.environ.get("RAY_ADDRESS") or "local"


def init_ray(address: str | None = None) -> None:
    """Start a private local Ray (`local`) or join a running cluster (`auto`, `host:port`); one line says which."""
    import ray

    if ray.is_initialized():
        return
    address = ray_address(address)
    if address == "local":
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    else:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, ValueError) as err:  # nothing there / not an address
            raise ConfigError(f"no Ray cluster answers at --ray-address {address} ({err}); start one with "
                              "`ray start --head`, or use --ray-address local for a private one") from None
    print(cluster_line(address), file=sys.stderr)


def _ray_is_up() -> bool:
    import ray

    return ray.is_initialized()


def _shutdown_ray() -> None:
    import ray

    ray.shutdown()


def cluster_line(address: str) -> str:
    import ray

    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    where = "a private local Ray" if address == "local" else f"the Ray cluster at {address}"
    return (f"ray: {where} ({ray.get_runtime_context().gcs_address}): {nodes} node(s), "
            f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")


def reachable_from_workers(uri: str) -> str:
    """On a multi-node cluster, `localhost` in a server URI means the head node: say so explicitly."""
    import ray

    host = urlparse(uri).hostname
    if host not in ("localhost", "127.0.0.1") or len(ray.nodes()) < 2:
        return uri
    return uri.replace(host, ray.util.get_node_ip_address(), 1)


@dataclass
class SweepState:
    """Persisted beside the Tune results so `--resume` re-attaches to the same MLflow parent run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    spec_sha256: str

    @classmethod
    def load(cls, path: Path) -> SweepState:
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.__dict__, indent=2))


def lost_with_its_node(error: BaseException | None) -> bool:
    """The trial's process went with its node (spot preemption, a removed node), not because the trial
    raised or its process died on a live node. Ray says so two ways: the actor is unreachable (its node's
    raylet is gone before the cluster has declared the node dead) or it died with a dead node."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    return isinstance(error, ActorUnavailableError) or (
        isinstance(error, RayActorError) and bool(NODE_DIED.search(str(error))))


def _tracker_callback(ctx: TrackingContext):
    """Driver-side: close runs whose trial never got to (trials stopped by ASHA, killed workers), and give
    back the retry a lost node took (Ray counts only autoscaler-drained nodes as preemptions)."""
    import cloudpickle
    from ray.tune import Callback

    class CloseRuns(Callback):
        def on_trial_recover(self, iteration, trials, trial, **info) -> None:
            """Tune counted the failure and decided to retry; a node loss is not the trial's failure."""
            try:
                with open(trial.pickled_error_file, "rb") as f:
                    error = cloudpickle.load(f)
            except (OSError, TypeError, EOFError):  # no error file: Tune saw no exception to pickle
                return
            if lost_with_its_node(error) and trial.run_metadata.num_failures > 0:
                trial.run_metadata.num_failures -= 1
                run = TrialRun.find(ctx, trial.trial_id)
                if run is not None:
                    run.count_node_loss()

        def _close(self, trial, status: str, reason: str) -> None:
            run = TrialRun.find(ctx, trial.trial_id)
            if run is not None and run.status() == "RUNNING":
                run.close(status, reason)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._close(trial, "KILLED", "stopped early by the scheduler")

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._close(trial, "FAILED", f"trial errored; see {trial.local_path}")

    return CloseRuns()


def _tuner(spec: SweepSpec, arm: Arm | None, arms: list[Arm], ctx: TrackingContext, storage: str,
           resume: bool, workroot: Path):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    res = spec.resources
    members = arms if arm is None else [arm]
    trainable = tune.with_resources(
        tune.with_parameters(ray_trial, arms=[a.config.model_dump(mode="json") for a in members],
                             labels=[a.overrides for a in members], names=[a.name(spec) for a in members],
                             tracking=ctx, gpus=res.gpu, cpus=res.cpu,
                             workroot=str(workroot), probes=list(spec.probes), probe_limit=spec.probe_limit,
                             plugins=list(spec.plugins)),
        {"cpu": res.cpu, "gpu": res.gpu},
    )
    name = spec.name if arm is None else f"{spec.name}--{arm.slug}"[:200]
    path = os.path.join(storage, name)
    if resume and tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    search = arm.search if arm is not None else {}
    opt = spec.optuna if search else None
    metric: str | None = None  # None: TuneConfig's defaults
    mode: str | None = None
    if opt is not None:
        space = {k: _domain(p) for k, p in search.items()}
        metric, mode = opt.metric, opt.mode
        search_alg, samples = OptunaSearch(seed=opt.seed), opt.num_samples
    else:
        space = {"arm": tune.grid_search(list(range(len(arms))))} if arm is None else {}
        if spec.asha:
            metric, mode = spec.asha.metric, spec.asha.mode
        search_alg, samples = None, 1
    scheduler = None
    if spec.asha:
        scheduler = ASHAScheduler(time_attr="epoch", max_t=max(max(a.config.epochs for a in members), 1),
                                  grace_period=spec.asha.grace_period, reduction_factor=spec.asha.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=search_alg, scheduler=scheduler,
                                    num_samples=samples, max_concurrent_trials=spec.max_concurrent_trials,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=0, callbacks=[_tracker_callback(ctx)],
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def _domain(p):
    from ray import tune

    if p.type == "categorical":
        return tune.choice(p.choices)
    if p.type == "int":
        return (tune.lograndint if p.log else tune.randint)(int(p.low), int(p.high) + 1)
    return (tune.loguniform if p.log else tune.uniform)(p.low, p.high)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_data(arms: list[Arm], resources: Resources | None = None, plugins: Sequence[str] = (),
                 ray_address: str | None = None) -> None:
    """Before any trial: check every data root (generating the synthetic set and world) in the driver,
    pre-train the world CLIPs the arms name, then build the feature caches that `features: cached` arms
    read, so parallel trials only read them.

    With `resources` (a trial's), each cache group is a Ray task on those resources (the GPU workers
    on a cluster), all groups in parallel; without, they are built in this process.
    """
    from .data import check_root
    from .data.check import require_complete
    from .data.features import check_features_mode, feature_group
    from .weights import is_alias, resolve_pretrained

    seen = set()
    for arm in arms:
        check_features_mode(arm.config)
        cfg = arm.config
        key = (cfg.dataset, cfg.data_root, cfg.synthetic_images, cfg.cache_dir, cfg.coco_empty_images)
        if key not in seen:
            seen.add(key)
            # a real dataset's root: every problem at once, every listed image looked up; others: sampled
            if not require_complete(cfg.dataset, cfg.data_root):
                check_images(cfg, check_root(cfg))
    # ablate's own world CLIPs are pre-trained here, once, with every core, not in a 1-cpu trial
    worlds = {(a.config.backbone, a.config.pretrained, a.config.resolved_cache_dir()) for a in arms
              if is_alias(a.config.pretrained)}
    for backbone, pretrained, cache_dir in sorted(worlds, key=str):
        resolve_pretrained(backbone, pretrained, cache_dir)
    cached = {feature_group(a.config): a.config for a in arms if a.config.features == "cached"}
    if cached:
        build_feature_caches(list(cached.values()), resources, plugins, ray_address)


def check_images(cfg: TrialConfig, root: Path) -> None:
    """What `ablate train` checks, before a sweep records or starts anything: both splits load and their
    listed images are there (every one up to IMAGE_CHECK_CAP a split, else a seeded sample of that many)."""
    from .data.registry import DATASETS

    dataset = DATASETS.get(cfg.dataset)
    for split in ("train", "test"):
        paths = dataset.load_split(cfg, root, split).paths  # the loaders check what they list, too
        checked = paths if len(paths) <= IMAGE_CHECK_CAP else random.Random(0).sample(paths, IMAGE_CHECK_CAP)
        missing = [p for p in checked if not Path(p).is_file()]
        if missing:
            how = "every listed image" if checked is paths else \
                f"a sample of {IMAGE_CHECK_CAP:,} of its {len(paths):,} listed images"
            raise DataError(f"{cfg.dataset} {split}: {len(missing)} image(s) missing, e.g. {missing[0]} "
                            f"(checked {how} under {root}); restore them or fix the annotations")


def build_feature_caches(configs: list[TrialConfig], resources: Resources | None,
                         plugins: Sequence[str] = (), ray_address: str | None = None) -> None:
    """Make the caches of every config valid (building the missing ones); one progress bar over all images."""
    from tqdm.auto import tqdm

    from .data.features import cached_images, prepare_caches

    with tqdm(total=sum(map(cached_images, configs)), desc="feature caches", unit="img") as bar:
        if resources is None:
            for cfg in configs:
                prepare_caches(cfg, progress=False, on_images=bar.update)
            return
        import ray
        from ray.util.queue import Queue

        init_ray(ray_address)
        done_images = Queue(actor_options={"num_cpus": 0})  # tasks -> driver: images done
        task = ray.remote(num_cpus=resources.cpu, num_gpus=resources.gpu, max_retries=0)(_cache_task)
        pending = [task.remote(cfg.model_dump(mode="json"), done_images, resources.cpu, list(plugins))
                   for cfg in configs]
        try:
            while pending:
                finished, pending = ray.wait(pending, timeout=0.5)
                ray.get(finished)  # a failed build stops the sweep here, before any trial starts
                if done_images.qsize():
                    bar.update(sum(done_images.get_nowait_batch(done_images.qsize())))
        finally:
            done_images.shutdown()


def _cache_task(config: dict, done_images, cpus: float, plugins: list[str]) -> None:
    """Ray task: the caches of one config, on the worker's device (a GPU when the task holds one)."""
    import torch

    from .data.features import prepare_caches

    torch.set_num_threads(max(1, int(cpus)))
    import_plugins(plugins)
    prepare_caches(TrialConfig.model_validate(config), progress=False, on_images=done_images.put)


def check_storage_on_nodes(storage: str, name: str) -> None:
    """Every live Ray node (the driver's too) writes and removes a file in the sweep's results folder:
    a storage path that is not shared storage, or that a node cannot write, fails here, before anything
    is recorded, instead of as failing checkpoints in every trial. Bucket URIs are left to Tune."""
    if "://" in storage:
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = str(Path(storage) / name)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0, max_retries=0)(_write_probe)
    pending = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
               .remote(folder) for n in nodes]
    failed = [(n, err) for n, err in zip(nodes, ray.get(pending, timeout=300)) if err]
    if failed:
        node, err = failed[0]
        raise ConfigError(f"storage path {folder} is not writable on {len(failed)} of {len(nodes)} Ray node(s) "
                          f"(node {node['NodeManagerAddress']}: {err}); storage_path (or --storage-path) must be "
                          "shared storage that every node mounts and can write")


def _write_probe(folder: str) -> str | None:
    """Ray task: None when this node can create `folder` and write a file in it, else why not."""
    probe = Path(folder) / f".ablate-write-probe-{os.getpid()}-{time.monotonic_ns()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    return None


def fetch_data(spec: SweepSpec, arms: list[Arm], ray_address: str | None = None,
               manifests: Mapping[str, DatasetManifest] | None = None) -> None:
    """`data: {<dataset>: {fetch: true}}`: every data_root the dataset's arms use is fetched (or found
    complete) before the pre-flight check, each as one 1-CPU Ray task (on a cluster whose head has no CPUs,
    a worker node: the data lands on shared storage), with its progress bars drawn here."""
    import ray
    from ray.util.queue import Queue

    from .data.manifest import MANIFESTS
    from .data.progress import ProgressBars

    jobs = sorted({(a.config.dataset, a.config.data_root) for a in arms
                   if (d := spec.data.get(a.config.dataset)) is not None and d.fetch}, key=str)
    unset = [dataset for dataset, root in jobs if root is None]
    if unset:
        raise ConfigError(f"data.{unset[0]}.fetch needs a data_root to fetch into: set "
                          f"per_dataset.{unset[0]}.data_root")
    if not jobs:
        return
    init_ray(ray_address)
    events = Queue(actor_options={"num_cpus": 0})  # task -> driver: (label, done, total, unit)
    task = ray.remote(num_cpus=1, max_retries=0)(_fetch_task)
    pending = [task.remote((manifests or MANIFESTS)[dataset], str(root), spec.data[dataset].mirror, events)
               for dataset, root in jobs]
    bars = ProgressBars()
    try:
        while pending:
            finished, pending = ray.wait(pending, timeout=0.5)
            if events.qsize():
                for event in events.get_nowait_batch(events.qsize()):
                    bars(*event)
            for line in _task_results(finished):
                print(line, file=sys.stderr)
    finally:
        bars.close()
        events.shutdown()


def _task_results(refs: list) -> list:
    """ray.get, with an AblateError raised in the task re-raised as itself (one line, not Ray's traceback)."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, AblateError):
            raise err.cause from None
        raise


def _fetch_task(manifest: DatasetManifest, root: str, mirror: str | None, events) -> str:
    """Ray task: one dataset fetched into `root`; progress sent to the driver at most twice a second a bar."""
    from .data.fetch import fetch_dataset

    last: dict[str, float] = {}

    def send(label: str, done: int, total: int, unit: str) -> None:
        if time.monotonic() - last.get(label, 0.0) >= 0.5 or done >= total:
            last[label] = time.monotonic()
            events.put((label, done, total, unit))

    return fetch_dataset(manifest, Path(root), mirror, progress=send).line()


def _storage_root(spec: SweepSpec, override: str | None) -> str:
    root = override or spec.storage_path
    return root if "://" in root else str(Path(root).expanduser().absolute())


class SweepInterrupted(AblateError):
    """SIGINT or SIGTERM stopped the sweep; its state is kept and the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 after Ctrl-C, 143 after SIGTERM


class Signals:
    """SIGINT and SIGTERM while the sweep runs: the first stops Tune gracefully (it keeps the experiment
    state for --resume; SIGUSR1 is Tune's own stop signal), a second one, or one outside Tune, stops at once."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.in_tune = False

    def handle(self, signum: int, frame) -> None:
        self.received.append(signum)
        if not self.in_tune or len(self.received) > 1:
            raise KeyboardInterrupt
        threading.Thread(target=self._stop_tune, daemon=True).start()

    def _stop_tune(self) -> None:
        """Tune's stop signal, once Tune listens for it (it installs its handler as `fit` starts; before
        that SIGUSR1 would end the process)."""
        while self.in_tune and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
            time.sleep(0.1)
        if self.in_tune:
            os.kill(os.getpid(), signal.SIGUSR1)

    @property
    def signum(self) -> int:
        return self.received[0] if self.received else signal.SIGINT

    def _install(self) -> dict:
        return {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    @contextlib.contextmanager
    def installed(self) -> Iterator[Signals]:
        if threading.current_thread() is not threading.main_thread():  # handlers only work there
            yield self
            return
        before = self._install()
        tune_handler = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours decides; Tune must not replace it
        try:
            yield self
        finally:
            for sig, handler in before.items():
                if signal.getsignal(sig) == self.handle:  # not one Ray installed since (its SIGTERM cleanup)
                    signal.signal(sig, handler)
            if tune_handler is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_handler

    @contextlib.contextmanager
    def tune(self) -> Iterator[None]:
        """Ours again while Tune runs: starting local Ray installs Ray's own SIGTERM handler."""
        main = threading.current_thread() is threading.main_thread()
        before = {**self._install(), signal.SIGUSR1: signal.getsignal(signal.SIGUSR1)} if main else {}
        self.in_tune = True
        try:
            yield
        finally:
            self.in_tune = False
            for sig, handler in before.items():  # SIGUSR1 too: the next `fit` installs a fresh one
                signal.signal(sig, handler)


def resume_command(spec_path: Path, storage_path: str | None, address: str | None) -> str:
    words = ["ablate", "sweep", "--spec", str(spec_path)]
    if storage_path:
        words += ["--storage-path", storage_path]
    if address:
        words += ["--ray-address", address]
    return shlex.join([*words, "--resume"])


def _open_sweep(spec: SweepSpec, path: Path, state_path: Path, storage: str, resume: bool,
                tracking_uri: str | None):
    """The sweep's MLflow parent run: created (and its state saved), or re-opened for --resume."""
    if resume:
        if not state_path.exists():
            raise ConfigError(f"nothing to resume: no sweep '{spec.name}' under {storage}")
        state = SweepState.load(state_path)
        if state.spec_sha256 != _sha(path):
            raise ConfigError(f"{path} changed since sweep '{spec.name}' started; resume needs the same spec "
                              "(restore the file, or start a new sweep under another name)")
        client = connect(state.tracking_uri)
        reopen_parent_run(client, state.parent_run_id)
        set_sweep_note(client, state.experiment_id, state.parent_run_id, sweep_note(spec.description, RUNNING_NOTE))
        return state, client
    if state_path.exists():
        raise ConfigError(f"sweep '{spec.name}' already exists under {storage}; pass --resume to continue "
                          "it, or change `name` / --storage-path for a new sweep")
    uri = resolve_tracking_uri(tracking_uri, spec.tracking_uri)
    client = connect(uri)
    experiment_id = ensure_experiment(client, spec.name)
    parent = start_parent_run(client, experiment_id, spec.name, path, path.read_text(), spec.description)
    state = SweepState(uri, experiment_id, parent, _sha(path))
    state.save(state_path)
    return state, client


def _fit(tuners: list, signals: Signals) -> tuple[int, int]:
    """(trials, errored) over the tuners, stopping after the one a signal interrupted."""
    errored = total = 0
    for tuner in tuners:
        with signals.tune():
            results = tuner.fit()
        total += len(results)
        errored += len(results.errors)
        if signals.received:
            break
    return total, errored


def _interrupted(client, state: SweepState, signals: Signals, command: str) -> SweepInterrupted:
    """Record an interrupted sweep: the parent and the trials it cut off as KILLED, with how to resume."""
    name = signal.Signals(signals.signum).name
    reason = f"sweep interrupted ({name}); resume with: {command}"
    close_running_children(client, state.experiment_id, state.parent_run_id, reason)
    end_parent_run(client, state.parent_run_id, "KILLED", {}, resume_command=command)
    note_sweep_stopped(client, state.experiment_id, state.parent_run_id, command)
    return SweepInterrupted(f"sweep interrupted ({name}); finished trials are kept, resume with: {command}",
                            signals.signum)


def run_sweep(spec_path: str | Path, *, resume: bool = False, tracking_uri: str | None = None,
              storage_path: str | None = None, ray_address: str | None = None) -> dict:
    """Launch (or continue) every trial of a spec; returns counts and the MLflow ids. SIGINT / SIGTERM
    raise SweepInterrupted once the state for --resume is saved."""
    path = resolve_spec_path(spec_path)
    spec = load_sweep_spec(path)  # validated before anything starts or is recorded
    storage = _storage_root(spec, storage_path)
    # beside the Tune results; for bucket storage in the launching directory
    state_path = (Path(storage) if "://" not in storage else Path(".ablate_sweeps")) / spec.name / STATE_FILE
    arms = expand(spec)
    command = resume_command(path, storage_path, ray_address)
    ray_was_up = _ray_is_up()
    with Signals().installed() as signals:
        try:
            # a tracking server or database that is down or refuses the password stops here, before Ray
            probe_store(SweepState.load(state_path).tracking_uri if resume and state_path.exists()
                        else resolve_tracking_uri(tracking_uri, spec.tracking_uri))
            # a bad data root stops here, before anything is recorded
            fetch_data(spec, arms, ray_address)
            prepare_data(arms, spec.resources, spec.plugins, ray_address)
            init_ray(ray_address)
            check_storage_on_nodes(storage, spec.name)
            state, client = _open_sweep(spec, path, state_path, storage, resume, tracking_uri)
        except BaseException as err:
            if not ray_was_up:  # a caller in the same process gets back the Ray it had: none
                _shutdown_ray()
            if isinstance(err, KeyboardInterrupt):
                raise SweepInterrupted(f"sweep '{spec.name}' interrupted before any trial started; run it "
                                       "again (with --resume if it was recorded)", signals.signum) from None
            raise
        try:
            workroot = work_root(storage, spec.name, state.parent_run_id)
            shutil.rmtree(workroot, ignore_errors=True)  # left by trials killed in an earlier run
            ctx = TrackingContext(reachable_from_workers(state.tracking_uri), state.experiment_id,
                                  state.parent_run_id)
            tuners = [_tuner(spec, arm, arms, ctx, storage, resume, workroot) for arm in arms] if spec.optuna \
                else [_tuner(spec, None, arms, ctx, storage, resume, workroot)]
            total, errored = _fit(tuners, signals)
        except KeyboardInterrupt:
            signals.received = signals.received or [signal.SIGINT]
        finally:
            shutil.rmtree(work_root(storage, spec.name, state.parent_run_id), ignore_errors=True)
        if signals.received:
            raise _interrupted(client, state, signals, command)
    end_parent_run(client, state.parent_run_id, "FINISHED" if errored == 0 else "FAILED",
                   {"trials": total, "trials_errored": errored})
    note_finished_sweep(client, state, spec, total, errored)
    return {"tracking_uri": state.tracking_uri, "experiment_id": state.experiment_id,
            "parent_run_id": state.parent_run_id,
            "trials": total, "errored": errored, "storage": storage,
            "ui": ui_address(state.tracking_uri, state.experiment_id, state.parent_run_id)}


def note_finished_sweep(client, state: SweepState, spec: SweepSpec, total: int, errored: int) -> None:
    """The parent's and experiment's description: the spec's, the trials table, and how to get the report
    (`ablate report` replaces this table with the report's and links it)."""
    table = trials_markdown(trial_table(state.tracking_uri, state.experiment_id, state.parent_run_id))
    set_sweep_note(client, state.experiment_id, state.parent_run_id, sweep_note(
        spec.description, f"**{total} trials, {errored} errored.**", table,
        f"Report: `ablate report --experiment {spec.name}` writes it and logs it to this run under `report/`."))
