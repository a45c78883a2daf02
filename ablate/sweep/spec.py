"""Validated configuration of a sweep (a tune_specs/*.yaml file): the grid and per-section settings over
TrialConfig fields, the Optuna and ASHA searches, each trial's resources, data fetching; and the arm
configs a spec expands into. Light like ablate.spec: no Ray, torch or MLflow."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, ValidationError, field_validator, model_validator

from ..catalogue import searchable
from ..data import DATASETS, option_owners
from ..data.registry import option_error
from ..errors import ConfigError
from ..methods import METHODS, method_info
from ..pathnames import check_component
from ..probes import probe_names
from ..secret_uri import SecretURI
from ..spec import (
    FLAT_DATASET_FIELDS,
    Int,
    StrictModel,
    TrialConfig,
    format_validation_error,
    notice_moved,
)
from ..userfiles import read_yaml


def _searchable(name: str) -> str:
    if name not in searchable():
        raise ValueError(f"metric '{name}' is not reported to Ray Tune every epoch; use one of "
                         f"{', '.join(sorted(searchable()))}")
    return name


# a URI that may hold a password: masked wherever the spec is shown, dumped or pickled
URI = Annotated[str, AfterValidator(SecretURI)]
# what Optuna and ASHA may optimise: the catalogue's metrics reported to Ray Tune every epoch
MetricName = Annotated[str, AfterValidator(_searchable)]
# objectives of a multi-objective search: also the end-of-trial costs (a search over them cannot prune)
Objective = Literal["val_map", "loss", "device_hours", "trainable_params"]
Mode = Literal["max", "min"]


class ParamSpace(StrictModel):
    """One Optuna-searched field."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[str | int | float | bool] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamSpace:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.type} needs low < high")
        elif self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        return self


class OptunaSpec(StrictModel):
    space: dict[str, ParamSpace]
    num_samples: int = Field(8, ge=1, description="Optuna trials (sampled configurations) per grid arm")
    metric: MetricName | list[Objective] = Field(
        "val_map", description="one metric, or a list of objectives for a multi-objective search (a Pareto front)")
    mode: Mode | list[Mode] = Field("max", description="one mode per metric (a list beside a list)")
    seed: int = 0
    seeds: list[Int] | None = Field(
        None, min_length=1, description="training seeds every sampled configuration runs with; the sampler gets "
        "their mean (the standard error is kept beside it), ASHA compares rungs on the mean")
    storage: URI | None = Field(
        None, description="Optuna storage URL for the studies (an RDB URL on a cluster); default: a sqlite file "
        "beside the sweep's state, so --resume continues every study with its full history")

    @model_validator(mode="after")
    def _objectives(self) -> OptunaSpec:
        if isinstance(self.metric, list) != isinstance(self.mode, list):
            raise ValueError("metric and mode: both one value, or both lists of the same length")
        if isinstance(self.metric, list):
            if len(self.metric) != len(self.mode) or len(self.metric) < 2 or len(set(self.metric)) < len(self.metric):
                raise ValueError("a multi-objective metric: at least two different objectives, and one mode for each")
        if self.seeds is not None and len(set(self.seeds)) < len(self.seeds):
            raise ValueError(f"seeds {self.seeds}: each seed once")
        return self

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """(metric, mode) pairs: one for a single-objective search."""
        if isinstance(self.metric, list) and isinstance(self.mode, list):
            return list(zip(self.metric, self.mode))
        return [(str(self.metric), str(self.mode))]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def seed_count(self) -> int:
        return len(self.seeds) if self.seeds else 1


class AshaSpec(StrictModel):
    metric: MetricName = "val_map"
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(1, ge=1, description="epochs before a trial can be stopped")
    reduction_factor: float = Field(3.0, gt=1)


class Resources(StrictModel):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0, description="fractions (e.g. 0.25) pack several trials on one GPU")
    wait_s: float = Field(600.0, ge=0, description="on a joined cluster, how long to wait for a node offering "
                          "cpu and gpu (counted again when a node joins) before the sweep is refused; a private "
                          "Ray is refused at once")


