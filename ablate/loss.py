"""Asymmetric loss (ASL) for partial labels: unknown labels (-1) contribute nothing.

Two variants share one formula on (p_pos, p_neg):
- `asl_softmax` (DualCoOp): p from a 2-way softmax over the (negative, positive) logits per class;
  defaults gamma_neg=2, gamma_pos=1, clip=0.05.
- `asl_sigmoid` (original ASL): p_pos = sigmoid(x), p_neg = 1 - p_pos; defaults gamma_neg=4.
  For [B, 2, N] logits x = pos - neg, which is the same probability as the softmax, so the variants
  then differ only in defaults; the sigmoid variant also accepts single-logit heads [B, N].
The negative probability is shifted by `clip` (p_neg' = min(p_neg + clip, 1)), which zeroes the
loss of easy negatives. Focal weights are computed without gradient, as in the reference.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn


class AsymmetricLoss(nn.Module):
    def __init__(
        self,
        variant: Literal["asl_softmax", "asl_sigmoid"] = "asl_softmax",
        gamma_neg: float | None = None,
        gamma_pos: float = 1.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        reduction: Literal["mean", "sum"] = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.variant = variant
        self.gamma_neg = gamma_neg if gamma_neg is not None else (2.0 if variant == "asl_softmax" else 4.0)
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = eps
        self.reduction = reduction
        self.loss_weight = loss_weight

    def probabilities(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        logits = logits.float()
        if self.variant == "asl_softmax":
            if logits.dim() != 3 or logits.shape[1] != 2:
                raise ValueError(f"asl_softmax needs [B, 2, N] logits, got {tuple(logits.shape)}")
            p = logits.softmax(dim=1)
            return p[:, 1], p[:, 0]
        x = logits[:, 1] - logits[:, 0] if logits.dim() == 3 else logits
        p_pos = torch.sigmoid(x)
        return p_pos, 1.0 - p_pos

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        p_pos, p_neg = self.probabilities(logits)
        is_pos = (targets == 1).float()
        is_neg = (targets == 0).float()  # -1 (unknown) is neither
        if self.clip > 0:
            p_neg = (p_neg + self.clip).clamp(max=1.0)
        log_lik = is_pos * p_pos.clamp(min=self.eps).log() + is_neg * p_neg.clamp(min=self.eps).log()
        if self.gamma_pos > 0 or self.gamma_neg > 0:
            with torch.no_grad():
                p_true = p_pos * is_pos + p_neg * is_neg
                gamma = self.gamma_pos * is_pos + self.gamma_neg * is_neg
                focal = (1.0 - p_true).pow(gamma)
            log_lik = log_lik * focal
        loss = -log_lik.sum()
        if self.reduction == "mean":
            loss = loss / (is_pos + is_neg).sum().clamp(min=1.0)
        return self.loss_weight * loss
