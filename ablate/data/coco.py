"""COCO 2014 (and the generated synthetic set, which uses the same layout).

Layout::

    <root>/annotations/instances_train2014.json   -> split "train"
    <root>/annotations/instances_val2014.json     -> split "test"
    <root>/train2014/<file_name>                  images named by the json's "file_name"
    <root>/val2014/<file_name>

Category ids are not contiguous (1..90 for COCO): label column j is the j-th smallest id,
and class names come from the json. Crowd annotations count as present, as in the reference.
Images without any annotation are kept as all-negative rows, or dropped with `drop_empty`
(the reference drops them from both splits); the count dropped is on the returned table.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pycocotools.coco import COCO

from .base import DataError, LabelledImages, check_folder, check_images_exist, required_root
from .classnames import class_names
from .registry import COCO_LAYOUT as LAYOUT

if TYPE_CHECKING:
    from ablate.spec import TrialConfig

_SPLITS: dict[Literal["train", "test"], str] = {"train": "train2014", "test": "val2014"}


def coco_files(root: Path, split: Literal["train", "test"]) -> tuple[Path, Path]:
    """(annotation json, image folder) of a split."""
    return folder_files(root, _SPLITS[split])


def folder_files(root: Path, folder: str) -> tuple[Path, Path]:
    """(annotation json, image folder) of the split whose images are in `folder` (train2014, val2014)."""
    return root / "annotations" / f"instances_{folder}.json", root / folder


def check_coco_root(root: Path, dataset: str = "coco2014") -> None:
    """Raise DataError unless both splits' annotation files and image folders exist."""
    check_folder(root, dataset, LAYOUT)
    for split in _SPLITS:
        ann, images = coco_files(root, split)
        if not ann.is_file():
            raise DataError(f"{dataset} root {root} is missing {ann.relative_to(root)}; expected layout: {LAYOUT}")
        if not images.is_dir():
            raise DataError(
                f"{dataset} root {root} is missing the folder {images.relative_to(root)}/; expected layout: {LAYOUT}"
            )


def read_instances(ann: Path, dataset: str) -> COCO:
    try:
        with ann.open() as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{dataset}: cannot read {ann} as JSON ({err}); expected layout: {LAYOUT}") from None
    if not isinstance(data, dict) or not {"images", "categories"} <= data.keys():
        raise DataError(f"{dataset}: {ann} needs top-level 'images' and 'categories' lists (COCO instances format)")
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
    except (KeyError, TypeError) as err:
        raise DataError(f"{dataset}: {ann} is not in COCO instances format (bad entry: {err!r})") from None
    return coco


def load_coco(
    root: Path, split: Literal["train", "test"], dataset: str | None = "coco2014", drop_empty: bool = False
) -> LabelledImages:
    """Load one split; `dataset` (a registered name) checks the class count, None skips that check."""
    root = Path(root).expanduser().absolute()
    check_coco_root(root, dataset or "coco")
    ann, image_dir = coco_files(root, split)
    coco = read_instances(ann, dataset or "coco")

    cat_ids = sorted(coco.cats)
    names = [coco.cats[c]["name"] for c in cat_ids]
    if dataset is not None and len(names) != len(class_names(dataset)):
        raise DataError(
            f"{dataset}: {ann} has {len(names)} categories, expected {len(class_names(dataset))}; "
            f"is this the right annotation file?"
        )
    img_ids = sorted(coco.imgs)
    row = {img_id: i for i, img_id in enumerate(img_ids)}
    col = {cat_id: j for j, cat_id in enumerate(cat_ids)}

    labels = np.zeros((len(img_ids), len(cat_ids)), dtype=np.int8)
    for a in coco.anns.values():
        if a["image_id"] not in row or a["category_id"] not in col:
            raise DataError(
                f"{dataset or 'coco'}: {ann} annotation {a.get('id')} refers to an unknown "
                f"image_id {a['image_id']} or category_id {a['category_id']}"
            )
        labels[row[a["image_id"]], col[a["category_id"]]] = 1

    # asarray: numpy types a reduction over one axis as possibly a scalar
    keep = np.asarray(labels.any(axis=1)) if drop_empty else np.ones(len(img_ids), dtype=bool)
    paths = [image_dir / coco.imgs[i]["file_name"] for i, k in zip(img_ids, keep) if k]
    check_images_exist(paths, dataset or "coco", LAYOUT)
    return LabelledImages(paths, labels[keep], names, dropped_empty=int((~keep).sum()))


def root_from_config(cfg: TrialConfig) -> Path:
    """The data_root of a dataset in this layout (coco2014, or a registered one), both splits checked."""
    root = required_root(cfg, LAYOUT)
    check_coco_root(root, cfg.dataset)
    return root


def load_split(cfg: TrialConfig, root: Path, split: Literal["train", "test"]) -> LabelledImages:
    """One split; images without any annotation are dropped (and counted on stderr) with coco_empty_images: drop."""
    images = load_coco(root, split, dataset=cfg.dataset, drop_empty=cfg.coco_empty_images == "drop")
    if images.dropped_empty:
        total = images.dropped_empty + len(images)
        print(f"{cfg.dataset} {split}: dropped {images.dropped_empty:,} of {total:,} images without any "
              "annotation (coco_empty_images: drop)", file=sys.stderr)
    return images
