"""Bad input and faults, second audit: no user file deleted, no name escaping its folder, no endless wait,
no silent wrong result, and one `error:` line (exit 2, 130 for an interrupt) instead of a traceback."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from sweep_helpers import write_spec

from ablate.cli import main
from ablate.errors import ConfigError, DataError, ReportError, TrackingError
from ablate.report import write_report
from ablate.spec import TrialConfig, load_sweep_spec
from ablate.tracking import TrackingContext, TrialRun, connect, ensure_experiment, start_parent_run


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def assert_one_error(code: int, err: str, says: str, exit_code: int = 2) -> None:
    assert code == exit_code and len(error_lines(err)) == 1 and says in err and "Traceback" not in err, err


@pytest.fixture()
def experiment(tmp_path) -> str:
    """A sweep of two finished trials (dualcoop, baseline at ratio 0.5) and one FINISHED without metrics."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "rep", "base": {"dataset": "synthetic"}}))
    client = connect(uri)
    exp = ensure_experiment(client, "rep")
    ctx = TrackingContext(uri, exp, start_parent_run(client, exp, "rep", spec, spec.read_text()))
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

    from ablate.sweep.cluster import require_resources

    spec = write_spec(tmp_path, cache_dir, resources={"cpu": 1, "gpu": 1})
    try:
        code = main(["sweep", "--spec", str(spec), "--ray-address", "local"])
        assert_one_error(code, capsys.readouterr().err, "a trial asks for 1 CPUs and 1 GPUs")
        assert not (tmp_path / "mlflow.db").exists()  # nothing recorded
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

    from ablate.data.world import WorldConfig
    from ablate.pretrain import PretrainConfig, ensure_world_checkpoint, manifest_path

    kwargs = dict(cache_dir=tmp_path, progress=False, base=PretrainConfig(epochs=1, batch_size=16),
                  world=WorldConfig(n_train=24, n_val=18, n_test=20, n_pretrain=24, seed=3))
    path = ensure_world_checkpoint("world-negation", **kwargs)
    manifest = json.loads(manifest_path(path).read_text())
    good = path.read_bytes()
    assert len(manifest["sha256"]) == 64
    path.write_bytes(good[: len(good) // 2])  # truncated
    assert ensure_world_checkpoint("world-negation", **kwargs) == path
    assert path.read_bytes() == good and "does not match its manifest" in capsys.readouterr().err
    state = torch.load(path)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, path)  # other weights
    ensure_world_checkpoint("world-negation", **kwargs)
    assert path.read_bytes() == good  # pre-training is deterministic: rebuilt to the same bytes
