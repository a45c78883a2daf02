"""A dataset owns its settings: a toy dataset registered from outside the package (a plugin module) brings
its own options model; a trial carries the options in `dataset_options`, a spec sets them under
per_dataset.<dataset>, they are validated with the field named, change what the dataset loads, and reach
MLflow's params. The flat fields of the last release (coco_empty_images, voc_difficult, synthetic_images)
still work, with a one-line notice. Nothing under ablate/ is edited."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import warnings

import pytest
import torch
import yaml
from sweep_helpers import run_with_plugins, write_spec
from sweep_helpers import runs as sweep_runs

from ablate.data import DATASETS, load_splits
from ablate.errors import ConfigError, MovedSetting
from ablate.features import feature_group
from ablate.pack import pack_key
from ablate.spec import STORED, TrialConfig
from ablate.sweep import expand
from ablate.sweep.spec import SweepSpec, load_sweep_spec

PLUGIN = textwrap.dedent('''
    """Toy bars: coloured vertical bars on grey, generated on first use; its own setting is the train size."""
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from pydantic import Field

    from ablate.data import DATASETS, DatasetInfo, DatasetOptions, LabelledImages, register_dataset

    CLASSES = ("red", "green", "blue")
    COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 230)}
    LAYOUT = "<root>/{train,test}/<n>.png and <root>/{train,test}.json (file name -> list of colours)"


    class BarsOptions(DatasetOptions):
        bars_images: int = Field(12, ge=6, description="train images (the test split has 6)")


    def _write(root, split, n, seed):
        rng = np.random.default_rng(seed)
        (root / split).mkdir(parents=True)
        labels = {}
        for i in range(n):
            present = [CLASSES[i % 3]] if i < 3 else list(rng.choice(CLASSES, int(rng.integers(1, 3)), False))
            pixels = np.full((32, 32, 3), 128, dtype=np.uint8)
            for k, colour in enumerate(present):
                pixels[:, 16 * k: 16 * k + 12] = COLOURS[colour]
            Image.fromarray(pixels).save(root / split / f"{i}.png")
            labels[f"{i}.png"] = present
        (root / f"{split}.json").write_text(json.dumps(labels))


    def root(cfg):
        n = cfg.dataset_settings(BarsOptions).bars_images
        folder = Path(cfg.data_root or cfg.resolved_cache_dir() / f"toy-bars-{n}").expanduser().absolute()
        if not (folder / "test.json").is_file():
            _write(folder, "train", n, seed=0)
            _write(folder, "test", 6, seed=1)
        return folder


    def load(cfg, folder, split):
        labels = json.loads((folder / f"{split}.json").read_text())
        names = sorted(labels, key=lambda f: int(f.split(".")[0]))
        matrix = np.array([[c in labels[f] for c in CLASSES] for f in names], dtype=np.int8)
        return LabelledImages([folder / split / f for f in names], matrix, list(CLASSES))


    if "toy-bars" not in DATASETS:
        register_dataset(DatasetInfo("toy-bars", CLASSES, LAYOUT, root=root, load=load, options=BarsOptions))
''')
TOY = "toy-bars"


@pytest.fixture()
def bars_plugin(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "ablate_bars_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", f"{folder}:{os.environ.get('PYTHONPATH', '')}")
    importlib.import_module("ablate_bars_plugin")  # registers toy-bars
    yield folder
    DATASETS.unregister(TOY)
    sys.modules.pop("ablate_bars_plugin", None)  # the next test imports (and registers) it afresh


@pytest.fixture()
def fresh_notices(monkeypatch):
    """Each flat field's notice is said once a process: this test starts with none said."""
    import ablate.spec

    monkeypatch.setattr(ablate.spec, "_noticed", set())


