"""What the loaders share: the error they raise, the table they return and the configured root (safe
writes of generated files are ablate/files.py's)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# the one DataError (an AblateError); loaders and their callers import it from here
from ..errors import DataError

if TYPE_CHECKING:
    from ablate.spec import TrialConfig


@dataclass
class LabelledImages:
    """Images with a multi-label matrix: 1 present, 0 absent, -1 unknown."""

    paths: list[Path]  # absolute image paths
    labels: np.ndarray  # int8 [M, N]
    classnames: list[str]
    dropped_empty: int = 0  # images the loader left out for having no annotation at all

    def __post_init__(self) -> None:
        m, n = self.labels.shape
        if m != len(self.paths) or n != len(self.classnames):
            raise ValueError(
                f"labels {self.labels.shape} do not match {len(self.paths)} paths x {len(self.classnames)} classes"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: np.ndarray) -> LabelledImages:
        idx = np.asarray(idx, dtype=np.int64)
        return LabelledImages([self.paths[i] for i in idx], self.labels[idx], list(self.classnames), self.dropped_empty)

    def digest(self) -> str:
        """What the split holds: image names relative to their common folder (so the same data under another
        root has the same digest), the label matrix with its unknowns, the classes. 12 hex digits."""
        h = hashlib.sha256()
        root = os.path.commonpath([str(p) for p in self.paths]) if len(self.paths) > 1 else ""
        for path in self.paths:
            h.update(os.path.relpath(path, root).encode() if root else Path(path).name.encode())
            h.update(b"\0")
        h.update(np.ascontiguousarray(self.labels, dtype=np.int8).tobytes())
        h.update("\0".join(self.classnames).encode())
        return h.hexdigest()[:12]


def required_root(cfg: TrialConfig, layout: str) -> Path:
    """The configured data_root, absolute, for a dataset that cannot be generated: without one, a
    DataError quoting the layout to provide."""
    if cfg.data_root is None:
        raise DataError(f"{cfg.dataset} needs data_root; expected layout: {layout}")
    return Path(cfg.data_root).expanduser().absolute()


def check_folder(root: Path, dataset: str, layout: str) -> None:
    """DataError unless `root` is an existing folder (a file given as a root is named as such)."""
    if root.is_file():
        raise DataError(f"{dataset} root {root} is a file, not a folder; expected layout: {layout}")
    if not root.is_dir():
        raise DataError(f"{dataset} root {root} does not exist; expected layout: {layout}")


def check_images_exist(paths: list[Path], dataset: str, layout: str) -> None:
    """Fail before training rather than mid-epoch when listed images are absent."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise DataError(
            f"{dataset}: {len(missing)} of {len(paths)} listed images are missing (e.g. {shown}); "
            f"expected layout: {layout}"
        )
