"""The synthetic world's files: its splits of generated multi-label images with captions, in the COCO 2014
layout, built deterministically and cached; read back as LabelledImages (and as the `world` data set).
What an image shows and what its captions say is ablate.world.scenes.

Layout (split -> folder): train -> train2014, test -> val2014 (so `load_coco` reads both),
val -> minival (held out for pre-training diagnostics) and pretrain -> pretrain (the caption corpus
of pre-training, disjoint from the downstream splits)::

    <root>/annotations/instances_{train2014,val2014,minival,pretrain}.json
    <root>/{train2014,val2014,minival,pretrain}/world_<split>_<id>.png
    <root>/captions/{train,val,test,pretrain}_{presence,negation}.json   file name -> list of captions
    <root>/ablate_world.json                                    manifest: config, counts, hashes

Generation is deterministic in WorldConfig (byte-identical files for the same config).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pycocotools.coco import COCO

from ..data.base import DataError, LabelledImages
from ..data.coco import check_coco_root, load_coco
from ..files import file_lock, fill_atomically
from ..progress import progress_bar
from .captions import STYLES
from .scenes import WORLD_CLASSES, negation_caption, presence_caption, render, sample_classes

if TYPE_CHECKING:
    from ablate.spec import TrialConfig

# train/test are the downstream splits (what `load_coco` reads); val is held out for pre-training
# diagnostics; pretrain is the image-caption corpus the world CLIPs learn from, disjoint from all of
# them, so pre-training never sees the captions (i.e. the full labels) of downstream training images.
SPLITS = {"train": "train2014", "val": "minival", "test": "val2014", "pretrain": "pretrain"}
MANIFEST = "ablate_world.json"
CAPTIONS_PER_IMAGE = 5
_VERSION = 3  # bump when drawing or captions change, so stale worlds are not reused


@dataclass(frozen=True)
class WorldConfig:
    n_train: int = 2000
    n_val: int = 300
    n_test: int = 600
    n_pretrain: int = 2000
    image_size: int = 64
    seed: int = 0

    def counts(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test, "pretrain": self.n_pretrain}


# ---- files --------------------------------------------------------------------------------------


def _write_split(root: Path, split: str, n: int, cfg: WorldConfig, progress: bool) -> None:
    folder = SPLITS[split]
    (root / folder).mkdir(parents=True)
    key = list(SPLITS).index(split)
    # separate streams: images, presence captions and negations do not shift one another
    rng_img, rng_cap, rng_neg = (np.random.default_rng([cfg.seed, key, s]) for s in range(3))
    images, annotations = [], []
    captions: dict[str, dict[str, list[str]]] = {style: {} for style in STYLES}
    for i in progress_bar(range(n), desc=f"world {split}", disable=not progress, leave=False):
        classes = sample_classes(rng_img, forced=i if i < len(WORLD_CLASSES) else None)
        img, objects = render(rng_img, cfg.image_size, classes)
        image_id = key * 1_000_000 + i + 1
        file_name = f"world_{split}_{image_id:07d}.png"
        img.save(root / folder / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": cfg.image_size, "height": cfg.image_size})
        for k, (c, bbox) in enumerate(objects):
            annotations.append({"id": image_id * 10 + k, "image_id": image_id,
                                "category_id": c + 1, "bbox": bbox, "area": round(bbox[2] * bbox[3], 2),
                                "iscrowd": 0})
        presence = [presence_caption(rng_cap, classes) for _ in range(CAPTIONS_PER_IMAGE)]
        captions["presence"][file_name] = [p + "." for p in presence]
        captions["negation"][file_name] = [negation_caption(rng_neg, p, classes) + "." for p in presence]
    categories = [{"id": c + 1, "name": name, "supercategory": "shape"} for c, name in enumerate(WORLD_CLASSES)]
    data = {"info": {"description": "ablate synthetic world"}, "images": images,
            "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(data))
    for style in STYLES:
        (root / "captions" / f"{split}_{style}.json").write_text(json.dumps(captions[style], indent=0))


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(root: Path, cfg: WorldConfig) -> dict:
    jsons = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.json"))
    return {"version": _VERSION, "config": asdict(cfg), "classes": WORLD_CLASSES, "counts": cfg.counts(),
            "sha256": {rel: _file_hash(root / rel) for rel in jsons}}


def is_complete(root: Path, cfg: WorldConfig) -> bool:
    """Manifest matches the config, its json files are there and every split folder holds its images
    (cheap: nothing is hashed)."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        if (manifest.get("version"), manifest.get("config")) != (_VERSION, asdict(cfg)):
            return False
        return (all((root / rel).is_file() for rel in manifest["sha256"])
                and all(len(os.listdir(root / SPLITS[s])) == n for s, n in cfg.counts().items()))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def world_hash(root: Path) -> str:
    """Short id of a built world's content (hash of its manifest, which hashes every json)."""
    manifest = Path(root) / MANIFEST
    if not manifest.is_file():
        raise DataError(f"{root} is not a built world ({MANIFEST} missing); build one with "
                        f"`ablate world build --out {root}` (into an empty folder)")
    return _file_hash(manifest)[:16]


