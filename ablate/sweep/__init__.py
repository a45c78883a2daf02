"""Ray Tune sweeps from a SweepSpec: arms, packs, the Ray trainable, the cluster, pre-flight, state and the driver.

Only this package imports Ray, and only its `trial`, `cluster`, `preflight` and `driver` modules do, inside
functions. Importing the package is light: the names below are imported from their module on first use.

- `spec`: the SweepSpec a tune_specs/*.yaml file validates into (no Ray; the config layer)
- `arms`: a spec's arms (grid combinations; no Ray, also serves --dry-run and the report)
- `packs`: which arms train together in one Ray trial (no Ray), as `planner` plans them (pure) from `costs`
  (the cost model and its sources) on the slots `capacity` reads from a cluster config; `forecast`: the
  projection `ablate plan`, the dry run and the driver share; `calibrate`: `ablate plan --calibrate` (torch)
- `trial`: the Ray trainable: one arm, reported every epoch, logged to its MLflow run
- `cluster`: which Ray, what it offers, addresses and storage every node can reach
- `preflight`: data fetched and checked, world CLIPs pre-trained, feature caches built
- `control`: the state `--resume` re-attaches to, and SIGINT / SIGTERM
- `search`: Optuna (seed-averaged, multi-objective, persistent studies) and ASHA on seed means (imports Ray)
- `driver`: the Tuners, the MLflow parent run, `run_sweep`
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import lazy_face

if TYPE_CHECKING:  # type checkers see the real names
    from .arms import Arm, expand, resolve_spec_path, samples_per_arm  # noqa: F401
    from .cluster import (  # noqa: F401
        check_storage_on_nodes,
        cluster_line,
        init_ray,
        lost_with_its_node,
        ray_address,
        reachable_from_workers,
    )
    from .control import STATE_FILE, Signals, SweepInterrupted, SweepState, resume_command  # noqa: F401
    from .driver import run_sweep  # noqa: F401
    from .packs import describe, plan_packs  # noqa: F401
    from .preflight import IMAGE_CHECK_CAP, build_feature_caches, check_images, fetch_data, prepare_data  # noqa: F401
    from .spec import SweepSpec, arm_config, load_sweep_spec  # noqa: F401
    from .trial import TRIAL_DIR_PREFIX, WORK_DIR, device_time, ray_trial, trial_run_name, trial_workdir, work_root  # noqa: F401

_LAZY = {
    "Arm": "arms", "expand": "arms", "samples_per_arm": "arms", "resolve_spec_path": "arms",
    "describe": "packs", "plan_packs": "packs",
    "ray_trial": "trial", "device_time": "trial", "trial_run_name": "trial", "trial_workdir": "trial",
    "work_root": "trial", "WORK_DIR": "trial", "TRIAL_DIR_PREFIX": "trial",
    "ray_address": "cluster", "init_ray": "cluster", "cluster_line": "cluster",
    "reachable_from_workers": "cluster", "check_storage_on_nodes": "cluster", "lost_with_its_node": "cluster",
    "prepare_data": "preflight", "check_images": "preflight", "build_feature_caches": "preflight",
    "fetch_data": "preflight", "IMAGE_CHECK_CAP": "preflight",
    "SweepState": "control", "SweepInterrupted": "control", "Signals": "control", "resume_command": "control",
    "STATE_FILE": "control",
    "run_sweep": "driver",
    "SweepSpec": "spec", "load_sweep_spec": "spec", "arm_config": "spec",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_face(__name__, _LAZY)
