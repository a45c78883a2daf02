"""What a complete copy of a real dataset is: its official archives (where they are, their published
checksums) and its splits' official image counts. `ablate data fetch` downloads and verifies the
archives, `ablate data check` (and a sweep's pre-flight) compares a tree with the counts.

Pure data (no torch, no network code), so specs can validate `data:` entries against it. Tests build
smaller manifests with `with_counts`; the commands always use the official ones below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from ..errors import DataError

# base URL of a mirror that serves the archives under their official file names (`--mirror` wins)
MIRROR_ENV = "ABLATE_DATA_MIRROR"

Layout = Literal["voc", "coco", "nuswide"]


@dataclass(frozen=True)
class Archive:
    """One downloadable archive of a dataset.

    md5: the published checksum, or None where none is published (COCO: the zip's own CRCs and the
        member counts verify it instead).
    size_hint: bytes, for the free-space check when a server does not say (Content-Length wins).
    images_of: the split whose images it holds; the archive must hold exactly that many images.
    required: member paths it must contain (annotation files).
    """

    filename: str
    url: str
    md5: str | None = None
    size_hint: int = 0
    images_of: str | None = None
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetManifest:
    """A dataset's official splits and archives. splits: split name -> official image count (None: no
    official count, e.g. NUS-WIDE, whose images each user assembles). default_root: where the shipped
    specs and the README point."""

    dataset: str
    layout: Layout
    splits: dict[str, int | None]  # a plain dict: manifests travel to Ray tasks, a mapping proxy cannot
    archives: tuple[Archive, ...] = ()
    default_root: Path | None = None
    image_suffix: str = ".jpg"
    # top-level entries the archives create under the root, in the order they are moved in: the
    # annotations last, so a loader sees either no annotation file or a complete tree
    entries: tuple[str, ...] = ()

    def with_counts(self, **counts: int) -> DatasetManifest:
        """The same dataset expecting other image counts per split (tests' small archives)."""
        unknown = set(counts) - set(self.splits)
        if unknown:
            raise ValueError(f"{self.dataset} has no split(s) {sorted(unknown)}; splits: {list(self.splits)}")
        return dataclasses.replace(self, splits={**self.splits, **counts})


VOC2007 = DatasetManifest(
    dataset="voc2007",
    layout="voc",
    splits={"trainval": 5_011, "test": 4_952},
    # the URLs and MD5s torchvision's VOC module also carries
    archives=(
        Archive("VOCtrainval_06-Nov-2007.tar",
                "https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar",
                md5="c52e279531787c972589f7e41ab4ae64", size_hint=460_000_000, images_of="trainval"),
        Archive("VOCtest_06-Nov-2007.tar",
                "https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
                md5="b6e924de25625d8de591ea690078ad9f", size_hint=451_000_000, images_of="test"),
    ),
    default_root=Path("/mnt/shared/data/voc"),
    entries=("VOCdevkit",),
)

COCO2014 = DatasetManifest(
    dataset="coco2014",
    layout="coco",
    splits={"train2014": 82_783, "val2014": 40_504},
    archives=(
        Archive("train2014.zip", "http://images.cocodataset.org/zips/train2014.zip",
                size_hint=13_510_000_000, images_of="train2014"),
        Archive("val2014.zip", "http://images.cocodataset.org/zips/val2014.zip",
                size_hint=6_645_000_000, images_of="val2014"),
        Archive("annotations_trainval2014.zip", "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
                size_hint=253_000_000,
                required=("annotations/instances_train2014.json", "annotations/instances_val2014.json")),
    ),
    default_root=Path("/mnt/shared/data/coco"),
    entries=("train2014", "val2014", "annotations"),
)

# no official image archive: checked against its documented layout only (the README says how to build it)
NUSWIDE = DatasetManifest(dataset="nuswide", layout="nuswide", splits={"train": None, "test": None})

MANIFESTS: Mapping[str, DatasetManifest] = MappingProxyType({m.dataset: m for m in (VOC2007, COCO2014, NUSWIDE)})


def manifest_for(dataset: str, manifests: Mapping[str, DatasetManifest] = MANIFESTS) -> DatasetManifest:
    """The manifest of a dataset, or a DataError naming the datasets that have one."""
    if dataset not in manifests:
        raise DataError(f"no manifest for dataset '{dataset}'; `ablate data` knows {', '.join(manifests)}")
    return manifests[dataset]


def fetchable(manifests: Mapping[str, DatasetManifest] = MANIFESTS) -> list[str]:
    """Datasets with official archives to download."""
    return [name for name, m in manifests.items() if m.archives]
