"""Dense-feature cache: the frozen image encoder's output [HW + 1, D] per image, computed once.

Every method keeps the image encoder frozen, so without augmentation its output for an image never
changes. A cache holds it for one split, keyed by everything that determines it::

    <root>/<key>/features.f16    float16 memmap [M, L, D], rows in the manifest's path order
                                 (features.f32 with cache_dtype: float32)
    <root>/<key>/manifest.json   key inputs, shape, dtype, paths, sha256 of the data, "complete"
    <root>/<key>.lock            flock: one builder per key across processes (and NFS clients)

`<root>` is `feature_cache_dir` (default `<cache_dir>/features`); on a cluster put it on shared
storage. The cached splits are the dataset's full train split and its test split: train and val
rows are looked up by image path in the train cache, so every val_fraction, label ratio and seed
reads the same cache.

A cache is read only when its manifest says complete (written last, atomically), its inputs are
the reader's, the data file has the exact size and its checksum matches; anything else is rebuilt
under the lock, and whoever waited on the lock re-checks instead of building again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision import transforms as T

from .backbone import Backbone, BackboneInfo
from .data.base import LabelledImages
from .data.dataset import MultiLabelDataset
from .data.splits import check_root, load_splits
from .data.transforms import Interpolation, build_transform
from .errors import ConfigError, DataError
from .factory import backbone_from_config
from .files import file_lock, file_sha256, write_atomically
from .methods import method_info
from .progress import progress_bar
from .spec import TrialConfig

FORMAT_VERSION = 1  # bump when the layout or the feature computation changes
DATA_FILES = {"float16": "features.f16", "float32": "features.f32"}  # by storage dtype
MANIFEST = "manifest.json"
CACHE_SPLIT = {"train": "train", "val": "train", "test": "test"}  # trial split -> cached split

Progress = Callable[[int], None]  # told how many more images are done


def check_features_mode(cfg: TrialConfig) -> None:
    """Cached features are of un-augmented images, and only methods whose image input is the frozen
    encoder's output can read them: refuse a combination instead of ignoring a flag."""
    if cfg.features != "cached":
        return
    if cfg.augment:
        raise ConfigError("features: cached reads features of un-augmented images, so it cannot apply "
                          "augment: true; set augment: false, or features: online to keep augmentation")
    if not method_info(cfg.method).cacheable:
        raise ConfigError(f"method {cfg.method} cannot train on cached features; set features: online")


def cache_root(cfg: TrialConfig) -> Path:
    root = Path(cfg.feature_cache_dir) if cfg.feature_cache_dir else cfg.resolved_cache_dir() / "features"
    return root.expanduser().absolute()


def eval_transform(info: BackboneInfo, interpolation: Interpolation = "bicubic") -> T.Compose:
    """The preprocessing of cached images: the online path's transform without augmentation."""
    return build_transform(info.image_size, info.mean, info.std, train=False, augment=False,
                           interpolation=interpolation)


@dataclass(frozen=True)
class CacheInputs:
    """Exactly what determines a cache's content; its hash is the key."""

    backbone: str
    weights: str  # visual_fingerprint: a hash of the image tower's tensors
    quick_gelu: bool  # the activation is not in the weights
    image_size: int
    dataset: str
    data_root: str
    split: str
    paths_sha256: str  # of the ordered image paths
    preprocessing: str  # repr of the transform
    dtype: str = "float16"
    version: int = FORMAT_VERSION
    interpolation: Interpolation = "bicubic"  # of the resize (also in `preprocessing`; this one is read back)

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]


def visual_fingerprint(backbone: Backbone) -> str:
    """Hash of the image tower's parameters and buffers. A weights tag would not tell apart random
    weights drawn under different seeds, nor a checkpoint re-trained under the same name."""
    digest = hashlib.sha256()
    for name, tensor in backbone.visual.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def cache_inputs(info: BackboneInfo, weights: str, dataset: str, data_root: Path, split: str,
                 paths: Sequence[str | Path], dtype: str = "float16",
                 interpolation: Interpolation = "bicubic") -> CacheInputs:
    paths_sha = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()
    return CacheInputs(info.name, weights, info.quick_gelu, info.image_size, dataset, str(data_root), split,
                       paths_sha, repr(eval_transform(info, interpolation)), dtype, interpolation=interpolation)


