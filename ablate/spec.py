"""Validated configuration: one training run (TrialConfig)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .catalogue import searchable
from .data import DATASETS
from .errors import ConfigError
from .methods import METHODS, method_info
from .pathnames import check_component
from .pretrain_recipe import check_pretrained
from .probes import probe_names


def _not_bool(value: Any) -> Any:
    """YAML `true` is a Python bool, which pydantic would take as the integer 1 (`epochs: true` = 1 epoch)."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {str(value).lower()}")
    return value


# an integer field that refuses true/false; numbers and numeric strings are converted as usual
Int = Annotated[int, BeforeValidator(_not_bool)]


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, values are checked on assignment, and no float is
    infinite or NaN (`lr: .inf` would train on nothing but NaN)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TrialConfig(StrictModel):
    """Everything that defines one trial: one method on one dataset at one label ratio."""

    # what is compared
    method: str = Field("dualcoop", description="a registered method (ablate.methods.method_names())")
    dataset: str = Field("synthetic", description="a registered dataset (ablate.data.dataset_names())")
    data_root: Path | None = Field(
        None, description="dataset root; for `synthetic` a folder to generate into, for `world` a built world "
        "(default for both: generated into the cache dir)"
    )
    label_ratio: float = Field(0.5, gt=0.0, le=1.0, description="fraction of (image, class) labels kept")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="share of train images held out for model selection; 0 (train on "
        "all of train) only with select_on: test")
    select_on: Literal["val", "test"] = Field(
        "val", description="split that picks the reported epoch: val (held out from train, honest) or test "
        "(the reference's protocol: optimistic, and marked as such in every report)")
    coco_empty_images: Literal["drop", "keep"] = Field(
        "drop", description="coco2014 images without any annotation: drop (the reference and most multi-label "
        "work; counted in the log) or keep as all-negative rows")
    voc_difficult: Literal["negative", "positive", "ignore"] = "negative"
    synthetic_images: Int = Field(240, ge=20, description="train images of the generated synthetic set")

    # backbone
    backbone: str = Field("ablate-tiny-vit", description="open_clip model name or ablate-tiny-vit / ablate-tiny-rn")
    pretrained: str = Field("none", description="open_clip tag, local checkpoint path, or 'none' (random)")
    image_size: Int | None = Field(None, ge=16, description="input size; default: the model's own (weights of "
                                   "another size get their positional embeddings resized bicubically)")
    weights_dir: Path | None = Field(None, description="where open_clip tags are downloaded and found (default: "
                                     "open_clip's cache); on a cluster a shared folder, downloaded once")
    quick_gelu: bool | None = Field(
        None, description="activation of weights from a file: None = from the format / name (ambiguous "
        "checkpoints of standard CLIP architectures are refused), true = QuickGELU (OpenAI and fine-tunes)")
    trust_torchscript: bool = Field(
        False, description="run a TorchScript checkpoint's own code when loading it: only for files you trust "
        "(by default its tensors are read without running it)")

    features: Literal["online", "cached"] = Field(
        "online", description="online: run the frozen image encoder every step (augmentation possible); "
        "cached: read dense features computed once per (backbone, weights, size, data, split)")
    feature_cache_dir: Path | None = Field(None, description="feature cache location (default <cache_dir>/features)")
    cache_dtype: Literal["float16", "float32"] = Field(
        "float16", description="storage of cached features: float16 (half the disk, rounding ~2e-4 relative) "
        "or float32 (the online path's features bit for bit)")

    # prompts / method options
    n_ctx: Int = Field(16, ge=1, le=64)
    csc: bool = Field(True, description="class-specific contexts (else one shared context)")
    ctx_init: str | None = Field(None, description="phrase to initialise contexts from; None = N(0, 0.02)")
    prompt_offset: Literal["none", "normal", "zeros"] = Field(
        "none", description="PositiveCoOp/NegativeCoOp: a free [N, D] offset added to the prompt side's text "
        "features, trained with the free embeddings: none (the papers' model), normal (drawn from "
        "N(0, prompt_offset_std^2), as the official code does), zeros")
    prompt_offset_std: float = Field(1.0, gt=0, description="std of the prompt-side offset when normal")
    free_init_std: float = Field(
        1.0, gt=0, description="std of free embeddings at init; only their direction is scored, so a "
        "larger norm means smaller angular steps at the 100x learning rate")
    temperature: float = Field(20.0, gt=0, description="cosine scale inside the spatial aggregation")
    logit_scale: float = Field(5.0, gt=0, description="scale of the aggregated class logit")
    zeroshot_positive: str = "a photo of a {}."
    zeroshot_negative: str = "a photo without a {}."

    # loss
    loss: Literal["asl_softmax", "asl_sigmoid"] = "asl_softmax"
    gamma_neg: float | None = Field(None, ge=0, description="default 2 (softmax variant) or 4 (sigmoid)")
    gamma_pos: float = Field(1.0, ge=0)
    clip: float = Field(0.05, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0, description="probabilities are clamped to at least this before the log "
                       "(the reference: 1e-6)")
    reduction: Literal["mean", "sum"] = Field(
        "mean", description="ASL over the known labels of a batch: mean (step size independent of batch size, "
        "class count and label ratio) or sum (the reference; its learning rates assume it)")
    loss_weight: float = Field(1.0, gt=0, description="the loss is multiplied by this (the reference's loss_w)")

    # optimisation
    epochs: Int = Field(50, ge=0)
    batch_size: Int = Field(32, ge=1)
    lr: float = Field(0.002, gt=0, description="base learning rate; each kind of parameter learns at lr x its mult")
    prompt_lr_mult: float = Field(1.0, gt=0, description="prompt contexts learn at lr x this")
    free_lr_mult: float = Field(100.0, gt=0, description="free embeddings learn at lr x this")
    linear_lr_mult: float = Field(1.0, gt=0, description="baseline linear head learns at lr x this")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    free_weight_decay: float = Field(0.0, ge=0, description="weight decay of free embeddings and offsets")
    linear_weight_decay: float | None = Field(
        None, ge=0, description="weight decay of the baseline's linear head; None = weight_decay")
    warmup_epochs: Int = Field(1, ge=0)
    warmup_lr: float = Field(1e-5, gt=0)
    warmup_rule: Literal["scaled", "same_for_all"] = Field(
        "scaled", description="during warm-up each group learns at warmup_lr x its mult (scaled), or every "
        "group at warmup_lr alike (same_for_all, the reference)")
    cosine_span: Literal["after_warmup", "all_epochs"] = Field(
        "after_warmup", description="the cosine decays to 0 over the epochs after warm-up (after_warmup), or "
        "has a period of all epochs and starts after warm-up, ending above 0 (all_epochs, the reference)")
    augment: bool = Field(True, description="Cutout + RandAugment on training images")
    augment_recipe: Literal["torchvision", "reference"] = Field(
        "torchvision", description="torchvision: mean-colour Cutout, then torchvision's RandAugment (2 ops, "
        "magnitude 9 of 31); reference: Cutout of half the side in a random colour on every image, then 2 of 15 "
        "operations each applied with probability 0.5 at a magnitude drawn from 1..9 of 10")
    resize: Literal["bicubic", "bilinear"] = Field(
        "bicubic", description="interpolation of the square resize, train and test (CLIP's own preprocessing: "
        "bicubic; the reference: bilinear)")
    grad_scaler: bool = Field(True, description="with amp, scale the loss against fp16 underflow (the reference "
                              "runs autocast without a scaler)")
    cf1: Literal["f1_of_means", "mean_of_f1"] = Field(
        "f1_of_means", description="CF1 = F1 of (CP, CR), the multi-label literature's usual definition, or the "
        "mean of per-class F1 (the reference's evaluation)")
    seed: Int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    amp: bool = Field(True, description="autocast (fp16) on CUDA")
    num_workers: Int = Field(2, ge=0)
    cache_dir: Path | None = Field(None, description="where masks and generated data go (default ./.ablate_cache)")
    options: dict[str, Any] = Field(
        default_factory=dict, description="the method's own settings, validated by the options model it registers "
        "(in a spec: under per_method.<method> beside the other fields)")

    @field_validator("method")
    @classmethod
    def _registered_method(cls, name: str) -> str:
        if name not in METHODS:
            raise ValueError(f"unknown method '{name}'; registered: {', '.join(METHODS.names())}")
        return name

    @field_validator("dataset")
    @classmethod
    def _registered_dataset(cls, name: str) -> str:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset '{name}'; registered: {', '.join(DATASETS.names())}")
        return name

    @field_validator("pretrained")
    @classmethod
    def _world_alias(cls, name: str) -> str:
        # one spelling per pre-training recipe: runs, report rows and feature caches agree on it
        return check_pretrained(name)

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        """Configs saved before `prompt_offset` (trained.pt, checkpoints) said `prompt_residual: bool`."""
        if isinstance(data, dict) and "prompt_residual" in data and "prompt_offset" not in data:
            data = dict(data)
            data["prompt_offset"] = "zeros" if data.pop("prompt_residual") else "none"
        return data

    @model_validator(mode="after")
    def _check(self) -> TrialConfig:
        if self.ctx_init is not None and not self.ctx_init.strip():
            raise ValueError("ctx_init must be a non-empty phrase or null")
        if self.val_fraction == 0 and self.select_on == "val":
            raise ValueError("val_fraction: 0 leaves no validation split to select on; set select_on: test "
                             "(the reference's optimistic protocol) or a val_fraction above 0")
        for name in ("zeroshot_positive", "zeroshot_negative"):
            if "{}" not in getattr(self, name):
                raise ValueError(f"{name} must contain '{{}}' where the class name goes")
        parsed = method_info(self.method).parse_options(self.options)
        if parsed != self.options:  # defaults filled in, so equal trials compare (and key) equal
            object.__setattr__(self, "options", parsed)
        return self

    @property
    def resolved_gamma_neg(self) -> float:
        if self.gamma_neg is not None:
            return self.gamma_neg
        return 2.0 if self.loss == "asl_softmax" else 4.0

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(".ablate_cache")


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: source, dotted field path, message."""
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check spelling; `ablate train --help` lists the fields)"
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def _read_yaml(path: Path) -> Any:
    """The file's YAML; ConfigError naming the file and line of a syntax error."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None


