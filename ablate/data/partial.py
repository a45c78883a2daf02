"""Partial labels: hide each (image, class) label independently with probability 1 - ratio.

One uniform u is drawn per entry from a generator seeded by a stable hash of (key, seed), and
an entry is kept when u < ratio. The mask therefore depends only on (key, seed, ratio, shape)
-- never on the method -- and masks are nested: what ratio 0.3 keeps, ratio 0.5 keeps too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..files import write_atomically


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from the parts' text, identical across processes (unlike hash())."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _draw_mask(shape: tuple[int, ...], ratio: float, key: str, seed: int) -> np.ndarray:
    u = np.random.default_rng(stable_seed("partial", key, seed)).random(shape)
    return u < ratio


def _cache_name(labels: np.ndarray, ratio: float, key: str, seed: int) -> str:
    h = hashlib.sha256()
    h.update(f"{key}\x1f{seed}\x1f{float(ratio)!r}\x1f{labels.shape}\x1f{labels.dtype}\x1f".encode())
    h.update(np.ascontiguousarray(labels).tobytes())
    return f"mask-{h.hexdigest()[:24]}.npy"


def partial_mask(
    labels: np.ndarray, ratio: float, key: str, seed: int, cache_dir: Path | None = None
) -> np.ndarray:
    """Boolean mask shaped like `labels`: True = label kept. Cached under `cache_dir` when given."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if cache_dir is None:
        return _draw_mask(labels.shape, ratio, key, seed)
    path = Path(cache_dir) / _cache_name(labels, ratio, key, seed)
    if path.is_file():
        return np.load(path)
    mask = _draw_mask(labels.shape, ratio, key, seed)
    write_atomically(path, lambda tmp: _save(tmp, mask))  # readers never see a half-written mask
    return mask


def _save(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as f:  # a handle: given a path without .npy, np.save would append one
        np.save(f, array)


def apply_partial(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """int8 labels with the hidden entries set to -1 (already unknown entries stay -1)."""
    return np.where(mask, labels, -1).astype(np.int8)
