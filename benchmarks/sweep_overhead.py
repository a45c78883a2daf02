"""Per-trial overhead of Ray Tune + MLflow on quickstart trials, printed as JSON lines.

Runs the same trials twice in one invocation, so the comparison holds on a noisy machine:
1. directly, one after another, through `run_trial` (what `ablate train` does);
2. as a sweep (`run_sweep`) with one trial at a time, so both are serial.
overhead per trial = (sweep wall-clock - Ray start-up - sum of direct trial wall-clocks) / trials.

    python benchmarks/sweep_overhead.py [--trials 4] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from ablate.spec import load_sweep_spec
from ablate.sweep import expand, init_ray, prepare_data, run_sweep
from ablate.trainer import run_trial

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ablate-bench-"))
    spec = yaml.safe_load((ROOT / "tune_specs/quickstart.yaml").read_text())
    spec["base"].update(epochs=args.epochs, cache_dir=str(work / "cache"))
    spec.update(name="overhead", storage_path=str(work / "ray"), tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                max_concurrent_trials=1)
    spec_path = work / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    arms = [a for a in expand(load_sweep_spec(spec_path)) if a.config.method != "zeroshot"][: args.trials]
    spec["grid"] = {"method": sorted({a.config.method for a in arms})}
    spec_path.write_text(yaml.safe_dump(spec))
    arms = expand(load_sweep_spec(spec_path))
    prepare_data(arms)  # generate the data once, outside both timings

    direct = []
    for arm in arms:
        t0 = time.perf_counter()
        metrics = run_trial(arm.config, progress=False)
        direct.append({"method": arm.config.method, "wall_s": time.perf_counter() - t0,
                       "train_s": metrics["train_time_s"]})
        print(json.dumps({"bench": "direct_trial", **direct[-1]}), flush=True)

    t0 = time.perf_counter()
    init_ray()
    ray_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = run_sweep(spec_path)
    sweep_wall = time.perf_counter() - t0
    n = summary["trials"]
    direct_total = sum(d["wall_s"] for d in direct)
    overhead = (sweep_wall - direct_total) / n
    print(json.dumps({
        "bench": "sweep_overhead", "trials": n, "epochs": args.epochs, "ray_start_s": round(ray_start, 2),
        "sweep_wall_s": round(sweep_wall, 2), "direct_total_s": round(direct_total, 2),
        "overhead_per_trial_s": round(overhead, 2),
        "overhead_pct_of_trial": round(100 * overhead / (direct_total / n), 1),
    }), flush=True)


if __name__ == "__main__":
    main()
