"""Validated configuration: one training run (TrialConfig)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MethodName = Literal[
    "dualcoop", "positivecoop", "negativecoop", "dualembed", "baseline", "zeroshot"
]
DatasetName = Literal["coco2014", "voc2007", "nuswide", "synthetic", "world"]


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrialConfig(StrictModel):
    """Everything that defines one trial: one method on one dataset at one label ratio."""

    # what is compared
    method: MethodName = "dualcoop"
    dataset: DatasetName = "synthetic"
    data_root: Path | None = Field(
        None, description="dataset root; for `synthetic` a folder to generate into, for `world` a built world "
        "(default for both: generated into the cache dir)"
    )
    label_ratio: float = Field(0.5, gt=0.0, le=1.0, description="fraction of (image, class) labels kept")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of train images held out for model selection")
    voc_difficult: Literal["negative", "positive", "ignore"] = "negative"
    synthetic_images: int = Field(240, ge=20, description="train images of the generated synthetic set")

    # backbone
    backbone: str = Field("ablate-tiny-vit", description="open_clip model name or ablate-tiny-vit / ablate-tiny-rn")
    pretrained: str = Field("none", description="open_clip tag, local checkpoint path, or 'none' (random)")
    image_size: int | None = Field(None, ge=16, description="input size; default: the model's own")
    quick_gelu: bool | None = Field(
        None, description="activation of weights from a file: None = from the format / name (ambiguous "
        "checkpoints of standard CLIP architectures are refused), true = QuickGELU (OpenAI and fine-tunes)")

    features: Literal["online", "cached"] = Field(
        "online", description="online: run the frozen image encoder every step (augmentation possible); "
        "cached: read dense features computed once per (backbone, weights, size, data, split)")
    feature_cache_dir: Path | None = Field(None, description="feature cache location (default <cache_dir>/features)")
    cache_dtype: Literal["float16", "float32"] = Field(
        "float16", description="storage of cached features: float16 (half the disk, rounding ~2e-4 relative) "
        "or float32 (the online path's features bit for bit)")

    # prompts / method options
    n_ctx: int = Field(16, ge=1, le=64)
    csc: bool = Field(True, description="class-specific contexts (else one shared context)")
    ctx_init: str | None = Field(None, description="phrase to initialise contexts from; None = N(0, 0.02)")
    prompt_residual: bool = Field(False, description="PositiveCoOp/NegativeCoOp: free residual on the prompt side")
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
    eps: float = Field(1e-8, gt=0)
    reduction: Literal["mean", "sum"] = "mean"
    loss_weight: float = Field(1.0, gt=0)

    # optimisation
    epochs: int = Field(50, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.002, gt=0, description="learning rate of prompt contexts")
    free_lr_mult: float = Field(100.0, gt=0, description="free embeddings learn at lr x this")
    linear_lr_mult: float = Field(1.0, gt=0, description="baseline linear head learns at lr x this")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    free_weight_decay: float = Field(0.0, ge=0)
    warmup_epochs: int = Field(1, ge=0)
    warmup_lr: float = Field(1e-5, gt=0)
    augment: bool = Field(True, description="Cutout + RandAugment on training images")
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    amp: bool = Field(True, description="autocast (fp16) on CUDA")
    num_workers: int = Field(2, ge=0)
    cache_dir: Path | None = Field(None, description="where masks and generated data go (default ./.ablate_cache)")

    @model_validator(mode="after")
    def _check(self) -> "TrialConfig":
        if self.ctx_init is not None and not self.ctx_init.strip():
            raise ValueError("ctx_init must be a non-empty phrase or null")
        for name in ("zeroshot_positive", "zeroshot_negative"):
            if "{}" not in getattr(self, name):
                raise ValueError(f"{name} must contain '{{}}' where the class name goes")
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


class ConfigError(ValueError):
    """A configuration problem that names the file and field; nothing was run."""


def load_trial_config(path: Path, overrides: dict | None = None) -> TrialConfig:
    """Read a YAML TrialConfig; `overrides` (e.g. CLI flags) win over the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of TrialConfig fields at the top level")
    data.update(overrides or {})
    try:
        return TrialConfig(**data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from None


# ---- sweeps ------------------------------------------------------------------------------------

# Fields a method does not read: trials differing only in these are the same trial.
_PROMPT_FIELDS = ("n_ctx", "csc", "ctx_init", "prompt_residual")
_HAND_PROMPTS = ("zeroshot_positive", "zeroshot_negative")
_TRAINING_FIELDS = ("label_ratio", "epochs", "lr", "free_lr_mult", "linear_lr_mult", "momentum",
                    "weight_decay", "free_weight_decay", "warmup_epochs", "warmup_lr", "augment", "loss",
                    "gamma_neg", "gamma_pos", "clip", "reduction", "loss_weight")
IGNORED_BY_METHOD: dict[str, tuple[str, ...]] = {
    "dualcoop": (*_HAND_PROMPTS, "free_init_std"),
    "positivecoop": _HAND_PROMPTS,
    "negativecoop": _HAND_PROMPTS,
    "dualembed": (*_PROMPT_FIELDS, *_HAND_PROMPTS),
    "baseline": (*_PROMPT_FIELDS, *_HAND_PROMPTS, "free_init_std"),
    # zero-shot scores the test split with fixed prompts: training fields and seed change nothing
    "zeroshot": (*_PROMPT_FIELDS, "free_init_std", "seed", *_TRAINING_FIELDS),
}

METRICS = ("val_map", "loss")  # reported every epoch, so usable by Optuna and ASHA


def canonical(cfg: TrialConfig) -> TrialConfig:
    """The same trial with every field its method ignores set to the default (augment: off)."""
    defaults = {f: TrialConfig.model_fields[f].default for f in IGNORED_BY_METHOD.get(cfg.method, ())}
    if "augment" in defaults:  # a method that trains nothing augments nothing (and may read cached features)
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
    def _check(self) -> "ParamSpace":
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
    num_samples: int = Field(8, ge=1, description="Optuna trials per grid arm")
    metric: Literal[METRICS] = "val_map"
    mode: Literal["max", "min"] = "max"
    seed: int = 0


class AshaSpec(StrictModel):
    metric: Literal[METRICS] = "val_map"
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(1, ge=1, description="epochs before a trial can be stopped")
    reduction_factor: float = Field(3.0, gt=1)


class Resources(StrictModel):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0, description="fractions (e.g. 0.25) pack several trials on one GPU")


