"""Types shared by the loaders: the error they raise and the table they return."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A dataset problem: the message says what is wrong and the expected layout / how to fix it."""


@dataclass
class LabelledImages:
    """Images with a multi-label matrix: 1 present, 0 absent, -1 unknown."""

    paths: list[Path]  # absolute image paths
    labels: np.ndarray  # int8 [M, N]
    classnames: list[str]

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
        return LabelledImages([self.paths[i] for i in idx], self.labels[idx], list(self.classnames))


def check_images_exist(paths: list[Path], dataset: str, layout: str) -> None:
    """Fail before training rather than mid-epoch when listed images are absent."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise DataError(
            f"{dataset}: {len(missing)} of {len(paths)} listed images are missing (e.g. {shown}); "
            f"expected layout: {layout}"
        )
