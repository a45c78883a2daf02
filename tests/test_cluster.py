"""The cluster config passes Ray's own validation; run.py works when copied alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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
    assert installs_what_the_readme_runs(prepared)
    assert token_auth_everywhere(prepared)
    assert "RAY_AUTH_MODE=token" in prepared["docker"]["run_options"][-1]  # the container's every process
    # the tracking store: PostgreSQL on the head via `ablate server`, artifacts on the shared storage;
    # nothing keeps a sqlite file (on NFS, behind several server workers: lock errors, a corrupt store)
    assert any(c.startswith("ablate server start") and "--artifacts /mnt/shared/" in c
               for c in prepared["head_start_ray_commands"])
    assert "sqlite" not in (ROOT / "cluster/gpu.yaml").read_text()


def installs_what_the_readme_runs(config: dict) -> bool:
    """Sweeps on the PostgreSQL-backed server (`cluster`) and `ablate report` on the head (`report`)."""
    return any("pip install" in c and "ablate[cluster,report]" in c for c in config["setup_commands"])


def token_auth_everywhere(config: dict) -> bool:
    """Every `ray start` runs with token authentication, every node gets the same token file, and the
    dashboard is not opened on every interface (it is reached through `ray dashboard`'s SSH tunnel)."""
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    return (len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
            and any(local == "~/.ray/auth_token" and remote.endswith("/.ray/auth_token")
                    for remote, local in config["file_mounts"].items())
            and not any("--dashboard-host" in c for c in starts))


def test_onprem_cluster_config_is_valid_for_the_local_provider():
    text = (ROOT / "cluster/onprem.yaml").read_text()
    config = yaml.safe_load(text)
    assert "available_node_types" not in config  # the local provider refuses it
    validate_config(config)
    prepared = prepare_config(config)
    validate_config(prepared)
    assert prepared["provider"]["type"] == "local" and prepared["provider"]["worker_ips"]
    assert prepared["auth"]["ssh_user"] and prepared["auth"]["ssh_private_key"]
    assert installs_what_the_readme_runs(prepared) and token_auth_everywhere(prepared)
    head = [c for c in prepared["head_start_ray_commands"] if "ray start --head" in c][0]
    assert "--num-cpus=0 --num-gpus=0" in head  # no trials on the head
    # the same tracking store as gpu.yaml: PostgreSQL on the head, artifacts on the lab's NFS
    assert any(c.startswith("ablate server start") and "--artifacts /mnt/shared/" in c
               for c in prepared["head_start_ray_commands"])
    assert any("mount -t nfs" in c for c in prepared["initialization_commands"]) and "sqlite" not in text
    with pytest.raises(Exception, match="available_node_types is not supported"):
        prepare_config({**config, "available_node_types": {"x": {}}})


def test_run_py_copied_alone_resolves_specs_against_the_project(tmp_path):
    script = tmp_path / "run.py"
    shutil.copy(ROOT / "ablate/run.py", script)
    out = subprocess.run([sys.executable, str(script), "--spec", "tune_specs/full_grid.yaml", "--dry-run"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout)["trials"] == 542
    bad = subprocess.run([sys.executable, str(script), "--spec", "tune_specs/nope.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "spec file not found" in bad.stderr
