"""Pascal VOC 2007.

Layout (``root`` may be the folder holding ``VOCdevkit``, ``VOCdevkit`` itself, or ``VOC2007``)::

    <root>/VOCdevkit/VOC2007/ImageSets/Main/trainval.txt   -> split "train" (one image id per line)
    <root>/VOCdevkit/VOC2007/ImageSets/Main/test.txt       -> split "test"
    <root>/VOCdevkit/VOC2007/Annotations/<id>.xml
    <root>/VOCdevkit/VOC2007/JPEGImages/<id>.jpg

A class counts as present when a non-difficult object of it is annotated. A class seen only
through difficult objects is 0 with ``difficult="negative"`` (reference behaviour), 1 with
``"positive"`` and -1 (unknown) with ``"ignore"``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..pathnames import component_problem
from .base import DataError, LabelledImages, check_images_exist, required_root
from .classnames import VOC2007
from .registry import VOC_LAYOUT as LAYOUT
from .registry import VocOptions

if TYPE_CHECKING:
    from ablate.spec import TrialConfig

Difficult = Literal["negative", "positive", "ignore"]
_LIST = {"train": "trainval", "test": "test"}
_DIFFICULT_VALUE = {"negative": 0, "positive": 1, "ignore": -1}


def resolve_voc_root(root: Path) -> Path:
    """The VOC2007 folder under `root` (several common roots accepted), with its layout checked."""
    root = Path(root).expanduser().absolute()
    if root.is_file():
        raise DataError(f"voc2007 root {root} is a file, not a folder; expected layout: {LAYOUT}")
    for base in (root / "VOCdevkit" / "VOC2007", root / "VOC2007", root):
        if (base / "Annotations").is_dir():
            break
    else:
        raise DataError(f"voc2007 root {root} has no VOCdevkit/VOC2007/Annotations folder; expected layout: {LAYOUT}")
    required = [base / "ImageSets" / "Main" / f"{name}.txt" for name in _LIST.values()]
    for path in [*required, base / "JPEGImages"]:
        if not path.exists():
            raise DataError(f"voc2007 folder {base} is missing {path.relative_to(base)}; expected layout: {LAYOUT}")
    return base


def read_objects(xml_path: Path) -> list[tuple[str, bool]]:
    """(class name, difficult) of every object in one annotation file."""
    try:
        tree = ET.parse(xml_path)
    except (OSError, ET.ParseError) as err:
        raise DataError(f"voc2007: cannot read annotation {xml_path} ({err}); expected layout: {LAYOUT}") from None
    objects = []
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        if name not in VOC2007:
            raise DataError(f"voc2007: {xml_path} has an object of unknown class {name!r}")
        objects.append((name, (obj.findtext("difficult") or "0").strip() == "1"))
    return objects


def _label_row(objects: list[tuple[str, bool]], difficult: Difficult) -> np.ndarray:
    row = np.zeros(len(VOC2007), dtype=np.int8)
    for name, is_difficult in objects:  # difficult ones first so a clear object overrides them
        if is_difficult:
            row[VOC2007.index(name)] = _DIFFICULT_VALUE[difficult]
    for name, is_difficult in objects:
        if not is_difficult:
            row[VOC2007.index(name)] = 1
    return row


def load_voc(root: Path, split: Literal["train", "test"], difficult: Difficult = "negative") -> LabelledImages:
    """Load trainval (split "train") or test of VOC 2007 with the chosen difficult-object handling."""
    if difficult not in _DIFFICULT_VALUE:
        raise ValueError(f"difficult must be one of {list(_DIFFICULT_VALUE)}, got {difficult!r}")
    base = resolve_voc_root(root)
    listing = base / "ImageSets" / "Main" / f"{_LIST[split]}.txt"
    try:
        ids = listing.read_text(encoding="utf-8").split()
    except (OSError, ValueError) as err:
        raise DataError(f"voc2007: cannot read {listing} as UTF-8 text ({err})") from None
    if not ids:
        raise DataError(f"voc2007: {base}/ImageSets/Main/{_LIST[split]}.txt lists no images")
    for i in ids:  # each names files in Annotations/ and JPEGImages/
        if (problem := component_problem(i)) is not None:
            raise DataError(f"voc2007: {listing} lists image id {i!r}, which {problem}")
    labels = np.stack([_label_row(read_objects(base / "Annotations" / f"{i}.xml"), difficult) for i in ids])
    if not labels.any():
        raise DataError(f"voc2007: the {len(ids)} annotations of {listing} have no positive label at all")
    paths = [base / "JPEGImages" / f"{i}.jpg" for i in ids]
    check_images_exist(paths, "voc2007", LAYOUT)
    return LabelledImages(paths, labels, list(VOC2007))


def root_from_config(cfg: TrialConfig) -> Path:
    """The VOC2007 folder under data_root, its layout checked."""
    return resolve_voc_root(required_root(cfg, LAYOUT))


def load_split(cfg: TrialConfig, root: Path, split: Literal["train", "test"]) -> LabelledImages:
    """One split, difficult objects handled as the dataset's voc_difficult setting says."""
    return load_voc(root, split, cfg.dataset_settings(VocOptions).voc_difficult)
