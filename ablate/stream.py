"""The image stream a pack of arms shares: the frozen backbone, the splits' images, their loaders and the
image pass. Built from a stream config (ablate/pack.py `stream_config`), so no field an arm may vary
reaches it. Batches carry row indices, not labels: each arm looks its own (partial) labels up.

Every epoch's order and augmentation come from (seed, epoch) alone, so a stream read twice, or read by
one arm alone, yields the same batches bit for bit.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from .backbone import Backbone
from .data import LabelledImages
from .data.dataset import read_image
from .data.transforms import build_transform
from .errors import AblateError, worker_message
from .factory import resolve_device
from .features import FeatureCache, ensure_trial_caches
from .spec import TrialConfig

SPLITS = ("train", "val", "test")


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % 2**31


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


class ImageRows(Dataset):
    """(image tensor, row index) of a split's images, read with PIL as RGB and transformed."""

    def __init__(self, images: LabelledImages, transform) -> None:
        self.paths, self.transform = images.paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return read_image(self.paths[i], self.transform), i


class CachedRows(Dataset):
    """(cached dense features, row indices) of a whole batch of positions: one read per batch."""

    def __init__(self, cache: FeatureCache, images: LabelledImages) -> None:
        self.path, self.shape, self.dtype = cache.data_path, cache.shape, cache.dtype
        self.rows = cache.rows(images.paths)
        self._data: np.memmap | None = None  # opened on first read, in the worker: never pickled

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, batch: list[int]) -> tuple[Tensor, Tensor]:
        if self._data is None:
            self._data = np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape)
        return torch.from_numpy(np.asarray(self._data[self.rows[batch]])), torch.as_tensor(batch)


def batches(loader: DataLoader) -> Iterator:
    """The loader's batches; an ablate error from a worker process comes back as its own one line."""
    try:
        yield from loader
    except AblateError as err:
        message = worker_message(err)
        if message == str(err):  # raised here, not in a worker
            raise
        raise type(err)(message) from None


class Stream:
    """What the arms of one pack share; `cfg` is a stream config and `images` any arm's splits (their
    images are equal: the pack checks it)."""

    def __init__(self, cfg: TrialConfig, images: dict[str, LabelledImages], backbone: Backbone,
                 progress: bool = True) -> None:
        self.cfg, self.images, self.backbone = cfg, images, backbone
        self.device = resolve_device(cfg.device)
        self.amp = cfg.amp and self.device.type == "cuda"
        # cached mode: features read from disk (built here only if missing); the image encoder never runs
        self.caches: dict[str, FeatureCache] | None = None
        if cfg.features == "cached":
            self.caches = ensure_trial_caches(cfg, backbone, images, progress=progress)

    def __len__(self) -> int:
        return len(self.images["train"])

    def loader(self, split: str, train: bool, epoch: int = 0) -> DataLoader:
        """Batches of (images or cached features, row indices); both modes draw the same order from the seed."""
        cfg = self.cfg
        generator = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
        dataset: Dataset
        batch_size: int | None
        shuffle: bool | None = None  # DataLoader's defaults where a mode leaves one out
        sampler: Sampler | None = None
        if self.caches is None:
            info = self.backbone.info
            transform = build_transform(info.image_size, info.mean, info.std, train=train, augment=cfg.augment,
                                        recipe=cfg.augment_recipe, interpolation=cfg.resize)
            dataset = ImageRows(self.images[split], transform)
            batch_size, shuffle = cfg.batch_size, train
        else:
            dataset = CachedRows(self.caches[split], self.images[split])
            # the sampler the online loader builds from (shuffle, generator), read a whole batch at a time
            order = RandomSampler(dataset, generator=generator) if train else SequentialSampler(dataset)
            batch_size, sampler = None, BatchSampler(order, cfg.batch_size, drop_last=False)
        workers = cfg.num_workers
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, drop_last=False,
                          num_workers=workers, pin_memory=self.device.type == "cuda", generator=generator,
                          worker_init_fn=_worker_init if workers else None, persistent_workers=False)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def dense(self, inputs: Tensor) -> Tensor:
        """Dense features [B, L, D] of a batch: cached rows as read, or the frozen encoder on images, once
        for every arm (no graph: the encoder is frozen)."""
        inputs = inputs.to(self.device, non_blocking=True)
        if self.caches is None:
            with self.autocast():
                return self.backbone.dense_features(inputs)
        return inputs if self.amp else inputs.float()  # float16 on disk; autocast takes it as is
