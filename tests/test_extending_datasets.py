"""A dataset is added by registration alone: declared from outside the package, it trains, sweeps and
is named in errors like a built-in one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from ablate.data import (
    DATASETS,
    DataError,
    DatasetInfo,
    LabelledImages,
    class_names,
    dataset_names,
    register_dataset,
)
from ablate.spec import TrialConfig
from ablate.sweep import expand
from ablate.sweep.spec import SweepSpec
from ablate.trainer import run_trial

pytestmark = pytest.mark.usefixtures("one_thread")

TOY = "toy-shapes"
TOY_CLASSES = ("red", "green", "blue")
TOY_LAYOUT = "<root>/{train,test}/<n>.png and <root>/{train,test}.json (file name -> list of colours)"
_COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 230)}


def _write_split(root: Path, split: str, n: int, seed: int) -> None:
    """n images, each with 1-2 colours as vertical bars on grey, and their labels."""
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True)
    labels = {}
    for i in range(n):
        present = [TOY_CLASSES[i % 3]] if i < 3 else list(rng.choice(TOY_CLASSES, int(rng.integers(1, 3)), False))
        pixels = np.full((32, 32, 3), 128, dtype=np.uint8)
        for k, colour in enumerate(present):
            pixels[:, 16 * k: 16 * k + 12] = _COLOURS[colour]
        Image.fromarray(pixels).save(root / split / f"{i}.png")
        labels[f"{i}.png"] = present
    (root / f"{split}.json").write_text(json.dumps(labels))


def toy_root(cfg: TrialConfig) -> Path:
    """data_root, or a set generated in the cache dir on first use."""
    root = Path(cfg.data_root or cfg.resolved_cache_dir() / TOY).expanduser().absolute()
    if not root.exists():
        _write_split(root, "train", 20, seed=0)
        _write_split(root, "test", 10, seed=1)
    if not (root / "train.json").is_file() or not (root / "test.json").is_file():
        raise DataError(f"{TOY} root {root} is incomplete; expected layout: {TOY_LAYOUT}")
    return root


def toy_load(cfg: TrialConfig, root: Path, split: str) -> LabelledImages:
    labels = json.loads((root / f"{split}.json").read_text())
    names = sorted(labels, key=lambda f: int(f.split(".")[0]))
    matrix = np.array([[c in labels[f] for c in TOY_CLASSES] for f in names], dtype=np.int8)
    return LabelledImages([root / split / f for f in names], matrix, list(TOY_CLASSES))


@pytest.fixture()
def toy_dataset():
    register_dataset(DatasetInfo(TOY, TOY_CLASSES, TOY_LAYOUT, root=toy_root, load=toy_load))
    yield TOY
    DATASETS.unregister(TOY)


def test_registered_dataset_trains_and_sweeps(toy_dataset, tmp_path):
    assert toy_dataset in dataset_names() and class_names(toy_dataset) == list(TOY_CLASSES)
    cfg = TrialConfig(dataset=toy_dataset, backbone="ablate-tiny-vit", pretrained="none", n_ctx=4, epochs=1,
                      warmup_epochs=0, batch_size=8, num_workers=0, device="cpu", augment=False,
                      cache_dir=tmp_path / "cache")
    result = run_trial(cfg, tmp_path / "run", progress=False)
    assert result.dataset == toy_dataset and list(result.per_class_ap) == list(TOY_CLASSES)
    assert result.split_sizes == {"train": 18, "val": 2, "test": 10}
    assert 0.0 <= result.test_map <= 100.0

    spec = SweepSpec(name="toy", base=cfg, per_dataset={toy_dataset: {"lr": 0.01}},
                     grid={"dataset": [toy_dataset], "label_ratio": [0.5, 1.0]})
    arms = expand(spec)
    assert [(a.config.dataset, a.config.label_ratio, a.config.lr) for a in arms] == [
        (toy_dataset, 0.5, 0.01), (toy_dataset, 1.0, 0.01)]


def test_unregistered_dataset_is_refused(toy_dataset):
    DATASETS.unregister(toy_dataset)
    with pytest.raises(ValidationError, match="unknown dataset 'toy-shapes'; registered: coco2014, voc2007"):
        TrialConfig(dataset=toy_dataset)
    with pytest.raises(ValidationError, match="per_dataset.toy-shapes: unknown dataset; registered: coco2014"):
        SweepSpec(name="toy", per_dataset={toy_dataset: {"lr": 0.01}})


def test_unknown_dataset_error_is_one_line_naming_the_registered():
    with pytest.raises(ValidationError) as err:
        TrialConfig(dataset="imagenet")
    (problem,) = err.value.errors()
    assert problem["loc"] == ("dataset",) and "\n" not in problem["msg"]
    assert problem["msg"].endswith("unknown dataset 'imagenet'; registered: " + ", ".join(dataset_names()))


def test_registering_twice_needs_replace(toy_dataset):
    info = DatasetInfo(toy_dataset, ("a",), "anything", root=toy_root, load=toy_load)
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(info)
    assert register_dataset(info, replace=True) is DATASETS.get(toy_dataset)
    assert class_names(toy_dataset) == ["a"]


@pytest.mark.parametrize("name", dataset_names())
def test_builtin_declares_layout_and_class_names(name):
    info = DATASETS.get(name)
    assert info.name == name and info.layout.strip()
    names = class_names(name)
    assert names and len(set(names)) == len(names) and all(isinstance(n, str) and n for n in names)
