"""Class-specific region aggregation (DualCoOp): a spatial softmax over image locations.

Every location and every class embedding is L2-normalised; the cosine similarity, scaled by
`temperature`, is weighted by a softmax over locations of the *positive* similarities and summed.
The same weights serve the negative side, so both logits look at the same regions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def similarity(dense: Tensor, classes: Tensor, temperature: float) -> Tensor:
    """[B, L, D] x [N, D] -> scaled cosine [B, L, N]."""
    return temperature * F.normalize(dense, dim=-1) @ F.normalize(classes, dim=-1).t()


def aggregate(
    dense: Tensor, positive: Tensor, negative: Tensor, temperature: float = 20.0, logit_scale: float = 5.0
) -> Tensor:
    """Dense features [B, L, D] and class embeddings [N, D] per side -> logits [B, 2, N] (neg, pos)."""
    s_pos = similarity(dense, positive, temperature)
    s_neg = similarity(dense, negative, temperature)
    weights = s_pos.softmax(dim=1)  # over locations, from the positive side only
    pos = logit_scale * (s_pos * weights).sum(dim=1)
    neg = logit_scale * (s_neg * weights).sum(dim=1)
    return torch.stack([neg, pos], dim=1)


def aggregate_outputs(outputs: Tensor, logit_scale: float = 5.0) -> Tensor:
    """Per-location outputs [B, L, C] -> [B, C], each output channel with its own spatial softmax."""
    return logit_scale * (outputs * outputs.softmax(dim=1)).sum(dim=1)