class DataSpec(StrictModel):
    """What a sweep does with a dataset's data before anything is recorded or launched."""

    fetch: bool = Field(False, description="fetch the dataset into every data_root its arms use (one Ray task on "
                        "a worker node; a complete root is left as it is) before the pre-flight check")
    mirror: str | None = Field(None, description="base URL serving the official archives under their file names "
                               "(default: $ABLATE_DATA_MIRROR, else the official addresses)")


class SweepSpec(StrictModel):
    """A tune_specs/*.yaml file: a grid and/or Optuna search over TrialConfig fields."""

    @model_validator(mode="before")
    @classmethod
    def _import_plugins(cls, data: Any) -> Any:
        """Plugins register names the rest of the spec may use, so they are imported first; then the flat
        dataset fields of older releases find their datasets."""
        if isinstance(data, dict):
            import_plugins(data.get("plugins") or [])
            data = _place_flat_fields(data)
        return data

    name: str = Field(description="MLflow experiment and Ray Tune run name")
    plugins: list[str] = Field(
        default_factory=list, description="modules imported before anything else is read (in the driver and in "
        "every trial process): where your own methods, datasets, probes or report sections register themselves")
    description: str = ""
    base: TrialConfig = Field(default_factory=TrialConfig)
    per_dataset: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="TrialConfig fields set per dataset (data_root, lr, image_size...) "
        "and the dataset's own settings (coco_empty_images, synthetic_images...)")
    per_method: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="TrialConfig fields set per method (lr multipliers, weight decay, "
        "warm-up lr, csc...); applied after per_dataset, before the grid")
    grid: dict[str, list] = Field(default_factory=dict, description="TrialConfig field -> values")
    optuna: OptunaSpec | None = None
    asha: AshaSpec | None = None
    resources: Resources = Field(default_factory=Resources)
    probes: list[str] = Field(
        default_factory=list, description="diagnostics run after each trial, logged to its MLflow run "
        "(registered probes: `ablate.probes.probe_names()`)")
    probe_limit: int | None = Field(200, ge=1, description="images per image-grounded probe")
    max_concurrent_trials: int | None = Field(None, ge=1)
    pack: Literal["auto", "off"] | None = Field(
        None, description="auto (the default for grid sweeps): arms that read the same images (ablate.pack) train "
        "together in one Ray trial, sharing each batch's loading, augmentation and frozen-encoder pass; off: one "
        "arm per trial. Optuna and ASHA sweeps keep one arm per trial")
    max_pack_arms: int = Field(
        32, ge=1, description="most arms in one pack: a pack's step saves the shared pass K-1 times, so beyond "
        "a few dozen arms it saves little more, while a retry reruns every arm of the pack")
    pack_objective: Literal["time", "cost"] = Field(
        "time", description="how packs are planned on the slots: time (the shortest makespan within +10 % of the "
        "cheapest plan's device time) or cost (the least device time)")
    max_failures: int = Field(0, ge=0, description="retries of a failing trial (from its checkpoint)")
    max_trials: int = Field(1000, ge=1, description="a sweep of more trials is launched only with `ablate sweep "
                            "--yes` (a grid grows as the product of its lists)")
    storage_path: str = Field("runs/ray", description="Ray Tune results: local folder, shared path or s3://")
    tracking_uri: URI | None = Field(None, description="MLflow URI; default sqlite file mlflow.db here")
    data: dict[str, DataSpec] = Field(default_factory=dict, description="per dataset: `fetch: true` to download "
                                      "it into its data roots first (`ablate data fetch`)")

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, name: str) -> str:
        # the Ray results, the sweep's state and its work folder are <storage_path>/<name>
        return check_component(name)

    @field_validator("data")
    @classmethod
    def _fetchable_data(cls, data: dict[str, DataSpec]) -> dict[str, DataSpec]:
        from ..data.manifest import fetchable

        wrong = [name for name, d in data.items() if d.fetch and name not in fetchable()]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: no official archive to fetch; fetchable: {', '.join(fetchable())}")
        return data

    @field_validator("probes")
    @classmethod
    def _registered_probes(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in probe_names()]
        if unknown:
            raise ValueError(f"unknown probe(s) {', '.join(unknown)}; registered: {', '.join(probe_names())}")
        return names

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        self._check_sections()
        self._check_grid()
        self._check_optuna()
        if self.asha and self.optuna and self.optuna.multi_objective:
            raise ValueError("asha cannot prune a multi-objective search (optuna.metric is a list); drop asha, or "
                             "search one metric")
        if self.asha and self.optuna and (self.asha.metric, self.asha.mode) != (self.optuna.metric, self.optuna.mode):
            raise ValueError("asha and optuna must use the same metric and mode")
        if self.pack == "auto" and (self.optuna or self.asha):
            raise ValueError(f"pack: auto cannot be combined with {'optuna' if self.optuna else 'asha'}: its samples "
                             "are sequential and its early stopping is per trial, so it runs one arm per trial: drop "
                             "`pack` or write pack: off")
        return self

    @property
    def packing(self) -> bool:
        """Whether arms are grouped into packs: a grid sweep, unless `pack: off`."""
        return self.pack != "off" and self.optuna is None and self.asha is None

    def _check_value(self, where: str, key: str, value: Any) -> None:
        """`value` must be valid for TrialConfig field `key` (on top of the base); `where` names it."""
        if key in FLAT_DATASET_FIELDS:  # an older release's field: valid if its datasets take the value
            notice_moved(key)
            for owner in (DATASETS.get(d) for d in DATASETS.names()):
                if owner.owns(key):
                    assert owner.options is not None  # it owns the key
                    try:
                        owner.options.model_validate({key: value})
                    except ValidationError as err:
                        raise ValueError(f"{where} = {value!r}: {option_error(err)[1]}") from None
            return
        if option_axis(key) is not None:
            self._check_option(where, key, value)
            return
        if key not in TrialConfig.model_fields:
            raise ValueError(f"{where}: not a TrialConfig field (a method's or data set's own setting: "
                             "options.<name> or dataset_options.<name>)")
        try:
            TrialConfig.model_validate({**base_config(self, value if key == "dataset" else self.base.dataset,
                                                      value if key == "method" else self.base.method), key: value})
        except ValidationError as err:
            raise ValueError(f"{where} = {value!r}: {err.errors()[0]['msg']}") from None

    def _check_option(self, where: str, key: str, value: Any) -> None:
        """A grid value of a method's or data set's own option: valid for every registered owner of it."""
        group, name = option_axis(key)  # type: ignore[misc]
        owners = option_holders(group, name)
        if not owners:
            kind = "method" if group == "options" else "data set"
            raise ValueError(f"{where}: no registered {kind} has an option {name!r}")
        for owner in owners:
            try:
                owner.model_validate({name: value})
            except ValidationError as err:
                raise ValueError(f"{where} = {value!r}: {err.errors()[0]['msg']}") from None

    def _check_sections(self) -> None:
        for section, registry in (("per_dataset", DATASETS), ("per_method", METHODS)):
            for name, overrides in getattr(self, section).items():
                if name not in registry:
                    raise ValueError(f"{section}.{name}: unknown {registry.kind}; registered: "
                                     f"{', '.join(registry.names())}")
                settings = method_settings if section == "per_method" else dataset_settings
                try:
                    fields, options = settings(overrides)
                except ValueError as err:
                    raise ValueError(f"{section}.{name}.{err}") from None
                for key, value in fields.items():
                    if key == registry.kind:
                        raise ValueError(f"{section}.{name}.{key}: not a settable TrialConfig field")
                    self._check_value(f"{section}.{name}.{key}", key, value)
                if options:
                    info = method_info(name) if section == "per_method" else DATASETS.get(name)
                    if info.options is None:
                        raise ValueError(f"{section}.{name}.{next(iter(options))}: not a TrialConfig field, and "
                                         f"{registry.kind} {name} registers no options of its own")
                    try:
                        info.parse_options(options)
                    except ValueError as err:
                        where = str(err).removeprefix("options.").removeprefix("dataset_options.")
                        raise ValueError(f"{section}.{name}.{where}") from None

    def _check_grid(self) -> None:
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key}: needs at least one value")
            for i, value in enumerate(values):
                self._check_value(f"grid.{key}[{i}]", key, value)

    def _check_optuna(self) -> None:
        if self.optuna and self.optuna.seeds and "seed" in self.grid:
            raise ValueError("optuna.seeds and grid.seed: give the training seeds one way (optuna.seeds averages "
                             "them for the sampler; grid.seed makes each its own arm)")
        for key, p in (self.optuna.space.items() if self.optuna else []):
            if option_axis(key) is not None:
                raise ValueError(f"optuna.space.{key}: a method's or data set's own option is set per arm "
                                 f"(per_method / per_dataset) or compared with grid.{key}, not searched")
            if key in ("method", "dataset"):  # an arm is one method on one data set, with their own settings
                raise ValueError(f"optuna.space.{key}: compare {key}s with grid.{key} (each arm gets its "
                                 f"per_{key} settings and options); Optuna searches the fields within an arm")
            if key in self.grid or (key == "seed" and self.optuna and self.optuna.seeds):
                raise ValueError(f"optuna.space.{key}: also in grid or optuna.seeds; search a field one way only")
            bounds: list[str | int | float | bool]
            if p.type == "categorical":
                assert p.choices is not None  # ParamSpace._check: categorical has choices
                bounds = p.choices
            else:
                assert p.low is not None and p.high is not None  # ParamSpace._check: low < high
                bounds = [int(p.low), int(p.high)] if p.type == "int" else [p.low, p.high]
            for value in bounds:
                self._check_value(f"optuna.space.{key}", key, value)


