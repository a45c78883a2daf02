"""Arm packs: arms whose image stream is provably the same train together, sharing one decode, one
augmentation and one frozen-encoder pass per batch.

The stream is which images, in which order, with which pixels, reach the frozen image encoder. It is
built (ablate/stream.py) from `stream_config(cfg)` alone: a config that keeps the STREAM_FIELDS of the
arm's config and has every other field at its default, so nothing an arm may vary can reach it. Arms
whose `pack_key` is equal therefore see the same batches; what they differ in (method, label ratio,
contexts, learning rates, loss...) changes only labels and heads. tests/test_packs.py changes every
other TrialConfig field in turn and checks that the stream stays the same bit for bit, so a field that
changes it cannot be missing here without a test failing. Torch-free: the sweep groups arms with it.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .spec import TrialConfig

STREAM_FIELDS = (
    # which images: the data set, its root and options, the validation rows (val_fraction, seed)
    "dataset", "data_root", "coco_empty_images", "voc_difficult", "synthetic_images", "val_fraction", "seed",
    # in which order: batches drawn per (seed, epoch); worker processes draw the augmentation
    "batch_size", "epochs", "num_workers",
    # with which pixels
    "image_size", "resize", "augment", "augment_recipe",
    # through which frozen encoder, on which device and precision, from where (caches, weights)
    "backbone", "pretrained", "weights_dir", "quick_gelu", "trust_torchscript", "device", "amp",
    "features", "feature_cache_dir", "cache_dtype", "cache_dir",
)


def stream_config(cfg: TrialConfig) -> TrialConfig:
    """`cfg`'s stream fields, every other field at its default: what the shared stream is built from."""
    defaults = {name: field.get_default(call_default_factory=True)
                for name, field in type(cfg).model_fields.items() if name not in STREAM_FIELDS}
    return cfg.model_copy(update=defaults)


def pack_key(cfg: TrialConfig) -> dict[str, Any]:
    """The stream fields of `cfg`, as JSON values: arms with equal keys can share one stream."""
    dumped = cfg.model_dump(mode="json")
    return {name: dumped[name] for name in STREAM_FIELDS}


def pack_id(cfg: TrialConfig) -> str:
    """A short stable name for `cfg`'s pack key (MLflow's `ablate.pack` tag carries it with the arm count)."""
    text = json.dumps(pack_key(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]
