"""Arm packs: arms whose image stream is provably the same train together, sharing one decode, one
augmentation and one frozen-encoder pass per batch.

The stream is which images, in which order, with which pixels, reach the frozen image encoder. It is
built (ablate/stream.py) from `stream_config(cfg)` alone: a config that keeps the fields whose Role says
`stream` (ablate/roles.py) and has every other field at its default, so nothing an arm may vary can reach it. Arms
whose `pack_key` is equal therefore see the same batches; what they differ in (method, label ratio,
contexts, learning rates, loss...) changes only labels and heads. tests/test_packs.py changes every
other TrialConfig field in turn and checks that the stream stays the same bit for bit, so a field that
changes it cannot be missing here without a test failing. Torch-free: the sweep groups arms with it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from .spec import TrialConfig, fields_where, param_role

STREAM_FIELDS = fields_where(stream=True)  # derived from the fields' roles: never listed by hand


def stream_config(cfg: TrialConfig) -> TrialConfig:
    """`cfg`'s stream fields, every other field at its default: what the shared stream is built from."""
    defaults = {name: field.get_default(call_default_factory=True)
                for name, field in type(cfg).model_fields.items() if name not in STREAM_FIELDS}
    return cfg.model_copy(update=defaults)


def pack_key(cfg: TrialConfig) -> dict[str, Any]:
    """The stream fields of `cfg` (and any of the method's own options whose Role says stream), as JSON
    values: arms with equal keys can share one stream."""
    dumped = cfg.model_dump(mode="json")
    own = {f"options.{k}": v for k, v in dumped["options"].items()
           if param_role(f"options.{k}", cfg.method, cfg.dataset).stream}
    return {**{name: dumped[name] for name in STREAM_FIELDS}, **own}


def pack_id(cfg: TrialConfig) -> str:
    """A short stable name for `cfg`'s pack key (MLflow's `ablate.pack` tag carries it with the arm count)."""
    text = json.dumps(pack_key(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def feature_bytes(cfg: TrialConfig) -> int:
    """One batch of the shared dense features [B, HW+1, D] in float32: what a pack holds besides one arm's
    graph at a time and each arm's parameters; read from the model's config file (no torch), 0 if none."""
    model = _model_config(cfg.backbone)
    if model is None:
        return 0
    vision = model["vision_cfg"]
    size = cfg.image_size or vision["image_size"]
    stride = 32 if isinstance(vision.get("layers"), list | tuple) else vision.get("patch_size", 32)  # ResNet: 32
    return cfg.batch_size * ((size // stride) ** 2 + 1) * model["embed_dim"] * 4


def image_size(cfg_size: int | None, backbone: str) -> int | None:
    """The input size a trial ran at: its own, else its model's (None when the model's config is unknown)."""
    model = _model_config(backbone)
    return cfg_size or (model["vision_cfg"]["image_size"] if model is not None else None)


def _model_config(name: str) -> dict | None:
    """An open_clip model config by name, from ablate's own configs or open_clip's, without importing it."""
    folders = [Path(__file__).parent / "model_configs"]
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(p) / "model_configs" for p in spec.submodule_search_locations]
    for folder in folders:
        path = folder / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
    return None
