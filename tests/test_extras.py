"""A missing optional dependency is one `error:` line naming the extra to install, never a traceback: tried
with the package really absent (blocked from importing in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sweep_helpers import write_spec

from ablate.extras import missing_extra

BLOCKED = "import sys; sys.modules[{module!r}] = None; from ablate.cli import main; sys.exit(main({argv!r}))"


def run_without(module: str, argv: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED.format(module=module, argv=argv)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_report_without_matplotlib_names_the_report_extra(tmp_path):
    out = run_without("matplotlib", ["report", "--experiment", "x", "--tracking-uri",
                                     f"sqlite:///{tmp_path / 'mlflow.db'}"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr == ("error: matplotlib is not installed; this command needs the `report` extra: "
                          "pip install 'ablate[report]'\n")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "reports").exists()  # checked first


def test_sweep_without_ray_names_the_sweep_extra(tmp_path, cache_dir):
    spec = write_spec(tmp_path, cache_dir, grid={"method": ["baseline"]})
    out = run_without("ray", ["sweep", "--spec", str(spec)], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == ("error: ray is not installed; this command needs the `sweep` "
                                                   "extra: pip install 'ablate[sweep]'")
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("name", ["numpyy", "ablate.nothing", None])
def test_a_module_no_extra_brings_keeps_its_traceback(name):
    assert missing_extra(ModuleNotFoundError(name=name)) is None
