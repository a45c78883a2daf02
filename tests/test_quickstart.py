"""What `make quickstart` leaves in a checkout is ignored by git: its command, taken from the Makefile, runs
in a fresh clone (on a smaller spec of the same shape, so it is quick) and `git status` stays empty."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid"}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout


def fresh_clone(dest: Path) -> Path:
    """A clone of this checkout with its working tree's ignore rules and Makefile, committed."""
    git(REPO.parent, "clone", "--quiet", "--no-hardlinks", str(REPO), str(dest))
    for name in (".gitignore", "Makefile"):
        shutil.copy(REPO / name, dest / name)
    if git(dest, "status", "--porcelain"):
        git(dest, "commit", "--quiet", "-am", "the working tree's ignore rules and Makefile")
    return dest


def make_command(clone: Path, target: str, **variables: str) -> str:
    """The shell command of `target`'s recipe that runs `ablate` (the venv set-up lines left out), as make
    would run it (`make -n`), backslash continuations joined."""
    out = subprocess.run(["make", "-n", target, *(f"{k}={v}" for k, v in variables.items())], cwd=clone,
                         check=True, capture_output=True, text=True).stdout
    commands = [c for c in out.replace("\\\n", " ").splitlines() if "/ablate " in c]
    assert len(commands) == 1, out
    return commands[0]


def small_quickstart(folder: Path) -> Path:
    """The quickstart spec with the synthetic set and random weights instead of the world CLIP (minutes of
    pre-training), two methods, one ratio, one epoch: everything it writes goes where the real one's does."""
    spec = yaml.safe_load((REPO / "tune_specs" / "quickstart.yaml").read_text())
    spec["base"].update(dataset="synthetic", dataset_options={"synthetic_images": 40}, pretrained="none", epochs=1,
                        warmup_epochs=0, n_ctx=2)
    spec["grid"] = {"method": ["baseline", "zeroshot"], "label_ratio": [0.5], "seed": [0]}
    path = folder / "quickstart_small.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_quickstart_leaves_git_status_clean(tmp_path):
    clone = fresh_clone(tmp_path / "clone")
    assert git(clone, "status", "--porcelain") == ""
    venv = Path(sys.executable).parent.parent  # this environment's ablate, not a new install
    command = make_command(clone, "quickstart", VENV=str(venv), QUICKSTART_SPEC=str(small_quickstart(tmp_path)))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the default store: ./mlflow.db
    done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (clone / "mlflow.db").is_file() and (clone / "runs" / "ray" / "quickstart").is_dir()
    assert git(clone, "status", "--porcelain", "--ignored=no") == ""
    # a quiet console: the trials' table, then one summary line (no raw JSON), no Tune box or TensorBoard hint,
    # no carriage-return frames, no start-up chatter of Ray or MLflow
    out, err = done.stdout, done.stderr
    assert out.splitlines()[0].split()[:2] == ["dataset", "method"] and "{" not in out
    assert out.splitlines()[-1].startswith("2 trials, 0 errored; MLflow: parent run ")
    assert "the sweep held " in out.splitlines()[-1] and "(2 Ray trials, each counted once)" in out.splitlines()[-1]
    for chatter in ("Number of trials", "TensorBoard", "Started a local Ray", "Token authentication",
                    "Creating initial MLflow database", "Wrote the latest version", "\r"):
        assert chatter not in out + err, chatter
