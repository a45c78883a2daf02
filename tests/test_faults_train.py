"""Bad input and faults in `ablate train` and `ablate report`: nothing lost, nothing run that was not
asked for, one clear line for every mistake."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch
import yaml
from sweep_helpers import sweep_store

from ablate import report as report_module
from ablate.cli import main
from ablate.data import check_root
from ablate.errors import ConfigError, DataError, ReportError, TrialDiverged
from ablate.factory import backbone_from_config
from ablate.result import TrialResult
from ablate.spec import TrialConfig, load_trial_config
from ablate.tracking import TrialRun
from ablate.trainer import Pack, Trial, run_trial

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(dataset="synthetic", dataset_options={"synthetic_images": 40},
            backbone="ablate-tiny-vit", pretrained="none", n_ctx=4,
            epochs=1, warmup_epochs=0, batch_size=16, num_workers=0, augment=False, device="cpu")


@pytest.fixture()
def tiny(cache_dir):
    """A TrialConfig of the tiny set-up (the session's cache dir unless overridden)."""
    return lambda **kw: TrialConfig(**{**TINY, "cache_dir": cache_dir, **kw})


def config_file(folder: Path, **fields) -> Path:
    """A trial YAML of the tiny set-up, for the CLI."""
    path = folder / "trial.yaml"
    path.write_text(yaml.safe_dump({**TINY, **{k: str(v) if isinstance(v, Path) else v for k, v in fields.items()}}))
    return path


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def no_training(monkeypatch) -> None:
    """Any epoch that starts fails the test: the fault must be found before training."""
    def train_epoch(self, epoch):
        raise AssertionError("an epoch started")
    monkeypatch.setattr(Trial, "train_epoch", train_epoch)


def unwritable(tmp_path: Path) -> Path:
    """A folder that cannot be written: read-only, or (as root, who writes anyway) under a plain file."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return folder
    (tmp_path / "afile").write_text("not a folder")
    return tmp_path / "afile" / "sub"


# ---- 1. one run per output folder ------------------------------------------------------------------

def test_two_trains_on_one_out_folder_one_is_refused_at_once(cache_dir, tmp_path):
    out = tmp_path / "run"
    config = config_file(tmp_path, cache_dir=cache_dir, epochs=2)
    cmd = [sys.executable, "-m", "ablate.cli", "train", "--config", str(config), "--out", str(out), "--quiet"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    done = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    assert sorted(code for code, _ in done) == [0, 2], done
    refused = next(err for code, err in done if code == 2)
    lines = error_lines(refused)
    assert len(lines) == 1 and str(out) in lines[0] and "pid" in lines[0], refused
    assert "Traceback" not in refused
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2


def test_the_lock_is_released_when_the_run_ends(tiny, tmp_path):
    run_trial(tiny(method="zeroshot"), tmp_path, progress=False)
    run_trial(tiny(method="zeroshot"), tmp_path, progress=False)  # the same folder again, one after the other


# ---- 2. the output folder checked first; no truncated final file -----------------------------------

def test_unwritable_out_fails_before_training(tiny, tmp_path, monkeypatch):
    out = unwritable(tmp_path)
    no_training(monkeypatch)
    with pytest.raises(ConfigError, match=str(out)):
        run_trial(tiny(), out, progress=False)


def test_no_free_space_fails_before_training(tiny, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    no_training(monkeypatch)
    with pytest.raises(ConfigError, match=r"1\.0 MiB free.*need about 64 MiB"):
        run_trial(tiny(), tmp_path / "run", progress=False)


def test_failed_metrics_write_leaves_no_truncated_file(tiny, tmp_path, monkeypatch):
    def half_write(self, path):
        Path(path).write_text('{"method": ')
        raise OSError("No space left on device")
    monkeypatch.setattr(TrialResult, "write", half_write)
    with pytest.raises(OSError, match="No space"):
        run_trial(tiny(), tmp_path, progress=False)
    assert not (tmp_path / "metrics.json").exists()


def test_failed_trained_write_leaves_no_truncated_file(tiny, tmp_path, monkeypatch):
    save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        if "trained.pt" in str(path):
            Path(path).write_bytes(b"PK\x03\x04")
            raise OSError("No space left on device")
        return save(obj, path, *args, **kwargs)
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        run_trial(tiny(), tmp_path, progress=False)
    assert not (tmp_path / "trained.pt").exists()


# ---- 3. one clear line per mistake -------------------------------------------------------------------

def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    config = tmp_path / "trial.yaml"
    config.write_text("method: baseline\nepochs: [1\nlr: 0.1\n")
    assert main(["train", "--config", str(config), "--dry-run"]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(config) in lines[0] and "line 3" in lines[0], lines
    spec = tmp_path / "spec.yaml"  # a sweep spec is read the same way: one line, the line named
    spec.write_text("name: s\ngrid: {method: [dualcoop\n")
    assert main(["sweep", "--spec", str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and f"{spec}: not valid YAML at line 3" in err and len(err.splitlines()) == 1, err


def test_debug_shows_the_traceback(tmp_path):
    config = tmp_path / "trial.yaml"
    config.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        main(["--debug", "train", "--config", str(config), "--dry-run"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_dry_run_checks_the_device(capsys):
    assert main(["train", "--device", "cuda", "--dry-run"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_changed_config_on_same_out_names_folder_and_field(tiny, tmp_path):
    run_trial(tiny(method="baseline"), tmp_path, progress=False)
    with pytest.raises(ConfigError) as err:
        run_trial(tiny(method="baseline", lr=0.1), tmp_path, progress=False)
    message = str(err.value)
    assert str(tmp_path) in message and "--out" in message and "checkpoint.pt" in message
    assert "changed: lr" in message


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_broken_image_is_one_line_naming_the_file(cache_dir, tmp_path, capsys, damage, workers):
    root = tmp_path / "synthetic"
    check_root(TrialConfig(**{**TINY, "cache_dir": cache_dir, "data_root": root}))  # generate it
    image = sorted((root / "train2014").iterdir())[0]
    data = image.read_bytes()
    image.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    config = config_file(tmp_path, cache_dir=cache_dir, data_root=root, num_workers=workers)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"cannot read image {image}" in lines[0], lines
    assert "Traceback" not in lines[0]


def test_broken_image_raises_a_data_error(cache_dir, tmp_path):
    root = tmp_path / "synthetic"
    cfg = TrialConfig(**{**TINY, "cache_dir": cache_dir, "data_root": root, "num_workers": 2})
    check_root(cfg)
    image = sorted((root / "train2014").iterdir())[0]
    image.write_bytes(b"")
    with pytest.raises(DataError, match=f"^cannot read image {image}"):
        run_trial(cfg, progress=False)


@pytest.mark.parametrize("where", ["file", "unwritable"])
def test_report_out_that_cannot_be_written_is_refused_first(tmp_path, capsys, where):
    if where == "file":
        out = tmp_path / "report.html"
        out.write_text("mine")
    else:
        out = unwritable(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["report", "--experiment", "rep", "--tracking-uri", uri, "--out", str(out)]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(out) in lines[0], lines
    assert not (tmp_path / "mlflow.db").exists()  # checked before anything was written
    if where == "file":
        assert out.read_text() == "mine"


def test_image_size_the_backbone_cannot_take(tiny, capsys):
    with pytest.raises(ConfigError, match="image_size 17 does not fit ablate-tiny-rn: .*multiple of 32"):
        backbone_from_config(tiny(backbone="ablate-tiny-rn", image_size=17))
    assert main(["train", "--backbone", "ablate-tiny-rn", "--image-size", "17", "--dry-run"]) == 2
    assert "image_size 17 does not fit" in capsys.readouterr().err


def test_integer_fields_refuse_booleans(tmp_path):
    config = tmp_path / "trial.yaml"
    config.write_text("epochs: true\n")
    with pytest.raises(ConfigError, match="epochs: .*expected an integer, got true"):
        load_trial_config(config)
    config.write_text("epochs: 3\nseed: 7\nimage_size: 32\n")
    cfg = load_trial_config(config)
    assert (cfg.epochs, cfg.seed, cfg.image_size) == (3, 7, 32)


@pytest.mark.parametrize("dataset", ["synthetic", "coco2014", "voc2007", "nuswide", "world"])
def test_data_root_that_is_a_file(tmp_path, dataset):
    root = tmp_path / "data.zip"
    root.write_bytes(b"PK")
    with pytest.raises(DataError, match="is a file, not a folder"):
        check_root(TrialConfig(dataset=dataset, data_root=root, cache_dir=tmp_path))


# ---- 5. divergence -------------------------------------------------------------------------------------

def test_huge_lr_warns_and_never_finishes_quietly(tiny, capsys):
    cfg = tiny(method="dualcoop", lr=1e30, batch_size=64)  # one step per epoch: the loss never shows it
    try:
        run_trial(cfg, progress=False)
    except TrialDiverged:
        pass
    assert "grew from norm" in capsys.readouterr().err


def test_non_finite_parameter_is_a_divergence(tiny, monkeypatch):
    train_epoch = Pack.train_epoch

    def poisoned(self, epoch):
        arms = train_epoch(self, epoch)
        next(p for p in arms[0].method.parameters() if p.requires_grad).data.fill_(float("inf"))
        return arms
    monkeypatch.setattr(Pack, "train_epoch", poisoned)
    with pytest.raises(TrialDiverged, match="no longer finite after epoch 1"):
        run_trial(tiny(method="dualcoop"), progress=False)


# ---- 6. a failed report leaves no partial folder ---------------------------------------------------------

@pytest.fixture()
def one_trial_experiment(tmp_path) -> str:
    uri, _, ctx = sweep_store(tmp_path, {"name": "rep", "base": {"dataset": "synthetic"}})
    cfg = TrialConfig(method="dualcoop", dataset="synthetic")
    run = TrialRun.attach(ctx, cfg, "trial0", {"method": "dualcoop"})
    run.log_metrics({"test_map": 70.0, "trainable_params": 10, "train_time_s": 1.0, "device_hours": 0.0})
    run.finish()
    return uri


@pytest.fixture()
def failing_section():
    def broken(ctx):
        raise RuntimeError("section failed")
    report_module.register_section(broken)
    yield
    report_module.SECTIONS.remove(broken)


def test_failed_report_leaves_no_folder(one_trial_experiment, tmp_path, failing_section):
    out = tmp_path / "reports" / "rep"
    with pytest.raises(RuntimeError, match="section failed"):
        report_module.write_report("rep", out, one_trial_experiment, log_to_mlflow=False)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".rep")]  # no staging left either


def test_failed_report_keeps_the_previous_one(one_trial_experiment, tmp_path):
    out = tmp_path / "rep"
    report_module.write_report("rep", out, one_trial_experiment, log_to_mlflow=False)
    before = (out / "report.html").read_text()

    def broken(ctx):
        raise RuntimeError("section failed")
    report_module.register_section(broken)
    try:
        with pytest.raises(RuntimeError):
            report_module.write_report("rep", out, one_trial_experiment, log_to_mlflow=False)
    finally:
        report_module.SECTIONS.remove(broken)
    assert (out / "report.html").read_text() == before
    report_module.write_report("rep", out, one_trial_experiment, log_to_mlflow=False)  # a rerun replaces it
    assert (out / "table.md").is_file()


def test_report_refuses_a_folder_of_other_files(one_trial_experiment, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("keep me")
    with pytest.raises(ReportError, match="no earlier report wrote"):
        report_module.write_report("rep", out, one_trial_experiment, log_to_mlflow=False)
    assert (out / "todo.txt").read_text() == "keep me"


# ---- the CLI: one line, exit 2, no traceback ---------------------------------------------------------

@pytest.mark.parametrize("fields, says", [
    ({"features": "cached", "augment": True}, "features: cached reads features of un-augmented images"),
    ({"method": "maple"}, "unknown method 'maple'; registered: dualcoop"),
    ({"dataset": "imagenet"}, "unknown dataset 'imagenet'; registered: coco2014"),
    ({"ctx_init": "a photo of a very very very long phrase indeed", "n_ctx": 2}, "ctx_init"),
    ({"pretrained": "world-bogus.pt"}, "checkpoint file not found"),
])
def test_config_mistakes_are_one_line(fields, says, tmp_path, cache_dir, capsys):
    code = main(["train", "--config", str(config_file(tmp_path, cache_dir=cache_dir, **fields)),
                 "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(error_lines(err)) == 1 and says in err and "Traceback" not in err, err