def load_trial_config(path: Path, overrides: dict | None = None) -> TrialConfig:
    """Read a YAML TrialConfig; `overrides` (e.g. CLI flags) win over the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = _read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of TrialConfig fields at the top level")
    data.update(overrides or {})
    try:
        return TrialConfig(**data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from None


# ---- sweeps ------------------------------------------------------------------------------------

def ignored_fields(method: str) -> frozenset[str]:
    """Fields `method` does not read (none for a name no longer registered, e.g. in old runs): trials
    differing only in these are the same trial."""
    return METHODS.get(method).ignores if method in METHODS else frozenset()

def _searchable(name: str) -> str:
    if name not in searchable():
        raise ValueError(f"metric '{name}' is not reported to Ray Tune every epoch; use one of "
                         f"{', '.join(sorted(searchable()))}")
    return name


# what Optuna and ASHA may optimise: the catalogue's metrics reported to Ray Tune every epoch
MetricName = Annotated[str, AfterValidator(_searchable)]
# objectives of a multi-objective search: also the end-of-trial costs (a search over them cannot prune)
Objective = Literal["val_map", "loss", "device_hours", "trainable_params"]
Mode = Literal["max", "min"]


def canonical(cfg: TrialConfig) -> TrialConfig:
    """The same trial with every field its method ignores set to the default (augment: off)."""
    defaults = {f: TrialConfig.model_fields[f].default for f in sorted(ignored_fields(cfg.method))}
    if not method_info(cfg.method).trains:  # it augments nothing (and may read cached features)
        defaults["augment"] = False
    return cfg.model_copy(update=defaults)


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
    storage: str | None = Field(
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
        """Plugins register names the rest of the spec may use, so they are imported first."""
        if isinstance(data, dict):
            import_plugins(data.get("plugins") or [])
        return data

    name: str = Field(description="MLflow experiment and Ray Tune run name")
    plugins: list[str] = Field(
        default_factory=list, description="modules imported before anything else is read (in the driver and in "
        "every trial process): where your own methods, datasets, probes or report sections register themselves")
    description: str = ""
    base: TrialConfig = Field(default_factory=TrialConfig)
    per_dataset: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="TrialConfig fields set per dataset (data_root, lr, image_size...)")
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
    max_failures: int = Field(0, ge=0, description="retries of a failing trial (from its checkpoint)")
    max_trials: int = Field(1000, ge=1, description="a sweep of more trials is launched only with `ablate sweep "
                            "--yes` (a grid grows as the product of its lists)")
    storage_path: str = Field("runs/ray", description="Ray Tune results: local folder, shared path or s3://")
    tracking_uri: str | None = Field(None, description="MLflow URI; default sqlite file mlflow.db here")
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
        from .data.manifest import fetchable

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
                             "are sequential and its early stopping is per trial; drop `pack` (or set pack: off)")
        return self

    @property
    def packing(self) -> bool:
        """Whether arms are grouped into packs: a grid sweep, unless `pack: off`."""
        return self.pack != "off" and self.optuna is None and self.asha is None

    def _check_value(self, where: str, key: str, value: Any) -> None:
        """`value` must be valid for TrialConfig field `key` (on top of the base); `where` names it."""
        if key not in TrialConfig.model_fields:
            raise ValueError(f"{where}: not a TrialConfig field")
        try:
            TrialConfig.model_validate({**self.base.model_dump(), key: value})
        except ValidationError as err:
            raise ValueError(f"{where} = {value!r}: {err.errors()[0]['msg']}") from None

    def _check_sections(self) -> None:
        for section, registry in (("per_dataset", DATASETS), ("per_method", METHODS)):
            for name, overrides in getattr(self, section).items():
                if name not in registry:
                    raise ValueError(f"{section}.{name}: unknown {registry.kind}; registered: "
                                     f"{', '.join(registry.names())}")
                fields, options = method_settings(overrides) if section == "per_method" else (overrides, {})
                for key, value in fields.items():
                    if key == registry.kind:
                        raise ValueError(f"{section}.{name}.{key}: not a settable TrialConfig field")
                    self._check_value(f"{section}.{name}.{key}", key, value)
                if options:
                    info = method_info(name)
                    if info.options is None:
                        raise ValueError(f"{section}.{name}.{next(iter(options))}: not a TrialConfig field, and "
                                         f"method {name} registers no options of its own")
                    try:
                        info.parse_options(options)
                    except ValueError as err:
                        raise ValueError(f"{section}.{name}.{str(err).removeprefix('options.')}") from None

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
    """Import each module (it registers methods, datasets, probes or report sections as it loads)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ValueError(f"plugins: cannot import {name!r} ({err}); it must be importable on the driver "
                             "and on every worker (installed, or on PYTHONPATH)") from None


