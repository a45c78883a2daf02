"""What the probes share: summary statistics, JSON output, the probed images and the encoders.

Rates and mAPs are percentages (x 100, like the trial metrics); cosines are raw.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ablate.backbone import Backbone
from ablate.data import LabelledImages, MultiLabelDataset, build_transform, load_splits
from ablate.errors import ProbeError
from ablate.factory import backbone_from_config
from ablate.spec import TrialConfig


def describe(values: np.ndarray | Tensor | Sequence[float]) -> dict[str, float]:
    """mean, std (population, ddof=0), min, max and count; NaNs when there are no values."""
    arr = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64).ravel()
    if arr.size == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "min": float(arr.min()),
            "max": float(arr.max()), "n": int(arr.size)}


def format_stats(s: dict[str, float]) -> str:
    """'0.56 ± 0.06 (0.37, 0.67)', as on the seed-000 poster."""
    return f"{s['mean']:.3f} ± {s['std']:.3f} ({s['min']:.3f}, {s['max']:.3f})"


def _jsonable(obj: object) -> object:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic, Tensor)):
        obj = obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN
    return obj


def write_json(path: Path | None, data: dict) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(data), indent=2))


def probe_backbone(cfg: TrialConfig, backbone: Backbone | None = None) -> Backbone:
    """The given backbone (shared across probes of one trial), else the one `cfg` names."""
    if backbone is not None:
        return backbone
    return backbone_from_config(cfg)


def probe_images(cfg: TrialConfig, split: str = "test", limit: int | None = None) -> LabelledImages:
    """The first `limit` images of a split (all when None), with their labels."""
    if split not in ("test", "val"):
        raise ProbeError(f"split must be 'test' or 'val', not {split!r}")
    if limit is not None and limit < 1:
        raise ProbeError(f"limit must be at least 1, not {limit}")
    images = load_splits(cfg)[split]
    return images.subset(np.arange(min(limit, len(images)))) if limit is not None else images


def image_loader(images: LabelledImages, backbone: Backbone, cfg: TrialConfig) -> DataLoader:
    """(normalised image, labels) batches in split order, at the backbone's input size."""
    info = backbone.info
    transform = build_transform(info.image_size, info.mean, info.std, train=False, augment=False,
                                interpolation=cfg.resize)
    return DataLoader(MultiLabelDataset(images, transform), batch_size=cfg.batch_size, shuffle=False,
                      num_workers=cfg.num_workers)


class _Paths(Dataset):
    def __init__(self, paths: Sequence[Path], transform: Callable) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB"))


@torch.no_grad()
def encode_images(backbone: Backbone, paths: Sequence[Path], batch_size: int = 32, num_workers: int = 0) -> Tensor:
    """CLIP image embeddings [M, D] (the model's own pooled output, not the dense tokens)."""
    info = backbone.info
    transform = build_transform(info.image_size, info.mean, info.std, train=False, augment=False)
    device = next(backbone.parameters()).device
    loader = DataLoader(_Paths(paths, transform), batch_size=batch_size, num_workers=num_workers)
    return torch.cat([backbone.encode_image(x.to(device)).float().cpu() for x in loader])


@torch.no_grad()
def encode_texts(backbone: Backbone, texts: Sequence[str], chunk: int = 256) -> Tensor:
    """Text features [T, D], encoded in chunks so thousands of captions fit in memory."""
    return torch.cat([backbone.encode_text(list(texts[i : i + chunk])).float().cpu()
                      for i in range(0, len(texts), chunk)])
