"""Published results as data: a paper's table (mAP per data set, method and label ratio, parameter counts as
printed, and how the paper selected its epoch) in a small YAML file, validated before a report reads it.

Shipped tables live beside this module (`<name>.yaml`) and are asked for by name; any other file by path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from ..data import DATASETS
from ..errors import ConfigError
from ..methods import METHODS
from ..spec import StrictModel, format_validation_error
from ..userfiles import read_yaml

HERE = Path(__file__).parent
AVG = "avg"  # the published average over the table's label ratios
_PRINTED = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMbB]?)\s*$")
_SCALE = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}


class Source(StrictModel):
    paper: str
    authors: list[str] = Field(default_factory=list)
    venue: str
    year: int = Field(ge=1900)
    code: str | None = Field(None, description="the code's address; empty when the source does not give it")
    table: str = Field("", description="which table of the source the numbers are copied from")


class Protocol(StrictModel):
    selected_on: Literal["val", "test"] | None = Field(
        None, description="split the paper picked its epoch on; test is marked † against this sweep's val")
    avg_over: list[float] | None = Field(
        None, description="label ratios the published `avg` averages; unknown (null): the average is not compared")
    # what the numbers were trained with; a sweep row that differs in one is shown with the difference named
    backbone: str | None = Field(None, description="the image encoder, as open_clip names it (RN101, ViT-B-16)")
    image_size: int | None = Field(None, ge=16, description="input size in pixels, train and test")
    n_ctx: int | None = Field(None, ge=1, description="learned context tokens per prompt")
    csc: bool | None = Field(None, description="class-specific contexts")
    epochs: int | None = Field(None, ge=1)
    label_mask: str | None = Field(None, description="how labels were hidden at a label ratio, in words")
    notes: list[str] = Field(default_factory=list)

    def differences(self, settings: dict[str, str], size: int | None) -> list[str]:
        """What a sweep row's settings (its params; `size`: its image size in pixels) do not share with
        this protocol, each named: `backbone: RN101 there, ablate-tiny-vit here`."""
        here = {"backbone": settings.get("backbone"), "image_size": size, "n_ctx": settings.get("n_ctx"),
                "csc": settings.get("csc"), "epochs": settings.get("epochs")}
        out = []
        for name, value in here.items():
            there = getattr(self, name)
            if there is None or value in (None, "n/a"):  # not stated, or not read by the row's method
                continue
            if str(there).lower() != str(value).lower():
                out.append(f"{name}: {there} there, {value} here")
        if self.selected_on is not None and settings.get("select_on") not in (None, "n/a", self.selected_on):
            out.append(f"epoch picked on: {self.selected_on} there, {settings.get('select_on')} here")
        return out

    @property
    def avg_columns(self) -> list[str] | None:
        return None if self.avg_over is None else sorted(f"{r:g}" for r in self.avg_over)


class Entry(StrictModel):
    """One method on one data set: mAP per label ratio (and `avg`), parameters as printed ("1.3M", "80k")."""

    printed: str = Field("", description="the method's name as the source prints it")
    params: str | None = None
    map: dict[str, float]

    @field_validator("map", mode="before")
    @classmethod
    def _ratio_keys(cls, value: Any) -> Any:
        """YAML reads `0.1:` as a float: keys become the report's column names ("0.1", "avg")."""
        if not isinstance(value, dict):
            return value
        out = {}
        for key, v in value.items():
            text = str(key).strip().lower()
            if text != AVG:
                try:
                    ratio = float(text)
                except ValueError:
                    raise ValueError(f"{key!r}: a label ratio in (0, 1] or '{AVG}'") from None
                if not 0 < ratio <= 1:
                    raise ValueError(f"{key!r}: a label ratio in (0, 1] (10 % is 0.1) or '{AVG}'")
                text = f"{ratio:g}"
            out[text] = v
        return out

    @field_validator("map")
    @classmethod
    def _percent(cls, value: dict[str, float]) -> dict[str, float]:
        """mAP in percent: a value outside [0, 100] is a typo or a fraction (0.79 for 79 %) read wrong."""
        for key, v in value.items():
            if not 0 <= v <= 100:
                raise ValueError(f"{key}: {v:g} is not an mAP in percent (0-100)")
        return value

    @field_validator("params")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        if value is not None and not _PRINTED.match(value):
            raise ValueError(f"{value!r}: a count as printed, e.g. 1.3M, 730k or 20520")
        return value

    @property
    def params_value(self) -> float | None:
        """The printed count as a number (1.3M -> 1,300,000): only as precise as the print."""
        match = _PRINTED.match(self.params or "")
        return float(match.group(1)) * _SCALE[match.group(2).lower()] if match else None


class PublishedTable(StrictModel):
    source: Source
    protocol: Protocol = Field(default_factory=Protocol)
    results: dict[str, dict[str, Entry]] = Field(description="data set -> method -> entry")
    name: str = Field("", description="set from the file name when loaded")

    @field_validator("results")
    @classmethod
    def _registered(cls, results: dict[str, dict[str, Entry]]) -> dict[str, dict[str, Entry]]:
        for dataset, methods in results.items():
            if dataset not in DATASETS:
                raise ValueError(f"unknown data set {dataset!r}; registered: {', '.join(DATASETS.names())}")
            unknown = [m for m in methods if m not in METHODS]
            if unknown:
                raise ValueError(f"{dataset}: unknown method(s) {', '.join(map(repr, unknown))}; registered: "
                                 f"{', '.join(METHODS.names())}")
        return results

    @property
    def citation(self) -> str:
        return f"{self.source.venue} {self.source.year}: {self.source.paper}"


def shipped() -> list[str]:
    """Names of the tables shipped with ablate."""
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def load_published(name_or_path: str | Path) -> PublishedTable:
    """A shipped table by name, or a YAML file by path; ConfigError naming the file and field otherwise."""
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        if str(name_or_path) not in shipped():
            raise ConfigError(f"published table {str(name_or_path)!r}: no such file, and no shipped table of that "
                              f"name (shipped: {', '.join(shipped())})")
        path = HERE / f"{name_or_path}.yaml"
    data = read_yaml(path, "published table")
    if not isinstance(data, dict):
        raise ConfigError(f"published table {path}: expected a mapping with source, protocol and results")
    try:
        return PublishedTable(**{"name": path.stem, **data})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, f"published table {path}")) from None
