"""What the sweep test modules share: a tiny sweep spec on the synthetic set, its MLflow runs, a free
port on 127.0.0.1 for the servers they start, and a small file system that fills up."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from ablate.tracking import TrackingContext, connect, ensure_experiment, start_parent_run


def free_port() -> int:
    """A port nothing listens on (closed again at once: for a server to take, or to find nothing there)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_spec(tmp_path: Path, cache_dir: Path, **spec) -> Path:
    base = dict(dataset="synthetic", dataset_options={"synthetic_images": 60},
                backbone="ablate-tiny-vit", n_ctx=4, epochs=2,
                warmup_epochs=0, batch_size=16, num_workers=0, augment=False, lr=3e-4, device="cpu",
                cache_dir=str(cache_dir))
    base.update(spec.pop("base", {}))
    data = {"name": "t", "base": base, "storage_path": str(tmp_path / "ray"),
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", **spec}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def runs(tmp_path: Path, name: str = "t") -> tuple[list, list]:
    """(parent runs, trial runs) of experiment `name`; none yet when the sweep has not created it."""
    client = connect(f"sqlite:///{tmp_path / 'mlflow.db'}")  # may run while a sweep creates the store
    exp = client.get_experiment_by_name(name)
    all_runs = client.search_runs([exp.experiment_id]) if exp else []
    parents = [r for r in all_runs if r.data.tags.get("ablate.role") == "sweep"]
    children = [r for r in all_runs if r.data.tags.get("ablate.role") == "trial"]
    return parents, children


def run_with_plugins(spec_path: Path, plugin_dir: Path, cpus: int = 2) -> dict:
    """`run_sweep` on a private local Ray whose worker processes find the modules in `plugin_dir` (they are
    fresh processes: only the spec's plugin list registers the plugins' names there)."""
    import ray

    from ablate.sweep import run_sweep

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(plugin_dir)}})
    try:
        return run_sweep(spec_path)
    finally:
        ray.shutdown()


def sweep_store(folder: Path, spec: dict) -> tuple[str, MlflowClient, TrackingContext]:
    """(URI, client, parent-run context) of a fresh sqlite store in `folder` holding what `ablate sweep` opens
    before its trials: the experiment `spec["name"]` and the parent run of `spec` (written to spec.yaml), for
    tests that attach trial runs by hand."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    client = connect(uri)
    experiment_id = ensure_experiment(client, spec["name"])
    parent = start_parent_run(client, experiment_id, spec["name"], path, path.read_text())
    return uri, client, TrackingContext(uri, experiment_id, parent)


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, *options: str):
    """A small tmpfs mounted at `folder` (root only), unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    opts = ",".join([f"size={size}", *options])
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
