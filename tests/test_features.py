"""Dense-feature cache: keys, damaged caches, concurrent builders, cached == online, resume, sweep tasks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ablate.backbone import BackboneInfo, create_backbone
from ablate.data import load_splits
from ablate.features import cache_inputs, ensure, trial_caches, visual_fingerprint
from ablate.trainer import Trial, run_trial

INFO = BackboneInfo(name="ablate-tiny-vit", pretrained="none", image_size=64, embed_dim=128, text_width=128,
                    tower="vit", mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28), quick_gelu=False)
PATHS = [Path("/data/a.jpg"), Path("/data/b.jpg")]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def key(info: BackboneInfo = INFO, weights: str = "w0", dataset: str = "synthetic", root: str = "/data",
        split: str = "train", paths: list[Path] = PATHS, dtype: str = "float16") -> str:
    return cache_inputs(info, weights, dataset, Path(root), split, paths, dtype).key


def test_key_changes_with_every_input_and_only_with_them(tiny_cfg):
    variants = {
        "backbone": key(dataclasses.replace(INFO, name="ablate-tiny-rn")),
        "weights": key(weights="w1"),
        "activation": key(dataclasses.replace(INFO, quick_gelu=True)),
        "image size": key(dataclasses.replace(INFO, image_size=96)),
        "preprocessing": key(dataclasses.replace(INFO, mean=(0.5, 0.5, 0.5))),
        "dataset": key(dataset="coco2014"),
        "data root": key(root="/other"),
        "split": key(split="test"),
        "images": key(paths=PATHS[:1]),
        "image order": key(paths=PATHS[::-1]),
        "storage dtype": key(dtype="float32"),
    }
    assert key() == key()
    assert key() not in variants.values() and len(set(variants.values())) == len(variants), variants

    # the val carve and label ratio select rows of the same full-train-split cache
    keys = set()
    backbone = create_backbone("ablate-tiny-vit")
    for cfg in (tiny_cfg(), tiny_cfg(val_fraction=0.3, label_ratio=0.2)):
        caches = trial_caches(cfg, backbone, load_splits(cfg))
        assert caches["train"] is caches["val"] and len(caches["train"]) == cfg.dataset_options["synthetic_images"]
        keys.add((caches["train"].inputs.key, caches["test"].inputs.key))
    assert len(keys) == 1


def test_weights_are_keyed_by_the_image_tower_itself(tmp_path):
    def tower(seed: int, pretrained: str = "none") -> str:
        torch.manual_seed(seed)
        return visual_fingerprint(create_backbone("ablate-tiny-rn", pretrained))

    assert tower(0) == tower(0) != tower(1)  # random weights ('none') differ per seed
    saved = tmp_path / "w.pt"
    torch.manual_seed(1)
    torch.save(create_backbone("ablate-tiny-rn").model.state_dict(), saved)
    assert tower(0, str(saved)) == tower(1)  # loaded weights, whatever the seed


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    """A cache of the synthetic test split (40 images) and the backbone that builds it."""
    from ablate.spec import TrialConfig

    cfg = TrialConfig(dataset="synthetic", dataset_options={"synthetic_images": 80},
                      backbone="ablate-tiny-vit", augment=False,
                      features="cached", device="cpu", num_workers=0,
                      cache_dir=tmp_path_factory.mktemp("feat"))
    backbone = create_backbone(cfg.backbone, cfg.pretrained, cfg.image_size)
    return trial_caches(cfg, backbone, load_splits(cfg))["test"], backbone


def damage(cache, how: str) -> None:
    if how == "truncated data":
        with cache.data_path.open("r+b") as fh:
            fh.truncate(cache.data_path.stat().st_size // 2)
    elif how == "flipped byte":
        with cache.data_path.open("r+b") as fh:
            fh.seek(1234)
            byte = fh.read(1)
            fh.seek(1234)
            fh.write(bytes([byte[0] ^ 0xFF]))
    elif how == "not complete":
        manifest = cache.manifest()
        cache.manifest_path.write_text(json.dumps({**manifest, "complete": False}))
    elif how == "no manifest":
        cache.manifest_path.unlink()
    elif how == "no data":
        cache.data_path.unlink()


@pytest.mark.parametrize("how", ["truncated data", "flipped byte", "not complete", "no manifest", "no data"])
def test_damaged_cache_is_detected_and_rebuilt(small_cache, how):
    cache, backbone = small_cache
    ensure(cache, backbone, progress=False)
    good = np.array(cache.open())
    build = cache.manifest()["build_id"]
    damage(cache, how)
    assert not cache.is_valid()
    assert ensure(cache, backbone, progress=False) is True
    assert cache.is_valid() and cache.manifest()["build_id"] != build
    assert np.array_equal(np.array(cache.open()), good)
    assert ensure(cache, backbone, progress=False) is False  # valid now: read, not rebuilt


BUILDER = """
import json, sys, time
import torch
from pathlib import Path
from ablate.backbone import create_backbone
from ablate.data import load_splits
from ablate.features import ensure, trial_caches
from ablate.spec import TrialConfig

cfg = TrialConfig.model_validate_json(sys.argv[1])
torch.manual_seed(0)  # the same random weights in both builders
backbone = create_backbone(cfg.backbone, cfg.pretrained, cfg.image_size)
encode = backbone.dense_features
backbone.dense_features = lambda x: (time.sleep(0.3), encode(x))[1]  # a build slow enough to overlap
caches = trial_caches(cfg, backbone, load_splits(cfg))
Path(sys.argv[2]).touch()  # ready: everything slow is done
while not Path(sys.argv[3]).exists():
    time.sleep(0.005)
