"""The torch Dataset over a LabelledImages table (kept apart so reading tables needs no torch)."""

from __future__ import annotations

from collections.abc import Callable

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
        path = self.images.paths[i]
        try:
            with Image.open(path) as img:
                x = self.transform(img.convert("RGB"))
        except (OSError, SyntaxError, Image.DecompressionBombError) as err:  # unreadable, truncated, not an image,
            # or more pixels than PIL's limit (its message says how many and the limit)
            raise DataError(f"cannot read image {path} ({err}); replace or remove it") from None
        return x, torch.from_numpy(self.images.labels[i].astype(np.float32))
