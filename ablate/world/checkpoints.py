"""The world CLIPs that `pretrained:` aliases name (`world-negation`, `world-negation@seed=1`, ... see
ablate.world.recipe): where each is cached, whether it is there and whole, and the one step that builds
a missing one.

Building is explicit: `build_checkpoint` is called by the sweep's pre-flight, by `ablate train`,
`ablate probe`, `ablate analyze` and by `ablate world pretrain`. Loading a backbone only looks one up
(`find_checkpoint`), so a trial never builds a data set or pre-trains a CLIP behind its caller's back.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import open_clip

from ..errors import ConfigError
from ..files import file_lock, file_sha256
from .captions import STYLES
from .dataset import WorldConfig, build_world, default_world_root, is_complete, world_hash
from .pretrain import RECIPE_VERSION, manifest_path, pretrain
from .recipe import DEFAULT_PRETRAIN, PretrainConfig, is_alias, parse_alias

if TYPE_CHECKING:
    from ..spec import TrialConfig

DEFAULT_WORLD = WorldConfig()  # frozen dataclass: safe to share
DEFAULT_CACHE = Path(".ablate_cache")


def checkpoint_path(cache_dir: Path, world_root: Path, cfg: PretrainConfig) -> Path:
    """Cache location, keyed by the pre-training config and recipe version, the model's architecture
    and the world's content."""
    inputs = [RECIPE_VERSION, asdict(cfg), open_clip.get_model_config(cfg.model), world_hash(world_root)]
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir).expanduser().absolute() / "world_checkpoints" / f"{cfg.model}-{cfg.captions}-{key[:10]}.pt"


def checkpoint_matches(path: Path) -> bool:
    """The checkpoint and its manifest exist and the file's checksum is the manifest's."""
    try:
        expected = json.loads(manifest_path(path).read_text()).get("sha256")
        return isinstance(expected, str) and path.is_file() and file_sha256(path) == expected
    except (OSError, ValueError, AttributeError):  # missing or damaged manifest
        return False


def _recipe(alias_or_captions: str, model: str, base: PretrainConfig) -> PretrainConfig:
    """The recipe an alias names; `presence` / `negation` are short for `world-presence` / `world-negation`."""
    return parse_alias(f"world-{alias_or_captions}" if alias_or_captions in STYLES else alias_or_captions, model, base)


def build_checkpoint(
    alias_or_captions: str, cache_dir: Path = DEFAULT_CACHE, model: str = "ablate-tiny-vit", progress: bool = True,
    *, world: WorldConfig = DEFAULT_WORLD, world_root: Path | None = None, base: PretrainConfig = DEFAULT_PRETRAIN,
) -> Path:
    """The checkpoint an alias names, building the world and pre-training first if it is missing or damaged;
    one process trains, others wait. The world is `world_root` (built already) or the one `world` describes,
    built in the cache; `base` holds the training settings the alias does not set."""
    cfg = _recipe(alias_or_captions, model, base)
    root = Path(world_root) if world_root else build_world(default_world_root(cache_dir, world), world, progress)
    path = checkpoint_path(cache_dir, root, cfg)
    if checkpoint_matches(path):  # the manifest is written last: one whose checksum matches means complete
        return path
    with file_lock(path.with_suffix(".lock")):
        if not checkpoint_matches(path):
            if manifest_path(path).is_file():
                print(f"world checkpoint {path} does not match its manifest (truncated, replaced or from an older "
                      "version); pre-training it again", file=sys.stderr)
            pretrain(root, path, cfg, progress)
    return path


def find_checkpoint(alias: str, cache_dir: Path = DEFAULT_CACHE, model: str = "ablate-tiny-vit") -> Path:
    """The built checkpoint an alias names (default world and recipe), or a ConfigError saying how to build it."""
    cfg = _recipe(alias, model, DEFAULT_PRETRAIN)
    root = default_world_root(cache_dir, DEFAULT_WORLD)
    path = checkpoint_path(cache_dir, root, cfg) if is_complete(root, DEFAULT_WORLD) else None
    if path is None or not checkpoint_matches(path):
        damaged = path is not None and path.exists()
        state = "does not match its manifest (damaged, or from an older version)" if damaged else "is not built"
        command = (f"ablate world pretrain --captions {cfg.captions} --model {model} --cache-dir {cache_dir}"
                   f"{_recipe_flags(cfg)}")
        raise ConfigError(f"pretrained {alias}: its world CLIP ({model}) {state} in {cache_dir}; build it with "
                          f"`{command}` (a sweep's pre-flight, `ablate train`, `ablate probe` and `ablate analyze` "
                          "build it themselves; on a cluster the cache dir must be shared by every node)")
    return path


def _recipe_flags(cfg: PretrainConfig) -> str:
    """The `ablate world pretrain` flags of the recipe fields that differ from the default."""
    skip = ("model", "captions")
    return "".join(f" --{k.replace('_', '-')} {v}" for k, v in asdict(cfg).items()
                   if k not in skip and v != getattr(DEFAULT_PRETRAIN, k))


def resolve_pretrained(model: str, pretrained: str, cache_dir: Path | None = None, *, build: bool = False) -> str:
    """The file an alias stands for (built first with `build`, else found or a ConfigError), or `pretrained`
    itself (an open_clip tag, a file, 'none')."""
    if not is_alias(pretrained):
        return pretrained
    cache = Path(cache_dir or DEFAULT_CACHE)
    return str(build_checkpoint(pretrained, cache, model=model) if build else find_checkpoint(pretrained, cache, model))


def build_for(configs: Iterable[TrialConfig], progress: bool = True) -> list[Path]:
    """Build every world CLIP the configs name, each once (with every core of this process, not in a trial);
    their checkpoint files."""
    wanted = {(c.backbone, c.pretrained, c.resolved_cache_dir()) for c in configs if is_alias(c.pretrained)}
    return [build_checkpoint(alias, cache_dir, model=model, progress=progress)
            for model, alias, cache_dir in sorted(wanted, key=str)]
