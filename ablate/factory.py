"""The one door to a config's frozen backbone, and what every consumer of a TrialConfig needs the same
way: the device and the seed (trials, feature caches, probes and `load_trained` all come through here,
so random 'none' weights are drawn from the same seed everywhere).

Weights names are resolved here, above ablate.backbone, which only ever sees an open_clip tag, a local
file or 'none': ablate's own aliases (`world-negation@seed=1`, ...) become the cached file of their world
CLIP, which must have been built (ablate.world.checkpoints: a sweep's pre-flight and the CLI build it)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .backbone import Backbone, create_backbone
from .errors import ConfigError
from .spec import TrialConfig
from .world.checkpoints import resolve_pretrained


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_backbone(
    name: str, pretrained: str = "none", image_size: int | None = None, device: str | torch.device = "cpu",
    cache_dir: Path | None = None, quick_gelu: bool | None = None, weights_dir: Path | None = None,
    trust_torchscript: bool = False,
) -> Backbone:
    """`create_backbone` for any weights name, aliases included (the info keeps the alias)."""
    weights = resolve_pretrained(name, pretrained, cache_dir)
    return create_backbone(name, weights, image_size, device, quick_gelu, weights_dir, label=pretrained,
                           trust_torchscript=trust_torchscript)


def backbone_from_config(cfg: TrialConfig, device: str | torch.device | None = None) -> Backbone:
    """The config's backbone on `device` (default: the config's), seeded first so random weights are
    the trial's own."""
    seed_everything(cfg.seed)
    backbone = load_backbone(cfg.backbone, cfg.pretrained, cfg.image_size,
                             resolve_device(cfg.device) if device is None else device,
                             cfg.resolved_cache_dir(), cfg.quick_gelu, cfg.weights_dir, cfg.trust_torchscript)
    check_image_size(backbone)
    return backbone


def check_image_size(backbone: Backbone) -> None:
    """One dense forward of a blank image, so a size the encoder cannot take (a ResNet below its stride)
    is a ConfigError now, not a shape error in the first batch; it draws no random numbers."""
    info = backbone.info
    device = next(backbone.parameters()).device
    try:
        backbone.dense_features(torch.zeros(1, 3, info.image_size, info.image_size, device=device))
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"image_size {info.image_size} does not fit {info.name}: {reason}; try a multiple of "
                          f"{_stride(backbone)}") from None


def _stride(backbone: Backbone) -> int:
    """Input pixels per feature-map cell: a ResNet's 32, a ViT's patch size."""
    patch = getattr(backbone.visual, "patch_size", None)
    if backbone.info.tower == "resnet" or patch is None:
        return 32
    return int(patch[0] if isinstance(patch, tuple | list) else patch)
