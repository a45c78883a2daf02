"""NUS-WIDE (81 concepts), in a simple prepared layout.

Layout::

    <root>/images/<relative path>      image files, any sub-folders
    <root>/train.txt                   split "train": one image path per line, relative to <root>/images
    <root>/test.txt                    split "test"
    <root>/train_labels.npy            integer matrix [lines of train.txt, 81]: 1 present, 0 absent,
    <root>/test_labels.npy             -1 unknown; columns in Concepts81.txt order (classnames.NUSWIDE)

Row i of ``<split>_labels.npy`` belongs to line i of ``<split>.txt`` (blank lines are skipped).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from .base import DataError, LabelledImages, check_folder, check_images_exist, required_root
from .classnames import NUSWIDE
from .registry import NUSWIDE_LAYOUT as LAYOUT

if TYPE_CHECKING:
    from ablate.spec import TrialConfig


def nuswide_files(root: Path, split: Literal["train", "test"]) -> tuple[Path, Path]:
    """(image list, label matrix) of a split."""
    return root / f"{split}.txt", root / f"{split}_labels.npy"


def check_nuswide_root(root: Path) -> None:
    """Raise DataError unless the images folder and both splits' list and label files exist."""
    check_folder(root, "nuswide", LAYOUT)
    required = [root / "images", *nuswide_files(root, "train"), *nuswide_files(root, "test")]
    for path in required:
        if not path.exists():
            raise DataError(f"nuswide root {root} is missing {path.name}; expected layout: {LAYOUT}")


def read_labels(path: Path, n_rows: int) -> np.ndarray:
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"nuswide: cannot read {path} as a .npy matrix ({err}); expected layout: {LAYOUT}") from None
    if labels.shape != (n_rows, len(NUSWIDE)) or labels.dtype.kind not in "iub":
        raise DataError(
            f"nuswide: {path} is a {labels.dtype} array of shape {labels.shape}, expected an integer "
            f"matrix of shape ({n_rows}, {len(NUSWIDE)}) matching the lines of the image list"
        )
    if not np.isin(labels, (-1, 0, 1)).all():
        raise DataError(f"nuswide: {path} holds values other than 1, 0, -1")
    return labels.astype(np.int8)


def load_nuswide(root: Path, split: Literal["train", "test"]) -> LabelledImages:
    """Load one split of the prepared NUS-WIDE layout."""
    root = Path(root).expanduser().absolute()
    check_nuswide_root(root)
    list_file, label_file = nuswide_files(root, split)
    rel_paths = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not rel_paths:
        raise DataError(f"nuswide: {list_file} lists no images")
    labels = read_labels(label_file, len(rel_paths))
    paths = [root / "images" / p for p in rel_paths]
    check_images_exist(paths, "nuswide", LAYOUT)
    return LabelledImages(paths, labels, list(NUSWIDE))


def root_from_config(cfg: TrialConfig) -> Path:
    """data_root, with the images folder and both splits' files checked."""
    root = required_root(cfg, LAYOUT)
    check_nuswide_root(root)
    return root


def load_split(cfg: TrialConfig, root: Path, split: Literal["train", "test"]) -> LabelledImages:
    """One split (nothing in the config changes how NUS-WIDE is read)."""
    return load_nuswide(root, split)
