"""A quiet, honest console: progress in a log is whole lines, a loaded checkpoint is not called random, the
world CLIP's pre-training says how long it takes before it does, and `ablate train` ends with readable
figures."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import torch
from tqdm.std import tqdm

from ablate.backbone import create_backbone
from ablate.progress import LINE_EVERY_S, LogProgress, progress_bar
from ablate.world.dataset import WorldConfig, build_world
from ablate.world.pretrain import TIMED_STEPS, pretrain
from ablate.world.recipe import PretrainConfig


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def log_bar(buf: io.StringIO, clock: Clock, **kwargs) -> tqdm:
    bar = progress_bar(file=buf, **kwargs)
    bar._time, bar.start_t, bar.last_print_t = clock, 0.0, 0.0  # tqdm's own clock, driven by the test
    return bar


def test_progress_in_a_log_is_a_line_every_tenth():
    buf, clock = io.StringIO(), Clock()
    bar = log_bar(buf, clock, total=200, desc="feature caches", unit="img")
    assert isinstance(bar, LogProgress)
    for _ in range(200):
        clock.now += 1.0
        bar.update()
    bar.close()
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue() and "\x1b" not in buf.getvalue()
    assert len(lines) == 10, lines  # 10 %, 20 %, ... 100 %; the close adds nothing new
    assert [line.split("%")[0].split()[-1] for line in lines] == [str(p) for p in range(10, 101, 10)]
    assert lines[0].startswith("feature caches:  10% (20/200 img) [00:20 elapsed, ~03:00 left]")


def test_progress_without_a_total_is_a_line_every_30_s_and_a_last_one():
    buf, clock = io.StringIO(), Clock()
    bar = log_bar(buf, clock, desc="download", unit="B")
    for _ in range(95):
        clock.now += 1.0
        bar.update()
    bar.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 95 // int(LINE_EVERY_S) + 1, lines  # every 30 s, then the end
    assert lines[-1].startswith("download: 95 B")


def test_a_short_step_that_leaves_no_bar_prints_nothing_and_writes_go_through_cleanly():
    buf, clock = io.StringIO(), Clock()
    bar = log_bar(buf, clock, total=5, desc="epoch 1/2", leave=False)
    for _ in range(5):
        clock.now += 0.2
        bar.update()
        tqdm.write("a message", file=buf)
    bar.close()
    assert buf.getvalue() == "a message\n" * 5


def test_a_terminal_gets_the_live_bar():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = progress_bar(total=3, file=Terminal())
    assert not isinstance(bar, LogProgress)
    bar.close()


def test_a_loaded_checkpoint_is_not_called_random(tmp_path, caplog):
    path = tmp_path / "w.pt"
    torch.save(create_backbone("ablate-tiny-vit", "none").model.state_dict(), path)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        create_backbone("ablate-tiny-vit", str(path))
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        create_backbone("ablate-tiny-vit", "none")  # random it is: open_clip may say so
    assert [r for r in caplog.records if "initialized randomly" in r.getMessage()]


def test_pretraining_says_what_it_builds_how_long_and_that_it_is_once(tmp_path, capsys):
    world = build_world(tmp_path / "w", WorldConfig(n_train=16, n_val=16, n_test=16, n_pretrain=16, seed=1),
                        progress=False)
    steps = TIMED_STEPS + 2
    pretrain(world, tmp_path / "p.pt", PretrainConfig(model="ablate-tiny-rn", epochs=steps, batch_size=16,
                                                      warmup_steps=1), progress=True)
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pre-training the world's")]
    assert len(said) == 1, said
    assert f"(ablate-tiny-rn on presence captions, {steps} steps): about " in said[0]
    assert "on this machine" in said[0] and "built once" in said[0]


def test_train_prints_its_figures_readably(tmp_path, capsys, cache_dir):
    from ablate.cli import main

    config = tmp_path / "trial.yaml"
    config.write_text(json.dumps({"dataset": "synthetic", "dataset_options": {"synthetic_images": 40},
                                  "method": "baseline", "epochs": 1, "warmup_epochs": 0, "batch_size": 16,
                                  "num_workers": 0, "augment": False, "device": "cpu", "cache_dir": str(cache_dir)}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out.strip()
    metrics = json.loads((Path(tmp_path / "run") / "metrics.json").read_text())
    assert out.startswith(f"baseline on synthetic, 50 % labels: test mAP {metrics['test_map']:.2f} at the epoch "
                          "picked on val"), out
    assert "{" not in out


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass
