"""Frozen open_clip backbone: loading, dense image features and a prompt text encoder.

One door, `create_backbone(name, pretrained, image_size, device)`:
- `name`: any open_clip model name, or one of the tiny configs shipped here (`ablate-tiny-vit`,
  `ablate-tiny-rn`), registered with open_clip so they work wherever a model name is accepted.
- `pretrained`: an open_clip tag (e.g. `openai`, at any image size), a local checkpoint file
  (open_clip or OpenAI-format state dict, possibly wrapped under "state_dict"/"model", an OpenAI
  TorchScript archive, or safetensors), or `none` for random weights. Aliases of ablate's own
  weights (`world-presence`, ...) are resolved to files above this layer, in ablate.factory.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import convert_to_custom_text_state_dict, set_model_preprocess_cfg
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from .errors import WeightsError
from .files import file_lock
from .weight_files import read_checkpoint

CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_MODELS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
open_clip.add_model_config(CONFIG_DIR)


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    pretrained: str
    image_size: int
    embed_dim: int  # joint space width (dense features and text features)
    text_width: int  # token embedding width (learned contexts)
    tower: str  # "resnet" or "vit"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    quick_gelu: bool
    weights: str = ""  # what `pretrained` resolved to: the tag, or the file (world aliases name a keyed file)

def _file_activation(name: str, path: Path, is_openai: bool, quick_gelu: bool | None) -> bool:
    """QuickGELU or GELU for weights from a file. The weights cannot tell: only OpenAI's format
    markers, a `-quickgelu` name or an explicit choice can, and guessing wrong changes every feature."""
    if is_openai or "quickgelu" in name:
        if quick_gelu is False:
            raise WeightsError(f"{path} is an OpenAI-format checkpoint, trained with QuickGELU; drop quick_gelu: false")
        return True
    if quick_gelu is not None:
        return quick_gelu
    if f"{name}-quickgelu" in open_clip.list_models():
        raise WeightsError(
            f"{path}: the weights cannot tell whether {name} was trained with QuickGELU (OpenAI CLIP and its "
            f"fine-tunes, e.g. NegationCLIP, CoN-CLIP) or GELU (e.g. LAION); use --backbone {name}-quickgelu, "
            "or set quick_gelu: true / false")
    return False


def _build_clip(
    name: str, pretrained: str, image_size: int | None, quick_gelu: bool | None = None,
    weights_dir: Path | None = None, trust_torchscript: bool = False,
) -> tuple[nn.Module, bool]:
    if name not in open_clip.list_models() and not name.startswith(("hf-hub:", "local-dir:")):
        raise WeightsError(
            f"unknown backbone '{name}'; use an open_clip model name (open_clip.list_models()) "
            f"or one of {', '.join(TINY_MODELS)}"
        )
    kwargs = {"force_image_size": image_size} if image_size else {}
    if pretrained.lower() == "none":
        quick = bool(quick_gelu) or "quickgelu" in name
        return open_clip.create_model(name, pretrained=None, force_quick_gelu=quick, **kwargs), quick
    path = Path(pretrained).expanduser()
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt", ".safetensors") or path.exists():
        state, is_openai = read_checkpoint(path, trust_torchscript)
        quick = _file_activation(name, path, is_openai, quick_gelu)
        model = _empty_model(name, quick, kwargs)
        _load_state(model, state, path)
        return model, quick
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise WeightsError(
            f"'{pretrained}' is neither a local file nor an open_clip tag of {name} "
            f"(tags: {', '.join(tags) or 'none'}); pass a checkpoint path or 'none'"
        )
    # open_clip only warns when a QuickGELU tag meets a GELU config; build what the tag was trained with
    quick = bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu")) or "quickgelu" in name
    return _from_tag(name, pretrained, image_size, quick, weights_dir, trust_torchscript), quick


class _NoRandomInitWarning(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def _empty_model(name: str, quick: bool, kwargs: dict) -> Any:  # open_clip's CLIP classes
    """The model, its weights loaded next: open_clip's warning that it is random would be false here."""
    root, quiet = logging.getLogger(), _NoRandomInitWarning()
    root.addFilter(quiet)  # open_clip warns through the root logger
    try:
        return open_clip.create_model(name, pretrained=None, force_quick_gelu=quick, **kwargs)
    finally:
        root.removeFilter(quiet)


def _from_tag(name: str, tag: str, image_size: int | None, quick: bool, weights_dir: Path | None,
              trust_torchscript: bool = False) -> nn.Module:
    """open_clip finds or downloads the tag's file (its own cache, or `weights_dir`); the weights are then
    loaded like any local file, so a size other than the one they were trained at gets its positional
    embeddings resized (open_clip's own tag loading cannot resize a ModifiedResNet's attention pool:
    RN101 at 448 would not load)."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    lock = file_lock(Path(weights_dir) / f".{name}-{tag}.lock") if weights_dir else contextlib.nullcontext()
    with lock:  # nodes sharing one weights folder download it once
        path = Path(open_clip.download_pretrained(cfg, cache_dir=str(weights_dir) if weights_dir else None))
    state, _ = read_checkpoint(path, trust_torchscript)
    kwargs = {"force_image_size": image_size} if image_size else {}
    model = _empty_model(name, quick, kwargs)
    _load_state(model, state, path)
    # the tag's preprocessing (mean, std), as open_clip's own tag loading would set it
    preprocess = {**model.visual.preprocess_cfg, **{k: cfg[k] for k in ("mean", "std") if cfg.get(k)}}
    set_model_preprocess_cfg(model, preprocess)
    return model


def resize_positional(pos: Tensor, grid: tuple[int, int]) -> Tensor:
    """[1 + g*g, C] -> [1 + h*w, C]: bicubic on the spatial part, the class / mean token kept."""
    side = int(round((pos.shape[0] - 1) ** 0.5))
    if (side, side) == grid:
        return pos
    spatial = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    spatial = F.interpolate(spatial, size=grid, mode="bicubic", align_corners=False)
    spatial = spatial.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([pos[:1], spatial], dim=0)


def _load_state(model: nn.Module, state: dict[str, Tensor], source: Path | str) -> None:
    target = model.state_dict()
    if "positional_embedding" in state and "text.positional_embedding" in target:
        state = convert_to_custom_text_state_dict(state)  # a plain CLIP's keys into a separate text tower
    # weights trained at another input size: their positional grids are resized to the model's here
    state = dict(state)
    for key in ("visual.positional_embedding", "visual.attnpool.positional_embedding"):
        if key in state and key in target and state[key].shape != target[key].shape:
            side = int(round((target[key].shape[0] - 1) ** 0.5))
            # at the model's precision: an fp16 file's grid is not rounded to fp16 again after resizing
            state[key] = resize_positional(state[key].to(target[key].dtype), (side, side))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "logit_bias"]
    if missing or unexpected:
        raise WeightsError(
            f"{source} does not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]} "
            "(is --backbone the model the checkpoint was trained as?)"
        )


class Backbone(nn.Module):
    """A frozen CLIP: always in eval mode, no parameter requires grad."""

    def __init__(self, model: nn.Module, info: BackboneInfo) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.info = info
        self.tokenizer = open_clip.get_tokenizer(info.name)
        text = model.text if hasattr(model, "text") else model
        if getattr(text, "text_pool_type", "argmax") != "argmax":
            raise WeightsError(f"{info.name}: prompt learning needs an argmax (EOT) text pool")
        self.text = text
        self._pos_cache: dict[tuple[int, int], Tensor] = {}

    def train(self, mode: bool = True) -> Backbone:
        return super().train(False)  # BatchNorm statistics and dropout stay frozen

    @property
    def visual(self) -> nn.Module:
        return self.model.get_submodule("visual")

    # ---- image side -------------------------------------------------------------------------
    def _resized_pos(self, pos: Tensor, grid: tuple[int, int]) -> Tensor:
        """The positional embedding for an input of another size than the model's (kept per size)."""
        key = (pos.data_ptr(), *grid)
        if key not in self._pos_cache:
            self._pos_cache[key] = resize_positional(pos, grid)
        return self._pos_cache[key]

    def _dense_resnet(self, images: Tensor) -> Tensor:
        v = self.visual
        x = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(images)))))
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        x = x + self._resized_pos(v.get_parameter("attnpool.positional_embedding"), (h, w)).to(x.dtype)
        # The attention pool's value and output projections, applied at every location.
        return v.attnpool.c_proj(v.attnpool.v_proj(x))

    def _dense_vit(self, images: Tensor) -> Tensor:
        v = self.visual
        if v.attn_pool is not None:
            raise WeightsError(f"{self.info.name}: ViTs with attentional pooling have no dense tokens")
        x = v.conv1(images)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self._resized_pos(v.positional_embedding, (h, w)).to(x.dtype)
        x = v.transformer(v.ln_pre(v.patch_dropout(x)))
        x = v.ln_post(x)
        return x @ v.proj if v.proj is not None else x

    @torch.no_grad()
    def dense_features(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, HW + 1, D]; token 0 is the global (mean or class) token."""
        if self.info.tower == "resnet":
            return self._dense_resnet(images)
        return self._dense_vit(images)

    def encode_image(self, images: Tensor) -> Tensor:
        """The model's own pooled image embedding [B, D] (not the dense tokens)."""
        return self.model.encode_image(images)

    # ---- text side --------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> Tensor:
        return self.tokenizer(texts).to(self.text.token_embedding.weight.device)

    @torch.no_grad()
    def token_embedding(self, tokens: Tensor) -> Tensor:
        return self.text.token_embedding(tokens)

    def encode_embeddings(self, embeddings: Tensor, eot: Tensor, truncate: bool = True) -> Tensor:
        """Token embeddings [K, 77, W] (learned contexts inside) + EOT positions [K] -> [K, D].

        With the causal mask the EOT output depends only on the tokens up to it, so cutting every
        sequence after the longest EOT gives the same result for a fraction of the cost.
        """
        t = self.text
        length = int(eot.max()) + 1 if truncate else embeddings.shape[1]
        x = embeddings[:, :length] + t.positional_embedding[:length].to(embeddings.dtype)
        mask = t.attn_mask[:length, :length] if t.attn_mask is not None else None
        return self._pool(t.transformer(x, attn_mask=mask), eot)

    def _pool(self, x: Tensor, eot: Tensor) -> Tensor:
        """Final token states [K, L, W] -> the EOT token's, normalised and projected -> [K, D]."""
        t = self.text
        x = t.ln_final(x)[torch.arange(x.shape[0], device=x.device), eot]
        proj = t.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def shares_prefixes(self) -> bool:
        """Whether `encode_shared_prefix` can run this text tower: a causal, batch-first stack of
        open_clip's self-attention blocks (every standard CLIP text tower)."""
        t = self.text
        return t.attn_mask is not None and getattr(t.transformer, "batch_first", False) and all(
            isinstance(getattr(b, "attn", None), nn.MultiheadAttention) and b.attn.batch_first
            and b.attn._qkv_same_embed_dim and not hasattr(b, "ln_1_kv") for b in t.transformer.resblocks)

    def encode_shared_prefix(self, shared: Tensor, rest: Tensor, eot: Tensor) -> Tensor:
        """Prompts that all begin with the same tokens (start token + one shared context): `shared`
        [P, W], each prompt's own tokens `rest` [K, S, W], EOT positions [K] counted from the start -> [K, D].

        Under the causal mask the shared tokens' states are identical in every prompt, so they are
        computed once and each prompt's own tokens attend to them: the same result as `encode_embeddings`
        on the concatenation, with each prompt costing its S own tokens instead of P + S.
        """
        if not self.shares_prefixes():
            return self.encode_embeddings(torch.cat([shared.expand(len(rest), -1, -1), rest], dim=1), eot)
        t, n_shared = self.text, shared.shape[0]
        length = int(eot.max()) + 1
        pos = t.positional_embedding[:length].to(rest.dtype)
        head = (shared + pos[:n_shared]).unsqueeze(0)  # [1, P, W]
        own = rest[:, : length - n_shared] + pos[n_shared:]  # [K, S, W]
        # own tokens see every shared token and the own tokens up to themselves (True: attend)
        mask = t.attn_mask[n_shared:length, :length] == 0
        for block in t.transformer.resblocks:
            head, own = _shared_prefix_block(block, head, own, mask)
        return self._pool(own, eot - n_shared)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        tokens = self.tokenize(texts)
        return self.encode_embeddings(self.token_embedding(tokens), tokens.argmax(dim=-1))


