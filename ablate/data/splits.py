"""A trial's splits: the dataset's root and train/test tables (from the registry), the partial-label
mask and the validation split carved from train. Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .base import DataError, LabelledImages
from .partial import apply_partial, partial_mask, stable_seed
from .registry import DATASETS

if TYPE_CHECKING:
    from ablate.spec import TrialConfig


def check_root(cfg: TrialConfig) -> Path:
    """The dataset's usable root (generated if it is generated on first use); DataError naming the layout
    if it is unusable."""
    return DATASETS.get(cfg.dataset).resolve_root(cfg)


def split_val(n: int, fraction: float, key: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices), sorted, disjoint; val has round(fraction * n) images, at least 1,
    unless fraction is 0 (train on all of it; the reference's protocol, which selects on test)."""
    if fraction == 0:
        return np.arange(n), np.arange(0)
    if n < 2:
        raise DataError(f"{key}: {n} train image(s); at least 2 are needed to hold out a validation split")
    n_val = min(max(1, round(fraction * n)), n - 1)
    perm = np.random.default_rng(stable_seed("val", key, seed)).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def load_splits(cfg: TrialConfig) -> dict[str, LabelledImages]:
    """{"train", "val"}: partially labelled (val carved from train after masking); "test": full labels."""
    dataset = DATASETS.get(cfg.dataset)
    root = dataset.resolve_root(cfg)
    full_train = dataset.load_split(cfg, root, "train")
    key = f"{cfg.dataset}/train"
    # masked over the whole train split, so the mask does not depend on val_fraction
    mask = partial_mask(full_train.labels, cfg.label_ratio, key, cfg.seed, cfg.resolved_cache_dir() / "masks")
    train = LabelledImages(full_train.paths, apply_partial(full_train.labels, mask), full_train.classnames,
                           full_train.dropped_empty)
    train_idx, val_idx = split_val(len(train), cfg.val_fraction, key, cfg.seed)
    return {"train": train.subset(train_idx), "val": train.subset(val_idx),
            "test": dataset.load_split(cfg, root, "test")}