def test_a_dataset_brings_its_own_options(bars_plugin, tmp_path):
    cfg = TrialConfig(dataset=TOY, dataset_options={"bars_images": 9}, cache_dir=tmp_path)
    assert TrialConfig(dataset=TOY).dataset_options == {"bars_images": 12}  # defaults filled in
    splits = load_splits(cfg)
    assert len(splits["train"]) + len(splits["val"]) == 9 and len(splits["test"]) == 6
    more = cfg.model_copy(update={"dataset_options": {"bars_images": 15}})
    bigger = load_splits(more)
    assert len(bigger["train"]) + len(bigger["val"]) == 15
    # what reads the images keeps configs of different settings apart
    assert pack_key(cfg) != pack_key(more) and feature_group(cfg) != feature_group(more)
    with pytest.raises(ValueError, match=r"dataset_options\.bars_image: unknown option \(dataset toy-bars; its "
                                         r"options: bars_images\)"):
        TrialConfig(dataset=TOY, dataset_options={"bars_image": 9})
    with pytest.raises(ValueError, match=r"dataset_options\.bars_images: Input should be greater than or equal to 6"):
        TrialConfig(dataset=TOY, dataset_options={"bars_images": 2})
    with pytest.raises(ValueError, match="dataset_options: dataset nuswide takes no options"):
        TrialConfig(dataset="nuswide", dataset_options={"bars_images": 9})


def test_a_spec_sets_a_datasets_options_under_its_name(bars_plugin):
    spec = SweepSpec(name="d", grid={"dataset": [TOY, "synthetic", "voc2007"]},
                     per_dataset={TOY: {"bars_images": 8, "lr": 0.1},
                                  "voc2007": {"dataset_options": {"voc_difficult": "ignore"}}})
    by_dataset = {a.config.dataset: a.config for a in expand(spec)}
    assert by_dataset[TOY].dataset_options == {"bars_images": 8} and by_dataset[TOY].lr == 0.1
    assert by_dataset["synthetic"].dataset_options == {"synthetic_images": 240}
    assert by_dataset["voc2007"].dataset_options == {"voc_difficult": "ignore"}
    with pytest.raises(ValueError, match=r"per_dataset\.toy-bars\.bars_images: Input should be greater than or "
                                         r"equal to 6"):
        SweepSpec(name="d", per_dataset={TOY: {"bars_images": 1}})
    with pytest.raises(ValueError, match=r"per_dataset\.toy-bars\.bars: unknown option"):
        SweepSpec(name="d", per_dataset={TOY: {"dataset_options": {"bars": 9}}})
    with pytest.raises(ValueError, match=r"per_dataset\.nuswide\.bars_images: not a TrialConfig field, and dataset "
                                         r"nuswide registers no options"):
        SweepSpec(name="d", per_dataset={"nuswide": {"bars_images": 9}})


def test_a_bad_option_in_a_spec_file_is_one_line(bars_plugin, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "plugins": ["ablate_bars_plugin"],
                                    "per_dataset": {TOY: {"bars_images": 0}}}))
    with pytest.raises(ConfigError, match=r"per_dataset\.toy-bars\.bars_images: Input should be greater than or "
                                          r"equal to 6"):
        load_sweep_spec(path)


def test_the_shipped_paper_specs_drop_coco_images_without_annotations():
    for name in ("paper_reproduction", "full_grid"):
        arms = expand(load_sweep_spec(f"tune_specs/{name}.yaml"))
        assert {str(a.config.dataset_options) for a in arms if a.config.dataset == "coco2014"} == {
            "{'coco_empty_images': 'drop'}"}


# ---- the flat fields of the last release ----------------------------------------------------------------

