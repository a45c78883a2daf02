"""Validated configuration: one training run (TrialConfig)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .data import DATASETS, option_owners
from .errors import ConfigError, MovedSetting
from .methods import METHODS, method_info
from .roles import (
    ALL,
    DATASET_OPTION,
    FREE_EMBEDDINGS,
    HAND_PROMPT,
    METHOD_OPTION,
    OFFSET,
    PROMPT,
    TRAINING,
    Role,
    role_of,
    roles,
)
from .userfiles import read_yaml, words_for_booleans
from .world.recipe import check_pretrained


def _not_bool(value: Any) -> Any:
    """YAML `true` is a Python bool, which pydantic would take as the integer 1 (`epochs: true` = 1 epoch)."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {str(value).lower()}")
    return value


# an integer field that refuses true/false; numbers and numeric strings are converted as usual
Int = Annotated[int, BeforeValidator(_not_bool)]
Options = TypeVar("Options", bound=BaseModel)

# settings of one dataset each that older releases kept as TrialConfig fields: accepted there (moved into
# dataset_options, or dropped for a dataset without them, which ignored them) until the next release
FLAT_DATASET_FIELDS = ("coco_empty_images", "voc_difficult", "synthetic_images")
# the model_validate context of a config ablate wrote itself (a checkpoint, trained.pt, a trial's arms):
# its flat fields are upgraded without a notice, which is for what users write
STORED = {"stored": True}
_noticed: set[str] = set()


def notice_moved(field: str) -> None:
    """Say once per process where a flat dataset field now lives."""
    if field in _noticed:
        return
    _noticed.add(field)
    owners = option_owners(field)
    where = (f"a setting of dataset {' / '.join(owners)} ({', '.join(f'per_dataset.{d}.{field}' for d in owners)} "
             "in a spec, dataset_options in a trial config)") if owners else "a setting of no registered dataset"
    warnings.warn(f"{field}: now {where}; the flat field is accepted until the next release (and ignored for "
                  "other datasets, as before)", MovedSetting, stacklevel=2)


def move_flat_fields(data: dict[str, Any], notify: bool = True) -> dict[str, Any]:
    """`data` (TrialConfig input) with its flat dataset fields moved into dataset_options (over any value
    there, as the later layer of a spec) where its dataset declares them, dropped where it does not."""
    flat = [k for k in FLAT_DATASET_FIELDS if k in data]
    if not flat:
        return data
    data = dict(data)
    moved = {k: data.pop(k) for k in flat}
    for k in flat if notify else ():
        notice_moved(k)
    dataset = data.get("dataset", TrialConfig.model_fields["dataset"].default)
    info = DATASETS.get(dataset) if isinstance(dataset, str) and dataset in DATASETS else None
    kept = {k: v for k, v in moved.items() if info is not None and info.owns(k)}
    for k, v in moved.items():  # one dropped for this dataset is still checked, as its own dataset would
        owner = next(iter(option_owners(k)), None)
        if k not in kept and owner is not None:
            try:
                DATASETS.get(owner).parse_options({k: v})
            except ValueError as err:
                raise ValueError(f"{k}: {str(err).split(': ', 1)[-1]}") from None
    options = data.get("dataset_options")
    if kept and (options is None or isinstance(options, dict)):  # any other value: refused as it is
        data["dataset_options"] = {**(options or {}), **kept}
    return data


STREAM = Role(stream=True)  # shapes the image stream, read by every method
TRAINS = Role(reads=TRAINING)  # read by the methods that train


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, values are checked on assignment, and no float is
    infinite or NaN (`lr: .inf` would train on nothing but NaN)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _yaml_booleans(cls, data: Any) -> Any:
        return words_for_booleans(cls.model_fields, data)  # `pack: off` reaches us as False


