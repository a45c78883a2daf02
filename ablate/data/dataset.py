"""The torch Dataset over a LabelledImages table (kept apart so reading tables needs no torch)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import DataError, LabelledImages


class MultiLabelDataset(torch.utils.data.Dataset):
    """(image tensor, float32 labels with -1 for unknown) pairs; images read with PIL as RGB."""

    def __init__(self, images: LabelledImages, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = read_image(self.images.paths[i], self.transform)
        return x, torch.from_numpy(self.images.labels[i].astype(np.float32))


def read_image(path: Path, transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """One image as RGB through `transform`; a DataError naming the file when it cannot be read."""
    try:
        with Image.open(path) as img:
            return transform(img.convert("RGB"))
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:  # unreadable, truncated, not an image,
        # or more pixels than PIL's limit (its message says how many and the limit)
        raise DataError(f"cannot read image {path} ({err}); replace or remove it") from None
