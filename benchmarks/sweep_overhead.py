"""Per-trial overhead of Ray Tune + MLflow on quickstart trials, printed as JSON lines.

Runs the same trials twice in one invocation, so the comparison holds on a noisy machine:
1. directly, one after another, through `run_trial` (what `ablate train` does), with as many torch
   threads as a sweep trial gets (`resources.cpu`);
2. as a sweep (`run_sweep`) with one trial at a time.
Per trial, overhead = Ray's time inside the trainable - the direct wall-clock (MLflow logging,
checkpoints, reporting; the first trial also pays the worker's imports). The sweep's fixed cost
(store schema, parent run, Tune set-up and scheduling) is the sweep wall-clock minus all trainable time.

    python benchmarks/sweep_overhead.py [--trials 4] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

from ablate.sweep import expand, init_ray, prepare_data, run_sweep
from ablate.sweep.spec import load_sweep_spec
from ablate.trainer import run_trial

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ablate-bench-"))
    spec = yaml.safe_load((ROOT / "tune_specs/quickstart.yaml").read_text())
    spec["base"].update(epochs=args.epochs)  # the default cache: the world and its CLIP are built once
    spec.update(name="overhead", storage_path=str(work / "ray"), tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                max_concurrent_trials=1)
    spec_path = work / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    arms = [a for a in expand(load_sweep_spec(spec_path)) if a.config.method != "zeroshot"][: args.trials]
    spec["grid"] = {"method": sorted({a.config.method for a in arms})}
    spec_path.write_text(yaml.safe_dump(spec))
    arms = expand(load_sweep_spec(spec_path))
    prepare_data(arms)  # generate the data once, outside both timings

    torch.set_num_threads(max(1, int(spec.get("resources", {}).get("cpu", 1))))
    direct = []
    for arm in arms:
        t0 = time.perf_counter()
        metrics = run_trial(arm.config, progress=False)
        direct.append({"method": arm.config.method, "wall_s": time.perf_counter() - t0,
                       "train_s": metrics.train_time_s})
        print(json.dumps({"bench": "direct_trial", **direct[-1]}), flush=True)

    t0 = time.perf_counter()
    init_ray()
    ray_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = run_sweep(spec_path)
    sweep_wall = time.perf_counter() - t0
    in_trial = trainable_times(Path(summary["storage"]) / "overhead")
    per_trial = [t - d["wall_s"] for t, d in zip(in_trial, direct)]
    warm = per_trial[1:] or per_trial
    mean_direct = sum(d["wall_s"] for d in direct) / len(direct)
    print(json.dumps({
        "bench": "sweep_overhead", "trials": summary["trials"], "epochs": args.epochs,
        "ray_start_s": round(ray_start, 2), "sweep_wall_s": round(sweep_wall, 2),
        "sweep_fixed_s": round(sweep_wall - sum(in_trial), 2),
        "direct_trial_s": round(mean_direct, 2),
        "first_trial_overhead_s": round(per_trial[0], 2),
        "warm_trial_overhead_s": round(sum(warm) / len(warm), 2),
        "warm_overhead_pct_of_trial": round(100 * sum(warm) / len(warm) / mean_direct, 1),
        "amortised_overhead_per_trial_s": round((sweep_wall - sum(d["wall_s"] for d in direct)) / len(direct), 2),
    }), flush=True)


def trainable_times(experiment: Path) -> list[float]:
    """Ray's time inside each trainable, in trial order (the last line of each result.json)."""
    times = []
    for result in sorted(experiment.glob("*/result.json")):
        last = result.read_text().strip().splitlines()[-1]
        times.append(json.loads(last)["time_total_s"])
    return times


if __name__ == "__main__":
    main()
