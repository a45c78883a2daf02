"""Data layer: dataset loaders, partial labels, train/val/test splits and the torch Dataset.

Every split is a LabelledImages (absolute paths + int8 label matrix, 1/0/-1). Layouts are
documented in coco.py, voc.py, nuswide.py and synthetic.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ablate.spec import TrialConfig

from .base import DataError, LabelledImages
from .classnames import class_names
from .coco import LAYOUT as COCO_LAYOUT, check_coco_root, load_coco
from .nuswide import LAYOUT as NUSWIDE_LAYOUT, check_nuswide_root, load_nuswide
from .partial import apply_partial, partial_mask, stable_seed
from .synthetic import SYNTHETIC_IMAGE_SIZE, SYNTHETIC_SEED, generate_synthetic
from .transforms import build_transform
from .voc import LAYOUT as VOC_LAYOUT, load_voc, resolve_voc_root

__all__ = [
    "DataError", "LabelledImages", "MultiLabelDataset", "apply_partial", "build_transform", "check_root",
    "class_names", "generate_synthetic", "load_splits", "partial_mask", "split_val", "synthetic_sizes",
]

_LAYOUT_HINT = {"coco2014": COCO_LAYOUT, "voc2007": VOC_LAYOUT, "nuswide": NUSWIDE_LAYOUT}


def synthetic_sizes(cfg: TrialConfig) -> tuple[int, int]:
    """(train, test) image counts of the generated set."""
    return cfg.synthetic_images, max(cfg.synthetic_images // 2, 20)


def check_root(cfg: TrialConfig) -> Path:
    """Resolve and validate the data root (generating the synthetic set if needed); DataError if unusable."""
    if cfg.dataset == "synthetic":
        n_train, n_test = synthetic_sizes(cfg)
        default = cfg.resolved_cache_dir() / f"synthetic-n{n_train}-s{SYNTHETIC_IMAGE_SIZE}-d{SYNTHETIC_SEED}"
        root = generate_synthetic(cfg.data_root or default, n_train, n_test, SYNTHETIC_IMAGE_SIZE, SYNTHETIC_SEED)
        check_coco_root(root, "synthetic")
        return root
    if cfg.dataset == "world":
        from .world import WorldConfig, build_world, default_world_root

        if cfg.data_root is None:  # the embedded world, built on first use
            root = build_world(default_world_root(cfg.resolved_cache_dir()), WorldConfig())
        else:  # one the user built (`ablate world build --out DIR`), perhaps with another config
            root = Path(cfg.data_root).expanduser().absolute()
        try:
            check_coco_root(root, "world")
        except DataError as err:
            raise DataError(f"{err}\n(make one with `ablate world build --out {root}`, or leave data_root "
                            "unset for the embedded world)") from None
        return root
    if cfg.data_root is None:
        raise DataError(f"{cfg.dataset} needs data_root; expected layout: {_LAYOUT_HINT[cfg.dataset]}")
    root = Path(cfg.data_root).expanduser().absolute()
    if cfg.dataset == "coco2014":
        check_coco_root(root, "coco2014")
    elif cfg.dataset == "voc2007":
        root = resolve_voc_root(root)
    else:
        check_nuswide_root(root)
    return root


def _load(cfg: TrialConfig, root: Path, split: Literal["train", "test"]) -> LabelledImages:
    if cfg.dataset in ("coco2014", "synthetic", "world"):
        drop = cfg.dataset == "coco2014" and cfg.coco_empty_images == "drop"
        images = load_coco(root, split, dataset=cfg.dataset, drop_empty=drop)
        if images.dropped_empty:
            total = images.dropped_empty + len(images)
            print(f"{cfg.dataset} {split}: dropped {images.dropped_empty:,} of {total:,} images without any "
                  "annotation (coco_empty_images: drop)", file=sys.stderr)
        return images
    if cfg.dataset == "voc2007":
        return load_voc(root, split, cfg.voc_difficult)
    return load_nuswide(root, split)


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
    root = check_root(cfg)
    full_train = _load(cfg, root, "train")
    key = f"{cfg.dataset}/train"
    # masked over the whole train split, so the mask does not depend on val_fraction
    mask = partial_mask(full_train.labels, cfg.label_ratio, key, cfg.seed, cfg.resolved_cache_dir() / "masks")
    train = LabelledImages(full_train.paths, apply_partial(full_train.labels, mask), full_train.classnames,
                           full_train.dropped_empty)
    train_idx, val_idx = split_val(len(train), cfg.val_fraction, key, cfg.seed)
    return {"train": train.subset(train_idx), "val": train.subset(val_idx), "test": _load(cfg, root, "test")}


class MultiLabelDataset(torch.utils.data.Dataset):
    """(image tensor, float32 labels with -1 for unknown) pairs; images read with PIL as RGB."""

    def __init__(self, images: LabelledImages, transform) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(self.images.paths[i]) as img:
            x = self.transform(img.convert("RGB"))
        return x, torch.from_numpy(self.images.labels[i].astype(np.float32))
