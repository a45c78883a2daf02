"""Shared fixtures: one generated synthetic data set per test session."""

from __future__ import annotations

import os

# Tests talk to 127.0.0.1 only. Ray on Linux binds every node, driver and worker to the machine's
# interface address; with this variable 0 (read when Ray is imported, inherited by every process a
# test starts) they all use 127.0.0.1, as `ray.nodes()`' NodeManagerAddress shows.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
from pathlib import Path

import pytest
import torch

from ablate.spec import TrialConfig

# Tests start their own local Ray (ablate's default too); a RAY_ADDRESS inherited from the environment
# would join whatever cluster this machine runs, e.g. someone's sweep, and die with it.
os.environ["RAY_ADDRESS"] = "local"


# what MLflow's defaults write in a working directory: the user's stores, which no test may touch
USER_STORES = ("mlruns", "mlflow.db", "mlflow.db.lock")


def store_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path of the user's stores in `folder`, with its size and modification time."""
    state = {}
    for name in USER_STORES:
        root = folder / name
        for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
            if path.exists():
                stat = path.stat()
                state[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return state


@pytest.fixture(scope="session", autouse=True)
def user_stores_untouched(tmp_path_factory: pytest.TempPathFactory):
    """MLflow's default store is a temporary one for the whole session (Ray workers inherit it), and the
    working directory's and the checkout's mlruns/ and mlflow.db are the same after the session as before."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('default_store') / 'mlflow.db'}"
    folders = {Path.cwd(), Path(__file__).resolve().parents[1]}
    before = {folder: store_state(folder) for folder in folders}
    yield
    changed = {str(f): sorted(set(store_state(f).items()) ^ set(before[f].items()))[:5] for f in folders
               if store_state(f) != before[f]}
    assert not changed, f"the tests wrote into the user's MLflow stores: {changed}"


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
        base = dict(dataset="synthetic", dataset_options={"synthetic_images": 80},
                    backbone="ablate-tiny-vit", pretrained="none",
                    n_ctx=4, epochs=2, warmup_epochs=0, batch_size=16, num_workers=0, augment=False,
                    device="cpu", cache_dir=cache_dir)
        if overrides.get("dataset", "synthetic") != "synthetic":
            base.pop("dataset_options")  # the synthetic set's own setting
        base.update(overrides)
        return TrialConfig(**base)

    return make