class SweepSpec(StrictModel):
    """A tune_specs/*.yaml file: a grid and/or Optuna search over TrialConfig fields."""

    name: str = Field(description="MLflow experiment and Ray Tune run name")
    description: str = ""
    base: TrialConfig = Field(default_factory=TrialConfig)
    per_dataset: dict[DatasetName, dict[str, Any]] = Field(
        default_factory=dict, description="TrialConfig fields set per dataset (data_root, lr, image_size...)")
    grid: dict[str, list] = Field(default_factory=dict, description="TrialConfig field -> values")
    optuna: OptunaSpec | None = None
    asha: AshaSpec | None = None
    resources: Resources = Field(default_factory=Resources)
    probes: list[Literal["negation", "presence", "hard_positive", "prompts"]] = Field(
        default_factory=list, description="diagnostics run after each trial, logged to its MLflow run")
    probe_limit: int | None = Field(200, ge=1, description="images per image-grounded probe")
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(0, ge=0, description="retries of a failing trial (from its checkpoint)")
    storage_path: str = Field("runs/ray", description="Ray Tune results: local folder, shared path or s3://")
    tracking_uri: str | None = Field(None, description="MLflow URI; default sqlite file mlflow.db here")

    @model_validator(mode="after")
    def _check(self) -> "SweepSpec":
        fields = TrialConfig.model_fields
        for dataset, overrides in self.per_dataset.items():
            for key, value in overrides.items():
                if key not in fields or key == "dataset":
                    raise ValueError(f"per_dataset.{dataset}.{key}: not a settable TrialConfig field")
                try:
                    TrialConfig.model_validate({**self.base.model_dump(), key: value})
                except ValidationError as err:
                    raise ValueError(f"per_dataset.{dataset}.{key} = {value!r}: {err.errors()[0]['msg']}") from None
        for key, values in self.grid.items():
            if key not in fields:
                raise ValueError(f"grid.{key}: not a TrialConfig field")
            if not values:
                raise ValueError(f"grid.{key}: needs at least one value")
            for i, value in enumerate(values):
                try:
                    TrialConfig.model_validate({**self.base.model_dump(), key: value})
                except ValidationError as err:
                    raise ValueError(f"grid.{key}[{i}] = {value!r}: {err.errors()[0]['msg']}") from None
        if self.optuna:
            for key, p in self.optuna.space.items():
                if key not in fields:
                    raise ValueError(f"optuna.space.{key}: not a TrialConfig field")
                if key in self.grid:
                    raise ValueError(f"optuna.space.{key}: also in grid; search a field one way only")
                probe = p.choices if p.type == "categorical" else [p.low, p.high]
                for value in probe:
                    value = int(value) if p.type == "int" else value
                    try:
                        TrialConfig.model_validate({**self.base.model_dump(), key: value})
                    except ValidationError as err:
                        raise ValueError(f"optuna.space.{key}: {value!r} is not allowed: "
                                         f"{err.errors()[0]['msg']}") from None
        if self.asha and self.optuna and (self.asha.metric, self.asha.mode) != (self.optuna.metric, self.optuna.mode):
            raise ValueError("asha and optuna must use the same metric and mode")
        return self


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


def arm_config(spec: SweepSpec, combo: dict[str, Any]) -> TrialConfig:
    """Base, then the dataset's own settings, then the grid values."""
    dataset = combo.get("dataset", spec.base.dataset)
    return TrialConfig.model_validate({**spec.base.model_dump(), **spec.per_dataset.get(dataset, {}), **combo})
