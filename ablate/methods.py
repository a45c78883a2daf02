"""The compared methods behind one interface: dense features [B, L, D] in, logits [B, 2, N] out.

Each side of the 2x2 (positive / negative class embedding) is either a learned prompt through the
frozen text encoder or a free vector in the joint space:

| method        | positive side | negative side |
| dualcoop      | prompt        | prompt        |
| positivecoop  | prompt        | free          |
| negativecoop  | free          | prompt        |
| dualembed     | free          | free          |  (the missing corner: no text encoder at all)

plus `baseline` (a linear layer at every location, no text) and `zeroshot` (hand-written positive
and negated prompts, nothing trained). Logit index 0 is the negative, 1 the positive.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .aggregation import aggregate, aggregate_outputs
from .backbone import Backbone
from .prompts import PROMPT, PromptLearner
from .spec import TrialConfig

# Parameter kinds, each with its own learning rate and weight decay in the trainer.
FREE, LINEAR = "free", "linear"


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


class Method(nn.Module):
    """Base: `class_embeddings()` once per pass (cheap to reuse at eval), `forward` per batch."""

    name: str = ""
    trainable: bool = True

    def __init__(self, cfg: TrialConfig, n_classes: int) -> None:
        super().__init__()
        self.temperature, self.logit_scale, self.n_classes = cfg.temperature, cfg.logit_scale, n_classes

    def class_embeddings(self) -> tuple[Tensor, Tensor] | None:
        return None

    def head(self, dense: Tensor, embeddings: tuple[Tensor, Tensor] | None) -> Tensor:
        positive, negative = embeddings
        return aggregate(dense, positive, negative, self.temperature, self.logit_scale)

    def forward(self, dense: Tensor, embeddings: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if embeddings is None:
            embeddings = self.class_embeddings()
        return self.head(dense, embeddings)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by kind (prompt contexts, free embeddings, linear layers), as declared by
        the module that owns each one in its `param_kinds`; an undeclared parameter is an error, not
        silently trained at some other kind's learning rate."""
        groups: dict[str, list[nn.Parameter]] = {PROMPT: [], FREE: [], LINEAR: []}
        for module_name, module in self.named_modules():
            kinds = getattr(module, "param_kinds", {})
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                if name not in kinds:
                    raise TypeError(f"{type(module).__name__}.{name} ({module_name or 'method'}) declares no "
                                    f"parameter kind; add it to {type(module).__name__}.param_kinds")
                groups[kinds[name]].append(p)
        return groups

    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


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


class Baseline(Method):
    """Vision only: a linear layer D -> 2N at every location, each output with its own spatial softmax."""

    name = "baseline"

    def __init__(self, backbone: Backbone, classnames: list[str], cfg: TrialConfig) -> None:
        super().__init__(cfg, len(classnames))
        self.linear = nn.Linear(backbone.info.embed_dim, 2 * len(classnames))
        self.linear.param_kinds = {"weight": LINEAR, "bias": LINEAR}

    def head(self, dense: Tensor, embeddings: None) -> Tensor:
        logits = aggregate_outputs(self.linear(dense), self.logit_scale)  # [B, 2N]: negatives first
        return logits.view(dense.shape[0], 2, self.n_classes)


class ZeroShot(Method):
    """Hand-written positive and negated prompts; nothing is trained."""

    name = "zeroshot"
    trainable = False

    def __init__(self, backbone: Backbone, classnames: list[str], cfg: TrialConfig) -> None:
        super().__init__(cfg, len(classnames))
        self.register_buffer("pos", backbone.encode_text([cfg.zeroshot_positive.format(c) for c in classnames]))
        self.register_buffer("neg", backbone.encode_text([cfg.zeroshot_negative.format(c) for c in classnames]))

    def class_embeddings(self) -> tuple[Tensor, Tensor]:
        return self.pos, self.neg


def _two_sided(positive: str, negative: str) -> Callable[[Backbone, list[str], TrialConfig], Method]:
    def build(backbone: Backbone, classnames: list[str], cfg: TrialConfig) -> Method:
        return TwoSided(backbone, classnames, cfg, positive, negative)

    return build


METHODS: dict[str, Callable[[Backbone, list[str], TrialConfig], Method]] = {
    "dualcoop": _two_sided(PROMPT, PROMPT),
    "positivecoop": _two_sided(PROMPT, FREE),
    "negativecoop": _two_sided(FREE, PROMPT),
    "dualembed": _two_sided(FREE, FREE),
    "baseline": Baseline,
    "zeroshot": ZeroShot,
}


def create_method(cfg: TrialConfig, backbone: Backbone, classnames: list[str]) -> Method:
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method '{cfg.method}'; choose from {', '.join(METHODS)}")
    method = METHODS[cfg.method](backbone, classnames, cfg)
    method.name = cfg.method
    return method
