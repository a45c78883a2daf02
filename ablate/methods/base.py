"""What every method is: dense features [B, L, D] in, logits [B, 2, N] out (index 0 the negative,
1 the positive), class embeddings computed once per pass, and trainable parameters grouped by the
kind their module declares (each kind has its own learning rate and weight decay in the trainer)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from ..aggregation import aggregate

if TYPE_CHECKING:
    from ..spec import TrialConfig

# Parameter kinds besides prompt contexts (ablate.prompts.PROMPT)
FREE, LINEAR = "free", "linear"


class Method(nn.Module):
    """Base: `class_embeddings()` once per pass (cheap to reuse at eval), `forward` per batch.

    A module owning trainable parameters declares their kinds in `param_kinds` (parameter name ->
    kind); `param_groups` refuses a parameter without one rather than guessing its learning rate."""

    name: str = ""
    trainable: bool = True

    def __init__(self, cfg: TrialConfig, n_classes: int) -> None:
        super().__init__()
        self.temperature, self.logit_scale, self.n_classes = cfg.temperature, cfg.logit_scale, n_classes

    def class_embeddings(self) -> tuple[Tensor, Tensor] | None:
        return None

    def head(self, dense: Tensor, embeddings: tuple[Tensor, Tensor] | None) -> Tensor:
        assert embeddings is not None, f"{type(self).__name__} scores class embeddings"
        positive, negative = embeddings
        return aggregate(dense, positive, negative, self.temperature, self.logit_scale)

    def forward(self, dense: Tensor, embeddings: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if embeddings is None:
            embeddings = self.class_embeddings()
        return self.head(dense, embeddings)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by the kind their owning module declares."""
        groups: dict[str, list[nn.Parameter]] = {}
        for module_name, module in self.named_modules():
            kinds = getattr(module, "param_kinds", {})
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                if name not in kinds:
                    raise TypeError(f"{type(module).__name__}.{name} ({module_name or 'method'}) declares no "
                                    f"parameter kind; add it to {type(module).__name__}.param_kinds")
                groups.setdefault(kinds[name], []).append(p)
        return groups

    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
