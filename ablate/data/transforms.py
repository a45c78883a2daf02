"""Image transforms: square resize, optional Cutout + RandAugment for training, CLIP normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw
from torchvision import transforms as T


class Cutout:
    """Paint one square hole of `factor` x the image side at a random centre (clipped at the borders).

    Same geometry as the reference's CutoutPIL; the hole is filled with `fill` (the normalisation
    mean, so it becomes zero after Normalize). Uses torch's RNG so DataLoader workers differ.
    """

    def __init__(self, fill: tuple[int, int, int], factor: float = 0.5) -> None:
        self.fill = fill
        self.factor = factor

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        side_w, side_h = int(self.factor * w + 0.5), int(self.factor * h + 0.5)
        x0, y0 = (int(torch.randint(n, ())) - side // 2 for n, side in ((w, side_w), (h, side_h)))
        img = img.copy()
        # PIL rectangles include their far corner, hence the -1
        box = [max(x0, 0), max(y0, 0), min(x0 + side_w, w) - 1, min(y0 + side_h, h) - 1]
        ImageDraw.Draw(img).rectangle(box, fill=self.fill)
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fill={self.fill}, factor={self.factor})"


def build_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], train: bool, augment: bool
) -> T.Compose:
    """PIL RGB image -> normalised float tensor [3, image_size, image_size].

    The resize ignores the aspect ratio (as the reference does); augmentation only when
    train and augment are both true, in the reference's order (Cutout, then RandAugment).
    """
    steps: list = [T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC)]
    if train and augment:
        steps += [Cutout(fill=tuple(round(255 * m) for m in mean)), T.RandAugment()]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)
