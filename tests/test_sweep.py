"""Sweeps on local Ray (2 CPUs) with a sqlite MLflow store: grid, grid x Optuna, bad specs,
interrupt + resume, and a diverging trial that fails alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from sweep_helpers import runs, write_spec

from ablate.cli import main
from ablate.spec import ConfigError
from ablate.sweep import run_sweep
from ablate.tracking import connect


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_grid_lands_one_child_run_per_trial(tmp_path, cache_dir):
    spec = write_spec(tmp_path, cache_dir, grid={"method": ["baseline", "positivecoop"], "label_ratio": [0.3, 0.7]},
                      probes=["negation", "prompts"], probe_limit=8)
    summary = run_sweep(spec)
    assert summary["trials"] == 4 and summary["errored"] == 0
    parents, children = runs(tmp_path)
    assert len(parents) == 1 and len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    arms = {(c.data.tags["ablate.method"], c.data.tags["ablate.label_ratio"]) for c in children}
    assert arms == {(m, r) for m in ("baseline", "positivecoop") for r in ("0.3", "0.7")}
    for child in children:
        assert child.info.status == "FINISHED"
        m = child.data.metrics
        assert {"test_map", "last_test_map", "best_val_map", "trainable_params", "train_time_s", "device_hours",
                "peak_memory_mb"} <= m.keys()
        assert m["trainable_params"] > 0 and m["train_time_s"] > 0
        assert child.data.params["method"] == child.data.tags["ablate.method"]
        assert "probe_negation_farther_pct" in m and "ablate.probe_error" not in child.data.tags
        if child.data.tags["ablate.method"] == "positivecoop":  # the baseline has no prompts to analyse
            assert "analysis_pos_neg_cos" in m
    # the spec is recorded on the parent; a second launch of the same sweep is refused
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.download_artifacts(parents[0].info.run_id, "spec.yaml", str(tmp_path))
    with pytest.raises(ConfigError, match="--resume"):
        run_sweep(spec)


@pytest.mark.slow
def test_grid_times_optuna_gives_every_arm_the_same_budget(tmp_path, cache_dir):
    spec = write_spec(
        tmp_path, cache_dir, grid={"method": ["baseline", "dualembed", "zeroshot"]},
        optuna={"num_samples": 2, "seed": 0, "space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1,
                                                               "log": True}}},
        asha={"grace_period": 1}, max_concurrent_trials=2,
    )
    summary = run_sweep(spec)
    # zeroshot reads no learning rate: one trial, not two identical ones
    assert summary["trials"] == 5 and summary["errored"] == 0
    _, children = runs(tmp_path)
    per_method = {}
    for child in children:
        per_method.setdefault(child.data.tags["ablate.method"], []).append(child.data.params["lr"])
    assert sorted(len(v) for v in per_method.values()) == [1, 2, 2]
    assert per_method["zeroshot"] == ["n/a"]  # a field the method does not read
    assert all(1e-3 <= float(lr) <= 1e-1 for lr in per_method["baseline"] + per_method["dualembed"])
    assert len(set(per_method["baseline"])) == 2
    # Optuna trials are told apart by their sampled value and number within the arm
    names = sorted(c.info.run_name for c in children)
    assert len(set(names)) == 5 and names[-1] == "zeroshot"
    assert all(n.startswith(("baseline · lr=", "dualembed · lr=")) and " · #" in n for n in names[:-1])


def test_bad_spec_names_the_field_and_records_nothing(tmp_path, cache_dir, capsys):
    spec = write_spec(tmp_path, cache_dir, grid={"method": ["baseline"], "label_ratio": [0.5, 1.5]})
    assert main(["sweep", "--spec", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "grid.label_ratio[1]" in err and str(spec) in err
    spec = write_spec(tmp_path, cache_dir, grid={"methd": ["baseline"]})
    assert main(["sweep", "--spec", str(spec)]) == 2
    assert "grid.methd" in capsys.readouterr().err
    spec.write_text(spec.read_text() + "schedulr: asha\n")
    assert main(["sweep", "--spec", str(spec)]) == 2
    assert "schedulr" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()


def test_diverging_trial_fails_alone_with_its_reason(tmp_path, cache_dir):
    spec = write_spec(tmp_path, cache_dir, base={"method": "baseline"}, grid={"lr": [0.02, 1e30, 0.05]},
                      max_failures=1)
    summary = run_sweep(spec)
    assert summary["trials"] == 3 and summary["errored"] == 1
    parents, children = runs(tmp_path)
    assert len(children) == 3  # the retried failure re-attached to its run
    by_status = {c.info.status: c for c in children}
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(failed) == 1 and float(failed[0].data.params["lr"]) == 1e30
    assert "loss became nan" in failed[0].data.tags["ablate.error"]
    assert sum(c.info.status == "FINISHED" for c in children) == 2 and by_status
    assert parents[0].info.status == "FAILED"


def test_processes_opening_a_new_sqlite_store_at_once_all_get_it(tmp_path):
    """Opening a sqlite store creates its schema; processes doing it together (a sweep starting while
    `ablate report` or another sweep opens the same file) once collided in alembic's migrations."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = ("import sys; from ablate.tracking import connect, ensure_experiment; "
            "ensure_experiment(connect(sys.argv[1]), 'shared')")
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [proc.communicate(timeout=240)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, "\n".join(errors)[-3000:]
    assert len(connect(uri).search_experiments(filter_string="name = 'shared'")) == 1


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_duplicates(tmp_path, cache_dir):
    # one arm a trial, so some finish before the interrupt (tests/test_packs.py resumes a packed sweep)
    spec = write_spec(tmp_path, cache_dir, base={"epochs": 3}, pack="off",
                      grid={"method": ["baseline", "dualembed"], "label_ratio": [0.2, 0.5, 0.8]})
    import ray

    # join this test's local Ray explicitly ("auto" could find another cluster on a shared machine)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    log = (tmp_path / "sweep.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", "sweep", "--spec", str(spec)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            time.sleep(1)
            if (tmp_path / "mlflow.db").exists():
                try:
                    _, children = runs(tmp_path)
                except Exception:  # schema still being created
                    continue
                if any(c.info.status == "FINISHED" for c in children):
                    break
        assert proc.poll() is None, ("the sweep ended before it could be interrupted:\n"
                                     + (tmp_path / "sweep.log").read_text()[-3000:])
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    _, children = runs(tmp_path)
    assert sum(c.info.status == "FINISHED" for c in children) < 6
    summary = run_sweep(spec, resume=True)
    assert summary["trials"] == 6
    _, children = runs(tmp_path)
    assert len(children) == 6
    assert all(c.info.status == "FINISHED" for c in children)
    assert len({c.data.tags["ablate.trial_key"] for c in children}) == 6


def test_dry_run_counts_the_full_grid(capsys):
    assert main(["sweep", "--spec", "tune_specs/full_grid.yaml", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    # 3 prompt methods x 2 datasets x 9 ratios x 3 n_ctx x 3 seeds, baseline without n_ctx, zero-shot once a dataset
    assert out["trials"] == 3 * 2 * 9 * 3 * 3 + 2 * 9 * 3 + 2


@pytest.mark.parametrize("name, trials", [("quickstart", 6 * 3 - 2), ("world_negation", 6 * (5 * 3 * 3 + 1)),
                                          ("world_negation_small", 6 * (5 * 3 + 1)),
                                          ("full_grid", 542), ("paper_reproduction", 4 * 2 * 9),
                                          ("optuna_lr", None)])
def test_shipped_specs_expand_into_runnable_trials(name, trials):
    """Every arm of every shipped spec passes the checks a trial makes before it starts (the zero-shot
    arm of a cached-feature spec once came out with augment: true and was refused at launch)."""
    from ablate.features import check_features_mode
    from ablate.spec import canonical
    from ablate.sweep import expand
    from ablate.sweep.spec import load_sweep_spec

    arms = expand(load_sweep_spec(Path("tune_specs") / f"{name}.yaml"))
    if trials is not None:
        assert len(arms) == trials
    for arm in arms:
        check_features_mode(arm.config)
        assert canonical(arm.config) == arm.config
