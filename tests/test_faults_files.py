"""Bad weight files and the modes of written files: a TorchScript archive's code never runs unless the
config trusts it, unreadable checkpoints are one WeightsError naming the file, and generated files are as
readable as their neighbours (the umask decides, not mkstemp's owner-only default)."""

from __future__ import annotations

import contextlib
import os
import pickle
import stat
import warnings
import zipfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from torch import nn

from ablate.backbone import create_backbone
from ablate.data import load_splits
from ablate.data.partial import partial_mask
from ablate.errors import WeightsError
from ablate.factory import backbone_from_config
from ablate.features import ensure, trial_caches
from ablate.files import fill_atomically, write_atomically
from ablate.spec import TrialConfig
from ablate.torchscript import ArchiveError, read_torchscript
from ablate.trainer import run_trial
from ablate.weight_files import read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_VIT, TINY_RN = "ablate-tiny-vit", "ablate-tiny-rn"
NOT_A_CHECKPOINT = "is not a PyTorch checkpoint, a zip of one, a TorchScript archive or safetensors file"


@pytest.fixture(autouse=True)
def _quiet_jit():
    with warnings.catch_warnings():  # torch.jit.script / save / load are deprecated, still what OpenAI used
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _script(module: nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def _assert_same_state(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


# ---- the safe TorchScript reader ------------------------------------------------------------------

def test_torchscript_reader_matches_jit_load_on_a_scripted_open_clip_model(tmp_path):
    path = _script(open_clip.create_model(TINY_RN, pretrained=None).eval(), tmp_path / "rn.pt")
    state = read_torchscript(path)
    assert "visual.bn1.running_mean" in state and "visual.bn1.num_batches_tracked" in state  # buffers too
    _assert_same_state(state, torch.jit.load(str(path)).state_dict())


class _Leaf(nn.Module):
    """Parameters, BatchNorm buffers, a non-persistent buffer, and attributes outside the state dict:
    a plain tensor, a list of tensors, strings, a dict, a float and None."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.register_buffer("scratch", torch.ones(2), persistent=False)
        self.plain = torch.arange(3.0)
        self.tensors: list[torch.Tensor] = [torch.zeros(2)]
        self.names: list[str] = ["a", "b"]
        self.table: dict[str, int] = {"x": 1}
        self.scale = 2.5
        self.nothing: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x)) * self.scale + self.plain.sum() + self.scratch.sum() + self.tensors[0].sum()
        return y + float(len(self.names) + self.table["x"])


class _Tree(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.leaf = _Leaf()
        self.seq = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2, bias=False))
        self.blocks = nn.ModuleList([_Leaf(), _Leaf()])
        self.frozen = nn.Parameter(torch.randn(3), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.leaf(x)


def test_torchscript_reader_keeps_parameters_and_buffers_only(tmp_path):
    tree = _Tree()
    tree.leaf.bn.running_mean.uniform_()  # not the default values
    path = _script(tree, tmp_path / "tree.pt")
    state = read_torchscript(path)
    _assert_same_state(state, torch.jit.load(str(path)).state_dict())
    assert "leaf.plain" not in state and "leaf.scale" not in state and "seq.2.bias" not in state
    assert "blocks.1.scratch" in state  # TorchScript keeps no persistence flag: jit's state dict has it too


class _Node(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _openai_style_archive(state: dict[str, torch.Tensor], path: Path) -> Path:
    """A TorchScript archive shaped like OpenAI's released files: the CLIP's tensors in a module tree,
    the three int markers as buffers, and a causal mask as a plain attribute of a text block."""
    markers = {"input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
               "vocab_size": torch.tensor(49408)}
    root = _Node()
    for key, value in {**state, **markers}.items():
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            if part not in node._modules:
                node.add_module(part, _Node())
            node = node.get_submodule(part)
        if key in markers:
            node.register_buffer(leaf, value)
        else:
            node.register_parameter(leaf, nn.Parameter(value))
    root.get_submodule("transformer.resblocks.0").attn_mask = torch.full((77, 77), float("-inf")).triu(1)
    return _script(root, path)


def test_openai_style_torchscript_archive_loads_without_running_it(tmp_path):
    model = open_clip.create_model(TINY_VIT, pretrained=None, force_quick_gelu=True).eval()
    path = _openai_style_archive(dict(model.state_dict()), tmp_path / "openai.pt")
    state, is_openai = read_checkpoint(path)
    assert is_openai and "input_resolution" not in state and "transformer.resblocks.0.attn_mask" not in state
    loaded = create_backbone(TINY_VIT, pretrained=str(path))
    assert loaded.info.quick_gelu
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


class _Payload(nn.Module):
    """A module whose `__setstate__` (TorchScript runs it inside torch.jit.load) writes into a file."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.target = state[0]
        written = torch.from_file(state[0], shared=True, size=4, dtype=torch.uint8).fill_(120)
        self.training = bool(written.sum() == 0) and state[1]  # uses the write: the compiler keeps it


class _Crafted(nn.Module):
    def __init__(self, target: str) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.payload = _Payload(target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.payload(self.lin(x))


@pytest.fixture()
def crafted(tmp_path):
    """(archive, victim file): loading the archive with torch.jit.load overwrites the victim's start."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"hello world\n")
    return _script(_Crafted(str(victim)), tmp_path / "crafted.pt"), victim


def test_crafted_torchscript_code_does_not_run_by_default(crafted):
    archive, victim = crafted
    with pytest.raises(WeightsError, match="__setstate__.*trust_torchscript: true") as err:
        read_checkpoint(archive)
    assert str(archive) in str(err.value)
    with pytest.raises(WeightsError, match="trust_torchscript"):
        create_backbone(TINY_VIT, pretrained=str(archive))
    assert victim.read_bytes() == b"hello world\n"
    torch.jit.load(str(archive))  # the side effect is real: torch's own loader writes the file
    assert victim.read_bytes() == b"xxxxo world\n"


def test_trust_torchscript_travels_from_the_config(crafted):
    archive, victim = crafted
    cfg = TrialConfig(backbone=TINY_VIT, pretrained=str(archive), device="cpu")
    with pytest.raises(WeightsError, match="trust_torchscript"):
        backbone_from_config(cfg)
    assert victim.read_bytes() == b"hello world\n"
    with pytest.raises(WeightsError, match="does not match the architecture"):
        backbone_from_config(cfg.model_copy(update={"trust_torchscript": True}))
    assert victim.read_bytes() == b"xxxxo world\n"  # trusted: loaded by torch.jit, its code ran


def test_torchscript_pickle_calling_anything_else_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Call:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "call.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("call/data.pkl", pickle.dumps(Call(), protocol=2))
        archive.writestr("call/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(ArchiveError, match=r"calls \w+\.system"):
        read_torchscript(path)
    with pytest.raises(WeightsError, match="trust_torchscript"):
        read_checkpoint(path)
    assert not marker.exists()


# ---- unreadable checkpoints -----------------------------------------------------------------------

def _write_broken(kind: str, path: Path, tmp_path: Path) -> None:
    saved = tmp_path / "whole.pt"
    torch.save(open_clip.create_model(TINY_RN, pretrained=None).state_dict(), saved)
    data = saved.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated TorchScript":
        scripted = _script(_Tree(), tmp_path / "tree.pt").read_bytes()
        path.write_bytes(scripted[: len(scripted) // 2])


@pytest.mark.parametrize("kind", ["empty", "truncated", "random bytes", "truncated TorchScript"])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_unreadable_checkpoint_is_one_weights_error(tmp_path, kind, suffix):
    path = tmp_path / f"broken{suffix}"
    _write_broken(kind, path, tmp_path)
    with pytest.raises(WeightsError) as err:
        create_backbone(TINY_RN, pretrained=str(path))
    message = str(err.value)
    assert message.startswith(f"{path} {NOT_A_CHECKPOINT}: ") and len(message.splitlines()) == 1
    assert "weights_only" not in message and len(message) < len(str(path)) + 300


def test_checkpoint_pickling_other_objects_names_them(tmp_path):
    import argparse

    path = tmp_path / "with_args.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(WeightsError, match=r"it pickles argparse\.Namespace, not only tensors") as err:
        read_checkpoint(path)
    assert "weights_only" not in str(err.value)


def test_safetensors_content_is_recognised_under_another_suffix(tmp_path):
    from safetensors.torch import save_file

    state = open_clip.create_model(TINY_RN, pretrained=None).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.bin")
    loaded, _ = read_checkpoint(tmp_path / "model.bin")
    assert loaded.keys() == state.keys()


# ---- modes of written files -----------------------------------------------------------------------

@contextlib.contextmanager
def _umask(mask: int):
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                             (0o002, 0o664, 0o775)])
def test_atomic_writes_get_the_mode_the_umask_gives(tmp_path, mask, file_mode, dir_mode):
    with _umask(mask):
        write_atomically(tmp_path / "file.bin", lambda tmp: tmp.write_bytes(b"x"))
        fill_atomically(tmp_path / "folder", lambda tmp: (tmp / "inside.txt").write_text("x"))
    assert _mode(tmp_path / "file.bin") == file_mode
    assert _mode(tmp_path / "folder") == dir_mode
    assert _mode(tmp_path / "folder" / "inside.txt") == file_mode


def test_label_masks_are_readable_like_their_neighbours(tmp_path):
    with _umask(0o022):
        partial_mask(np.ones((5, 3), np.int8), 0.5, "train", 0, cache_dir=tmp_path)
    (mask,) = tmp_path.glob("mask-*.npy")
    assert _mode(mask) == 0o644


def test_trial_outputs_and_checkpoints_are_readable_like_their_neighbours(tiny_cfg, tmp_path):
    cfg = tiny_cfg(epochs=1, dataset_options={"synthetic_images": 40}, cache_dir=tmp_path / "cache")
    with _umask(0o022):
        run_trial(cfg, tmp_path / "out", checkpoint_dir=tmp_path / "ckpt", progress=False)
    written = [p for folder in ("out", "ckpt", "cache") for p in (tmp_path / folder).rglob("*")]
    assert any(p.suffix == ".pt" for p in written) and any(p.name.startswith("mask-") for p in written)
    assert {str(p): _mode(p) for p in written if p.is_file() and _mode(p) != 0o644} == {}
    assert {str(p): _mode(p) for p in written if p.is_dir() and _mode(p) != 0o755} == {}


def test_feature_cache_manifest_is_readable_like_its_data(tmp_path):
    cfg = TrialConfig(dataset="synthetic", dataset_options={"synthetic_images": 40},
                      backbone=TINY_VIT, features="cached",
                      device="cpu", num_workers=0, cache_dir=tmp_path)
    backbone = create_backbone(cfg.backbone, cfg.pretrained, cfg.image_size)
    with _umask(0o022):
        cache = trial_caches(cfg, backbone, load_splits(cfg))["test"]
        ensure(cache, backbone, progress=False)
    assert _mode(cache.manifest_path) == 0o644 and _mode(cache.data_path) == 0o644
