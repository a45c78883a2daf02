"""Bad input and faults, second audit: no user file deleted, no name escaping its folder, no endless wait,
no silent wrong result, and one `error:` line (exit 2, 130 for an interrupt) instead of a traceback."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from sweep_helpers import sweep_store, tmpfs, write_spec

from ablate.cli import main
from ablate.errors import ConfigError, DataError, ReportError, TrackingError
from ablate.report import write_report
from ablate.spec import TrialConfig
from ablate.sweep.spec import load_sweep_spec
from ablate.tracking import TrialRun, connect, ensure_experiment


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def assert_one_error(code: int, err: str, says: str, exit_code: int = 2) -> None:
    assert code == exit_code and len(error_lines(err)) == 1 and says in err and "Traceback" not in err, err


@pytest.fixture()
def experiment(tmp_path) -> str:
    """A sweep of two finished trials (dualcoop, baseline at ratio 0.5) and one FINISHED without metrics."""
    uri, _, ctx = sweep_store(tmp_path, {"name": "rep", "base": {"dataset": "synthetic"}})
    for i, method in enumerate(["dualcoop", "baseline", "positivecoop"]):
        run = TrialRun.attach(ctx, TrialConfig(method=method, dataset="synthetic"), f"trial{i}", {"method": method})
        if method != "positivecoop":  # finished without ever logging its numbers
            run.log_metrics({"test_map": 70.0 + i, "trainable_params": 10, "train_time_s": 1.0, "gpu_hours": 0.0})
        run.finish()
    return uri


def report(uri: str, out: Path, *extra: str) -> int:
    return main(["report", "--experiment", "rep", "--tracking-uri", uri, "--out", str(out), "--no-log", *extra])


# ---- 1. a report replaces only what an earlier report wrote --------------------------------------------

def test_report_never_deletes_files_it_did_not_write(experiment, tmp_path, capsys):
    out = tmp_path / "thesis"
    assert report(experiment, out) == 0
    assert json.loads((out / ".ablate-report.json").read_text())["files"]  # what it wrote, listed
    assert report(experiment, out) == 0  # a report may replace an earlier one
    (out / "thesis.txt").write_text("three years of work")
    (out / "sub").mkdir()
    (out / "sub" / "data.csv").write_text("a,b\n")
    capsys.readouterr()
    assert_one_error(report(experiment, out), capsys.readouterr().err, "no earlier report wrote")
    assert (out / "thesis.txt").read_text() == "three years of work" and (out / "sub" / "data.csv").is_file()


def test_report_refuses_a_report_folder_without_its_manifest(experiment, tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    (out / "report.html").write_text("<p>an old report, or the user's own page</p>")
    (out / "thesis.txt").write_text("keep")
    assert_one_error(report(experiment, out), capsys.readouterr().err, "no earlier report wrote")
    assert (out / "thesis.txt").read_text() == "keep"


# ---- 2. names that become paths stay one component -------------------------------------------------------

@pytest.mark.parametrize("name, says", [
    ("../escaped_sweep", "without '/'"), ("a/b", "without '/'"), ("/tmp/abs", "without '/'"),
    ("..", "not a folder name"), ("nul\0name", "NUL"), ("x" * 300, "at most 128"), ("", "must not be empty"),
])
def test_sweep_name_must_be_one_folder_name(name, says, tmp_path, cache_dir, capsys):
    spec = write_spec(tmp_path, cache_dir, name=name)
    with pytest.raises(ConfigError) as err:
        load_sweep_spec(spec)
    assert "  name: " in str(err.value) and says in str(err.value) and "storage_path" not in str(err.value)
    # the command stops before Ray starts or anything is written
    assert_one_error(main(["sweep", "--spec", str(spec)]), capsys.readouterr().err, says)
    assert not (tmp_path / "ray").exists() and not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "escaped_sweep").exists()


def test_report_default_folder_stays_under_reports(experiment, tmp_path, monkeypatch, capsys):
    client = connect(experiment)
    ensure_experiment(client, "../escaped")  # an experiment named outside ablate
    monkeypatch.chdir(tmp_path)
    code = main(["report", "--experiment", "../escaped", "--tracking-uri", experiment, "--no-log"])
    assert code == 2 and "has no sweep run" in capsys.readouterr().err  # refused for what it is, not its name
    from ablate.pathnames import folder_name

    for name in ("..", "../x", "/abs", "a\0b", "x" * 300, ""):
        mapped = folder_name(name)
        assert "/" not in mapped and mapped not in (".", "..", "") and len(mapped) <= 128 and "\0" not in mapped


def test_a_report_section_cannot_write_outside_the_report(experiment, tmp_path):
    from ablate.report import SECTIONS, Section, register_section

    def escaping(ctx):
        return Section(markdown="", html="", files={"../escaped.png": b"x"})
    register_section(escaping)
    try:
        with pytest.raises(ReportError, match="escaped.png"):
            write_report("rep", tmp_path / "out", experiment, log_to_mlflow=False)
    finally:
        SECTIONS.remove(escaping)
    assert not (tmp_path / "escaped.png").exists()


# ---- 3. resources no node offers: refused, not waited for forever -----------------------------------------

def test_resources_no_node_offers_are_refused(tmp_path, cache_dir, capsys):
    import ray

    spec = write_spec(tmp_path, cache_dir, resources={"cpu": 1, "gpu": 1})
    try:
        code = main(["sweep", "--spec", str(spec), "--ray-address", "local"])
        assert_one_error(code, capsys.readouterr().err, "a trial asks for 1 CPUs and 1 GPUs")
        assert not (tmp_path / "mlflow.db").exists()  # nothing recorded
        from ablate.sweep.cluster import require_resources

        # a joined cluster is waited for, boundedly (here: this process's Ray, treated as joined)
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
        with pytest.raises(ConfigError, match=r"after 1 s.*resources.wait_s"):
            require_resources(1, 1, "auto", wait_s=1)
        require_resources(1, 0, "auto", wait_s=1)  # what a node offers passes at once
    finally:
        ray.shutdown()


# ---- 4. a split without labels is a DataError naming the file ---------------------------------------------

def coco_root(tmp_path: Path, train: dict | bytes) -> Path:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for folder in ("train2014", "val2014"):
        (root / folder).mkdir()
        (root / folder / "a.jpg").write_bytes(b"")
    good = {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1}]}
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(good))
    (root / "annotations" / "instances_train2014.json").write_bytes(
        train if isinstance(train, bytes) else json.dumps({**good, **train}).encode())
    return root


def load_train(root: Path):
    from ablate.data.coco import load_coco

    return load_coco(root, "train", dataset=None)


def test_coco_json_without_annotations_is_refused(tmp_path):
    root = coco_root(tmp_path, {})
    data = json.loads((root / "annotations" / "instances_train2014.json").read_text())
    del data["annotations"]
    (root / "annotations" / "instances_train2014.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances_train2014.json needs .*missing: annotations"):
        load_train(root)


def test_coco_split_without_a_positive_label_is_refused(tmp_path):
    root = coco_root(tmp_path, {"annotations": []})
    with pytest.raises(DataError, match=r"instances_train2014.json has no positive label at all"):
        load_train(root)


# ---- 5. reading commands never create or migrate a store ---------------------------------------------------

def test_report_refuses_a_database_that_is_not_an_mlflow_store(tmp_path, capsys):
    from ablate.tracking import connect_existing

    other = tmp_path / "some_other_app.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")
    code = main(["report", "--experiment", "rep", "--tracking-uri", f"sqlite:///{other}", "--out",
                 str(tmp_path / "out"), "--no-log"])
    assert_one_error(code, capsys.readouterr().err, "is not an MLflow tracking store")
    with sqlite3.connect(other) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["invoices"]
    missing = tmp_path / "typo.db"
    with pytest.raises(TrackingError, match="no such file"):
        connect_existing(f"sqlite:///{missing}")
    assert not missing.exists()
    (tmp_path / "text.db").write_text("not sqlite at all " * 100)
    with pytest.raises(TrackingError, match="not an sqlite database"):
        connect_existing(f"sqlite:///{tmp_path / 'text.db'}")


def test_analyze_run_does_not_create_a_store(tmp_path, capsys):
    missing = tmp_path / "nowhere.db"
    code = main(["analyze", "--run", "0" * 32, "--tracking-uri", f"sqlite:///{missing}", "--out",
                 str(tmp_path / "out")])
    assert_one_error(code, capsys.readouterr().err, "no MLflow tracking store")
    assert not missing.exists()


# ---- 6. report choices that match nothing are refused --------------------------------------------------------

@pytest.mark.parametrize("flags, says", [
    (["--reference", "nosuch"], "--reference nosuch: no finished trial of that method; choose one of baseline, "
                                "dualcoop"),
    (["--heatmap-ratio", "7"], "--heatmap-ratio 7: no finished trial at that label ratio; choose one of 0.5"),
])
def test_report_choices_must_exist(experiment, tmp_path, capsys, flags, says):
    assert_one_error(report(experiment, tmp_path / "out", *flags), capsys.readouterr().err, says)
    assert not (tmp_path / "out").exists()


# ---- 13. a FINISHED trial without metrics is incomplete; a bad --parent-run is one line --------------------

def test_finished_run_without_metrics_is_listed_as_incomplete(experiment, tmp_path, capsys):
    assert report(experiment, tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "not included: positivecoop" in err and "without its metrics" in err, err


@pytest.mark.parametrize("run_id", ["x' OR '1'='1", "0" * 32])
def test_report_parent_run_must_be_a_run(experiment, tmp_path, capsys, run_id):
    assert_one_error(report(experiment, tmp_path / "out", "--parent-run", run_id), capsys.readouterr().err,
                     "--parent-run")


# ---- 7. the world checkpoint is verified on use, rebuilt when it does not match -------------------------------

def test_world_checkpoint_is_verified_and_rebuilt(tmp_path, capsys):
    import torch

    from ablate.world.checkpoints import build_checkpoint
    from ablate.world.dataset import WorldConfig
    from ablate.world.pretrain import PretrainConfig, manifest_path

    kwargs = dict(cache_dir=tmp_path, progress=False, base=PretrainConfig(epochs=1, batch_size=16),
                  world=WorldConfig(n_train=24, n_val=18, n_test=20, n_pretrain=24, seed=3))
    path = build_checkpoint("world-negation", **kwargs)
    manifest = json.loads(manifest_path(path).read_text())
    good = path.read_bytes()
    assert len(manifest["sha256"]) == 64
    path.write_bytes(good[: len(good) // 2])  # truncated
    assert build_checkpoint("world-negation", **kwargs) == path
    assert path.read_bytes() == good and "does not match its manifest" in capsys.readouterr().err
    state = torch.load(path)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, path)  # other weights
    build_checkpoint("world-negation", **kwargs)
    assert path.read_bytes() == good  # pre-training is deterministic: rebuilt to the same bytes


# ---- the trial CLI: a tiny set-up --------------------------------------------------------------------------

TINY = dict(dataset="synthetic", dataset_options={"synthetic_images": 40},
            backbone="ablate-tiny-vit", pretrained="none", n_ctx=4,
            epochs=1, warmup_epochs=0, batch_size=16, num_workers=0, augment=False, device="cpu")


def config_file(folder: Path, **fields) -> Path:
    path = folder / "trial.yaml"
    tiny = TINY if fields.get("dataset", "synthetic") == "synthetic" else {**TINY, "dataset_options": {}}
    path.write_text(yaml.safe_dump({**tiny, **{k: str(v) if isinstance(v, Path) else v for k, v in fields.items()}}))
    return path


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """The CLI in its own process (a fault that kills a process must not take pytest with it)."""
    return subprocess.run([sys.executable, "-m", "ablate.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600, **kw)


# ---- 8. a full disk while building the feature cache --------------------------------------------------------

def test_full_disk_while_building_the_feature_cache_is_one_line(tmp_path, cache_dir):
    with tmpfs(tmp_path / "small", "64k") as small:
        config = config_file(tmp_path, cache_dir=cache_dir, features="cached", feature_cache_dir=small, lr=1e-3)
        done = cli("train", "--config", str(config), "--out", str(tmp_path / "out"), "--quiet")
        assert_one_error(done.returncode, done.stderr, "MiB free")
        assert str(small) in done.stderr and "feature_cache_dir" in done.stderr


def test_a_disk_that_cannot_supply_the_blocks_is_one_line(tmp_path, cache_dir):
    """Free space that vanishes between the check and the write (another writer): posix_fallocate says so."""
    with tmpfs(tmp_path / "small", "64k") as small:
        config = config_file(tmp_path, cache_dir=cache_dir, features="cached", feature_cache_dir=small)
        code = ("import shutil, sys; from ablate.cli import main; "
                "shutil.disk_usage = lambda _: shutil._ntuple_diskusage(1 << 40, 0, 1 << 40); "
                f"sys.exit(main(['train', '--config', {str(config)!r}, '--out', {str(tmp_path / 'out')!r}, "
                "'--quiet']))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert_one_error(done.returncode, done.stderr, "cannot reserve")


# ---- 9. malformed COCO annotations name the file and the entry ----------------------------------------------

@pytest.mark.parametrize("train, says", [
    ({"categories": [{"id": 1}]}, "categories[0] (id 1) needs 'name'"),
    ({"images": [{"id": 1}]}, "images[0] (id 1) needs 'file_name'"),
    ({"images": [{"id": 1, "file_name": None}]}, "images[0] (id 1) needs 'file_name' (str), got None"),
    ({"annotations": [{"id": 5, "image_id": "1", "category_id": 1}]}, "annotations[0] (id 5) needs 'image_id'"),
    ({"images": {"id": 1}}, "'images' must be a list"),
    ("caf\xe9".encode("latin-1"), "cannot read"),
])
def test_malformed_coco_annotations_are_one_line(train, says, tmp_path, cache_dir, capsys):
    root = coco_root(tmp_path, train)
    config = config_file(tmp_path, cache_dir=cache_dir, dataset="coco2014", data_root=root)
    code = main(["train", "--config", str(config), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert_one_error(code, err, says)
    assert "instances_train2014.json" in err


# ---- 10. decompression bombs ---------------------------------------------------------------------------------

def test_decompression_bomb_names_the_image_and_the_limit(tmp_path, cache_dir, capsys, monkeypatch):
    from PIL import Image

    from ablate.data.check import decode_error

    root = tmp_path / "synthetic"
    config = config_file(tmp_path, cache_dir=cache_dir, data_root=root)
    from ablate.data import check_root

    check_root(TrialConfig(**{**TINY, "cache_dir": cache_dir, "data_root": root}))  # generate it
    image = sorted((root / "train2014").iterdir())[0]
    with Image.open(image) as img:
        pixels = img.width * img.height
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels // 3)  # every image is now more than twice the limit
    code = main(["train", "--config", str(config), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert_one_error(code, err, f"exceeds limit of {2 * (pixels // 3)} pixels")
    assert f"cannot read image {root}/" in err
    assert f"exceeds limit of {2 * (pixels // 3)} pixels" in decode_error(image)  # `data check --deep`'s reason


# ---- 11. ablate data fetch ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> Path:
    from data_helpers import build_voc

    folder = tmp_path_factory.mktemp("archives")
    build_voc(folder)
    return folder


@pytest.fixture()
def voc(archives, monkeypatch):
    """`ablate data fetch voc2007` reads the small archives' manifest; a server on 127.0.0.1 serves them."""
    from data_helpers import ArchiveServer, voc_manifest

    monkeypatch.setattr("ablate.data.commands.manifest_for", lambda _: voc_manifest(archives))
    with ArchiveServer(archives) as server:
        yield server