class TrialConfig(StrictModel):
    """Everything that defines one trial: one method on one dataset at one label ratio."""

    # what is compared
    method: Annotated[str, Role(tag=True, nesting=1)] = Field(
        "dualcoop", description="a registered method (ablate.methods.method_names())")
    dataset: Annotated[str, Role(stream=True, tag=True, nesting=-1)] = Field(
        "synthetic", description="a registered dataset (ablate.data.dataset_names())")
    data_root: Annotated[Path | None, STREAM] = Field(
        None, description="dataset root; for `synthetic` a folder to generate into, for `world` a built world "
        "(default for both: generated into the cache dir)"
    )
    label_ratio: Annotated[float, Role(reads=TRAINING, tag=True, spread=True)] = Field(
        0.5, gt=0.0, le=1.0, description="fraction of (image, class) labels kept")
    val_fraction: Annotated[float, Role(stream=True, reads=TRAINING)] = Field(
        0.1, ge=0.0, lt=1.0, description="share of train images held out for model selection; 0 (train on "
        "all of train) only with select_on: test")
    select_on: Annotated[Literal["val", "test"], Role(reads=TRAINING)] = Field(
        "val", description="split that picks the reported epoch: val (held out from train, honest) or test "
        "(the reference's protocol: optimistic, and marked as such in every report)")
    dataset_options: Annotated[dict[str, Any], STREAM] = Field(
        default_factory=dict, description="the dataset's own settings, validated by the options model it registers "
        "(coco2014: coco_empty_images; voc2007: voc_difficult; synthetic: synthetic_images; in a spec: under "
        "per_dataset.<dataset> beside the other fields)")

    # backbone
    backbone: Annotated[str, Role(stream=True, tag=True, weights=True)] = Field(
        "ablate-tiny-vit", description="open_clip model name or ablate-tiny-vit / ablate-tiny-rn")
    pretrained: Annotated[str, Role(stream=True, tag=True, weights=True)] = Field(
        "none", description="open_clip tag, local checkpoint path, or 'none' (random)")
    image_size: Annotated[Int | None, STREAM] = Field(
        None, ge=16, description="input size; default: the model's own (weights of "
        "another size get their positional embeddings resized bicubically)")
    weights_dir: Annotated[Path | None, Role(stream=True, identity=False, weights=True)] = Field(
        None, description="where open_clip tags are downloaded and found (default: "
        "open_clip's cache); on a cluster a shared folder, downloaded once")
    quick_gelu: Annotated[bool | None, Role(stream=True, weights=True)] = Field(
        None, description="activation of weights from a file: None = from the format / name (ambiguous "
        "checkpoints of standard CLIP architectures are refused), true = QuickGELU (OpenAI and fine-tunes)")
    trust_torchscript: Annotated[bool, Role(stream=True, identity=False)] = Field(
        False, description="run a TorchScript checkpoint's own code when loading it: only for files you trust "
        "(by default its tensors are read without running it)")

    features: Annotated[Literal["online", "cached"], STREAM] = Field(
        "online", description="online: run the frozen image encoder every step (augmentation possible); "
        "cached: read dense features computed once per (backbone, weights, size, data, split)")
    feature_cache_dir: Annotated[Path | None, Role(stream=True, identity=False)] = Field(
        None, description="feature cache location (default <cache_dir>/features)")
    cache_dtype: Annotated[Literal["float16", "float32"], STREAM] = Field(
        "float16", description="storage of cached features: float16 (half the disk, rounding ~2e-4 relative) "
        "or float32 (the online path's features bit for bit)")

    # prompts / method options
    n_ctx: Annotated[Int, Role(reads=PROMPT, tag=True)] = Field(16, ge=1, le=64)
    csc: Annotated[bool, Role(reads=PROMPT, tag=True)] = Field(
        True, description="class-specific contexts (else one shared context)")
    ctx_init: Annotated[str | None, Role(reads=PROMPT)] = Field(
        None, description="phrase to initialise contexts from; None = N(0, 0.02)")
    prompt_offset: Annotated[Literal["none", "normal", "zeros"], Role(reads=OFFSET)] = Field(
        "none", description="PositiveCoOp/NegativeCoOp: a free [N, D] offset added to the prompt side's text "
        "features, trained with the free embeddings: none (the papers' model), normal (drawn from "
        "N(0, prompt_offset_std^2), as the official code does), zeros")
    prompt_offset_std: Annotated[float, Role(reads=OFFSET)] = Field(
        1.0, gt=0, description="std of the prompt-side offset when normal")
    free_init_std: Annotated[float, Role(reads=FREE_EMBEDDINGS)] = Field(
        1.0, gt=0, description="std of free embeddings at init; only their direction is scored, so a "
        "larger norm means smaller angular steps at the 100x learning rate")
    temperature: Annotated[float, Role()] = Field(20.0, gt=0, description="cosine scale inside the spatial aggregation")
    logit_scale: Annotated[float, Role()] = Field(5.0, gt=0, description="scale of the aggregated class logit")
    zeroshot_positive: Annotated[str, Role(reads=HAND_PROMPT)] = "a photo of a {}."
    zeroshot_negative: Annotated[str, Role(reads=HAND_PROMPT)] = "a photo without a {}."

    # loss
    loss: Annotated[Literal["asl_softmax", "asl_sigmoid"], TRAINS] = "asl_softmax"
    gamma_neg: Annotated[float | None, TRAINS] = Field(
        None, ge=0, description="default 2 (softmax variant) or 4 (sigmoid)")
    gamma_pos: Annotated[float, TRAINS] = Field(1.0, ge=0)
    clip: Annotated[float, TRAINS] = Field(0.05, ge=0, lt=1)
    eps: Annotated[float, TRAINS] = Field(
        1e-8, gt=0, description="probabilities are clamped to at least this before the log "
        "(the reference: 1e-6)")
    reduction: Annotated[Literal["mean", "sum"], TRAINS] = Field(
        "mean", description="ASL over the known labels of a batch: mean (step size independent of batch size, "
        "class count and label ratio) or sum (the reference; its learning rates assume it)")
    loss_weight: Annotated[float, TRAINS] = Field(
        1.0, gt=0, description="the loss is multiplied by this (the reference's loss_w)")

    # optimisation
    epochs: Annotated[Int, Role(stream=True, reads=TRAINING)] = Field(50, ge=0)
    batch_size: Annotated[Int, STREAM] = Field(32, ge=1)
    lr: Annotated[float, TRAINS] = Field(
        0.002, gt=0, description="base learning rate; each kind of parameter learns at lr x its mult")
    prompt_lr_mult: Annotated[float, Role(reads=PROMPT)] = Field(
        1.0, gt=0, description="prompt contexts learn at lr x this")
    free_lr_mult: Annotated[float, TRAINS] = Field(100.0, gt=0, description="free embeddings learn at lr x this")
    linear_lr_mult: Annotated[float, TRAINS] = Field(1.0, gt=0, description="baseline linear head learns at lr x this")
    momentum: Annotated[float, TRAINS] = Field(0.9, ge=0, lt=1)
    weight_decay: Annotated[float, TRAINS] = Field(5e-4, ge=0)
    free_weight_decay: Annotated[float, TRAINS] = Field(
        0.0, ge=0, description="weight decay of free embeddings and offsets")
    linear_weight_decay: Annotated[float | None, TRAINS] = Field(
        None, ge=0, description="weight decay of the baseline's linear head; None = weight_decay")
    warmup_epochs: Annotated[Int, TRAINS] = Field(1, ge=0)
    warmup_lr: Annotated[float, TRAINS] = Field(1e-5, gt=0)
    warmup_rule: Annotated[Literal["scaled", "same_for_all"], TRAINS] = Field(
        "scaled", description="during warm-up each group learns at warmup_lr x its mult (scaled), or every "
        "group at warmup_lr alike (same_for_all, the reference)")
    cosine_span: Annotated[Literal["after_warmup", "all_epochs"], TRAINS] = Field(
        "after_warmup", description="the cosine decays to 0 over the epochs after warm-up (after_warmup), or "
        "has a period of all epochs and starts after warm-up, ending above 0 (all_epochs, the reference)")
    augment: Annotated[bool, Role(stream=True, reads=TRAINING)] = Field(
        True, description="Cutout + RandAugment on training images")
    augment_recipe: Annotated[Literal["torchvision", "reference"], Role(stream=True, reads=TRAINING)] = Field(
        "torchvision", description="torchvision: mean-colour Cutout, then torchvision's RandAugment (2 ops, "
        "magnitude 9 of 31); reference: Cutout of half the side in a random colour on every image, then 2 of 15 "
        "operations each applied with probability 0.5 at a magnitude drawn from 1..9 of 10")
    resize: Annotated[Literal["bicubic", "bilinear"], STREAM] = Field(
        "bicubic", description="interpolation of the square resize, train and test (CLIP's own preprocessing: "
        "bicubic; the reference: bilinear)")
    grad_scaler: Annotated[bool, TRAINS] = Field(
        True, description="with amp, scale the loss against fp16 underflow (the reference "
        "runs autocast without a scaler)")
    cf1: Annotated[Literal["f1_of_means", "mean_of_f1"], Role()] = Field(
        "f1_of_means", description="CF1 = F1 of (CP, CR), the multi-label literature's usual definition, or the "
        "mean of per-class F1 (the reference's evaluation)")
    seed: Annotated[Int, Role(stream=True, reads=TRAINING, tag=True, nesting=-2)] = 0
    device: Annotated[str, Role(stream=True, identity=False)] = Field("auto", description="auto, cpu, cuda, cuda:N")
    amp: Annotated[bool, STREAM] = Field(True, description="autocast (fp16) on CUDA")
    num_workers: Annotated[Int, Role(stream=True, identity=False)] = Field(2, ge=0)
    cache_dir: Annotated[Path | None, Role(stream=True, identity=False, weights=True)] = Field(
        None, description="where masks and generated data go (default ./.ablate_cache)")
    options: Annotated[dict[str, Any], Role()] = Field(
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
    def _legacy(cls, data: Any, info: ValidationInfo) -> Any:
        """Configs saved before `prompt_offset` (trained.pt, checkpoints) said `prompt_residual: bool`; the
        flat dataset fields of older releases move into dataset_options."""
        if isinstance(data, dict) and "prompt_residual" in data and "prompt_offset" not in data:
            data = dict(data)
            data["prompt_offset"] = "zeros" if data.pop("prompt_residual") else "none"
        if isinstance(data, dict):
            data = move_flat_fields(data, notify=not (info.context or {}).get("stored"))
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
        parsed = DATASETS.get(self.dataset).parse_options(self.dataset_options)
        if parsed != self.dataset_options:
            object.__setattr__(self, "dataset_options", parsed)
        return self

    def dataset_settings(self, model: type[Options]) -> Options:
        """The dataset's own settings as `model` (its options model, or the one a shared loader reads, such
        as CocoOptions): the values of dataset_options that `model` declares, its defaults for the rest."""
        return model.model_validate({k: v for k, v in self.dataset_options.items() if k in model.model_fields})

    @property
    def resolved_gamma_neg(self) -> float:
        if self.gamma_neg is not None:
            return self.gamma_neg
        return 2.0 if self.loss == "asl_softmax" else 4.0

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(".ablate_cache")


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: source, dotted field path, message (a whole-config check names its fields itself)."""
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")  # pydantic's wrapper of a ValueError a validator raised
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check spelling; `ablate train --help` lists the fields)"
        lines.append(f"  {'.'.join(str(p) for p in e['loc'])}: {msg}" if e["loc"] else f"  {msg}")
    return "\n".join(lines)


def load_trial_config(path: Path, overrides: dict | None = None) -> TrialConfig:
    """Read a YAML TrialConfig; `overrides` (e.g. CLI flags) win over the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = read_yaml(path, "config file") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of TrialConfig fields at the top level")
    data.update(overrides or {})
    try:
        return TrialConfig(**data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from None


# ---- trial identity: derived from the fields' roles (ablate/roles.py) ----------------------------

FIELD_ROLES: dict[str, Role] = roles(TrialConfig)  # a field without a role fails here, at import


def fields_where(**want: object) -> tuple[str, ...]:
    """TrialConfig fields whose Role has each given value, in declaration order (`fields_where(stream=True)`)."""
    return tuple(f for f, r in FIELD_ROLES.items() if all(getattr(r, k) == v for k, v in want.items()))


def ignored_fields(method: str) -> frozenset[str]:
    """Fields `method` does not read (none for a name no longer registered, e.g. in old runs): trials
    differing only in these are the same trial."""
    if method not in METHODS:
        return frozenset()
    reads = METHODS.get(method).reads
    return frozenset(f for f, r in FIELD_ROLES.items() if r.reads != ALL and r.reads not in reads)


def param_role(name: str, method: str, dataset: str) -> Role:
    """The Role of a trial param: a TrialConfig field, or `options.<k>` / `dataset_options.<k>`, an option
    of the method's or data set's own options model (its declared Role, else the default for options;
    so too for an option of a method or data set no longer registered)."""
    if name in FIELD_ROLES:
        return FIELD_ROLES[name]
    group, _, key = name.partition(".")
    registry, default = (METHODS, METHOD_OPTION) if group == "options" else (DATASETS, DATASET_OPTION)
    owner = method if group == "options" else dataset
    model = registry.get(owner).options if owner in registry else None
    if model is None or key not in model.model_fields:
        return default
    return role_of(model, key, default)


def canonical(cfg: TrialConfig) -> TrialConfig:
    """The same trial with every field its method ignores set to the default (augment: off)."""
    defaults = {f: TrialConfig.model_fields[f].default for f in sorted(ignored_fields(cfg.method))}
    if not method_info(cfg.method).trains:  # it augments nothing (and may read cached features)
        defaults["augment"] = False
    return cfg.model_copy(update=defaults)
