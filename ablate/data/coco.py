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
from .registry import CocoOptions

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
        with ann.open(encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:  # ValueError: not JSON, or not UTF-8
        raise DataError(f"{dataset}: cannot read {ann} as JSON ({err}; UTF-8 expected); expected layout: "
                        f"{LAYOUT}") from None
    if not isinstance(data, dict) or not {"images", "categories", "annotations"} <= data.keys():
        missing = sorted({"images", "categories", "annotations"} - (data.keys() if isinstance(data, dict) else set()))
        raise DataError(f"{dataset}: {ann} needs top-level 'images', 'categories' and 'annotations' lists (COCO "
                        f"instances format); missing: {', '.join(missing) or 'a mapping at the top'}")
    _check_entries(data, ann, dataset)
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
    except (KeyError, TypeError) as err:
        raise DataError(f"{dataset}: {ann} is not in COCO instances format (bad entry: {err!r})") from None
    return coco


# what each entry of the three lists must hold, and of which type (bool is not an id)
_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "images": {"id": int, "file_name": str},
    "categories": {"id": int, "name": str},
    "annotations": {"image_id": int, "category_id": int},
}


def _check_entries(data: dict, ann: Path, dataset: str) -> None:
    """DataError naming the file, the list and the entry that lacks a field or has one of another type."""
    for key, fields in _FIELDS.items():
        entries = data[key]
        if not isinstance(entries, list):
            raise DataError(f"{dataset}: {ann}: '{key}' must be a list, not {type(entries).__name__}")
        for i, entry in enumerate(entries):
            for name, kind in fields.items():
                value = entry.get(name) if isinstance(entry, dict) else None
                if not isinstance(value, kind) or isinstance(value, bool) or value == "":
                    ident = f" (id {entry.get('id')!r})" if isinstance(entry, dict) and "id" in entry else ""
                    raise DataError(f"{dataset}: {ann}: {key}[{i}]{ident} needs '{name}' "
                                    f"({kind.__name__ if isinstance(kind, type) else kind}), got {value!r}")


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

    if not labels.any():  # nothing to learn or to score: every AP would be undefined
        raise DataError(f"{dataset or 'coco'}: {ann} has no positive label at all ({len(coco.anns)} annotations "
                        f"for {len(img_ids)} images); is this the right annotation file?")
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
    """One split; images without any annotation are dropped (and counted on stderr) with coco_empty_images: drop
    (a CocoOptions setting: a dataset in this layout that does not declare it drops them)."""
    drop = cfg.dataset_settings(CocoOptions).coco_empty_images == "drop"
    images = load_coco(root, split, dataset=cfg.dataset, drop_empty=drop)
    if images.dropped_empty:
        total = images.dropped_empty + len(images)
        print(f"{cfg.dataset} {split}: dropped {images.dropped_empty:,} of {total:,} images without any "
              "annotation (coco_empty_images: drop)", file=sys.stderr)
    return images