def default_world_root(cache_dir: Path, cfg: WorldConfig = WorldConfig()) -> Path:
    key = hashlib.sha256(json.dumps([_VERSION, asdict(cfg)], sort_keys=True).encode()).hexdigest()[:10]
    return Path(cache_dir).expanduser().absolute() / f"world-{key}"


def build_world(root: Path, cfg: WorldConfig = WorldConfig(), progress: bool = True) -> Path:
    """Generate the world at `root`, or reuse a complete one built with the same config."""
    root = Path(root).expanduser().absolute()
    if is_complete(root, cfg):
        return root
    with file_lock(root.parent / f".{root.name}.lock"):  # one builder; the others wait and reuse
        if is_complete(root, cfg):
            return root
        if root.exists() and any(root.iterdir()):
            raise DataError(f"{root} is not empty and holds no world built with {cfg} "
                            f"(manifest {MANIFEST} missing or different); remove it or choose another folder")
        fill_atomically(root, lambda tmp: _fill(tmp, cfg, progress))
    return root


def _fill(folder: Path, cfg: WorldConfig, progress: bool) -> None:
    (folder / "annotations").mkdir()
    (folder / "captions").mkdir()
    for split, n in cfg.counts().items():
        _write_split(folder, split, n, cfg, progress)
    (folder / MANIFEST).write_text(json.dumps(_manifest(folder, cfg), indent=1, sort_keys=True))


# ---- reading ------------------------------------------------------------------------------------


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown world split {split!r}; choose from {', '.join(SPLITS)}")


def load_captions(root: Path, split: str, style: Literal["presence", "negation"]) -> dict[str, list[str]]:
    """Image file name -> caption variants."""
    _check_split(split)
    if style not in STYLES:
        raise DataError(f"unknown caption style {style!r}; choose from {', '.join(STYLES)}")
    path = Path(root) / "captions" / f"{split}_{style}.json"
    if not path.is_file():
        raise DataError(f"{path} not found: {root} is not a complete world; build one with "
                        f"`ablate world build --out {root}` (into an empty folder)")
    return json.loads(path.read_text())


def load_world(root: Path, split: str) -> LabelledImages:
    """Any split, val included (load_coco reads only train and test), through pycocotools."""
    _check_split(split)
    root = Path(root).expanduser().absolute()
    ann = root / "annotations" / f"instances_{SPLITS[split]}.json"
    if not ann.is_file():
        raise DataError(f"{ann} not found: {root} is not a complete world; build one with "
                        f"`ablate world build --out {root}` (into an empty folder)")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO(str(ann))
    cat_ids, img_ids = sorted(coco.getCatIds()), sorted(coco.getImgIds())
    col = {c: j for j, c in enumerate(cat_ids)}
    labels = np.zeros((len(img_ids), len(cat_ids)), dtype=np.int8)
    for i, img_id in enumerate(img_ids):
        for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            labels[i, col[a["category_id"]]] = 1
    paths = [root / SPLITS[split] / coco.imgs[i]["file_name"] for i in img_ids]
    return LabelledImages(paths, labels, [coco.cats[c]["name"] for c in cat_ids])


def root_from_config(cfg: TrialConfig) -> Path:
    """The embedded world (data_root unset), built on first use, or a world the user built, perhaps with
    another config; DataError saying how to build one if data_root holds none."""
    if cfg.data_root is None:
        root = build_world(default_world_root(cfg.resolved_cache_dir()), WorldConfig())
    else:
        root = Path(cfg.data_root).expanduser().absolute()
    try:
        check_coco_root(root, "world")
    except DataError as err:
        raise DataError(f"{err}\n(make one with `ablate world build --out {root}`, or leave data_root "
                        "unset for the embedded world)") from None
    return root


def load_split(cfg: TrialConfig, root: Path, split: Literal["train", "test"]) -> LabelledImages:
    """A downstream split, read like COCO (every world image holds a class, so none is dropped)."""
    return load_coco(root, split, dataset="world")
