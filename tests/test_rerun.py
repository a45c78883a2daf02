"""Params say what ran, and every trial run says how to rerun it: a real tiny sweep on local Ray into a real
sqlite store, its params compared with the config the trainer used, its config artifact downloaded with
MLflow's own command and retrained with `ablate train`, to the same figures."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from sweep_helpers import write_spec

from ablate.spec import TrialConfig
from ablate.sweep import run_sweep
from ablate.tracking import NOTE_TAG, flatten_config
from ablate.tracking.names import CONFIG_ARTIFACT, SPEC_TAGS
from ablate.trainer import Trial

BIN = Path(sys.executable).parent  # this environment's `ablate` and `mlflow`
FIGURES = ("test_map", "last_test_map", "best_val_map", "best_epoch", "trainable_params")
UNSET_ALLOWED = {"ctx_init", "weights_dir", "pretrained"}  # random init; no open_clip tag; random weights


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir) -> dict:
    import ray

    tmp = tmp_path_factory.mktemp("rerun")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_sweep(write_spec(tmp, cache_dir, base={"features": "cached"},
                                       grid={"method": ["baseline", "dualcoop"], "label_ratio": [0.5]}))
    finally:
        ray.shutdown()
    assert summary["trials"] == 2 and summary["errored"] == 0
    client = MlflowClient(summary["tracking_uri"])
    runs = client.search_runs([summary["experiment_id"]], f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'")
    return {**summary, "tmp": tmp, "client": client, "runs": {r.data.tags["ablate.method"]: r for r in runs}}


def artifact_config(sweep: dict, run) -> dict:
    path = sweep["client"].download_artifacts(run.info.run_id, CONFIG_ARTIFACT, str(sweep["tmp"]))
    return yaml.safe_load(Path(path).read_text())


def test_params_are_the_config_the_trainer_used(sweep):
    for method, run in sweep["runs"].items():
        params = run.data.params
        used = json.loads(Path(sweep["client"].download_artifacts(run.info.run_id, "metrics.json",
                                                                  str(sweep["tmp"]))).read_text())["config"]
        assert params == flatten_config(TrialConfig.model_validate(used)), method
        assert params == flatten_config(TrialConfig.model_validate(artifact_config(sweep, run))), method
        # on CPU: no autocast, no scaler; the loss's own γ−; no `none` where a default applied
        assert (params["device"], params["amp"], params["grad_scaler"], params["gamma_neg"]) == \
            ("cpu", "False", "False", "2.0")
        assert {k for k, v in params.items() if v == "none"} <= UNSET_ALLOWED, method
    assert sweep["runs"]["baseline"].data.params["linear_weight_decay"] == \
        sweep["runs"]["baseline"].data.params["weight_decay"]


@pytest.mark.parametrize("fields", [{"method": "dualcoop"}, {"method": "baseline", "loss": "asl_sigmoid"}])
def test_the_resolved_config_is_what_the_trainer_holds(tiny_cfg, fields):
    trial = Trial(tiny_cfg(**fields), progress=False)
    resolved, info = trial.arm.resolved, trial.backbone.info
    assert resolved.device == str(trial.device) and resolved.amp is trial.stream.amp is False
    assert resolved.grad_scaler is trial.scaler.is_enabled()
    assert resolved.gamma_neg == trial.loss_fn.gamma_neg == (4.0 if fields.get("loss") else 2.0)
    assert (resolved.image_size, resolved.quick_gelu) == (info.image_size, info.quick_gelu)
    decays = {g["kind"]: g["weight_decay"] for g in trial.optimizer.param_groups}
    if "linear" in decays:
        assert resolved.linear_weight_decay == decays["linear"]
    same = {k for k in TrialConfig.model_fields} - {"device", "amp", "grad_scaler", "gamma_neg", "linear_weight_decay",
                                                    "image_size", "quick_gelu", "data_root", "cache_dir",
                                                    "feature_cache_dir"}
    assert {k: getattr(resolved, k) for k in same} == {k: getattr(trial.cfg, k) for k in same}


def test_each_run_says_how_to_rerun_it_and_the_rerun_gives_its_figures(sweep, tmp_path):
    run = sweep["runs"]["dualcoop"]
    note, tags = run.data.tags[NOTE_TAG], run.data.tags
    assert not Path(tags[SPEC_TAGS[1]]).is_absolute() or "spec.yaml" in tags[SPEC_TAGS[1]]
    if "mlflow.source.git.commit" in tags:
        assert f"commit `{tags['mlflow.source.git.commit'][:12]}`" in note
    commands = [line.strip() for line in note.splitlines() if line.startswith("    ")]
    assert len(commands) == 2 and commands[1].startswith("ablate train --config "), note
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for command in commands:  # as a user pastes them, in a folder of their own
        words = shlex.split(command)
        assigned = dict(w.split("=", 1) for w in words if re.fullmatch(r"[A-Z_]+=.*", w))
        argv = [w for w in words if not re.fullmatch(r"[A-Z_]+=.*", w)]
        done = subprocess.run(argv, cwd=tmp_path, env={**env, **assigned}, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, (command, done.stderr[-2000:])
    out = tmp_path / commands[1].split("--out ")[1]
    rerun = json.loads((out / "metrics.json").read_text())
    for key in FIGURES:
        assert rerun[key] == pytest.approx(run.data.metrics[key], abs=1e-9), key
