"""The vision-only baseline (PositiveCoOp paper): no text at all, a linear layer D -> 2N at every
location, each output with its own spatial softmax."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from ..aggregation import aggregate_outputs
from .base import LINEAR, Method

if TYPE_CHECKING:
    from ..backbone import Backbone
    from ..spec import TrialConfig


class LinearHead(nn.Linear):
    """nn.Linear whose parameters declare their kind (Method.param_groups reads it)."""

    param_kinds = {"weight": LINEAR, "bias": LINEAR}


class Baseline(Method):
    def __init__(self, backbone: Backbone, classnames: list[str], cfg: TrialConfig) -> None:
        super().__init__(cfg, len(classnames))
        self.linear = LinearHead(backbone.info.embed_dim, 2 * len(classnames))

    def head(self, dense: Tensor, embeddings: tuple[Tensor, Tensor] | None) -> Tensor:
        logits = aggregate_outputs(self.linear(dense), self.logit_scale)  # [B, 2N]: negatives first
        return logits.view(dense.shape[0], 2, self.n_classes)
