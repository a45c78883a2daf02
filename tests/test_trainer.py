"""End-to-end trials on the synthetic set: every method, metrics.json, resume, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ablate.cli import main
from ablate.methods import method_info, method_names
from ablate.trainer import run_trial

TRAINED = [m for m in method_names() if method_info(m).trains]


def lr_for(method: str) -> float:
    """A random-weight CLIP has a sharp loss surface for prompts; these rates make it descend reliably."""
    return 3e-4 if method_info(method).text_encoder else 2e-2
REQUIRED = {"trainable_params", "best_val_map", "test_map", "last_test_map", "train_time_s", "epochs",
            "per_class_ap", "config"}


@pytest.mark.parametrize("method", TRAINED)
def test_every_method_trains_and_writes_metrics(method, tiny_cfg, tmp_path):
    cfg = tiny_cfg(method=method, lr=lr_for(method), epochs=3)
    metrics = run_trial(cfg, tmp_path, progress=False)
    losses = [row["loss"] for row in metrics.history]
    assert losses[-1] < losses[0], losses
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert REQUIRED <= written.keys()
    assert written["epochs"] == 3 and written["trainable_params"] > 0
    assert len(written["per_class_ap"]) == 10
    assert 0 <= written["test_map"] <= 100 and 0 <= written["best_val_map"] <= 100
    assert written["config"]["method"] == method
    assert (tmp_path / "checkpoint.pt").exists()


def test_zeroshot_evaluates_without_training(tiny_cfg, tmp_path):
    metrics = run_trial(tiny_cfg(method="zeroshot"), tmp_path, progress=False)
    assert metrics.trainable_params == 0 and metrics.epochs == 0
    assert metrics.test_map == metrics.last_test_map
    assert not (tmp_path / "checkpoint.pt").exists()


class Stop(Exception):
    pass


def test_resume_gives_the_same_result(tiny_cfg, tmp_path):
    cfg = tiny_cfg(method="positivecoop", lr=lr_for("positivecoop"), epochs=3, augment=True)
    straight = run_trial(cfg, tmp_path / "straight", progress=False)

    def stop_after_two(row: dict, _ckpt: Path | None) -> None:
        if row["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        run_trial(cfg, tmp_path / "resumed", report=stop_after_two, progress=False)
    resumed = run_trial(cfg, tmp_path / "resumed", progress=False)
    for key in ("test_map", "last_test_map", "best_val_map", "best_epoch"):
        assert getattr(resumed, key) == getattr(straight, key), key
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]


def test_checkpoint_of_another_config_is_refused(tiny_cfg, tmp_path):
    run_trial(tiny_cfg(method="baseline", epochs=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match="different configuration"):
        run_trial(tiny_cfg(method="baseline", epochs=1, lr=0.1), tmp_path, progress=False)


def test_cli_dry_run_counts_parameters_without_data(capsys):
    code = main(["train", "--method", "dualcoop", "--dataset", "voc2007", "--backbone", "ablate-tiny-vit",
                 "--n-ctx", "8", "--dry-run"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["trainable_params"] == 2 * 20 * 8 * out["text_width"]
    assert out["config"]["dataset"] == "voc2007"


def test_cli_config_file_rejects_unknown_keys(tmp_path, capsys):
    config = tmp_path / "trial.yaml"
    config.write_text("method: baseline\nlabel_ratoi: 0.3\n")
    assert main(["train", "--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "label_ratoi" in err and str(config) in err


def test_cli_missing_data_root_names_the_layout(tmp_path, capsys):
    assert main(["train", "--dataset", "coco2014", "--data-root", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "annotations/instances_" in capsys.readouterr().err


def test_cli_train_end_to_end(cache_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ablate.cli", "train", "--method", "baseline", "--epochs", "1",
           "--batch-size", "16", "--num-workers", "0", "--no-augment", "--cache-dir", str(cache_dir),
           "--out", str(out), "--quiet"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    metrics = json.loads((out / "metrics.json").read_text())
    assert REQUIRED <= metrics.keys() and metrics["epochs"] == 1