class FeatureCache:
    """One split's features under `root`: `ensure` makes it valid, `ablate.stream.CachedRows` serves its rows."""

    def __init__(self, root: Path, inputs: CacheInputs, paths: Sequence[str | Path]) -> None:
        self.inputs, self.paths = inputs, [str(p) for p in paths]
        self.dir = Path(root) / inputs.key
        self.dtype = inputs.dtype
        self.data_path, self.manifest_path = self.dir / DATA_FILES[self.dtype], self.dir / MANIFEST
        self.lock_path = Path(root) / f"{inputs.key}.lock"

    def __len__(self) -> int:
        return len(self.paths)

    def manifest(self) -> dict | None:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return None

    def is_valid(self) -> bool:
        """Complete, written for these inputs and paths, exact size, checksum matches (reads the file)."""
        m = self.manifest()
        if not m or m.get("complete") is not True or m.get("inputs") != asdict(self.inputs) \
                or m.get("paths") != self.paths or m.get("dtype") != self.dtype:
            return False
        expected = int(np.prod(m["shape"])) * np.dtype(self.dtype).itemsize
        try:
            if self.data_path.stat().st_size != expected:
                return False
        except OSError:
            return False
        return file_sha256(self.data_path) == m.get("sha256")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest()["shape"])

    def rows(self, paths: list[Path]) -> np.ndarray:
        index = {p: i for i, p in enumerate(self.paths)}
        return np.array([index[str(p)] for p in paths], dtype=np.int64)

    def open(self) -> np.memmap:
        return np.memmap(self.data_path, dtype=self.dtype, mode="r", shape=self.shape)


def ensure(cache: FeatureCache, backbone: Backbone, *, batch_size: int = 32, num_workers: int = 0,
           amp: bool = True, progress: bool = True, on_images: Progress | None = None) -> bool:
    """Make `cache` valid, building it with `backbone` if needed; True when this call built it."""
    what = f"{cache.inputs.dataset}/{cache.inputs.split} features ({cache.inputs.key[:8]})"
    if not cache.is_valid():
        with file_lock(cache.lock_path, f"waiting for another process building {what}" if progress else None):
            if not cache.is_valid():  # re-check: the lock holder before us may have built it
                _build(cache, backbone, batch_size, num_workers, amp, progress, on_images, what)
                return True
    if on_images is not None:
        on_images(len(cache))
    return False


def _write_manifest(cache: FeatureCache, manifest: dict) -> None:
    # readers see the old or the new manifest, never half of one
    write_atomically(cache.manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest)))


