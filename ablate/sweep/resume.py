"""What --resume reads besides Ray Tune's own files, checked before anything is re-opened: the sweep's state
(ablate_sweep.json), the Optuna studies' sqlite file and ASHA's rung records. A damaged one is named, with how
to go on; the sweep's parent run is left as it was."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from ..errors import ConfigError
from .control import SweepState

STUDY_FILE = "optuna.db"  # the studies' sqlite file beside the state (without optuna.storage)
RUNGS_PREFIX = "asha-rungs-"
RUNG_KEYS = {"rungs": dict, "pending": dict, "stopped": list, "seen": list}


def start_over(folder: Path) -> str:
    return f"or start the sweep over (another `name`, or remove {folder} and its runs in MLflow)"


def load_state(path: Path, name: str) -> SweepState:
    """The sweep's state, or one ConfigError naming the file when it cannot be read."""
    try:
        return SweepState.load(path)
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:
        why = err.strerror if isinstance(err, OSError) else f"{type(err).__name__}: {err}"
        raise ConfigError(f"cannot resume sweep '{name}': its state {path} is damaged ({why}); restore the file "
                          f"from a backup, {start_over(path.parent)}") from None


def check_side_files(state_dir: Path, name: str, study_in_folder: bool) -> None:
    """The Optuna studies' sqlite file (when the studies live beside the state) and every ASHA rung record
    open and read as what they are; ConfigError naming the first damaged one."""
    study = state_dir / STUDY_FILE
    if study_in_folder and study.exists():
        problem = _sqlite_problem(study)
        if problem:
            raise ConfigError(f"cannot resume sweep '{name}': its Optuna studies {study} are damaged ({problem}); "
                              f"restore the file from a backup, {start_over(state_dir)}")
    for rungs in sorted(state_dir.glob(f"{RUNGS_PREFIX}*.json")):
        problem = _rungs_problem(rungs)
        if problem:
            raise ConfigError(f"cannot resume sweep '{name}': ASHA's rung records {rungs} are damaged ({problem}); "
                              "remove the file to resume with ASHA's rungs recorded afresh (trials it stopped may "
                              f"then go on), {start_over(state_dir)}")


def _sqlite_problem(path: Path) -> str | None:
    """Why `path` is not a readable sqlite database (read-only: nothing is changed), or None."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()
            if verdict is None or verdict[0] != "ok":
                return f"integrity check: {verdict[0] if verdict else 'no answer'}"
            db.execute("SELECT count(*) FROM studies").fetchone()
    except sqlite3.Error as err:
        return f"{type(err).__name__}: {err}"
    return None


def _rungs_problem(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    if not isinstance(data, dict) or any(not isinstance(data.get(k), t) for k, t in RUNG_KEYS.items()):
        return f"not ASHA's records: expected a mapping with {', '.join(RUNG_KEYS)}"
    return None

