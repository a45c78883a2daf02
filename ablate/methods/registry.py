"""The method registry: every compared method, declared by name with what it reads and needs.

A declaration says which groups of TrialConfig fields the method reads (each field's Role names its
group, ablate/roles.py; fields of group "all" apply to every method), whether it runs the text encoder,
whether it trains and whether it can train on cached dense features, and where its builder lives ("module:attr",
imported on first build). The sweep merges trials that differ only in fields a method does not
read; the trainer, feature cache and probes ask these flags instead of matching names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ..registry import Registry, resolve
from ..roles import FREE_EMBEDDINGS, GROUPS, HAND_PROMPT, OFFSET, PROMPT, TRAINING

if TYPE_CHECKING:
    from ..backbone import Backbone
    from ..spec import TrialConfig
    from .base import Method

Builder = Callable[["Backbone", list[str], "TrialConfig"], "Method"]


@dataclass(frozen=True)
class Kind:
    """A parameter kind a method brings (beyond prompt / free / linear): the fields of the method's own
    options that give its learning-rate multiplier (x the trial's lr) and its weight decay."""

    lr_mult: str
    weight_decay: str


@dataclass(frozen=True)
class MethodInfo:
    name: str
    build: str | Builder  # (backbone, classnames, cfg) -> Method, or "module:attr" naming it
    reads: frozenset[str]  # the field groups it reads (ablate.roles: prompt, offset, free, hand_prompt, training)
    text_encoder: bool  # runs the text encoder (prompts, hand-written or learned)
    trains: bool = True  # has trainable parameters (False: scored as built)
    embeds_classes: bool = True  # scores per-class embeddings (prompted or free) that probes can analyse
    cacheable: bool = True  # can train on cached dense features (its image input is the frozen encoder's output)
    # the method's own settings: a pydantic model (unknown keys refused) read from TrialConfig.options, and
    # set in a spec under per_method.<name> like any field
    options: type[BaseModel] | None = None
    kinds: dict[str, Kind] = field(default_factory=dict)  # its own parameter kinds, by name

    def __post_init__(self) -> None:
        object.__setattr__(self, "reads", frozenset(self.reads))
        unknown = set(self.reads) - set(GROUPS[1:])
        if unknown:
            raise ValueError(f"method {self.name}: reads {sorted(unknown)}, which are not field groups "
                             f"({', '.join(GROUPS[1:])}; ablate/roles.py)")
        declared = set(self.options.model_fields) if self.options is not None else set()
        for kind, spec in self.kinds.items():
            missing = {spec.lr_mult, spec.weight_decay} - declared
            if missing:
                raise ValueError(f"method {self.name}: kind {kind!r} names {sorted(missing)}, which its options "
                                 "model does not declare")

    def parse_options(self, values: dict[str, Any]) -> dict[str, Any]:
        """`values` validated by the method's options model, defaults filled in (ValueError naming
        `options.<field>` otherwise)."""
        if self.options is None:
            if values:
                raise ValueError(f"options: method {self.name} takes no options (got {', '.join(sorted(values))})")
            return {}
        try:
            return self.options.model_validate(values).model_dump(mode="json")
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            msg = "unknown option" if first["type"] == "extra_forbidden" else first["msg"]
            raise ValueError(f"options.{where}: {msg} (method {self.name}; its options: "
                             f"{', '.join(self.options.model_fields)})") from None


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
register_method(MethodInfo("dualcoop", f"{_TWO_SIDED}:dualcoop", frozenset({PROMPT, TRAINING}), text_encoder=True))
register_method(MethodInfo("positivecoop", f"{_TWO_SIDED}:positivecoop",
                           frozenset({PROMPT, OFFSET, FREE_EMBEDDINGS, TRAINING}), text_encoder=True))
register_method(MethodInfo("negativecoop", f"{_TWO_SIDED}:negativecoop",
                           frozenset({PROMPT, OFFSET, FREE_EMBEDDINGS, TRAINING}), text_encoder=True))
register_method(MethodInfo("dualembed", f"{_TWO_SIDED}:dualembed", frozenset({FREE_EMBEDDINGS, TRAINING}),
                           text_encoder=False))
register_method(MethodInfo("baseline", "ablate.methods.baseline:Baseline", frozenset({TRAINING}), text_encoder=False,
                           embeds_classes=False))
# zero-shot scores the test split with fixed prompts: training fields and the seed change nothing
register_method(MethodInfo("zeroshot", "ablate.methods.zeroshot:ZeroShot", frozenset({HAND_PROMPT}),
                           text_encoder=True, trains=False))
