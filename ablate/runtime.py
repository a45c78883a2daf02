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
    return load_backbone(cfg.backbone, cfg.pretrained, cfg.image_size,
                         resolve_device(cfg.device) if device is None else device,
                         cfg.resolved_cache_dir(), cfg.quick_gelu, cfg.weights_dir)