def fetch(root: Path, mirror: str) -> int:
    return main(["data", "fetch", "voc2007", "--root", str(root), "--mirror", mirror, "--quiet"])


@pytest.mark.parametrize("mirror", ["htp://127.0.0.1:9/x", "127.0.0.1:8000", "localhost:8000/data"])
def test_fetch_mirror_without_an_http_scheme_is_one_line(mirror, tmp_path, capsys):
    assert_one_error(fetch(tmp_path / "voc", mirror), capsys.readouterr().err, "is not an http:// or https://")


def test_fetch_masks_the_password_of_the_mirror(tmp_path, capsys):
    from data_helpers import ArchiveServer

    (tmp_path / "empty").mkdir()
    with ArchiveServer(tmp_path / "empty") as server:  # answers 404 for every archive
        mirror = server.url.replace("http://", "http://alice:s3cret@")
        code = main(["data", "fetch", "voc2007", "--root", str(tmp_path / "voc"), "--mirror", mirror, "--quiet"])
    err = capsys.readouterr().err
    assert_one_error(code, err, "alice:***@")
    assert "s3cret" not in err


@pytest.mark.parametrize("marker", ["{", '{"dataset": "voc2007"}', '{"files": 3}', ""])
def test_fetch_reads_a_damaged_marker_as_absent(marker, voc, tmp_path, capsys):
    from ablate.data.fetch import MARKER

    root = tmp_path / "voc"
    assert fetch(root, voc.url) == 0
    (root / MARKER).write_text(marker)
    seen = len(voc.requests)
    assert fetch(root, voc.url) == 0 and "already complete" in capsys.readouterr().out
    assert len(voc.requests) == seen and json.loads((root / MARKER).read_text())["files"]  # checked, rewritten


