"""The synthetic world and its pre-trained tiny CLIP, on reduced sizes (seconds, not minutes)."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from ablate.backbone import create_backbone
from ablate.data.base import DataError
from ablate.data.coco import load_coco
from ablate.world import checkpoints as checkpoints_mod
from ablate.world.checkpoints import build_checkpoint, checkpoint_path, resolve_pretrained
from ablate.world.dataset import (
    SPLITS,
    WorldConfig,
    build_world,
    default_world_root,
    load_captions,
    load_world,
    world_hash,
)
from ablate.world.pretrain import PretrainConfig, manifest_path, pretrain, zero_shot_map
from ablate.world.scenes import NEGATION_RATE, PARTIAL_RATE, WORLD_CLASSES

SMALL = WorldConfig(n_train=320, n_val=32, n_test=160, n_pretrain=288, seed=0)
TINY = WorldConfig(n_train=24, n_val=18, n_test=20, n_pretrain=24, seed=3)
NAMES = re.compile("|".join(sorted(map(re.escape, WORLD_CLASSES), key=len, reverse=True)))
NEGATION = re.compile(r"\b(no|without)\b")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_world(tmp_path_factory.mktemp("world") / "w", SMALL, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _labels(root: Path, split: str) -> dict[str, set[str]]:
    """file name -> names of the classes present."""
    data = load_world(root, split)
    return {p.name: {data.classnames[j] for j in np.flatnonzero(row)} for p, row in zip(data.paths, data.labels)}


def _named(text: str) -> set[str]:
    return set(NAMES.findall(text))


# ---- generation -----------------------------------------------------------------------------------


def test_same_seed_gives_identical_files_other_seed_differs(tmp_path):
    a = _files(build_world(tmp_path / "a", TINY, progress=False))
    b = _files(build_world(tmp_path / "b", TINY, progress=False))
    assert a == b
    assert sum(name.endswith(".png") for name in a) == sum(TINY.counts().values())
    c = _files(build_world(tmp_path / "c", replace(TINY, seed=4), progress=False))
    assert c.keys() == a.keys()
    for name in ("annotations/instances_train2014.json", "captions/train_presence.json",
                 "train2014/world_train_0000001.png"):
        assert a[name] != c[name], name


def test_build_reuses_and_refuses_foreign_folders(tmp_path):
    root = build_world(tmp_path / "w", TINY, progress=False)
    stamp = (root / "ablate_world.json").stat().st_mtime_ns
    assert build_world(root, TINY, progress=False) == root
    assert (root / "ablate_world.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    with pytest.raises(DataError, match="not empty"):
        build_world(root, replace(TINY, n_test=21), progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        build_world(foreign, TINY, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".*tmp-*"))  # no temp folder left behind
    assert default_world_root(tmp_path, TINY) != default_world_root(tmp_path, replace(TINY, seed=4))


def test_incomplete_world_is_not_reused_and_errors_name_the_fix(tmp_path):
    root = build_world(tmp_path / "w", TINY, progress=False)
    (root / "captions" / "pretrain_negation.json").unlink()  # e.g. a copy that lost a file
    with pytest.raises(DataError, match="not empty"):
        build_world(root, TINY, progress=False)
    with pytest.raises(DataError, match=f"ablate world build --out {re.escape(str(root))}"):
        load_captions(root, "pretrain", "negation")
    with pytest.raises(DataError, match="ablate world build --out"):
        world_hash(tmp_path / "nothing")


def test_pretraining_corpus_is_disjoint_from_the_downstream_splits(world):
    """Captions name (nearly) every present class, so pre-training on the downstream training images
    would show the backbone their full labels; the corpus is a split of its own."""
    corpus = load_captions(world, "pretrain", "presence")
    assert len(corpus) == SMALL.n_pretrain
    pixels = {(world / SPLITS["pretrain"] / name).read_bytes() for name in corpus}
    for split in ("train", "val", "test"):
        assert not corpus.keys() & load_captions(world, split, "presence").keys()
        assert not pixels & {p.read_bytes() for p in load_world(world, split).paths}


def test_classes_uneven_and_every_class_in_every_split(world):
    assert 10 <= len(WORLD_CLASSES) <= 20 and len(set(WORLD_CLASSES)) == len(WORLD_CLASSES)
    for split in SPLITS:
        labels = load_world(world, split).labels
        assert labels.sum(axis=0).min() >= 1, split
        assert 1 <= labels.sum(axis=1).min() and labels.sum(axis=1).max() <= 4
    freq = load_world(world, "train").labels.mean(axis=0)
    assert freq.max() > 3 * freq.min()  # long tail, like real data


# ---- captions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", list(SPLITS))
def test_presence_captions_name_only_present_classes(world, split):
    labels = _labels(world, split)
    captions = load_captions(world, split, "presence")
    assert captions.keys() == labels.keys()
    complete = multi = 0
    for name, caps in captions.items():
        assert len(caps) >= 2 and len(set(caps)) >= 2  # several variants per image
        for cap in caps:
            assert not NEGATION.search(cap), cap
            assert _named(cap) and _named(cap) <= labels[name], (cap, labels[name])
            if len(labels[name]) > 1:
                multi += 1
                complete += _named(cap) == labels[name]
    assert abs((multi - complete) / multi - PARTIAL_RATE) < 0.1  # some captions name a subset


@pytest.mark.parametrize("split", list(SPLITS))
def test_negation_captions_negate_only_absent_classes(world, split):
    labels = _labels(world, split)
    presence = load_captions(world, split, "presence")
    negation = load_captions(world, split, "negation")
    assert negation.keys() == labels.keys()
    n_caps = n_neg = 0
    for name, caps in negation.items():
        assert len(caps) == len(presence[name])
        for cap, pos in zip(caps, presence[name]):
            n_caps += 1
            if cap == pos:
                continue
            n_neg += 1
            assert cap.startswith(pos.removesuffix(".")), (cap, pos)  # the presence caption, extended
            negated = cap[len(pos) - 1:]
            assert NEGATION.search(negated) and _named(negated), cap  # something is negated ...
            assert not _named(negated) & labels[name], (cap, labels[name])  # ... and it is truly absent
    assert abs(n_neg / n_caps - NEGATION_RATE) < 0.1


# ---- COCO format ----------------------------------------------------------------------------------


@pytest.mark.parametrize("split", list(SPLITS))
def test_coco_format_through_pycocotools(world, split):
    coco = COCO(str(world / "annotations" / f"instances_{SPLITS[split]}.json"))
    assert len(coco.getCatIds()) == len(WORLD_CLASSES)
    assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == WORLD_CLASSES
    assert len(coco.getImgIds()) == SMALL.counts()[split]
    ann_ids = coco.getAnnIds()
    assert sorted(ann_ids) == sorted({a for i in coco.getImgIds() for a in coco.getAnnIds(imgIds=i)})
    for ann in coco.loadAnns(ann_ids):
        x, y, w, h = ann["bbox"]
        img = coco.imgs[ann["image_id"]]
        assert ann["category_id"] in coco.cats and w > 0 and h > 0
        assert 0 <= x and x + w <= img["width"] + 1e-6 and 0 <= y and y + h <= img["height"] + 1e-6
        assert (world / SPLITS[split] / img["file_name"]).is_file()
    labels = load_world(world, split).labels
    assert labels.sum() == len(ann_ids)  # one annotation per present class


def test_load_coco_reads_train_and_test(world):
    for split in ("train", "test"):
        data = load_coco(world, split, dataset=None)
        assert data.classnames == WORLD_CLASSES
        assert data.labels.shape == (SMALL.counts()[split], len(WORLD_CLASSES))
        np.testing.assert_array_equal(data.labels, load_world(world, split).labels)


# ---- pre-training ---------------------------------------------------------------------------------


def test_pretraining_learns(world, tmp_path):
    """Loss falls and zero-shot mAP beats the same model at its random init. The tiny ResNet learns
    in seconds; the default ViT needs minutes (its full run is measured, not tested, see README)."""
    cfg = PretrainConfig(model="ablate-tiny-rn", captions="negation", epochs=4, batch_size=16, lr=5e-4,
                         warmup_steps=5)
    out = tmp_path / "rn.pt"
    manifest = pretrain(world, out, cfg, progress=False)
    losses = manifest["loss_curve"]
    assert len(losses) == cfg.epochs and losses[-1] < losses[0] - 0.3, losses
    assert json.loads(manifest_path(out).read_text()) == manifest
    assert manifest["world"]["hash"] == world_hash(world)
    assert manifest["pretrain_images"] == SMALL.n_pretrain  # the corpus split, not train

    torch.manual_seed(cfg.seed)
    random_map = zero_shot_map(create_backbone(cfg.model, "none"), world)
    trained_map = zero_shot_map(create_backbone(cfg.model, str(out)), world)
    assert manifest["test_zero_shot_map"] == pytest.approx({"random": random_map, "pretrained": trained_map})
    assert trained_map > random_map + 8, manifest["test_zero_shot_map"]  # measured: +18


def test_default_vit_checkpoint_loads_with_its_trained_weights(tmp_path):
    root = build_world(tmp_path / "w", TINY, progress=False)
    out = tmp_path / "vit.pt"
    pretrain(root, out, PretrainConfig(epochs=1, batch_size=16), progress=False)  # one step
    state = torch.load(out, weights_only=True)  # a plain state dict, no pickled objects
    loaded = create_backbone("ablate-tiny-vit", str(out)).model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    torch.manual_seed(0)
    init = create_backbone("ablate-tiny-vit", "none").model.state_dict()
    assert not torch.equal(init["visual.conv1.weight"], state["visual.conv1.weight"])  # image tower trained
    assert not torch.equal(init["transformer.resblocks.0.mlp.c_fc.weight"],
                           state["transformer.resblocks.0.mlp.c_fc.weight"])  # text tower trained


def test_build_checkpoint_trains_once_and_caches(tmp_path, monkeypatch):
    """Two concurrent callers: one pre-trains (for real, one step), the other waits and reuses it;
    later calls reuse the cache; a checkpoint whose manifest never got written is trained again."""
    calls: list = []
    real = checkpoints_mod.pretrain

    def counting(world_root: Path, out: Path, cfg: PretrainConfig, progress: bool = True) -> dict:
        calls.append(cfg)
        return real(world_root, out, cfg, progress)

    monkeypatch.setattr(checkpoints_mod, "pretrain", counting)
    base = PretrainConfig(epochs=1, batch_size=16)
    kwargs = dict(cache_dir=tmp_path, progress=False, world=TINY, base=base)
    paths: list = []
    threads = [threading.Thread(target=lambda: paths.append(build_checkpoint("world-negation", **kwargs)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and calls[0].captions == "negation" and paths[0] == paths[1]
    assert json.loads(manifest_path(paths[0]).read_text())["checkpoint"] == paths[0].name
    create_backbone("ablate-tiny-vit", str(paths[0]))  # a loadable checkpoint

    assert build_checkpoint("negation", **kwargs) == paths[0]
    assert len(calls) == 1  # cached
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    presence = build_checkpoint("world-presence", **kwargs)
    assert presence != paths[0] and len(calls) == 2 and calls[1].captions == "presence"
    assert torch.equal(torch.get_rng_state(), rng)  # a trial that triggers pre-training keeps its random stream

    manifest_path(presence).unlink()  # as if the process died between checkpoint and manifest
    presence.write_bytes(b"half a checkpoint")
    assert build_checkpoint("world-presence", **kwargs) == presence
    assert len(calls) == 3
    create_backbone("ablate-tiny-vit", str(presence))

    with pytest.raises(ValueError, match="unknown world checkpoint"):
        build_checkpoint("world-bogus", **kwargs)


def test_checkpoint_key_follows_config_and_world_and_aliases_are_exact(tmp_path):
    a = build_world(tmp_path / "a", TINY, progress=False)
    b = build_world(tmp_path / "b", replace(TINY, seed=4), progress=False)
    cfg = PretrainConfig()
    keys = {checkpoint_path(tmp_path, a, cfg), checkpoint_path(tmp_path, b, cfg),
            checkpoint_path(tmp_path, a, replace(cfg, lr=1e-3)), checkpoint_path(tmp_path, a, replace(cfg, seed=1)),
            checkpoint_path(tmp_path, a, replace(cfg, captions="negation"))}
    assert len(keys) == 5
    assert checkpoint_path(tmp_path, a, cfg) == checkpoint_path(tmp_path, a, PretrainConfig())
    assert resolve_pretrained("ablate-tiny-vit", "world-presence-run2.pt") == "world-presence-run2.pt"  # a file


def test_world_cli_builds_and_pretrains(tmp_path, capsys):
    from ablate.cli import main

    root = tmp_path / "w"
    assert main(["world", "build", "--out", str(root), "--n-train", "24", "--n-val", "18", "--n-test", "20",
                 "--n-pretrain", "24", "--seed", "3"]) == 0
    assert _files(root) == _files(build_world(tmp_path / "same", TINY, progress=False))  # flags = WorldConfig
    capsys.readouterr()
    out = tmp_path / "p.pt"
    assert main(["world", "pretrain", "--captions", "presence", "--world-root", str(root), "--out", str(out),
                 "--epochs", "1", "--batch-size", "16", "--lr", "1e-4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["checkpoint"] == str(out) and len(printed["loss_curve"]) == 1
    assert json.loads(manifest_path(out).read_text())["config"]["lr"] == 1e-4
    create_backbone("ablate-tiny-vit", str(out))


def test_world_dataset_errors_name_the_fix(tmp_path):
    from ablate.data import check_root
    from ablate.spec import TrialConfig

    with pytest.raises(DataError, match="ablate world build --out"):
        check_root(TrialConfig(dataset="world", data_root=tmp_path / "missing"))
    root = build_world(tmp_path / "w", TINY, progress=False)
    assert check_root(TrialConfig(dataset="world", data_root=root)) == root  # a world of another config is fine


def test_loading_a_world_alias_finds_the_built_checkpoint_and_never_builds_one(tmp_path, monkeypatch):
    """Loading only looks a world CLIP up: a missing one is one error line with the command that builds it,
    and nothing is built; after the explicit step (`build_checkpoint`) the same load finds it."""
    from ablate.errors import ConfigError
    from ablate.factory import load_backbone

    base = PretrainConfig(epochs=1, batch_size=16)  # the embedded world and recipe, made tiny
    monkeypatch.setattr(checkpoints_mod, "DEFAULT_WORLD", TINY)
    monkeypatch.setattr(checkpoints_mod, "DEFAULT_PRETRAIN", base)
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match=r"world-negation@seed=1: its world CLIP .* not built .*"
                                          r"`ablate world pretrain --captions negation .* --seed 1`"):
        load_backbone("ablate-tiny-vit", "world-negation@seed=1", cache_dir=cache)
    assert not cache.exists()  # no world generated, nothing pre-trained
    built = build_checkpoint("world-negation@seed=1", cache, progress=False, world=TINY, base=base)
    backbone = load_backbone("ablate-tiny-vit", "world-negation@seed=1", cache_dir=cache)
    assert backbone.info.pretrained == "world-negation@seed=1"
    assert torch.equal(backbone.model.state_dict()["text_projection"],
                       torch.load(built, weights_only=True)["text_projection"])
