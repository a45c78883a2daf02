"""What a trial's setting is to the trial: the one declaration of it.

Every TrialConfig field (and every option of a method's or data set's options model) carries a `Role`
in its annotation, next to its definition (`n_ctx: Annotated[int, Role(reads=PROMPT)] = 16`). The pack
key, the fields a method ignores, run names, `ablate.<field>` tags, the report's row key, the weights a
paired comparison must share and the order a grid runs in are all derived from these roles, so a new
field (or a plugin's option) is right everywhere once its role is right. A field without a role is an
error (tests/test_roles.py walks them). Torch-free and pydantic-only: the config layer reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

# Who reads a field: every method (ALL), or the methods that declare the group in MethodInfo.reads.
Group = Literal["all", "prompt", "offset", "free", "hand_prompt", "training"]
ALL: Group = "all"
PROMPT: Group = "prompt"  # learned prompt contexts (CoOp)
OFFSET: Group = "offset"  # the free offset added to a prompt side's text features
FREE_EMBEDDINGS: Group = "free"  # free class embeddings in the joint space
HAND_PROMPT: Group = "hand_prompt"  # hand-written prompts (zero-shot)
TRAINING: Group = "training"  # labels, optimiser, loss, schedule, selection: what a trained method reads
GROUPS: tuple[Group, ...] = (ALL, PROMPT, OFFSET, FREE_EMBEDDINGS, HAND_PROMPT, TRAINING)


@dataclass(frozen=True)
class Role:
    """One setting's part in a trial.

    - stream: it shapes the image stream (which images, in which order, with which pixels, through which
      frozen encoder): arms share a pack only when they agree on it.
    - reads: which methods read it; for the others it is "n/a" (params, tags, names) and trials differing
      only in it are one trial.
    - identity: it can change the result, so runs differing in it are different trials (run names, tags,
      report rows); False for where things are kept or how they are run (caches, workers, device).
    - tag: its value is also an `ablate.<field>` tag (the MLflow UI's filters and prepared view).
    - weights: it names or locates the frozen weights (paired comparisons are made on equal named weights;
      the pre-flight builds every world CLIP a search may sample from these).
    - nesting, spread: where a grid over it runs in a sweep's order. Negative: outside the other axes (the
      lowest outermost: each value a complete comparison); positive: inside them (every method at one
      setting before the next); 0: between, as the grid gives them. spread: its values run ends first, then
      midpoints (0.1, 0.9, 0.5, ...), so a sweep stopped part-way covers the range.
    """

    stream: bool = False
    reads: Group = ALL
    identity: bool = True
    tag: bool = False
    weights: bool = False
    nesting: int = 0
    spread: bool = False

    def __post_init__(self) -> None:
        if self.reads not in GROUPS:
            raise ValueError(f"Role(reads={self.reads!r}): one of {', '.join(GROUPS)}")


# the role of a method's or data set's own option that declares none
METHOD_OPTION = Role()
DATASET_OPTION = Role(stream=True)  # a data set's settings change what it loads


def role_of(model: type[BaseModel], name: str, default: Role | None = None) -> Role:
    """The Role in field `name`'s annotation; `default` (options models) or ValueError when it has none."""
    found = [m for m in model.model_fields[name].metadata if isinstance(m, Role)]
    if found:
        return found[-1]
    if default is None:
        raise ValueError(f"{model.__name__}.{name} declares no Role: say what it is to a trial "
                         "(Annotated[type, Role(...)], see ablate/roles.py)")
    return default


def roles(model: type[BaseModel], default: Role | None = None) -> dict[str, Role]:
    """Field name -> Role, in declaration order."""
    return {name: role_of(model, name, default) for name in model.model_fields}
