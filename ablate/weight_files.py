"""Reading local weight files without running any of their code: open_clip and OpenAI-format state dicts
(possibly wrapped under "state_dict" / "model"), safetensors, and OpenAI's TorchScript archives (their
tensors only, unless trusted); every failure is one WeightsError naming the file."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors
from torch import Tensor

from .errors import WeightsError
from .torchscript import is_torchscript, read_torchscript

# Keys OpenAI's own checkpoints carry that are not parameters of open_clip's CLIP.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict (or one under 'state_dict'/'model')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_checkpoint(path: Path, trust_torchscript: bool = False) -> tuple[dict[str, Tensor], bool]:
    """Load a local checkpoint without running any of its code -> (state dict, is OpenAI format).
    `trust_torchscript`: load a TorchScript archive with torch.jit.load, which runs the archive's code."""
    if not path.is_file():
        raise WeightsError(f"checkpoint file not found: {path}")
    if is_torchscript(path):  # OpenAI's released .pt files
        state, is_openai = _read_torchscript(path, trust_torchscript), True
    else:
        state = _unwrap_state_dict(_read_weights(path), path)
        is_openai = any(k in state for k in _OPENAI_EXTRA_KEYS)
    for k in _OPENAI_EXTRA_KEYS:
        state.pop(k, None)
    return state, is_openai


def _read_torchscript(path: Path, trust: bool) -> dict[str, Tensor]:
    """The archive's tensors: read without running it, or (trusted) loaded by torch.jit, code and all."""
    try:
        if trust:
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        return read_torchscript(path)
    except Exception as exc:  # ArchiveError, or whatever the archive's own code raised
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "" if trust else (
            "; ablate does not run a checkpoint's code: if you trust this file, set trust_torchscript: true")
        raise WeightsError(f"{path}: cannot read this TorchScript archive: {reason[:300]}{hint}") from None


def _read_weights(path: Path) -> object:
    """torch.load (weights only) or safetensors; any failure is one WeightsError naming the file."""
    try:
        if path.stat().st_size == 0:
            raise EOFError("the file is empty")
        if path.suffix == ".safetensors" or _looks_like_safetensors(path):
            return load_safetensors(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"{path} is not a PyTorch checkpoint, a zip of one, a TorchScript archive or safetensors file: "
            f"{_short_reason(exc)}") from None


def _looks_like_safetensors(path: Path) -> bool:
    """An 8-byte little-endian header length that fits the file, then the JSON header's '{'."""
    with path.open("rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def _short_reason(exc: Exception) -> str:
    """The gist of a loader's error, without torch's advice to load with weights_only=False (which runs
    whatever the file's pickle asks for)."""
    text = str(exc).split("WeightsUnpickler error:", 1)[-1]
    if banned := re.search(r"GLOBAL (\S+) was not an allowed global", text):
        return f"it pickles {banned[1]}, not only tensors (save the model's state_dict alone)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first.split(". ")[0].rstrip(".")
    if not first or "weights_only" in first:
        return type(exc).__name__
    return first[:200]
