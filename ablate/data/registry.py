"""Datasets by name: each is a declaration (class names, expected layout, where its code is), so the
rest of ablate never matches dataset names and a new dataset is one `register_dataset` call.

Declarations import nothing heavy: root and loader are "module:attribute" references imported on
first use, so configs naming a dataset validate without torch, PIL or the dataset's own code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import ConfigError
from ..registry import Registry, resolve

if TYPE_CHECKING:
    from ablate.spec import TrialConfig

    from .base import LabelledImages

Split = Literal["train", "test"]
ClassNames = tuple[str, ...] | str | Callable[[], Sequence[str]]
RootFn = Callable[["TrialConfig"], Path]
LoadFn = Callable[["TrialConfig", Path, Split], "LabelledImages"]


@dataclass(frozen=True)
class DatasetInfo:
    """How to find, check and read one dataset.

    classnames: the names in label-column order, as a tuple, or a "module:attr" / callable giving them.
    layout: the files expected under the root, for its errors (and users) to quote.
    root: "module:attr" or callable (cfg) -> Path: the usable root (generated if need be), or a
        DataError naming the layout.
    load: "module:attr" or callable (cfg, root, split) -> LabelledImages, split "train" or "test".
    """

    name: str
    classnames: ClassNames
    layout: str
    root: str | RootFn
    load: str | LoadFn

    def __post_init__(self) -> None:
        if isinstance(self.classnames, Sequence) and not isinstance(self.classnames, str):
            object.__setattr__(self, "classnames", tuple(self.classnames))  # a list is accepted, kept immutable
        if not self.layout.strip():
            raise ConfigError(f"dataset '{self.name}': declare its expected layout (the hint its errors quote)")
        for field in ("classnames", "root", "load"):  # a typo surfaces here, not at the first trial
            ref = getattr(self, field)
            if isinstance(ref, str) and ":" not in ref:
                raise ConfigError(f"dataset '{self.name}': {field} {ref!r} is not a 'module:attribute' reference")

    def class_names(self) -> list[str]:
        """A fresh list of the class names (their module is imported now if they are a reference)."""
        names = self.classnames if isinstance(self.classnames, tuple) else resolve(self.classnames)
        return list(names() if callable(names) else names)

    def resolve_root(self, cfg: TrialConfig) -> Path:
        return resolve(self.root)(cfg)

    def load_split(self, cfg: TrialConfig, root: Path, split: Split) -> LabelledImages:
        return resolve(self.load)(cfg, root, split)


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def register_dataset(info: DatasetInfo, replace: bool = False) -> DatasetInfo:
    """Make `info.name` usable as `dataset:` in configs and sweeps (replace=True overrides a registered one)."""
    return DATASETS.register(info.name, info, replace=replace)


def dataset_names() -> list[str]:
    """Registered dataset names, in registration order."""
    return DATASETS.names()


# ---- built-in datasets: their code lives in ablate/data/<module>.py, imported on first use ------------

COCO_LAYOUT = (
    "<root>/annotations/instances_{train,val}2014.json and <root>/{train,val}2014/<file_name> "
    "(train2014 = train split, val2014 = test split)"
)
VOC_LAYOUT = (
    "<root>/VOCdevkit/VOC2007/ (or that folder itself) with ImageSets/Main/{trainval,test}.txt, "
    "Annotations/<id>.xml and JPEGImages/<id>.jpg"
)
NUSWIDE_LAYOUT = (
    "<root>/images/..., <root>/{train,test}.txt (image paths relative to <root>/images, one per line) "
    "and <root>/{train,test}_labels.npy (int matrix [lines, 81] of 1/0/-1, Concepts81.txt column order)"
)
SYNTHETIC_LAYOUT = f"generated on first use into data_root (default: under cache_dir), as {COCO_LAYOUT}"
WORLD_LAYOUT = (
    f"a world made by `ablate world build --out <root>` (data_root unset: the embedded world, built under "
    f"cache_dir on first use), i.e. {COCO_LAYOUT}"
)

register_dataset(DatasetInfo("coco2014", "ablate.data.classnames:COCO2014", COCO_LAYOUT,
                             "ablate.data.coco:root_from_config", "ablate.data.coco:load_split"))
register_dataset(DatasetInfo("voc2007", "ablate.data.classnames:VOC2007", VOC_LAYOUT,
                             "ablate.data.voc:root_from_config", "ablate.data.voc:load_split"))
register_dataset(DatasetInfo("nuswide", "ablate.data.classnames:NUSWIDE", NUSWIDE_LAYOUT,
                             "ablate.data.nuswide:root_from_config", "ablate.data.nuswide:load_split"))
register_dataset(DatasetInfo("synthetic", "ablate.data.classnames:SYNTHETIC", SYNTHETIC_LAYOUT,
                             "ablate.data.synthetic:root_from_config", "ablate.data.synthetic:load_split"))
register_dataset(DatasetInfo("world", "ablate.world.scenes:WORLD_CLASSES", WORLD_LAYOUT,
                             "ablate.world.dataset:root_from_config", "ablate.world.dataset:load_split"))