def test_fetch_into_a_read_only_root_is_one_line(voc, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "1m", "ro") as root:
        assert_one_error(fetch(root, voc.url), capsys.readouterr().err, "cannot be written")


def test_fetch_restarts_a_stale_part_larger_than_the_archive(voc, archives, tmp_path, capsys):
    from ablate.data.fetch import STAGING

    root = tmp_path / "voc"
    name = "VOCtrainval_06-Nov-2007.tar"
    (root / STAGING).mkdir(parents=True)
    (root / STAGING / f"{name}.part").write_bytes(b"\0" * ((archives / name).stat().st_size + 1000))
    assert fetch(root, voc.url) == 0, capsys.readouterr().err
    assert voc.sent[name] == (archives / name).stat().st_size  # the whole file, once


def test_fetch_interrupted_says_the_rerun_resumes(archives, tmp_path):
    from data_helpers import ArchiveServer

    root = tmp_path / "voc"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; from data_helpers import "
            "voc_manifest; import ablate.data.commands as c; "
            "c.manifest_for = lambda _: voc_manifest(Path(sys.argv[2])); "
            "from ablate.cli import main; sys.exit(main(['data', 'fetch', 'voc2007', '--root', sys.argv[3], "
            "'--mirror', sys.argv[4], '--quiet']))")
    with ArchiveServer(archives) as server:
        server.gate = threading.Event()  # every GET waits: the fetch is mid-download when interrupted
        proc = subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent), str(archives), str(root),
                                 server.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not server.gets("VOCtrainval_06-Nov-2007.tar") and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        server.gate.set()
    assert_one_error(proc.returncode, err, "the same command resumes", exit_code=130)