def _build(cache: FeatureCache, backbone: Backbone, batch_size: int, num_workers: int, amp: bool,
           progress: bool, on_images: Progress | None, what: str) -> None:
    t0 = time.perf_counter()
    shutil.rmtree(cache.dir, ignore_errors=True)  # whatever is there is partial or stale
    cache.dir.mkdir(parents=True)
    device = next(backbone.parameters()).device
    images = LabelledImages([Path(p) for p in cache.paths], np.zeros((len(cache), 0), np.int8), [])
    transform = eval_transform(backbone.info, cache.inputs.interpolation)
    loader = DataLoader(MultiLabelDataset(images, transform), batch_size=batch_size,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator())  # leaves the global RNG (the trial's seed) untouched
    autocast = torch.autocast("cuda", dtype=torch.float16) if amp and device.type == "cuda" \
        else contextlib.nullcontext()
    manifest: dict[str, Any] = {
        "key": cache.inputs.key, "inputs": asdict(cache.inputs), "dtype": cache.dtype, "complete": False,
        "build_id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "paths": cache.paths}
    data, digest, row = None, hashlib.sha256(), 0
    # an iterator: given the loader, tqdm.auto would open a second one (more workers decoding for nothing)
    for batch, _ in progress_bar(iter(loader), total=len(loader), desc=f"building {what}", unit="batch",
                         disable=not progress):
        with autocast:
            dense = backbone.dense_features(batch.to(device, non_blocking=True))
        block = dense.to(getattr(torch, cache.dtype))
        if not torch.isfinite(block).all():
            raise FloatingPointError(f"{what}: features are not finite in {cache.dtype}; "
                                     "try cache_dtype: float32, or features: online")
        rows = block.cpu().numpy()
        if data is None:
            manifest["shape"] = [len(cache), *rows.shape[1:]]
            _write_manifest(cache, manifest)  # incomplete: says what is being written
            _allocate(cache, int(np.prod(manifest["shape"])) * np.dtype(cache.dtype).itemsize, what)
            data = np.memmap(cache.data_path, dtype=cache.dtype, mode="w+", shape=tuple(manifest["shape"]))
        data[row:row + len(rows)] = rows
        digest.update(rows.tobytes())  # rows are written in order, so this is the file's checksum
        row += len(rows)
        if on_images is not None:
            on_images(len(rows))
    data.flush()
    del data
    with cache.data_path.open("rb") as fh:
        os.fsync(fh.fileno())  # the data is on disk before the manifest says complete
    manifest.update(sha256=digest.hexdigest(), complete=True, seconds=round(time.perf_counter() - t0, 3))
    _write_manifest(cache, manifest)


def _allocate(cache: FeatureCache, size: int, what: str) -> None:
    """The data file with all its blocks reserved: writing a memmap into a file whose blocks the disk
    cannot supply kills the process with SIGBUS, so a full disk must show here, as a DataError."""
    free = shutil.disk_usage(cache.dir).free
    advice = "free some space, or point feature_cache_dir at a larger disk (or use features: online)"
    if free < size:
        shutil.rmtree(cache.dir, ignore_errors=True)
        raise DataError(f"{what}: needs {size / 2**20:,.1f} MiB in {cache.dir.parent}, only {free / 2**20:,.1f} MiB "
                        f"free; {advice}")
    fd = os.open(cache.data_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve: checked above
            shutil.rmtree(cache.dir, ignore_errors=True)
            raise DataError(f"{what}: cannot reserve {size / 2**20:,.1f} MiB in {cache.dir.parent} "
                            f"({err.strerror}); {advice}") from None
    finally:
        os.close(fd)


def trial_caches(cfg: TrialConfig, backbone: Backbone, splits: dict[str, LabelledImages]) -> dict[str, FeatureCache]:
    """The caches a trial reads, by trial split ("train" and "val" share the full train split's cache)."""
    root, data_root, weights = cache_root(cfg), check_root(cfg), visual_fingerprint(backbone)
    full = {"train": sorted({*map(str, splits["train"].paths), *map(str, splits["val"].paths)}),
            "test": sorted(map(str, splits["test"].paths))}
    caches = {name: FeatureCache(root, cache_inputs(backbone.info, weights, cfg.dataset, data_root, name, paths,
                                                    cfg.cache_dtype, cfg.resize), paths)
              for name, paths in full.items()}
    return {split: caches[cached] for split, cached in CACHE_SPLIT.items()}


def ensure_trial_caches(cfg: TrialConfig, backbone: Backbone, splits: dict[str, LabelledImages], *,
                        progress: bool = True, on_images: Progress | None = None) -> dict[str, FeatureCache]:
    caches = trial_caches(cfg, backbone, splits)
    for cache in {id(c): c for c in caches.values()}.values():
        ensure(cache, backbone, batch_size=cfg.batch_size, num_workers=cfg.num_workers, amp=cfg.amp,
               progress=progress, on_images=on_images)
    return caches


def prepare_caches(cfg: TrialConfig, *, progress: bool = True, on_images: Progress | None = None) -> None:
    """Build what a `features: cached` trial of `cfg` reads, loading the backbone on `cfg.device`."""
    backbone = backbone_from_config(cfg)
    ensure_trial_caches(cfg, backbone, load_splits(cfg), progress=progress, on_images=on_images)


def feature_group(cfg: TrialConfig) -> tuple:
    """Trials with equal groups read the same caches (label ratio and val split do not matter; the
    seed only for random weights, which it draws)."""
    seed = cfg.seed if cfg.pretrained.lower() == "none" else None
    return (cfg.backbone, cfg.pretrained, seed, cfg.image_size, cfg.resize, cfg.dataset, cfg.data_root,
            json.dumps(cfg.dataset_options, sort_keys=True), cfg.cache_dir, cfg.feature_cache_dir, cfg.cache_dtype)


def cached_images(cfg: TrialConfig) -> int:
    """Images in the caches of `cfg` (full train split + test split), without loading a model."""
    splits = load_splits(cfg)
    return sum(len(s) for s in splits.values())
