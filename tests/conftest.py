"""Shared fixtures: one generated synthetic data set per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ablate.spec import TrialConfig

# Tests start their own local Ray (ablate's default too); a RAY_ADDRESS inherited from the environment
# would join whatever cluster this machine runs, e.g. someone's sweep, and die with it.
os.environ["RAY_ADDRESS"] = "local"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads; on shared, busy cores those threads spin-wait
    (several times slower). Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ablate_cache")


@pytest.fixture()
def tiny_cfg(cache_dir: Path):
    """A fast trial on the synthetic set: tiny ViT CLIP (random weights keep images apart, unlike the
    random ResNet), CPU."""

    def make(**overrides) -> TrialConfig:
        base = dict(dataset="synthetic", synthetic_images=80, backbone="ablate-tiny-vit", pretrained="none",
                    n_ctx=4, epochs=2, warmup_epochs=0, batch_size=16, num_workers=0, augment=False,
                    device="cpu", cache_dir=cache_dir)
        base.update(overrides)
        return TrialConfig(**base)

    return make
