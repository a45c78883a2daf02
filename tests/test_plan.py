"""Planning a sweep before it runs: the cluster's capacity from its config, `ablate plan` and the dry run's
plan, priced from a calibration (measured here, and cached) or from an earlier sweep's runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sweep_helpers import runs, write_spec

from ablate.cli import main
from ablate.errors import ConfigError
from ablate.sweep import expand, run_sweep
from ablate.sweep.capacity import cluster_capacity
from ablate.sweep.costs import CACHE_FILE, CostTable, arm_shape, store, stream_shape, trains
from ablate.sweep.spec import Resources, load_sweep_spec

ROOT = Path(__file__).resolve().parents[1]
FULL_GRID, GPU_YAML = ROOT / "tune_specs" / "full_grid.yaml", ROOT / "cluster" / "gpu.yaml"


def plan(capsys, *args: str) -> str:
    assert main(["plan", *args]) == 0
    return capsys.readouterr().out


def cluster(tmp_path: Path, **types) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"max_workers": 5, "head_node_type": "head", "provider": {"type": "aws"},
                                    "available_node_types": {"head": {"resources": {"CPU": 0, "GPU": 0}}, **types}}))
    return path


def test_gpu_yaml_holds_16_trials_of_full_grid_and_8_of_a_whole_gpu():
    res = load_sweep_spec(FULL_GRID).resources
    capacity = cluster_capacity(GPU_YAML, res)
    assert capacity.slots == 16 and capacity.gpu_name == "A10G"
    assert "8 gpu_worker (g5.2xlarge" in capacity.source
    assert cluster_capacity(GPU_YAML, Resources(cpu=4, gpu=1)).slots == 8
    assert cluster_capacity(GPU_YAML, Resources(cpu=1, gpu=0.25)).slots == 32  # 4 a GPU, 8 CPUs a node


def test_capacity_counts_given_resources_greediest_type_first_up_to_max_workers(tmp_path):
    path = cluster(tmp_path, big={"max_workers": 3, "resources": {"CPU": 16, "GPU": 4}},
                   small={"max_workers": 4, "node_config": {"InstanceType": "g4dn.xlarge"}})
    capacity = cluster_capacity(path, Resources(cpu=2, gpu=1))
    assert capacity.slots == 3 * 4 + 2 * 1  # the cluster's 5 workers: 3 big, then 2 of the 4 small


def test_an_instance_type_ablate_does_not_know_asks_for_slots(tmp_path):
    path = cluster(tmp_path, w={"max_workers": 2, "resources": {}, "node_config": {"InstanceType": "x9.huge"}})
    with pytest.raises(ConfigError, match=r"x9\.huge.*pass --slots N"):
        cluster_capacity(path, Resources(cpu=1, gpu=1))


def test_plan_full_grid_for_gpu_yaml_reads_16_slots(tmp_path, capsys):
    out = plan(capsys, "--spec", str(FULL_GRID), "--cluster", str(GPU_YAML), "--cache-dir", str(tmp_path),
               "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert out.startswith("slots: 16 concurrent trial(s) (gpu.yaml at its max_workers")
    assert "device: A10G" in out and "resources per pack: 4 CPU, 0.5 GPU" in out
    assert "costs: no calibration: relative costs only" in out and "waves: 1: 16 pack(s)" in out
    assert "idle fraction of the slots:" in out and "2 arm(s) that train nothing run in 2 pack(s) of their own" in out
    assert not (tmp_path / "none.db").exists()  # reading costs never creates a store
    shares = {line.split(" GPU")[0].removeprefix("at "): line for line in out.splitlines() if line.startswith("at ")}
    assert shares.keys() == {"1", "0.5", "0.25"} and "8 slots" in shares["1"]
    assert shares["0.5"].startswith("at 0.5 GPU a pack (the spec): 16 slots") and shares["0.5"].endswith("recommended")


def test_max_concurrent_trials_wins_over_the_cluster(tmp_path, capsys):
    spec = yaml.safe_load(FULL_GRID.read_text()) | {"max_concurrent_trials": 4}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = plan(capsys, "--spec", str(path), "--cluster", str(GPU_YAML), "--cache-dir", str(tmp_path),
               "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert out.startswith("slots: 4 concurrent trial(s) (max_concurrent_trials)")


def test_a_cached_calibration_prices_the_plan(tmp_path, capsys):
    spec = load_sweep_spec(FULL_GRID)
    configs = [a.config for a in expand(spec)]
    # a synthetic table: 0.2 s a stream batch, 0.05 s an arm's step, 60 s a Ray trial's overhead
    store(tmp_path, CostTable("", "NVIDIA A10G", "s", {stream_shape(c): 0.2 for c in configs},
                              {arm_shape(c): 0.05 for c in configs if trains(c)}, 60.0))
    args = ["--spec", str(FULL_GRID), "--cluster", str(GPU_YAML), "--cache-dir", str(tmp_path),
            "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--price-per-device-hour", "1.5"]
    out = plan(capsys, *args)
    assert f"costs: calibration on NVIDIA A10G ({tmp_path / CACHE_FILE})" in out and "price: " in out
    figures = json.loads(plan(capsys, *args, "--json"))
    # each pack's wall (its cost at half a GPU's speed) x the half GPU it holds
    assert figures["device_hours"] == pytest.approx(sum(p["predicted"] for p in figures["packs"]) * 0.5 / 3600)
    assert figures["price"] == pytest.approx(figures["device_hours"] * 1.5)
    assert figures["wall"] == pytest.approx(max(p["start"] + p["predicted"] for p in figures["packs"]))
    assert figures["wall"] <= figures["earlier_plan"]["wall"]


def test_the_dry_run_carries_the_plan(capsys, tmp_path):
    assert main(["sweep", "--spec", str(FULL_GRID), "--dry-run", "--cluster", str(GPU_YAML)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plan"]["slots"] == 16 and out["ray_trials"] == len(out["plan"]["packs"]) == len(out["packs"])
    assert [len(p["arms"]) for p in out["packs"]] == [p["arms"] for p in out["plan"]["packs"]]


def test_bad_slots_are_one_line(tmp_path, capsys):
    assert main(["plan", "--spec", str(FULL_GRID), "--slots", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --slots 0")


def test_calibrate_measures_every_shape_here_and_caches_it(tmp_path, cache_dir, capsys):
    spec = write_spec(tmp_path, cache_dir, grid={"method": ["dualcoop", "baseline", "zeroshot"],
                                                 "n_ctx": [2, 4], "seed": [0, 1]})
    args = ["--spec", str(spec), "--slots", "2", "--cache-dir", str(tmp_path / "costs")]
    assert main(["plan", *args, "--calibrate", "--calibrate-steps", "2"]) == 0
    err = capsys.readouterr().err
    assert "calibrated: calibration on cpu, 1 thread(s): 2 step(s) a shape (the data set's loader and encoder)" in err
    cached = json.loads((tmp_path / "costs" / CACHE_FILE).read_text())["cpu"]
    assert len(cached["stream"]) == 1 and len(cached["own"]) == 3  # dualcoop at 2 contexts and 4, the baseline
    assert all(v > 0 for v in [*cached["stream"].values(), *cached["own"].values()])
    assert f"costs: calibration on cpu ({tmp_path / 'costs' / CACHE_FILE})" in plan(capsys, *args)


@pytest.mark.usefixtures("one_thread")
def test_an_earlier_sweeps_runs_price_the_next_plan(tmp_path, cache_dir, capsys):
    import ray

    spec = write_spec(tmp_path, cache_dir, grid={"method": ["dualcoop", "positivecoop", "baseline"],
                                                 "label_ratio": [0.3, 0.7]}, resources={"cpu": 1})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_sweep(spec)
    finally:
        ray.shutdown()
    assert summary["errored"] == 0
    parents, children = runs(tmp_path)
    for child in children:  # what the next plan calibrates from
        assert {"stream_time_s", "own_time_s", "train_steps", "stream_batches"} <= child.data.metrics.keys()
        assert child.data.tags["ablate.device_name"] == "cpu"
        assert child.data.tags["ablate.arm_shape"].split()[0] in ("dualcoop", "positivecoop", "baseline")
    from mlflow import MlflowClient

    client = MlflowClient(summary["tracking_uri"])
    stored = json.loads(Path(client.download_artifacts(parents[0].info.run_id, "plan.json", str(tmp_path)))
                        .read_text())
    assert stored["slots"] == 2 and sum(p["arms"] for p in stored["packs"]) == 6
    out = plan(capsys, "--spec", str(spec), "--slots", "2", "--cache-dir", str(tmp_path / "costs"))
    assert "costs: 6 arm run(s) of experiment t on cpu" in out and "projected wall time:" in out
    # the report's Cost section: the stored plan against what the packs measured
    from ablate.report import write_report

    result = write_report("t", tmp_path / "report", summary["tracking_uri"], log_to_mlflow=False)
    table = (tmp_path / "report" / "table.md").read_text()
    assert "## Cost: predicted against measured" in table and "| idle fraction of the slots |" in table
    packs = {c.data.tags["ablate.pack"]: c.data.metrics["pack_device_hours"] for c in children}
    cost = result["cost"]
    assert cost["total"]["measured_device_hours"] == pytest.approx(sum(packs.values()))  # once per pack
    assert len(cost["packs"]) == len(packs) and all(p["measured_s"] > 0 for p in cost["packs"])
    assert cost["total"]["measured_wall_s"] >= max(p["measured_s"] for p in cost["packs"])