def load_sweep_spec(path: Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"spec file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with at least 'name' at the top level")
    try:
        return SweepSpec(**data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from None


def method_settings(section: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A per_method section split into TrialConfig fields and the method's own options (every other key;
    an explicit `options:` mapping counts too)."""
    fields = {k: v for k, v in section.items() if k in TrialConfig.model_fields and k != "options"}
    options = {**section.get("options", {}), **{k: v for k, v in section.items() if k not in TrialConfig.model_fields}}
    return fields, options


def arm_config(spec: SweepSpec, combo: dict[str, Any]) -> TrialConfig:
    """Base, then the dataset's own settings, then the method's (its own options among them), then the grid
    values."""
    dataset = combo.get("dataset", spec.base.dataset)
    method = combo.get("method", spec.base.method)
    fields, options = method_settings(spec.per_method.get(method, {}))
    base = spec.base.model_dump()
    if base["method"] != method:  # the base's options are its own method's
        base["options"] = {}
    try:
        return TrialConfig.model_validate({**base, **spec.per_dataset.get(dataset, {}), **fields,
                                           "options": {**base["options"], **options}, **combo})
    except ValidationError as err:
        where = f"the arm {combo} (base + per_dataset.{dataset} + per_method.{method} + grid)"
        raise ConfigError(format_validation_error(err, where)) from None
