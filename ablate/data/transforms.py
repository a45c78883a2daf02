"""Image transforms: square resize, optional Cutout + RandAugment for training, CLIP normalisation.

Two augmentation recipes, both Cutout then RandAugment (the reference's order):
- `torchvision`: Cutout filled with the normalisation mean, then torchvision's RandAugment
  (2 of its 14 operations, magnitude 9 of 31).
- `reference`: what the DualCoOp / PositiveCoOp code trains with: Cutout of half the image side in
  a random colour on every image, then `ReferenceRandAugment` (2 of 15 operations, each applied
  with probability 0.5 at a magnitude drawn from 1..9 of 10).
Randomness comes from torch's RNG, so DataLoader workers differ and epochs are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torchvision import transforms as T

Interpolation = Literal["bicubic", "bilinear"]
INTERPOLATION = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high] from torch's RNG."""
    return int(torch.randint(low, high + 1, ()))


def _paint_square(img: Image.Image, side_w: int, side_h: int, fill: tuple[int, int, int]) -> Image.Image:
    """A side_w x side_h rectangle at a uniformly random centre, clipped at the borders."""
    w, h = img.size
    x0, y0 = _randint(0, w - 1) - side_w // 2, _randint(0, h - 1) - side_h // 2
    img = img.copy()
    # PIL rectangles include their far corner, hence the -1
    box = [max(x0, 0), max(y0, 0), min(x0 + side_w, w) - 1, min(y0 + side_h, h) - 1]
    if box[2] >= box[0] and box[3] >= box[1]:
        ImageDraw.Draw(img).rectangle(box, fill=fill)
    return img


class Cutout:
    """Paint one hole of `factor` x the image's width and height at a random centre (clipped at the
    borders), filled with `fill`, or with a colour drawn anew for every image when `fill` is None."""

    def __init__(self, fill: tuple[int, int, int] | None = None, factor: float = 0.5) -> None:
        self.fill = fill
        self.factor = factor

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        fill = self.fill if self.fill is not None else (_randint(0, 255), _randint(0, 255), _randint(0, 255))
        return _paint_square(img, int(self.factor * w + 0.5), int(self.factor * h + 0.5), fill)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fill={self.fill or 'random'}, factor={self.factor})"


# ---- the reference's RandAugment ------------------------------------------------------------------
# Each operation takes (image, magnitude index 1..9, sign +-1); a magnitude index m stands for m/9 of
# the operation's largest change. Geometric operations fill uncovered pixels with mid grey.
GREY = (128, 128, 128)
Op = Callable[[Image.Image, int, int], Image.Image]


def _shear(axis: int) -> Op:
    def op(img: Image.Image, m: int, sign: int) -> Image.Image:
        s = sign * 0.3 * m / 9
        coeffs = (1, s, 0, 0, 1, 0) if axis == 0 else (1, 0, 0, s, 1, 0)
        return img.transform(img.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC, fillcolor=GREY)
    return op


def _translate(axis: int) -> Op:
    def op(img: Image.Image, m: int, sign: int) -> Image.Image:
        shift = sign * (150 / 331) * m / 9 * img.size[axis]
        coeffs = (1, 0, shift, 0, 1, 0) if axis == 0 else (1, 0, 0, 0, 1, shift)
        return img.transform(img.size, Image.Transform.AFFINE, coeffs, fillcolor=GREY)
    return op


def _enhance(kind: type) -> Op:
    return lambda img, m, sign: kind(img).enhance(1 + sign * 0.1 * m)


def _cutout_op(img: Image.Image, m: int, sign: int) -> Image.Image:
    side = round(20 * m / 9)  # pixels, whatever the image size
    return _paint_square(img, side, side, (125, 122, 113))


REFERENCE_OPS: dict[str, Op] = {
    "invert": lambda img, m, sign: ImageOps.invert(img),
    "cutout": _cutout_op,
    "sharpness": _enhance(ImageEnhance.Sharpness),
    "autocontrast": lambda img, m, sign: ImageOps.autocontrast(img),
    "posterize": lambda img, m, sign: ImageOps.posterize(img, round(8 - 4 * m / 9)),
    "shear_x": _shear(0),
    "translate_x": _translate(0),
    "translate_y": _translate(1),
    "shear_y": _shear(1),
    "rotate": lambda img, m, sign: img.rotate(30 * m / 9, fillcolor=GREY),  # one direction only, as the reference
    "equalize": lambda img, m, sign: ImageOps.equalize(img),
    "contrast": _enhance(ImageEnhance.Contrast),
    "color": _enhance(ImageEnhance.Color),
    # solarize inverts the pixels v >= threshold: the ceiling of 256 - 256 m / 9 selects the same ones
    "solarize": lambda img, m, sign: ImageOps.solarize(img, math.ceil(256 - 256 * m / 9)),
    "brightness": _enhance(ImageEnhance.Brightness),
}


class ReferenceRandAugment:
    """`n_ops` operations drawn independently (a repeat is possible) from the 15 above; each is applied
    with probability `prob` at a magnitude index uniform in `magnitudes` and, where an operation has a
    direction, a random sign."""

    def __init__(self, n_ops: int = 2, prob: float = 0.5, magnitudes: tuple[int, int] = (1, 9)) -> None:
        self.n_ops, self.prob, self.magnitudes = n_ops, prob, magnitudes
        self.ops = list(REFERENCE_OPS)

    def draw(self) -> list[tuple[str, bool, int, int]]:
        """The random choices for one image: (operation, applied, magnitude index, sign) per slot."""
        choices = []
        for _ in range(self.n_ops):
            name = self.ops[_randint(0, len(self.ops) - 1)]
            applied = bool(torch.rand(()) < self.prob)
            choices.append((name, applied, _randint(*self.magnitudes), 1 if torch.rand(()) < 0.5 else -1))
        return choices

    def __call__(self, img: Image.Image) -> Image.Image:
        for name, applied, m, sign in self.draw():
            if applied:
                img = REFERENCE_OPS[name](img, m, sign)
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_ops={self.n_ops}, prob={self.prob}, magnitudes={self.magnitudes})"


def build_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], train: bool, augment: bool,
    recipe: Literal["torchvision", "reference"] = "torchvision",
    interpolation: Interpolation = "bicubic",
) -> T.Compose:
    """PIL RGB image -> normalised float tensor [3, image_size, image_size].

    The resize ignores the aspect ratio (as the reference does); augmentation only when
    train and augment are both true, in the reference's order (Cutout, then RandAugment).
    """
    steps: list = [T.Resize((image_size, image_size), interpolation=INTERPOLATION[interpolation])]
    if train and augment:
        if recipe == "reference":
            steps += [Cutout(fill=None), ReferenceRandAugment()]
        else:
            r, g, b = (round(255 * m) for m in mean)
            steps += [Cutout(fill=(r, g, b)), T.RandAugment()]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)