# ---- 12. Ctrl-C on ablate train --------------------------------------------------------------------------------

def test_train_interrupted_names_the_epoch_and_resumes(tmp_path, cache_dir):
    out = tmp_path / "out"
    config = config_file(tmp_path, cache_dir=cache_dir, epochs=500)
    proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", "train", "--config", str(config), "--out", str(out),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert_one_error(proc.returncode, err, "the same command resumes", exit_code=130)
    assert re.search(r"interrupted at epoch \d+ of 500", err), err


# ---- 14. the experiment or the parent run deleted while a sweep runs ---------------------------------------------

@pytest.mark.parametrize("deleted", ["experiment", "run"])
def test_sweep_end_after_its_experiment_or_run_was_deleted(deleted, tmp_path):
    from ablate.tracking import end_parent_run

    _, client, ctx = sweep_store(tmp_path, {"name": "gone"})
    exp = ctx.experiment_id
    parent = ctx.parent_run_id
    client.delete_experiment(exp) if deleted == "experiment" else client.delete_run(parent)
    with pytest.raises(TrackingError, match=f"{deleted}.* deleted in MLflow while the sweep ran.*kept"):
        end_parent_run(client, parent, "FINISHED", {"trials": 2, "trials_errored": 0})


# ---- 15. analyze --trained with a pickle that carries code ------------------------------------------------------

