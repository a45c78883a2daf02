"""Data layer: dataset registry and loaders, partial labels, train/val/test splits and the torch Dataset.

Every split is a LabelledImages (absolute paths + int8 label matrix, 1/0/-1). Datasets are declared in
registry.py; each one's layout and code are in its own module (coco.py, voc.py, nuswide.py,
synthetic.py; the world data set in ablate/world/dataset.py).

Importing this package is light (no torch, PIL or ablate.spec), so configs can validate dataset names
against the registry: the names below that need more are imported on first use.
"""

from __future__ import annotations

from ..errors import DataError
from ..registry import lazy_face
from .registry import (
    DATASETS,
    CocoOptions,
    DatasetInfo,
    DatasetOptions,
    SyntheticOptions,
    VocOptions,
    dataset_names,
    option_owners,
    register_dataset,
)

# exported name -> the module that defines it, imported when the name is first used
_LAZY = {
    "LabelledImages": "base",
    "class_names": "classnames",
    "MultiLabelDataset": "dataset",
    "apply_partial": "partial",
    "partial_mask": "partial",
    "check_root": "splits",
    "load_splits": "splits",
    "split_val": "splits",
    "generate_synthetic": "synthetic",
    "synthetic_sizes": "synthetic",
    "build_transform": "transforms",
}

__all__ = [
    "DATASETS", "CocoOptions", "DataError", "DatasetInfo", "DatasetOptions", "LabelledImages", "MultiLabelDataset",
    "SyntheticOptions", "VocOptions", "apply_partial", "build_transform", "check_root", "class_names",
    "dataset_names", "generate_synthetic", "load_splits", "option_owners", "partial_mask", "register_dataset",
    "split_val", "synthetic_sizes",
]


__getattr__, __dir__ = lazy_face(__name__, _LAZY)
