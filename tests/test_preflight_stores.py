"""The pre-flight covers every store a sweep touches before anything is recorded (optuna.storage among them),
--resume checks its side files (the state, the Optuna studies, ASHA's rung records) and names a damaged one
with how to go on, and a sweep that fails once its parent run exists ends that run (never left RUNNING).
Through the CLI, on local Ray with a sqlite MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from sweep_helpers import free_port, runs, sweep_store, write_spec

from ablate.cli import main
from ablate.sweep.control import STATE_FILE, SweepState, _sha
from ablate.tracking import end_parent_run

LR = {"lr": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}


def cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI in its own process (it starts and stops its own Ray)."""
    return subprocess.run([sys.executable, "-m", "ablate.cli", *args], capture_output=True, text=True,
                          env={**os.environ}, timeout=600)


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def test_an_unreachable_optuna_storage_is_refused_before_anything_is_recorded(tmp_path, cache_dir, capsys):
    closed = free_port()
    for storage, says in ((f"postgresql+psycopg2://me:Pw-77@127.0.0.1:{closed}/optuna", "is not reachable"),
                          (f"sqlite:///{tmp_path / 'no' / 'such' / 'folder' / 'optuna.db'}", "is not reachable"),
                          ("nosuchdriver://x/y", "is not a database URI")):
        spec = write_spec(tmp_path, cache_dir, optuna={"num_samples": 1, "storage": storage, "space": LR})
        assert main(["sweep", "--spec", str(spec)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "optuna.storage" in line and says in line and "Pw-77" not in line, line
        assert runs(tmp_path) == ([], [])  # no experiment, no parent run


def test_resume_refuses_a_damaged_side_file_by_name_and_leaves_the_parent_as_it_was(tmp_path, cache_dir, capsys):
    """A sweep interrupted after its state, studies and rung records were written (made here as the driver
    makes them, without training): each damaged file is refused before Ray starts or the run re-opens."""
    spec = write_spec(tmp_path, cache_dir, base={"epochs": 2}, optuna={"num_samples": 1, "space": LR},
                      asha={"grace_period": 1})
    uri, client, ctx = sweep_store(tmp_path, yaml.safe_load(spec.read_text()))
    end_parent_run(client, ctx.parent_run_id, "KILLED", {})
    folder = tmp_path / "ray" / "t"
    state = folder / STATE_FILE
    SweepState(uri, ctx.experiment_id, ctx.parent_run_id, _sha(spec)).save(state)
    optuna.create_study(storage=f"sqlite:///{folder / 'optuna.db'}", study_name=f"{ctx.parent_run_id}:t--base")
    rungs = folder / "asha-rungs-0000abcd.json"
    rungs.write_text(json.dumps({"rungs": {"1": [0.5]}, "pending": {}, "stopped": [], "seen": []}))

    def refused(damaged: Path, *advice: str) -> None:
        assert main(["sweep", "--spec", str(spec), "--resume"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert str(damaged) in line and all(a in line for a in advice), line
        assert [p.info.status for p in runs(tmp_path)[0]] == ["KILLED"]

    study = folder / "optuna.db"
    intact = study.read_bytes()
    study.write_bytes(intact[:100] + b"\x07" * (len(intact) - 100))  # a torn write: the header, then garbage
    refused(study, "Optuna studies", "damaged", "start the sweep over")
    study.write_bytes(intact)

    text = rungs.read_text()
    rungs.write_text(text[: len(text) // 2])
    refused(rungs, "ASHA's rung records", "remove the file")

    state.write_text(state.read_text()[:40])
    refused(state, "its state", "damaged")


@pytest.mark.slow
def test_a_resumed_sweep_follows_the_advice_and_a_failure_after_the_parent_exists_ends_it(tmp_path, cache_dir,
                                                                                         capsys):
    """A real ASHA search, its rung records truncated: refused; removed as advised: the resume finishes. Then
    Ray Tune's own state damaged: the failure comes once the parent run is re-opened, and ends it FAILED."""
    spec = write_spec(tmp_path, cache_dir, base={"epochs": 2}, optuna={"num_samples": 1, "space": LR},
                      asha={"grace_period": 1})
    done = cli("sweep", "--spec", str(spec))
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "ray" / "t"
    (rungs,) = folder.glob("asha-rungs-*.json")
    rungs.write_text(rungs.read_text()[:20])
    assert main(["sweep", "--spec", str(spec), "--resume"]) == 2
    assert str(rungs) in one_error_line(capsys.readouterr().err)
    assert [p.info.status for p in runs(tmp_path)[0]] == ["FINISHED"]

    rungs.unlink()
    again = cli("sweep", "--spec", str(spec), "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.info.status for p in runs(tmp_path)[0]] == ["FINISHED"]

    (tuner_state,) = folder.parent.glob("t--*/tuner.pkl")
    tuner_state.write_bytes(b"\x80\x05garbage")
    out = cli("sweep", "--spec", str(spec), "--resume")
    assert out.returncode == 2 and "Ray Tune's state in" in one_error_line(out.stderr), out.stderr[-3000:]
    (parent,), trials = runs(tmp_path)
    assert parent.info.status == "FAILED" and "cannot be restored" in parent.data.tags.get("ablate.error", "")
    assert "RUNNING" not in {t.info.status for t in trials}
