"""The pre-flight covers every store a sweep touches before anything is recorded (optuna.storage among them),
--resume checks its side files (the state, the Optuna studies, ASHA's rung records) and names a damaged one
with how to go on, and a sweep that fails once its parent run exists ends that run (never left RUNNING).
Through the CLI, on local Ray with a sqlite MLflow store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from sweep_helpers import free_port, runs, write_spec

from ablate.cli import main
from ablate.sweep.control import STATE_FILE

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
                          ("nosuchdriver://x/y", "is not a database URL")):
        spec = write_spec(tmp_path, cache_dir, optuna={"num_samples": 1, "storage": storage, "space": LR})
        assert main(["sweep", "--spec", str(spec)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "optuna.storage" in line and says in line and "Pw-77" not in line, line
        assert runs(tmp_path) == ([], [])  # no experiment, no parent run


def test_resume_names_a_damaged_side_file_and_leaves_the_sweep_as_it_was(tmp_path, cache_dir, capsys):
    spec = write_spec(tmp_path, cache_dir, base={"epochs": 2},
                      optuna={"num_samples": 1, "space": LR}, asha={"grace_period": 1})
    done = cli("sweep", "--spec", str(spec))
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "ray" / "t"
    study, (rungs,), state = folder / "optuna.db", list(folder.glob("asha-rungs-*.json")), folder / STATE_FILE

    def resume_refused(damaged: Path, *advice: str) -> None:
        assert main(["sweep", "--spec", str(spec), "--resume"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert str(damaged) in line and all(a in line for a in advice), line
        parents, trials = runs(tmp_path)
        assert [p.info.status for p in parents] == ["FINISHED"] and {t.info.status for t in trials} == {"FINISHED"}

    shutil.copy(study, tmp_path / "optuna.db.bak")
    study.write_bytes(b"SQLite format 3\x00" + b"\x07" * 4000)  # a torn write: the header, then garbage
    resume_refused(study, "Optuna studies", "damaged", "start the sweep over")
    shutil.copy(tmp_path / "optuna.db.bak", study)

    text = rungs.read_text()
    rungs.write_text(text[: len(text) // 2])  # truncated
    resume_refused(rungs, "ASHA's rung records", "remove the file")

    kept = state.read_text()
    state.write_text(kept[:40])
    resume_refused(state, "its state", "damaged")
    state.write_text(kept)

    rungs.unlink()  # as the refusal advised: the sweep resumes (every trial had finished)
    again = cli("sweep", "--spec", str(spec), "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.info.status for p in runs(tmp_path)[0]] == ["FINISHED"]


def test_a_failure_once_the_parent_run_exists_ends_it_failed_with_the_reason(tmp_path, cache_dir):
    spec = write_spec(tmp_path, cache_dir, base={"epochs": 1}, grid={"seed": [0]})
    assert cli("sweep", "--spec", str(spec)).returncode == 0
    (tmp_path / "ray" / "t" / "tuner.pkl").write_bytes(b"\x80\x05garbage")  # Ray Tune's own state, damaged
    out = cli("sweep", "--spec", str(spec), "--resume")
    assert out.returncode == 1 and one_error_line(out.stderr)
    (parent,), trials = runs(tmp_path)
    assert parent.info.status == "FAILED" and "ablate.error" in parent.data.tags, parent.data.tags
    assert "RUNNING" not in {t.info.status for t in trials}
