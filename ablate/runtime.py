"""What every consumer of a TrialConfig needs the same way: the device, the seed, and the frozen
backbone the config names (trials, feature caches, probes and `load_trained` all come through here,
so random 'none' weights are drawn from the same seed everywhere)."""

from __future__ import annotations

import random

import numpy as np
import torch

from .backbone import Backbone
from .errors import ConfigError
from .spec import TrialConfig
from .weights import load_backbone


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
