"""Zero-shot: hand-written positive and negated prompts, scored like DualCoOp's learned ones;
nothing is trained."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from .base import Method

if TYPE_CHECKING:
    from ..backbone import Backbone
    from ..spec import TrialConfig


class ZeroShot(Method):
    pos: Tensor  # buffers: the class embeddings
    neg: Tensor

    def __init__(self, backbone: Backbone, classnames: list[str], cfg: TrialConfig) -> None:
        super().__init__(cfg, len(classnames))
        self.register_buffer("pos", backbone.encode_text([cfg.zeroshot_positive.format(c) for c in classnames]))
        self.register_buffer("neg", backbone.encode_text([cfg.zeroshot_negative.format(c) for c in classnames]))

    def class_embeddings(self) -> tuple[Tensor, Tensor]:
        return self.pos, self.neg