class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_analyze_refuses_a_code_pickle_in_one_line(tmp_path, capsys):
    evil = tmp_path / "trained.pt"
    evil.write_bytes(pickle.dumps(_Payload(tmp_path / "pwned")))
    code = main(["analyze", "--trained", str(evil), "--out", str(tmp_path / "out"), "--no-log"])
    err = capsys.readouterr().err
    assert_one_error(code, err, "only tensors and plain data are read")
    assert not (tmp_path / "pwned").exists() and err.count("\n") == 1, err


# ---- 16. inf / NaN floats; a huge grid needs --yes ---------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("lr", ".inf"), ("temperature", ".inf"), ("lr", ".nan"),
                                          ("label_ratio", "-.inf")])
def test_infinite_floats_are_refused(field, value, tmp_path, capsys):
    path = tmp_path / "trial.yaml"
    path.write_text(f"{field}: {value}\n")
    code = main(["train", "--config", str(path), "--out", str(tmp_path / "out"), "--dry-run"])
    assert code == 2 and f"  {field}: " in capsys.readouterr().err


def test_a_huge_grid_needs_yes(tmp_path, cache_dir, capsys):
    spec = write_spec(tmp_path, cache_dir, grid={"seed": list(range(1000)), "lr": [1e-3 * (i + 1) for i in range(100)]})
    code = main(["sweep", "--spec", str(spec)])
    assert_one_error(code, capsys.readouterr().err, "up to 100,000 trials (lr 100 x seed 1000), above max_trials "
                                                    "1,000; pass --yes")
    assert not (tmp_path / "ray").exists() and not (tmp_path / "mlflow.db").exists()
    small = write_spec(tmp_path, cache_dir, grid={"seed": [0, 1, 2]}, max_trials=2)
    assert_one_error(main(["sweep", "--spec", str(small)]), capsys.readouterr().err, "up to 3 trials")


# ---- the top-level guard ---------------------------------------------------------------------------------------------

def test_an_unexpected_error_is_one_line_naming_the_command(experiment, tmp_path, capsys):
    from ablate.report import SECTIONS, register_section

    def broken(ctx):
        raise RuntimeError("a bug in a section")
    register_section(broken)
    try:
        code = report(experiment, tmp_path / "out")
        err = capsys.readouterr().err
        assert_one_error(code, err, "ablate report failed unexpectedly (RuntimeError: a bug in a section); rerun "
                                    "with --debug for the traceback", exit_code=1)
        with pytest.raises(RuntimeError, match="a bug in a section"):
            main(["--debug", "report", "--experiment", "rep", "--tracking-uri", experiment, "--out",
                  str(tmp_path / "out"), "--no-log"])
    finally:
        SECTIONS.remove(broken)
