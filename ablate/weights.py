"""Where weights come from, resolved above the model layer: ablate's own aliases become files
here, so ablate.backbone only ever sees an open_clip tag, a local file or 'none'.

- `world-presence` / `world-negation`: the tiny CLIP ablate pre-trains on its synthetic world
  (presence-only or negation captions), built and trained on first use, cached under the cache dir;
  `world-negation@seed=1@epochs=4` sets fields of the recipe (grammar in ablate.pretrain_recipe), and
  each distinct recipe is its own cached checkpoint.
- anything else (a tag, a file, 'none') is passed on as is.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .backbone import Backbone, create_backbone
from .pretrain import ensure_world_checkpoint
from .pretrain_recipe import WORLD_ALIASES, is_alias

__all__ = ["WORLD_ALIASES", "is_alias", "load_backbone", "resolve_pretrained"]


def resolve_pretrained(name: str, pretrained: str, cache_dir: Path | None = None) -> str:
    """The file an alias stands for (built on first use), or `pretrained` itself."""
    if not is_alias(pretrained):
        return pretrained
    return str(ensure_world_checkpoint(pretrained, Path(cache_dir or ".ablate_cache"), model=name))


def load_backbone(
    name: str, pretrained: str = "none", image_size: int | None = None, device: str | torch.device = "cpu",
    cache_dir: Path | None = None, quick_gelu: bool | None = None, weights_dir: Path | None = None,
    trust_torchscript: bool = False,
) -> Backbone:
    """`create_backbone` for any weights name, aliases included (the info keeps the alias)."""
    weights = resolve_pretrained(name, pretrained, cache_dir)
    return create_backbone(name, weights, image_size, device, quick_gelu, weights_dir, label=pretrained,
                           trust_torchscript=trust_torchscript)
