"""The cluster config passes Ray's own validation; run.py works when copied alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_cluster_config_is_valid():
    config = yaml.safe_load((ROOT / "cluster/gpu.yaml").read_text())
    validate_config(config)
    prepared = prepare_config(config)
    validate_config(prepared)
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}  # no trials on the head
    workers = [t for name, t in prepared["available_node_types"].items() if name != prepared["head_node_type"]]
    assert workers and all(t["max_workers"] >= t["min_workers"] for t in workers)
    import ray

    assert ray.__version__ in prepared["docker"]["image"]  # the image runs our Ray version
    assert any("pip install" in c and "ablate[cluster]" in c for c in prepared["setup_commands"])
    # the tracking store: PostgreSQL on the head via `ablate server`, artifacts on the shared storage;
    # nothing keeps a sqlite file (on NFS, behind several server workers: lock errors, a corrupt store)
    assert any(c.startswith("ablate server start") and "--artifacts /mnt/shared/" in c
               for c in prepared["head_start_ray_commands"])
    assert "sqlite" not in (ROOT / "cluster/gpu.yaml").read_text()


def test_run_py_copied_alone_resolves_specs_against_the_project(tmp_path):
    script = tmp_path / "run.py"
    shutil.copy(ROOT / "ablate/run.py", script)
    out = subprocess.run([sys.executable, str(script), "--spec", "tune_specs/full_grid.yaml", "--dry-run"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout)["trials"] == 542
    bad = subprocess.run([sys.executable, str(script), "--spec", "tune_specs/nope.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "spec file not found" in bad.stderr