print(json.dumps({"built": ensure(caches["train"], backbone, progress=True)}))
"""


def test_two_processes_building_at_once_build_once(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg(features="cached", feature_cache_dir=tmp_path / "features")
    torch.manual_seed(0)
    backbone = create_backbone(cfg.backbone, cfg.pretrained, cfg.image_size)
    encode = backbone.dense_features
    backbone.dense_features = lambda x: (time.sleep(0.3), encode(x))[1]
    cache = trial_caches(cfg, backbone, load_splits(cfg))["train"]  # also generates the data set
    ready, go = tmp_path / "ready", tmp_path / "go"
    other = subprocess.Popen([sys.executable, "-c", BUILDER, cfg.model_dump_json(), str(ready), str(go)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert time.monotonic() < deadline and other.poll() is None, other.communicate()[1]
        time.sleep(0.01)
    go.touch()  # this process and the other call ensure at the same moment
    built_here = ensure(cache, backbone, progress=True)
    out, err = other.communicate(timeout=120)
    assert other.returncode == 0, err
    built_there = json.loads(out.strip().splitlines()[-1])["built"]
    assert sorted([built_here, built_there]) == [False, True]
    assert "waiting for another process" in capsys.readouterr().err + err  # the builds did overlap
    entries = sorted(p.name for p in (tmp_path / "features").iterdir())
    assert entries == [cache.inputs.key, f"{cache.inputs.key}.lock"]  # one cache, no leftovers
    assert not list(cache.dir.glob("*.tmp")) and cache.is_valid()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_cached_and_online_feed_the_head_the_same_features(tiny_cfg, tmp_path, dtype):
    def fed(trial: Trial) -> list[torch.Tensor]:
        inputs: list[torch.Tensor] = []
        trial.method.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach().clone()))
        return inputs

    common = dict(method="dualcoop", lr=3e-4, epochs=2)
    online = Trial(tiny_cfg(**common), progress=False)
    cached = Trial(tiny_cfg(**common, features="cached", feature_cache_dir=tmp_path, cache_dtype=dtype),
                   progress=False)
    assert cached.caches["train"].data_path.suffix == {"float16": ".f16", "float32": ".f32"}[dtype]

    def no_encoder(_images):
        raise AssertionError("the image encoder ran in cached mode")

    cached.backbone.dense_features = no_encoder
    seen = {"online": fed(online), "cached": fed(cached)}
    results = {"online": online.run(), "cached": cached.run()}
    assert len(seen["online"]) == len(seen["cached"]) > 0  # every train and eval batch
    # float16 storage rounds (~2e-4 relative); float32 keeps what the encoder gave (up to the
    # last bits, which depend on which images shared a batch)
    tolerance = {"float16": 1e-3, "float32": 1e-5}[dtype]
    for a, b in zip(seen["online"], seen["cached"]):
        assert a.shape == b.shape and b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=tolerance, atol=tolerance)
    for metric in ("best_val_map", "test_map"):
        gap = abs(getattr(results["online"], metric) - getattr(results["cached"], metric))
        assert gap < {"float16": 0.5, "float32": 1e-3}[dtype], (metric, gap)


def test_cached_mode_resumes_exactly(tiny_cfg, tmp_path):
    cfg = tiny_cfg(method="baseline", lr=2e-2, epochs=3, features="cached")
    straight = run_trial(cfg, tmp_path / "straight", progress=False)

    class Stop(Exception):
        pass

    def stop_after_two(row: dict, _ckpt) -> None:
        if row["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        run_trial(cfg, tmp_path / "resumed", report=stop_after_two, progress=False)
    resumed = run_trial(cfg, tmp_path / "resumed", progress=False)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    for key_ in ("test_map", "last_test_map", "best_val_map", "best_epoch"):
        assert getattr(resumed, key_) == getattr(straight, key_), key_


def test_loader_workers_change_nothing(tiny_cfg, tmp_path):
    """Batches come in the same order with and without worker processes (no second shuffle drawn)."""
    runs = [run_trial(tiny_cfg(method="baseline", lr=2e-2, features="cached", num_workers=w), progress=False)
            for w in (0, 2)]
    assert [r["loss"] for r in runs[0].history] == [r["loss"] for r in runs[1].history]
    assert runs[0].test_map == runs[1].test_map


def test_cached_mode_refuses_augmentation(tiny_cfg):
    with pytest.raises(ValueError, match="features: cached.*augment"):
        Trial(tiny_cfg(features="cached", augment=True), progress=False)


def test_sweep_builds_missing_caches_as_ray_tasks_before_trials(tiny_cfg, tmp_path):
    import ray

    from ablate.sweep import Arm, prepare_data  # imports MLflow: only here
    from ablate.sweep.spec import Resources

    cfg = tiny_cfg(features="cached", feature_cache_dir=tmp_path, dataset_options={"synthetic_images": 40})
    arms = [Arm({}, cfg), Arm({"label_ratio": 0.2}, cfg.model_copy(update={"label_ratio": 0.2}))]
    try:
        prepare_data(arms, Resources(cpu=1, gpu=0))
    finally:
        ray.shutdown()
    manifests = [json.loads(p.read_text()) for p in tmp_path.glob("*/manifest.json")]
    assert sorted(m["inputs"]["split"] for m in manifests) == ["test", "train"]  # one group, two caches
    assert all(m["complete"] and m["pid"] != os.getpid() for m in manifests)  # built by a Ray worker
    torch.manual_seed(cfg.seed)  # the random weights the trial and the task draw
    caches = trial_caches(cfg, create_backbone(cfg.backbone, cfg.pretrained, cfg.image_size), load_splits(cfg))
    assert caches["train"].is_valid() and caches["test"].is_valid()
