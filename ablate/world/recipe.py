"""The world CLIP's pre-training recipe and the weights names that stand for it, without torch (specs
and reports parse these names; `ablate.world.pretrain` trains what they describe).

Grammar of a world alias, as a spec's or the CLI's `pretrained`:

    world-<captions>[@<field>=<value>]...

`<captions>` is `presence` or `negation`; each `<field>` is a PretrainConfig field other than `model`
(the trial's backbone) and `captions` (the name), e.g. `world-negation@seed=1`,
`world-presence@seed=2@epochs=4` (no commas: they split YAML flow lists). Fields not named keep
the default recipe, so `world-negation` is `world-negation@seed=0`. `canonical_alias` writes the
one spelling of a recipe (fields sorted, defaults dropped), which is what runs are tagged with and
feature caches are keyed by.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .captions import STYLES, CaptionStyle


@dataclass(frozen=True)
class PretrainConfig:
    model: str = "ablate-tiny-vit"
    captions: CaptionStyle = "presence"
    epochs: int = 8  # 2000 images x 5 captions: ~3 minutes on 2 cores
    batch_size: int = 64  # 128 sat on the initial ln(batch) plateau for half the run
    lr: float = 5e-4  # 1e-3 and 2e-3 learned slower; 3e-4 about the same
    weight_decay: float = 0.05
    warmup_steps: int = 20
    seed: int = 0


DEFAULT_PRETRAIN = PretrainConfig()  # frozen: safe to share
# the names specs use for ablate's own tiny CLIPs (ablate.factory resolves them) -> caption style
WORLD_ALIASES: dict[str, CaptionStyle] = {"world-presence": "presence", "world-negation": "negation"}
# fields an alias may set: the model is the trial's backbone and the captions are in the name
RECIPE_FIELDS = {f.name: type(getattr(DEFAULT_PRETRAIN, f.name)) for f in fields(PretrainConfig)
                 if f.name not in ("model", "captions")}
GRAMMAR = (f"world-<captions>[@<field>=<value>]... with captions one of {', '.join(STYLES)} and fields from "
           f"{', '.join(RECIPE_FIELDS)}, e.g. world-negation@seed=1@epochs=4")


def is_alias(pretrained: str) -> bool:
    """Whether `pretrained` names a world checkpoint; a file named world-….pt is a file, not an alias."""
    return pretrained.partition("@")[0] in WORLD_ALIASES


def _value(alias: str, name: str, text: str) -> int | float:
    kind = RECIPE_FIELDS[name]
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"world alias {alias!r}: {name} must be {'an integer' if kind is int else 'a number'}, "
                          f"got {text!r}; grammar: {GRAMMAR}") from None
    if value < 0 or (value == 0 and name in ("epochs", "batch_size", "lr")):
        raise ConfigError(f"world alias {alias!r}: {name}={text} is out of range; grammar: {GRAMMAR}")
    return value


def parse_alias(alias: str, model: str = DEFAULT_PRETRAIN.model,
                base: PretrainConfig = DEFAULT_PRETRAIN) -> PretrainConfig:
    """The recipe `alias` names, on top of `base`, for `model`; ConfigError naming the alias and the grammar."""
    name, *overrides = alias.split("@")
    if name not in WORLD_ALIASES:
        raise ConfigError(f"unknown world checkpoint {alias!r}; grammar: {GRAMMAR}")
    values: dict[str, Any] = {}  # typed per field by _value
    for item in overrides:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or key not in RECIPE_FIELDS or key in values:
            problem = "repeats" if key in values else "cannot set" if eq else "expects <field>=<value> in"
            raise ConfigError(f"world alias {alias!r} {problem} {item!r}; grammar: {GRAMMAR}")
        values[key] = _value(alias, key, text.strip())
    return replace(base, model=model, captions=WORLD_ALIASES[name], **values)


def alias_of(cfg: PretrainConfig) -> str:
    """The canonical alias of a recipe: fields sorted, those at the default left out."""
    changed = [f"{k}={getattr(cfg, k)!r}" for k in sorted(RECIPE_FIELDS) if getattr(cfg, k) != getattr(
        DEFAULT_PRETRAIN, k)]
    return "@".join([f"world-{cfg.captions}", *changed])


def canonical_alias(alias: str) -> str:
    """`alias` spelled canonically (`world-negation@seed=0` -> `world-negation`); ConfigError if malformed."""
    return alias_of(parse_alias(alias))


def check_pretrained(pretrained: str) -> str:
    """A spec's `pretrained`: world aliases spelled canonically, other names as given. A name shaped like
    an alias but naming none (`world-negaton@seed=1`) that is no file either is a ConfigError here,
    before anything runs, rather than a missing-file error in a trial."""
    if is_alias(pretrained):
        return canonical_alias(pretrained)
    if pretrained.startswith("world-") and "@" in pretrained and not Path(pretrained).exists():
        raise ConfigError(f"unknown world checkpoint {pretrained!r} (and no such file); grammar: {GRAMMAR}")
    return pretrained