def import_plugins(modules: list[str]) -> None:
    """Import each module (it registers methods, datasets, probes or report sections as it loads); ValueError
    naming the plugin for a name that is no module's, a module that cannot be found, or one that fails (or
    exits) while it loads."""
    for name in modules:
        if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"plugins: {name!r} is not a module name; write its dotted import name (e.g. "
                             "my_lab.methods) and put the folder holding it on PYTHONPATH")
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ValueError(f"plugins: cannot import {name!r} ({err}); it must be importable on the driver "
                             "and on every worker (installed, or on PYTHONPATH)") from None
        except SyntaxError as err:
            raise ValueError(f"plugins: {name!r} is not valid Python ({err.msg}, {err.filename} line "
                             f"{err.lineno}); fix the plugin") from None
        except SystemExit as err:
            raise ValueError(f"plugins: {name!r} called sys.exit({err.code!r}) while it was imported; a plugin "
                             "must only register what it brings") from None
        except Exception as err:
            raise ValueError(f"plugins: {name!r} failed while it was imported ({type(err).__name__}: {err}); fix "
                             f"the plugin (`python -c 'import {name}'` shows the traceback)") from None


def load_sweep_spec(path: Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"spec file not found: {path}")
    data = read_yaml(path, "spec file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with at least 'name' at the top level")
    try:
        return SweepSpec(**data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from None


def _settings(section: dict[str, Any], group: str, fields: frozenset[str] | set[str]) -> tuple[dict, dict]:
    """A per_method / per_dataset section split into `fields` and the rest with the `group:` mapping's keys."""
    explicit = section.get(group) or {}
    if not isinstance(explicit, dict):
        raise ValueError(f"{group}: expected a mapping of option names to values, got {explicit!r}")
    own = {**explicit, **{k: v for k, v in section.items() if k not in fields}}
    return {k: v for k, v in section.items() if k in fields and k != group}, own


def method_settings(section: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A per_method section split into TrialConfig fields and the method's own options (every other key;
    an explicit `options:` mapping counts too). An older release's flat dataset field counts as a field."""
    return _settings(section, "options", {*TrialConfig.model_fields, *FLAT_DATASET_FIELDS})


def dataset_settings(section: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A per_dataset section split into TrialConfig fields and the dataset's own options (every other key;
    an explicit `dataset_options:` mapping counts too)."""
    return _settings(section, "dataset_options", set(TrialConfig.model_fields))


def _place_flat_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A spec's flat dataset fields of an older release where this one reads them: one in `base` is also
    each other owning dataset's setting unless its per_dataset section sets it (per_dataset came after the
    base); one in a per_dataset section of a dataset without it is dropped (it was ignored)."""
    base, given = data.get("base"), data.get("per_dataset")
    if not isinstance(given, dict | None):
        return data  # refused as it is
    sections: dict[str, Any] = dict(given or {})
    for name, section in list(sections.items()):
        stale = [k for k in FLAT_DATASET_FIELDS if isinstance(section, dict) and k in section
                 and name in DATASETS and not DATASETS.get(name).owns(k)]
        for key in stale:
            notice_moved(key)
        if stale:
            sections[name] = {k: v for k, v in section.items() if k not in stale}
    if isinstance(base, dict):
        for key in (k for k in FLAT_DATASET_FIELDS if k in base):
            notice_moved(key)
            for owner in option_owners(key):
                section = sections.get(owner) or {}
                explicit = section.get("dataset_options") if isinstance(section, dict) else None
                if isinstance(section, dict) and key not in section and not (isinstance(explicit, dict)
                                                                             and key in explicit):
                    sections[owner] = {**section, key: base[key]}
    return {**data, "per_dataset": sections} if sections or given is not None else data


def base_config(spec: SweepSpec, dataset: str, method: str) -> dict[str, Any]:
    """The spec's base as TrialConfig input for an arm of `dataset` and `method`: the base's own options
    are its method's and its dataset's, so another one's start empty."""
    base = spec.base.model_dump()
    if base["method"] != method:
        base["options"] = {}
    if base["dataset"] != dataset:
        base["dataset_options"] = {}
    return base


def option_axis(key: str) -> tuple[str, str] | None:
    """("options" | "dataset_options", name) for a grid key naming a method's or data set's own setting."""
    group, dot, name = key.partition(".")
    return (group, name) if dot and group in ("options", "dataset_options") and name else None


def option_holders(group: str, name: str) -> list[type[BaseModel]]:
    """The options models of the registered methods (group "options") or data sets that declare `name`."""
    registry: Any = METHODS if group == "options" else DATASETS
    models = [registry.get(n).options for n in registry.names()]
    return [m for m in models if m is not None and name in m.model_fields]


def owns_axis(key: str, method: str, dataset: str) -> bool:
    """Whether a grid key applies to an arm of `method` on `dataset`: a field does; an option only where the
    arm's method (or data set) declares it, and is ignored elsewhere, as a field the method does not read."""
    axis = option_axis(key)
    if axis is None:
        return True
    group, name = axis
    info: Any = METHODS.get(method) if group == "options" else DATASETS.get(dataset)
    return info.options is not None and name in info.options.model_fields


def arm_config(spec: SweepSpec, combo: dict[str, Any]) -> TrialConfig:
    """Base, then the dataset's settings (its own options among them), then the method's (likewise), then
    the grid values (an `options.<name>` / `dataset_options.<name>` value where the arm's method or data set
    has that option)."""
    dataset = combo.get("dataset", spec.base.dataset)
    method = combo.get("method", spec.base.method)
    fields, options = method_settings(spec.per_method.get(method, {}))
    data_fields, data_options = dataset_settings(spec.per_dataset.get(dataset, {}))
    base = base_config(spec, dataset, method)
    grid = {k: v for k, v in combo.items() if option_axis(k) is None}
    own: dict[str, dict[str, Any]] = {"options": {}, "dataset_options": {}}
    for key, value in combo.items():
        axis = option_axis(key)
        if axis is not None and owns_axis(key, method, dataset):
            own[axis[0]][axis[1]] = value
    try:
        return TrialConfig.model_validate({**base, **data_fields, **fields,
                                           "options": {**base["options"], **options, **own["options"]},
                                           "dataset_options": {**base["dataset_options"], **data_options,
                                                               **own["dataset_options"]}, **grid})
    except ValidationError as err:
        where = f"the arm {combo} (base + per_dataset.{dataset} + per_method.{method} + grid)"
        raise ConfigError(format_validation_error(err, where)) from None
