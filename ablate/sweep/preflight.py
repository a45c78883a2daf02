"""Before any trial starts: data fetched and checked (every listed image of a real dataset), world
CLIPs pre-trained and feature caches built, so a bad root fails before anything is recorded and
parallel trials only read."""

from __future__ import annotations

import itertools
import json
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..data.manifest import DatasetManifest
from ..errors import AblateError, DataError
from ..spec import ConfigError, TrialConfig, fields_where
from .arms import Arm
from .cluster import init_ray, require_resources
from .spec import ParamSpace, Resources, SweepSpec, import_plugins

# up to this many listed images per split are each checked before a sweep starts; more: a seeded sample
IMAGE_CHECK_CAP = 20_000


def prepare_data(arms: list[Arm], resources: Resources | None = None, plugins: Sequence[str] = (),
                 ray_address: str | None = None, space: Mapping[str, ParamSpace] | None = None) -> list[Path]:
    """Before any trial: check every data root (generating the synthetic set and world) in the driver,
    pre-train the world CLIPs the arms name (or an Optuna `space` may sample for them), then build the
    feature caches that `features: cached` arms read, so parallel trials only read them. Returns the world
    CLIPs' checkpoint files (which every node must see).

    With `resources` (a trial's), each cache group is a Ray task on those resources (the GPU workers
    on a cluster), all groups in parallel; without, they are built in this process.
    """
    from ..data import check_root
    from ..data.check import require_complete
    from ..features import check_features_mode, feature_group
    from ..world.checkpoints import build_for

    seen = set()
    for arm in arms:
        check_features_mode(arm.config)
        cfg = arm.config
        key = (cfg.dataset, cfg.data_root, json.dumps(cfg.dataset_options, sort_keys=True), cfg.cache_dir)
        if key not in seen:
            seen.add(key)
            # a real dataset's root: every problem at once, every listed image looked up; others: sampled
            if not require_complete(cfg.dataset, cfg.data_root):
                check_images(cfg, check_root(cfg))
    # ablate's own world CLIPs are pre-trained here, once, with every core, not in a 1-cpu trial
    checkpoints = build_for(c for a in arms for c in with_sampled_weights(a.config, space or {}))
    cached = {feature_group(a.config): a.config for a in arms if a.config.features == "cached"}
    if cached:
        build_feature_caches(list(cached.values()), resources, plugins, ray_address)
    return checkpoints


def with_sampled_weights(cfg: TrialConfig, space: Mapping[str, ParamSpace]) -> list[TrialConfig]:
    """`cfg` under every combination of the weights an Optuna space samples (its categorical choices of the
    fields whose Role names or locates weights), so the pre-flight builds every world CLIP a sampled trial
    may load."""
    choices = [[(f, v) for v in space[f].choices or []] for f in fields_where(weights=True)
               if f in space and space[f].type == "categorical"]
    return [cfg.model_copy(update=dict(combo)) for combo in itertools.product(*choices)]


def check_images(cfg: TrialConfig, root: Path) -> None:
    """What `ablate train` checks, before a sweep records or starts anything: both splits load and their
    listed images are there (every one up to IMAGE_CHECK_CAP a split, else a seeded sample of that many)."""
    from ..data.registry import DATASETS

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
    from ..features import cached_images, prepare_caches
    from ..progress import progress_bar

    with progress_bar(total=sum(map(cached_images, configs)), desc="feature caches", unit="img") as bar:
        if resources is None:
            for cfg in configs:
                prepare_caches(cfg, progress=False, on_images=bar.update)
            return
        import ray
        from ray.util.queue import Queue

        # on the trials' resources: a node must offer them, or the tasks would wait forever
        require_resources(resources.cpu, resources.gpu, ray_address, resources.wait_s)
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

    from ..features import prepare_caches

    torch.set_num_threads(max(1, int(cpus)))
    import_plugins(plugins)
    prepare_caches(TrialConfig.model_validate(config), progress=False, on_images=done_images.put)


def fetch_data(spec: SweepSpec, arms: list[Arm], ray_address: str | None = None,
               manifests: Mapping[str, DatasetManifest] | None = None) -> None:
    """`data: {<dataset>: {fetch: true}}`: every data_root the dataset's arms use is fetched (or found
    complete) before the pre-flight check, each as one 1-CPU Ray task (on a cluster whose head has no CPUs,
    a worker node: the data lands on shared storage), with its progress bars drawn here."""
    import ray
    from ray.util.queue import Queue

    from ..data.manifest import MANIFESTS
    from ..data.progress import ProgressBars

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
    from ..data.fetch import fetch_dataset

    last: dict[str, float] = {}

    def send(label: str, done: int, total: int, unit: str) -> None:
        if time.monotonic() - last.get(label, 0.0) >= 0.5 or done >= total:
            last[label] = time.monotonic()
            events.put((label, done, total, unit))

    return fetch_dataset(manifest, Path(root), mirror, progress=send).line()
