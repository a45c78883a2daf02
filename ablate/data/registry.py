"""Datasets by name: each is a declaration (class names, expected layout, where its code is), so the
rest of ablate never matches dataset names and a new dataset is one `register_dataset` call.

Declarations import nothing heavy: root and loader are "module:attribute" references imported on
first use, so configs naming a dataset validate without torch, PIL or the dataset's own code. A dataset
owns its settings: a pydantic options model, read from TrialConfig.dataset_options and set in a spec
under per_dataset.<name> beside any other field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError
from ..registry import Registry, resolve
from ..userfiles import words_for_booleans

if TYPE_CHECKING:
    from ablate.spec import TrialConfig

    from .base import LabelledImages

Split = Literal["train", "test"]
ClassNames = tuple[str, ...] | str | Callable[[], Sequence[str]]
RootFn = Callable[["TrialConfig"], Path]
LoadFn = Callable[["TrialConfig", Path, Split], "LabelledImages"]


class DatasetOptions(BaseModel):
    """A base for a dataset's options model (any pydantic model will do): as in every config, unknown keys
    are errors, values are checked on assignment, and no float is infinite or NaN."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _yaml_booleans(cls, data: Any) -> Any:
        return words_for_booleans(cls.model_fields, data)  # a YAML `off` reaches us as False


class CocoOptions(DatasetOptions):
    """What `ablate.data.coco:load_split` reads: a dataset in the COCO layout declares these to offer them."""

    coco_empty_images: Literal["drop", "keep"] = Field(
        "drop", description="images without any annotation: drop (the reference and most multi-label work; "
        "counted in the log) or keep as all-negative rows")


class VocOptions(DatasetOptions):
    voc_difficult: Literal["negative", "positive", "ignore"] = Field(
        "negative", description="a class seen only in objects marked difficult: a negative label (the "
        "reference), positive, or ignore (unknown, left out of the loss and the scores)")


class SyntheticOptions(DatasetOptions):
    synthetic_images: int = Field(240, ge=20, strict=True, description="train images of the generated set "
                                  "(test: half as many, at least 20)")


@dataclass(frozen=True)
class DatasetInfo:
    """How to find, check and read one dataset.

    classnames: the names in label-column order, as a tuple, or a "module:attr" / callable giving them.
    layout: the files expected under the root, for its errors (and users) to quote.
    root: "module:attr" or callable (cfg) -> Path: the usable root (generated if need be), or a
        DataError naming the layout.
    load: "module:attr" or callable (cfg, root, split) -> LabelledImages, split "train" or "test".
    options: the dataset's own settings, a pydantic model (unknown keys refused; DatasetOptions is a base):
        a trial carries them in `dataset_options`, its code reads them with `cfg.dataset_settings(Model)`.
    """

    name: str
    classnames: ClassNames
    layout: str
    root: str | RootFn
    load: str | LoadFn
    options: type[BaseModel] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.classnames, Sequence) and not isinstance(self.classnames, str):
            object.__setattr__(self, "classnames", tuple(self.classnames))  # a list is accepted, kept immutable
        if not self.layout.strip():
            raise ConfigError(f"dataset '{self.name}': declare its expected layout (the hint its errors quote)")
        for field in ("classnames", "root", "load"):  # a typo surfaces here, not at the first trial
            ref = getattr(self, field)
            if isinstance(ref, str) and ":" not in ref:
                raise ConfigError(f"dataset '{self.name}': {field} {ref!r} is not a 'module:attribute' reference")
        if self.options is not None and not (isinstance(self.options, type) and issubclass(self.options, BaseModel)):
            raise ConfigError(f"dataset '{self.name}': options must be a pydantic model class, got {self.options!r}")

    def parse_options(self, values: dict[str, Any]) -> dict[str, Any]:
        """`values` validated by the dataset's options model, defaults filled in (ValueError naming
        `dataset_options.<field>` otherwise)."""
        if self.options is None:
            if values:
                raise ValueError(f"dataset_options: dataset {self.name} takes no options (got "
                                 f"{', '.join(sorted(values))})")
            return {}
        try:
            return self.options.model_validate(values).model_dump(mode="json")
        except ValidationError as err:
            where, msg = option_error(err)
            raise ValueError(f"dataset_options.{where}: {msg} (dataset {self.name}; its options: "
                             f"{', '.join(self.options.model_fields)})") from None

    def owns(self, option: str) -> bool:
        """Whether `option` is one of the dataset's own settings."""
        return self.options is not None and option in self.options.model_fields

    def class_names(self) -> list[str]:
        """A fresh list of the class names (their module is imported now if they are a reference)."""
        names = self.classnames if isinstance(self.classnames, tuple) else resolve(self.classnames)
        return list(names() if callable(names) else names)

    def resolve_root(self, cfg: TrialConfig) -> Path:
        return resolve(self.root)(cfg)

    def load_split(self, cfg: TrialConfig, root: Path, split: Split) -> LabelledImages:
        return resolve(self.load)(cfg, root, split)


def option_error(err: ValidationError) -> tuple[str, str]:
    """(dotted field, message) of an options model's first error."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return where, "unknown option" if first["type"] == "extra_forbidden" else first["msg"]


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def register_dataset(info: DatasetInfo, replace: bool = False) -> DatasetInfo:
    """Make `info.name` usable as `dataset:` in configs and sweeps (replace=True overrides a registered one)."""
    return DATASETS.register(info.name, info, replace=replace)


def dataset_names() -> list[str]:
    """Registered dataset names, in registration order."""
    return DATASETS.names()


def option_owners(option: str) -> list[str]:
    """The registered datasets that declare `option` among their own settings."""
    return [name for name in DATASETS.names() if DATASETS.get(name).owns(option)]


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
                             "ablate.data.coco:root_from_config", "ablate.data.coco:load_split", CocoOptions))
register_dataset(DatasetInfo("voc2007", "ablate.data.classnames:VOC2007", VOC_LAYOUT,
                             "ablate.data.voc:root_from_config", "ablate.data.voc:load_split", VocOptions))
register_dataset(DatasetInfo("nuswide", "ablate.data.classnames:NUSWIDE", NUSWIDE_LAYOUT,
                             "ablate.data.nuswide:root_from_config", "ablate.data.nuswide:load_split"))
register_dataset(DatasetInfo("synthetic", "ablate.data.classnames:SYNTHETIC", SYNTHETIC_LAYOUT,
                             "ablate.data.synthetic:root_from_config", "ablate.data.synthetic:load_split",
                             SyntheticOptions))
register_dataset(DatasetInfo("world", "ablate.world.scenes:WORLD_CLASSES", WORLD_LAYOUT,
                             "ablate.world.dataset:root_from_config", "ablate.world.dataset:load_split"))
