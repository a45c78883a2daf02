"""Which registered methods a benchmark covers, asked of the method registry (never a name list)."""

from __future__ import annotations

from functools import cache

from ablate.backbone import create_backbone
from ablate.methods import create_method, method_info, method_names
from ablate.prompts import PromptLearner
from ablate.spec import TrialConfig


def trained_methods() -> list[str]:
    return [m for m in method_names() if method_info(m).trains]


def prompted_methods() -> list[str]:
    """Methods with learned prompts (they read n_ctx / csc)."""
    return [m for m in method_names() if "prompt" in method_info(m).reads]


def default_lr(method: str) -> float:
    """A random-weight tiny CLIP has a sharp loss surface for prompts: a small lr for methods that run the
    text encoder, a larger one for free embeddings and linear heads."""
    return 3e-4 if method_info(method).text_encoder else 2e-2


@cache
def prompt_sides(method: str) -> int:
    """How many learned prompts per class the method sends through the text encoder (built to count)."""
    built = create_method(TrialConfig(method=method, backbone="ablate-tiny-rn"),
                          create_backbone("ablate-tiny-rn", "none"), ["a", "b"])
    return sum(isinstance(m, PromptLearner) for m in built.modules())
