"""CoOp-style learnable prompts: "<ctx_1> ... <ctx_n> {class name}." with learned context vectors.

The start token and the class-name / "." / EOT embeddings are frozen buffers; only the contexts
are parameters, class-specific ([N, n_ctx, W]) or shared by all classes ([n_ctx, W]).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .backbone import Backbone
from .errors import ConfigError

PROMPT = "prompt"  # the parameter kind of learned contexts (the trainer gives each kind its own lr)
PLACEHOLDER = "X"  # a single BPE token; its embedding is replaced by the learned context


class PromptLearner(nn.Module):
    param_kinds = {"ctx": PROMPT}
    # buffers (register_buffer), declared so that they read as tensors rather than nn.Module attributes
    tokens: Tensor
    prefix: Tensor
    suffix: Tensor

    def __init__(
        self, backbone: Backbone, classnames: list[str], n_ctx: int = 16, csc: bool = True, init: str | None = None
    ) -> None:
        super().__init__()
        self.n_ctx, self.csc = n_ctx, csc
        texts = [" ".join([PLACEHOLDER] * n_ctx) + f" {name}." for name in classnames]
        tokens = backbone.tokenize(texts)
        if int(tokens.argmax(dim=-1).max()) >= tokens.shape[1] - 1 and (tokens[:, -1] != 0).any():
            raise ConfigError(f"n_ctx={n_ctx} plus a class name does not fit the {tokens.shape[1]}-token context")
        embedded = backbone.token_embedding(tokens).float()
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)  # start token
        self.register_buffer("suffix", embedded[:, 1 + n_ctx :].clone(), persistent=False)  # name . EOT pad
        shape = (len(classnames), n_ctx, embedded.shape[-1]) if csc else (n_ctx, embedded.shape[-1])
        self.ctx = nn.Parameter(self._init_ctx(backbone, shape, init))

    def _init_ctx(self, backbone: Backbone, shape: tuple[int, ...], phrase: str | None) -> Tensor:
        ctx = torch.randn(shape) * 0.02
        if phrase is None:
            return ctx
        tokens = backbone.tokenize([phrase])
        n = int(tokens.argmax(dim=-1)) - 1  # tokens between start and EOT
        if n > self.n_ctx:
            raise ConfigError(f"ctx_init '{phrase}' is {n} tokens long, more than n_ctx={self.n_ctx}")
        words = backbone.token_embedding(tokens)[0, 1 : 1 + n].float()
        # The phrase sits right before the class name, as in "a photo of a {class}."; extra slots stay random.
        ctx[..., self.n_ctx - n :, :] = words
        return ctx

    @property
    def eot(self) -> Tensor:
        return self.tokens.argmax(dim=-1)

    def forward(self) -> Tensor:
        """Token embeddings of every class prompt, [N, 77, W]."""
        ctx = self.ctx if self.csc else self.ctx.expand(self.prefix.shape[0], -1, -1)
        return torch.cat([self.prefix, ctx.to(self.prefix.dtype), self.suffix], dim=1)

    def shared_and_own(self) -> tuple[Tensor, Tensor]:
        """Shared context only: the tokens every prompt begins with (start + context, [1 + n_ctx, W])
        and each class's own tokens (name . EOT pad, [N, S, W]), for `Backbone.encode_shared_prefix`."""
        if self.csc:
            raise ValueError("class-specific contexts share no prefix")
        return torch.cat([self.prefix[0], self.ctx.to(self.prefix.dtype)]), self.suffix
