"""DualCoOp and its relatives: a positive and a negative embedding per class, scored by DualCoOp's
spatial aggregation. Each side is a learned prompt through the frozen text encoder or a free
vector in the joint space:

| method        | positive side | negative side |
| dualcoop      | prompt        | prompt        |
| positivecoop  | prompt        | free          |
| negativecoop  | free          | prompt        |
| dualembed     | free          | free          |  (the missing corner: no text encoder at all)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..prompts import PROMPT, PromptLearner
from .base import FREE, Method

if TYPE_CHECKING:
    from ..backbone import Backbone
    from ..spec import TrialConfig


class PromptSide(nn.Module):
    """A class embedding produced by a learned prompt, optionally plus a free per-class offset
    (the official PositiveCoOp code: text_encoder(prompt) + o, o drawn from N(0, 1))."""

    param_kinds = {"offset": FREE}

    def __init__(self, backbone: Backbone, classnames: list[str], cfg: TrialConfig, offset: str = "none") -> None:
        super().__init__()
        self.prompts = PromptLearner(backbone, classnames, cfg.n_ctx, cfg.csc, cfg.ctx_init)
        self._backbone = (backbone,)  # a reference, not a submodule: the backbone is never trained
        shape = (len(classnames), backbone.info.embed_dim)
        self.offset = None
        if offset == "normal":
            self.offset = nn.Parameter(torch.randn(shape) * cfg.prompt_offset_std)
        elif offset == "zeros":
            self.offset = nn.Parameter(torch.zeros(shape))

    def forward(self) -> Tensor:
        backbone, prompts = self._backbone[0], self.prompts
        if prompts.csc:
            feats = backbone.encode_embeddings(prompts(), prompts.eot)
        else:  # one shared context: its tokens' states are computed once, not once per class
            feats = backbone.encode_shared_prefix(*prompts.shared_and_own(), prompts.eot)
        return feats + self.offset if self.offset is not None else feats


class FreeSide(nn.Module):
    """A class embedding learned directly in the joint space."""

    param_kinds = {"embedding": FREE}

    def __init__(self, n_classes: int, dim: int, std: float) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(n_classes, dim) * std)

    def forward(self) -> Tensor:
        return self.embedding


class TwoSided(Method):
    """Positive and negative class embeddings, each a prompt or a free vector."""

    def __init__(
        self, backbone: Backbone, classnames: list[str], cfg: TrialConfig, positive: str, negative: str
    ) -> None:
        super().__init__(cfg, len(classnames))
        # the prompt-side offset belongs to PositiveCoOp / NegativeCoOp (one prompt, one free side)
        offset = cfg.prompt_offset if (positive == PROMPT) != (negative == PROMPT) else "none"
        self.positive = self._side(positive, backbone, classnames, cfg, offset)
        self.negative = self._side(negative, backbone, classnames, cfg, offset)

    @staticmethod
    def _side(kind: str, backbone: Backbone, classnames: list[str], cfg: TrialConfig, offset: str) -> nn.Module:
        if kind == FREE:
            return FreeSide(len(classnames), backbone.info.embed_dim, cfg.free_init_std)
        return PromptSide(backbone, classnames, cfg, offset)

    def class_embeddings(self) -> tuple[Tensor, Tensor]:
        return self.positive(), self.negative()


def _two_sided(positive: str, negative: str) -> Callable[[Backbone, list[str], TrialConfig], TwoSided]:
    def build(backbone: Backbone, classnames: list[str], cfg: TrialConfig) -> TwoSided:
        return TwoSided(backbone, classnames, cfg, positive, negative)

    return build


dualcoop = _two_sided(PROMPT, PROMPT)
positivecoop = _two_sided(PROMPT, FREE)
negativecoop = _two_sided(FREE, PROMPT)
dualembed = _two_sided(FREE, FREE)
