"""A small generated multi-label image set in the COCO 2014 layout (read back by load_coco).

Each class is one colour + shape pair (classnames.SYNTHETIC); an image holds 1-4 distinct
classes, each in its own quadrant (no occlusion), on a grey noise background. Class
frequencies are uneven (weights ~ 1/(k+1)^0.8), and the first 10 images of each split hold
class 0..9 respectively, so every class has a positive in every split. Category ids are
3, 7, 11, ... (non-contiguous like real COCO) to exercise the id -> column mapping.

Generation is deterministic in (n_train, n_test, image_size, seed); a complete set carries a
manifest (ablate_synthetic.json) with those parameters and is reused instead of regenerated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from ..files import fill_atomically
from .base import DataError, LabelledImages
from .classnames import SYNTHETIC
from .coco import check_coco_root, coco_files, load_coco
from .registry import SyntheticOptions

if TYPE_CHECKING:
    from ablate.spec import TrialConfig

SYNTHETIC_SEED = 0  # data seed: the same set for every trial seed
SYNTHETIC_IMAGE_SIZE = 96
MANIFEST = "ablate_synthetic.json"
_FORMAT_VERSION = 1  # bump when the drawing changes, so stale sets are not reused

CATEGORY_IDS = [3 + 4 * k for k in range(len(SYNTHETIC))]
_COLOURS = {
    "red": (220, 30, 30), "blue": (30, 60, 230), "green": (30, 170, 50), "yellow": (240, 220, 30),
    "magenta": (220, 40, 210), "cyan": (40, 220, 230), "orange": (245, 140, 20),
    "white": (250, 250, 250), "black": (10, 10, 10), "brown": (125, 75, 30),
}
_WEIGHTS = 1.0 / np.arange(1, len(SYNTHETIC) + 1) ** 0.8
_WEIGHTS /= _WEIGHTS.sum()


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), (cx, y0)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)
    elif shape == "cross":
        t = (x1 - x0) / 6  # half the bar thickness
        draw.rectangle((cx - t, y0, cx + t, y1), fill=colour)
        draw.rectangle((x0, cy - t, x1, cy + t), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _make_image(rng: np.random.Generator, size: int, forced: int | None) -> tuple[Image.Image, list]:
    """One image and its (class index, [x, y, w, h]) objects."""
    n = int(rng.integers(1, 5))
    classes = [int(c) for c in rng.choice(len(SYNTHETIC), size=n, replace=False, p=_WEIGHTS)]
    if forced is not None and forced not in classes:
        classes[0] = forced
    background = rng.normal(rng.uniform(90, 170), 18, (size, size, 3))
    img = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)

    cell = size // 2
    objects = []
    for c, quadrant in zip(classes, rng.permutation(4).tolist()):
        side = int(rng.integers(int(0.55 * cell), int(0.9 * cell) + 1))
        x = (quadrant % 2) * cell + int(rng.integers(0, cell - side + 1))
        y = (quadrant // 2) * cell + int(rng.integers(0, cell - side + 1))
        colour, shape = SYNTHETIC[c].split()
        _draw_shape(draw, shape, (x, y, x + side - 1, y + side - 1), _COLOURS[colour])
        objects.append((c, [x, y, side, side]))
    return img, objects


def _write_split(root: Path, split: Literal["train", "test"], n: int, size: int, seed: int, id_offset: int) -> None:
    ann_path, image_dir = coco_files(root, split)
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True)
    rng = np.random.default_rng([seed, id_offset])
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(n):
        img, objects = _make_image(rng, size, forced=i if i < len(SYNTHETIC) else None)
        image_id = id_offset + i + 1
        file_name = f"COCO_{image_dir.name}_{image_id:012d}.jpg"
        img.save(image_dir / file_name, quality=92)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for c, bbox in objects:
            annotations.append({
                "id": len(annotations) + 1 + id_offset, "image_id": image_id, "category_id": CATEGORY_IDS[c],
                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0,
            })
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in zip(CATEGORY_IDS, SYNTHETIC)]
    data = {"info": {"description": "ablate synthetic shapes"}, "images": images,
            "annotations": annotations, "categories": categories}
    ann_path.write_text(json.dumps(data))


def _is_complete(root: Path, params: dict) -> bool:
    try:
        return json.loads((root / MANIFEST).read_text()) == params
    except (OSError, ValueError):
        return False


def generate_synthetic(
    root: Path, n_train: int, n_test: int, image_size: int = SYNTHETIC_IMAGE_SIZE, seed: int = SYNTHETIC_SEED
) -> Path:
    """Generate the set at `root` (skipped when a complete one with these parameters is there)."""
    root = Path(root).expanduser().absolute()
    params = {"version": _FORMAT_VERSION, "n_train": n_train, "n_test": n_test, "image_size": image_size, "seed": seed}
    if _is_complete(root, params):
        return root
    if root.exists() and not root.is_dir():
        raise DataError(f"synthetic root {root} is a file, not a folder; choose a folder to generate into")
    if root.exists() and any(root.iterdir()):
        raise DataError(
            f"synthetic root {root} is not empty and holds no synthetic set with parameters {params} "
            f"(manifest {MANIFEST} missing or different); remove it or choose another data_root"
        )

    def fill(tmp: Path) -> None:
        _write_split(tmp, "train", n_train, image_size, seed, id_offset=0)
        _write_split(tmp, "test", n_test, image_size, seed, id_offset=1_000_000)
        (tmp / MANIFEST).write_text(json.dumps(params, sort_keys=True))

    try:
        fill_atomically(root, fill)
    except OSError:
        if not _is_complete(root, params):  # a concurrent writer did not win either
            raise
    return root


def synthetic_sizes(cfg: TrialConfig) -> tuple[int, int]:
    """(train, test) image counts of the generated set."""
    n_train = cfg.dataset_settings(SyntheticOptions).synthetic_images
    return n_train, max(n_train // 2, 20)


def root_from_config(cfg: TrialConfig) -> Path:
    """The set at data_root, or by default in the cache dir, generated on first use."""
    n_train, n_test = synthetic_sizes(cfg)
    default = cfg.resolved_cache_dir() / f"synthetic-n{n_train}-s{SYNTHETIC_IMAGE_SIZE}-d{SYNTHETIC_SEED}"
    root = generate_synthetic(cfg.data_root or default, n_train, n_test, SYNTHETIC_IMAGE_SIZE, SYNTHETIC_SEED)
    check_coco_root(root, "synthetic")
    return root


def load_split(cfg: TrialConfig, root: Path, split: Literal["train", "test"]) -> LabelledImages:
    """One split (every generated image has at least one class, so none is dropped)."""
    return load_coco(root, split, dataset="synthetic")