def _shared_prefix_block(block: nn.Module, head: Tensor, own: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """One residual attention block over shared tokens [1, P, W] and per-prompt tokens [K, S, W]:
    the shared tokens' keys and values are projected once and broadcast to every prompt."""
    attn = block.attn
    assert isinstance(attn, nn.MultiheadAttention)  # Backbone.shares_prefixes checked every block
    heads = attn.num_heads

    def project(x: Tensor) -> tuple[Tensor, ...]:  # -> q, k, v as [B, heads, L, W / heads]
        qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        return tuple(z.unflatten(-1, (heads, -1)).transpose(1, 2) for z in qkv.chunk(3, dim=-1))

    def finish(x: Tensor, out: Tensor) -> Tensor:
        x = x + block.ls_1(attn.out_proj(out.transpose(1, 2).flatten(2)))
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    q_head, k_head, v_head = project(head)
    q_own, k_own, v_own = project(own)
    n = own.shape[0]
    keys = torch.cat([k_head.expand(n, -1, -1, -1), k_own], dim=2)
    values = torch.cat([v_head.expand(n, -1, -1, -1), v_own], dim=2)
    out_head = F.scaled_dot_product_attention(q_head, k_head, v_head, is_causal=True)
    out_own = F.scaled_dot_product_attention(q_own, keys, values, attn_mask=mask)
    return finish(head, out_head), finish(own, out_own)


def _tower(visual: nn.Module, name: str) -> str:
    if isinstance(visual, ModifiedResNet):
        return "resnet"
    if isinstance(visual, VisionTransformer):
        return "vit"
    raise WeightsError(
        f"{name}: dense features need an open_clip ModifiedResNet or VisionTransformer image tower, "
        f"got {type(visual).__name__}"
    )


def create_backbone(
    name: str, pretrained: str = "none", image_size: int | None = None, device: str | torch.device = "cpu",
    quick_gelu: bool | None = None, weights_dir: Path | None = None, *, label: str | None = None,
    trust_torchscript: bool = False,
) -> Backbone:
    """`pretrained`: an open_clip tag, a local file or 'none' (ablate.factory resolves its own aliases
    to files first; `label` then keeps the name the user gave). `quick_gelu`: None decides from the
    weights' format and name (ambiguous files are refused). `weights_dir`: where open_clip tags are
    downloaded (None: open_clip's own cache). `trust_torchscript`: see read_checkpoint."""
    model, quick = _build_clip(name, pretrained, image_size, quick_gelu, weights_dir, trust_torchscript)
    visual = model.get_submodule("visual")
    tower = _tower(visual, name)  # before reading tower attributes: another tower type gets a clear error
    pre = getattr(visual, "preprocess_cfg", {}) or {}
    size = visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    text = model.get_submodule("text") if hasattr(model, "text") else model
    token_width = text.get_parameter("token_embedding.weight").shape[1]
    # open_clip's towers keep their sizes as plain ints (a ViT's image_size as an (h, w) pair), attributes
    # that nn.Module's __getattr__ types `Tensor | Module`
    info = BackboneInfo(
        name=name,
        pretrained=label or pretrained,
        image_size=int(image_size or size),  # type: ignore[arg-type]
        embed_dim=int(visual.output_dim),  # type: ignore[arg-type]
        text_width=int(token_width),
        tower=tower,
        mean=tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(pre.get("std", open_clip.OPENAI_DATASET_STD)),
        quick_gelu=quick,
        weights=pretrained,
    )
    return Backbone(model, info).to(device)
