"""Optuna searches on local Ray with a sqlite MLflow store and Optuna's own storage: seed-averaged samples,
a two-objective search with its Pareto front, ASHA on seed means, and a resume that keeps the study."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from sweep_helpers import runs, write_spec

from ablate.cli import main
from ablate.pareto import PARETO_TAG, SAMPLE_TAG
from ablate.sweep import run_sweep
from ablate.tracking import connect

LR = {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def study(tmp_path, summary: dict, arm: str = "base") -> optuna.Study:
    """The arm's Optuna study, read back from the storage beside the sweep's state."""
    storage = f"sqlite:///{tmp_path / 'ray' / 't' / 'optuna.db'}"
    return optuna.load_study(study_name=f"{summary['parent_run_id']}:t--{arm}", storage=storage)


def test_seed_averaged_search_tells_the_sampler_the_mean_over_seeds(tmp_path, cache_dir, local_ray):
    spec = write_spec(tmp_path, cache_dir, base={"method": "baseline", "epochs": 2},
                      optuna={"num_samples": 2, "seeds": [0, 1], "space": LR}, max_concurrent_trials=2)
    summary = run_sweep(spec)
    assert summary["trials"] == 4 and summary["errored"] == 0
    _, children = runs(tmp_path)
    by_sample: dict[str, list] = {}
    for child in children:  # each seed its own run, tagged with its sample
        assert child.info.status == "FINISHED"
        by_sample.setdefault(child.data.tags[SAMPLE_TAG], []).append(child)
    assert sorted(by_sample) == ["base#0", "base#1"]
    told = {t.number: t for t in study(tmp_path, summary).trials}
    assert len(told) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in told.values())
    for key, members in by_sample.items():
        assert sorted(c.data.tags["ablate.seed"] for c in members) == ["0", "1"]
        assert len({c.data.params["lr"] for c in members}) == 1  # one configuration, two seeds
        per_seed = [c.data.metrics["best_val_map"] for c in sorted(members, key=lambda c: c.data.tags["ablate.seed"])]
        trial = told[int(key.rsplit("#", 1)[1])]
        assert trial.value == pytest.approx(np.mean(per_seed))  # the sampler got the mean, not one seed
        assert trial.params["lr"] == pytest.approx(float(members[0].data.params["lr"]))
        assert trial.user_attrs["val_map_per_seed"] == pytest.approx(per_seed)
        assert trial.user_attrs["val_map_sem"] == pytest.approx(np.std(per_seed, ddof=1) / math.sqrt(2))
    from ablate.report import write_report

    result = write_report("t", tmp_path / "report", summary["tracking_uri"], log_to_mlflow=False)
    assert result["incomplete"] == []  # 2 samples x 2 seeds is what the spec asks for


def test_two_objective_search_tags_its_front_and_reports_it(tmp_path, cache_dir, local_ray):
    spec = write_spec(tmp_path, cache_dir, base={"method": "baseline", "epochs": 1},
                      optuna={"num_samples": 4, "metric": ["val_map", "device_hours"], "mode": ["max", "min"],
                              "space": LR}, max_concurrent_trials=2)
    summary = run_sweep(spec)
    assert summary["trials"] == 4 and summary["errored"] == 0
    found = study(tmp_path, summary)
    assert [d.name for d in found.directions] == ["MAXIMIZE", "MINIMIZE"]
    _, children = runs(tmp_path)
    tagged = {c.data.tags[SAMPLE_TAG]: c.data.tags[PARETO_TAG] for c in children}
    assert len(tagged) == 4 and set(tagged.values()) <= {"true", "false"}
    # MLflow's front is Optuna's own: the same samples, from the values the sampler was told
    assert {k for k, v in tagged.items() if v == "true"} == {f"base#{t.number}" for t in found.best_trials}
    for child in children:
        trial = found.trials[int(child.data.tags[SAMPLE_TAG].rsplit("#", 1)[1])]
        assert trial.values == pytest.approx([child.data.metrics["best_val_map"], child.data.metrics["device_hours"]])
    from ablate.report import write_report

    result = write_report("t", tmp_path / "report", f"sqlite:///{tmp_path / 'mlflow.db'}", log_to_mlflow=False)
    [(arm, front)] = result["search_fronts"]["synthetic"].items()
    assert arm == "base" and {f["sample"] for f in front} == {k for k, v in tagged.items() if v == "true"}
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Pareto front of the search: base" in page and (tmp_path / "report" / "search_front_synthetic.png").exists()


def test_asha_with_a_multi_objective_search_is_refused_in_one_line(tmp_path, cache_dir, capsys):
    spec = write_spec(tmp_path, cache_dir, optuna={"metric": ["val_map", "trainable_params"], "mode": ["max", "min"],
                                                   "space": LR}, asha={"grace_period": 1})
    assert main(["sweep", "--spec", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "asha cannot prune a multi-objective search" in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()
    spec = write_spec(tmp_path, cache_dir, optuna={"metric": ["val_map", "device_hours"], "mode": "max",
                                                   "space": LR})
    assert main(["sweep", "--spec", str(spec)]) == 2
    assert "both lists of the same length" in capsys.readouterr().err
    spec = write_spec(tmp_path, cache_dir, grid={"seed": [0, 1]}, optuna={"seeds": [0, 1], "space": LR})
    assert main(["sweep", "--spec", str(spec)]) == 2
    assert "optuna.seeds and grid.seed" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()


def test_dry_run_counts_every_seed_of_every_sample(tmp_path, cache_dir, capsys):
    import json

    spec = write_spec(tmp_path, cache_dir, grid={"method": ["baseline", "zeroshot"]},
                      optuna={"num_samples": 3, "seeds": [0, 1, 2], "space": LR})
    assert main(["sweep", "--spec", str(spec), "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["trials"] == 3 * 3 + 1  # zero-shot reads no lr: once


def asha(path, seeds: int = 2):
    from ablate.sweep.search import scheduler
    from ablate.sweep.spec import AshaSpec, SweepSpec

    spec = SweepSpec(name="a", asha=AshaSpec(grace_period=1, reduction_factor=2))
    return scheduler(spec, 4, path, seeds)


def result(sched, sample: str, seed: int, epoch: int, value: float) -> str:
    trial = SimpleNamespace(trial_id=f"{sample}-{seed}", config={"sample": sample, "seed": seed})
    return sched.on_trial_result(None, trial, {"epoch": epoch, "val_map": value})


def test_asha_decides_rungs_on_the_mean_over_seeds_and_keeps_its_records(tmp_path):
    sched = asha(tmp_path / "rungs.json")
    assert sched.milestones == [1, 2]
    assert result(sched, "a", 0, 1, 90.0) == "CONTINUE"  # waits for the other seed
    assert result(sched, "a", 1, 1, 10.0) == "CONTINUE"  # first sample at the rung: recorded, goes on (mean 50)
    assert result(sched, "b", 0, 1, 60.0) == "CONTINUE" and result(sched, "b", 1, 1, 60.0) == "CONTINUE"
    # c's seed 0 alone (95) would pass the rung; the mean (50) is below the median of 50 and 60
    assert result(sched, "c", 0, 1, 95.0) == "CONTINUE"
    assert result(sched, "c", 1, 1, 5.0) == "STOP"
    assert result(sched, "c", 0, 2, 96.0) == "STOP"  # the seed that went on stops with its sample
    assert result(sched, "b", 0, 1, 60.0) == "CONTINUE"  # a repeated epoch (final result, restore) counts once
    # a scheduler built again (as after Tuner.restore, which does not keep it) reads the same records
    again = asha(tmp_path / "rungs.json")
    assert again.records["rungs"]["1"] == [50.0, 60.0, 50.0] and again.records["stopped"] == ["c"]
    assert result(again, "c", 0, 3, 97.0) == "STOP"
    assert result(again, "d", 0, 1, 45.0) == "CONTINUE" and result(again, "d", 1, 1, 45.0) == "STOP"


def run_interrupted(spec, tmp_path, finished: int) -> None:
    """`ablate sweep` in a subprocess on this test's Ray, SIGINT once `finished` trials have finished."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import ray

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    with (tmp_path / "sweep.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", "sweep", "--spec", str(spec)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        deadline = time.time() + 400
        try:
            while time.time() < deadline and proc.poll() is None:
                time.sleep(1)
                try:
                    _, children = runs(tmp_path)
                except Exception:  # schema still being created
                    continue
                if sum(settled(c) for c in children) >= finished:
                    break
            assert proc.poll() is None, "the sweep ended first:\n" + (tmp_path / "sweep.log").read_text()[-3000:]
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()


def settled(run) -> bool:
    """Finished, or stopped by ASHA (not a trial the interruption cut off)."""
    return run.info.status == "FINISHED" or "scheduler" in run.data.tags.get("ablate.stopped", "")


def by_sample(tmp_path) -> dict[str, object]:
    return {c.data.tags[SAMPLE_TAG]: c for c in runs(tmp_path)[1]}


@pytest.mark.slow
def test_resumed_search_equals_the_uninterrupted_one_for_every_trial_finished_before(tmp_path, cache_dir, local_ray):
    """What is guaranteed: every trial that had finished (or been stopped by ASHA) before the interruption
    keeps its sampled configuration, its numbers and its ASHA decision, exactly as an uninterrupted sweep
    records them; the resumed study holds every sample once (told with its value, none asked again blind),
    so the sampler continues from the whole history; the rung records of those trials survive. Not
    guaranteed: the configurations sampled after the interruption (here TPE's seeded start-up draws make
    them equal too, which the test does not rely on)."""
    import json

    knobs = dict(base={"method": "baseline", "epochs": 3}, max_concurrent_trials=1, asha={"grace_period": 1,
                 "reduction_factor": 2}, optuna={"num_samples": 4, "seed": 3, "space": LR})
    whole = tmp_path / "whole"
    whole.mkdir()
    reference = run_sweep(write_spec(whole, cache_dir, **knobs))
    parted = tmp_path / "parted"
    parted.mkdir()
    spec = write_spec(parted, cache_dir, **knobs)
    run_interrupted(spec, parted, finished=1)
    before = {k: c for k, c in by_sample(parted).items() if settled(c)}
    rungs_file = next((parted / "ray" / "t").glob("asha-rungs-*.json"))
    rungs_before = json.loads(rungs_file.read_text())["rungs"]
    assert 1 <= len(before) < 4
    summary = run_sweep(spec, resume=True)
    assert summary["trials"] == 4
    after, expected = by_sample(parted), by_sample(whole)
    assert len(runs(parted)[1]) == 4 and sorted(after) == sorted(expected)  # no run duplicated or lost
    for key, run in before.items():
        same = expected[key]
        assert after[key].info.status == same.info.status == run.info.status  # the same ASHA decision
        assert run.data.params["lr"] == same.data.params["lr"]
        for metric in ("best_val_map", "test_map"):
            assert after[key].data.metrics.get(metric) == same.data.metrics.get(metric)
    told, told_whole = study(parted, summary), study(whole, reference)
    assert [t.state.name for t in told.trials] == ["COMPLETE"] * 4  # every sample told once, none re-asked
    for t in told.trials:
        if f"base#{t.number}" in before:
            assert t.params == told_whole.trials[t.number].params and t.value == told_whole.trials[t.number].value
    rungs_after = json.loads(rungs_file.read_text())["rungs"]
    for milestone, values in rungs_before.items():  # what was recorded before is still there, in order
        assert rungs_after[milestone][:len(values)] == values
    # and each rung holds every trial that reached it, before and after the interruption, once
    client = connect(f"sqlite:///{parted / 'mlflow.db'}")
    reached = [max(m.step for m in client.get_metric_history(r.info.run_id, "train_loss")) for r in after.values()]
    for milestone, values in rungs_after.items():
        assert len(values) == sum(epochs >= int(milestone) for epochs in reached)


def test_asha_over_seeds_records_each_samples_mean_at_its_rungs(tmp_path, cache_dir, local_ray):
    """With real Ray: a rung holds one value per sample, the mean of its seeds' val_map at that epoch."""
    import json

    spec = write_spec(tmp_path, cache_dir, base={"method": "baseline", "epochs": 3}, max_concurrent_trials=2,
                      optuna={"num_samples": 3, "seeds": [0, 1], "space": LR},
                      asha={"grace_period": 1, "reduction_factor": 2})
    summary = run_sweep(spec)
    assert summary["trials"] == 6 and summary["errored"] == 0
    client = connect(summary["tracking_uri"])
    at_epoch_1: dict[str, list[float]] = {}
    for child in runs(tmp_path)[1]:
        [first] = [m.value for m in client.get_metric_history(child.info.run_id, "val_map") if m.step == 1]
        at_epoch_1.setdefault(child.data.tags[SAMPLE_TAG], []).append(first)
    records = json.loads(next((tmp_path / "ray" / "t").glob("asha-rungs-*.json")).read_text())
    assert sorted(records["rungs"]["1"]) == pytest.approx(sorted(np.mean(v) for v in at_epoch_1.values()))
    for sample in records["stopped"]:  # the seed whose result decided it was stopped (an earlier one may have ended)
        assert any(c.info.status == "KILLED" for c in runs(tmp_path)[1] if c.data.tags[SAMPLE_TAG] == sample)


def test_optuna_searches_within_an_arm_and_its_sampled_weights_are_built_first():
    """An arm is one method on one data set with their own settings: Optuna may not sample either. The world
    CLIPs it may sample (`pretrained`, with `backbone`) are all in what the pre-flight builds."""
    from ablate.spec import TrialConfig
    from ablate.sweep.preflight import with_sampled_weights
    from ablate.sweep.spec import SweepSpec

    for field, choices in (("method", ["dualcoop", "positivecoop"]), ("dataset", ["synthetic", "world"])):
        with pytest.raises(ValueError, match=rf"optuna\.space\.{field}: compare {field}s with grid\.{field}"):
            SweepSpec(name="s", optuna={"space": {field: {"type": "categorical", "choices": choices}}})
    space = SweepSpec(name="s", optuna={"space": {
        "pretrained": {"type": "categorical", "choices": ["world-presence", "world-negation@seed=1"]},
        "backbone": {"type": "categorical", "choices": ["ablate-tiny-vit", "ablate-tiny-rn"]},
        "lr": {"type": "float", "low": 1e-3, "high": 1e-1}}}).optuna.space  # type: ignore[union-attr]
    built = {(c.backbone, c.pretrained, c.lr) for c in with_sampled_weights(TrialConfig(lr=0.01), space)}
    assert built == {(b, p, 0.01) for b in ("ablate-tiny-vit", "ablate-tiny-rn")
                     for p in ("world-presence", "world-negation@seed=1")}
    assert with_sampled_weights(TrialConfig(), {}) == [TrialConfig()]
