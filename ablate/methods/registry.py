"""The method registry: every compared method, declared by name with what it reads and needs.

A declaration says which TrialConfig fields the method reads (among those only some methods read:
the rest of a config is common to all), whether it runs the text encoder, whether it trains and
whether it can train on cached dense features, and where its builder lives ("module:attr",
imported on first build). The sweep merges trials that differ only in fields a method does not
read; the trainer, feature cache and probes ask these flags instead of matching names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..registry import Registry, resolve

if TYPE_CHECKING:
    from ..backbone import Backbone
    from ..spec import TrialConfig
    from .base import Method

# TrialConfig fields that only some methods read (every other field applies to every method)
PROMPT_FIELDS = frozenset({"n_ctx", "csc", "ctx_init", "prompt_lr_mult"})
OFFSET_FIELDS = frozenset({"prompt_offset", "prompt_offset_std"})
FREE_FIELDS = frozenset({"free_init_std"})
HAND_PROMPT_FIELDS = frozenset({"zeroshot_positive", "zeroshot_negative"})
TRAINING_FIELDS = frozenset({
    "seed", "label_ratio", "epochs", "lr", "free_lr_mult", "linear_lr_mult", "momentum", "weight_decay",
    "free_weight_decay", "linear_weight_decay", "warmup_epochs", "warmup_lr", "warmup_rule", "cosine_span",
    "augment", "augment_recipe", "loss", "gamma_neg", "gamma_pos", "clip", "eps", "reduction", "loss_weight",
    "grad_scaler", "val_fraction", "select_on",
})
METHOD_FIELDS = PROMPT_FIELDS | OFFSET_FIELDS | FREE_FIELDS | HAND_PROMPT_FIELDS | TRAINING_FIELDS

Builder = Callable[["Backbone", list[str], "TrialConfig"], "Method"]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    build: str | Builder  # (backbone, classnames, cfg) -> Method, or "module:attr" naming it
    reads: frozenset[str]  # the fields of METHOD_FIELDS this method reads
    text_encoder: bool  # runs the text encoder (prompts, hand-written or learned)
    trains: bool = True  # has trainable parameters (False: scored as built)
    embeds_classes: bool = True  # scores per-class embeddings (prompted or free) that probes can analyse
    cacheable: bool = True  # can train on cached dense features (its image input is the frozen encoder's output)

    def __post_init__(self) -> None:
        unknown = set(self.reads) - METHOD_FIELDS
        if unknown:
            raise ValueError(f"method {self.name}: reads {sorted(unknown)}, which are not method-dependent "
                             f"fields ({sorted(METHOD_FIELDS)})")

    @property
    def ignores(self) -> frozenset[str]:
        return METHOD_FIELDS - self.reads


METHODS: Registry[MethodInfo] = Registry("method")


def register_method(info: MethodInfo, *, replace: bool = False) -> MethodInfo:
    return METHODS.register(info.name, info, replace=replace)


def method_names() -> list[str]:
    return METHODS.names()


def method_info(name: str) -> MethodInfo:
    return METHODS.get(name)


def create_method(cfg: TrialConfig, backbone: Backbone, classnames: list[str]) -> Method:
    """The method `cfg` names, built on the frozen backbone for these classes."""
    info = method_info(cfg.method)
    method = resolve(info.build)(backbone, classnames, cfg)
    method.name, method.trainable = cfg.method, info.trains
    return method


# the built-in methods: each one's code in its own module, registered here
_TWO_SIDED = "ablate.methods.two_sided"
register_method(MethodInfo("dualcoop", f"{_TWO_SIDED}:dualcoop", PROMPT_FIELDS | TRAINING_FIELDS, text_encoder=True))
register_method(MethodInfo("positivecoop", f"{_TWO_SIDED}:positivecoop",
                           PROMPT_FIELDS | OFFSET_FIELDS | FREE_FIELDS | TRAINING_FIELDS, text_encoder=True))
register_method(MethodInfo("negativecoop", f"{_TWO_SIDED}:negativecoop",
                           PROMPT_FIELDS | OFFSET_FIELDS | FREE_FIELDS | TRAINING_FIELDS, text_encoder=True))
register_method(MethodInfo("dualembed", f"{_TWO_SIDED}:dualembed", FREE_FIELDS | TRAINING_FIELDS, text_encoder=False))
register_method(MethodInfo("baseline", "ablate.methods.baseline:Baseline", TRAINING_FIELDS, text_encoder=False,
                           embeds_classes=False))
# zero-shot scores the test split with fixed prompts: training fields and the seed change nothing
register_method(MethodInfo("zeroshot", "ablate.methods.zeroshot:ZeroShot", HAND_PROMPT_FIELDS, text_encoder=True,
                           trains=False))
