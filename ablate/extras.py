"""Optional dependencies: which `ablate[...]` extra brings a module, so a missing one is one line saying what
to install, never a traceback."""

from __future__ import annotations

import importlib

# top-level module -> the extra of pyproject.toml that installs it
EXTRA_OF = {
    "matplotlib": "report",
    "ray": "sweep",
    "mlflow": "sweep",
    "optuna": "sweep",
    "psutil": "sweep",
    "psycopg2": "cluster",
}


def missing_extra(err: ModuleNotFoundError) -> str | None:
    """What to install for an optional module that is not there; None for any other missing module (a bug
    or a broken install, which keeps its traceback)."""
    module = (err.name or "").split(".")[0]
    extra = EXTRA_OF.get(module)
    if extra is None:
        return None
    return f"{module} is not installed; this command needs the `{extra}` extra: pip install 'ablate[{extra}]'"


def require(extra: str) -> None:
    """Fail before any work when `extra` is not installed (raises ModuleNotFoundError, which the command
    line turns into the line above)."""
    for module in sorted(m for m, e in EXTRA_OF.items() if e == extra):
        importlib.import_module(module)