def test_flat_fields_still_work_with_one_notice_each(fresh_notices):
    with pytest.warns(MovedSetting, match=r"^synthetic_images: now a setting of dataset synthetic "
                                          r"\(per_dataset\.synthetic\.synthetic_images in a spec.*until the next "
                                          r"release"):
        assert TrialConfig(synthetic_images=40).dataset_options == {"synthetic_images": 40}
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert TrialConfig(synthetic_images=50).dataset_options == {"synthetic_images": 50}  # said once already
        # a field for another dataset was ignored, and is dropped
        cfg = TrialConfig(dataset="coco2014", coco_empty_images="keep", voc_difficult="ignore", synthetic_images=40)
    assert cfg.dataset_options == {"coco_empty_images": "keep"}
    assert sorted(str(w.message).split(":")[0] for w in said if w.category is MovedSetting) == [
        "coco_empty_images", "voc_difficult"]
    # in a spec: the base's go to their datasets (unless per_dataset says otherwise, as before), the grid's apply
    spec = SweepSpec(name="f", base={"coco_empty_images": "keep", "synthetic_images": 40},
                     per_dataset={"voc2007": {"voc_difficult": "ignore", "coco_empty_images": "drop"}},
                     grid={"dataset": ["coco2014", "synthetic", "voc2007"]})
    assert {a.config.dataset: a.config.dataset_options for a in expand(spec)} == {
        "coco2014": {"coco_empty_images": "keep"}, "synthetic": {"synthetic_images": 40},
        "voc2007": {"voc_difficult": "ignore"}}
    spec = SweepSpec(name="g", grid={"synthetic_images": [40, 60]})
    assert [a.config.dataset_options["synthetic_images"] for a in expand(spec)] == [40, 60]
    with pytest.raises(ValueError, match=r"grid\.synthetic_images\[0\] = 3: Input should be greater than"):
        SweepSpec(name="g", grid={"synthetic_images": [3]})
    # a flat field dropped for another dataset is still checked, as the dataset owning it would
    with pytest.raises(ValueError, match=r"voc_difficult: Input should be 'negative', 'positive' or 'ignore'"):
        TrialConfig(dataset="coco2014", voc_difficult="bogus")


def test_a_flat_field_notice_is_one_line_on_the_cli(fresh_notices, tmp_path, capsys):
    from ablate.cli import main

    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump({"synthetic_images": 40, "backbone": "ablate-tiny-vit", "device": "cpu"}))
    assert main(["train", "--config", str(config), "--dry-run"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "synthetic_images" in line]
    assert notes == ["warning: synthetic_images: now a setting of dataset synthetic (per_dataset.synthetic."
                     "synthetic_images in a spec, dataset_options in a trial config); the flat field is accepted "
                     "until the next release (and ignored for other datasets, as before)"]


def test_configs_stored_by_the_last_release_load_and_resume(fresh_notices, tiny_cfg, tmp_path):
    from ablate.trainer import CHECKPOINT, run_trial

    cfg = tiny_cfg(method="baseline", epochs=1, dataset_options={"synthetic_images": 40})
    old = {k: v for k, v in cfg.model_dump(mode="json").items() if k != "dataset_options"}
    old |= {"coco_empty_images": "drop", "voc_difficult": "negative", "synthetic_images": 40}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # what ablate wrote itself upgrades without a notice
        assert TrialConfig.model_validate(old, context=STORED) == cfg
    run_trial(cfg, tmp_path, progress=False)
    state = torch.load(tmp_path / CHECKPOINT, map_location="cpu", weights_only=True)
    torch.save({**state, "config": old}, tmp_path / CHECKPOINT)  # a checkpoint of the last release
    assert run_trial(cfg, tmp_path, progress=False).epochs == 1  # resumed, not refused


def test_a_swept_dataset_with_options_reaches_mlflow(bars_plugin, tmp_path, cache_dir):
    spec_path = write_spec(tmp_path, cache_dir, name="bars", plugins=["ablate_bars_plugin"],
                           base={"dataset": TOY, "dataset_options": {}, "method": "baseline", "epochs": 1,
                                 "batch_size": 8, "lr": 0.05},
                           per_dataset={TOY: {"bars_images": 8}}, grid={"label_ratio": [0.5]})
    summary = run_with_plugins(spec_path, bars_plugin, cpus=1)
    assert summary["trials"] == 1 and summary["errored"] == 0
    (run,) = sweep_runs(tmp_path, "bars")[1]
    assert run.info.status == "FINISHED" and run.data.params["dataset_options.bars_images"] == "8"
    assert run.data.params["dataset"] == TOY and "synthetic_images" not in run.data.params
