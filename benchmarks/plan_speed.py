"""The pack plan of earlier releases (even shares of the arms over the slots, launched in grid order) against
the planner's (ablate/sweep/planner.py: pack counts per stream and a longest-first launch) on a spec
(default tune_specs/full_grid.yaml) at 8, 16 and 64 concurrent trial slots, simulated with costs calibrated
on this machine's CPU (`ablate plan --calibrate`'s measurement: random weights, the data set's official
sizes where its data is not here, the encoder on a small batch scaled to the spec's).

Printed: one JSON line with the calibration, then a table of makespan and device time (hours of one
device, busy time) per plan and slot count, and the planner's gain.

    python benchmarks/plan_speed.py [--spec tune_specs/full_grid.yaml] [--slots 8 16 64] [--threads 1] [--batch 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from ablate.sweep import expand, resolve_spec_path
from ablate.sweep.costs import cached, store
from ablate.sweep.packs import even_shares, plan_packs
from ablate.sweep.planner import schedule
from ablate.sweep.spec import load_sweep_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="tune_specs/full_grid.yaml")
    parser.add_argument("--slots", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    parser.add_argument("--batch", type=int, default=2, help="images an encoder calibration step (scaled to the "
                        "spec's batch)")
    parser.add_argument("--steps", type=int, default=2, help="timed calibration steps a shape")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "ablate-plan-speed",
                        help="the calibration is cached here and reused")
    args = parser.parse_args()
    spec = load_sweep_spec(resolve_spec_path(args.spec))
    arms = expand(spec)
    configs = [a.config.model_copy(update={"device": "cpu"}) for a in arms]
    table = cached(args.cache_dir, "cpu")
    started = time.perf_counter()
    if table is None or table.missing(configs):
        from ablate.sweep.calibrate import calibrate

        store(args.cache_dir, calibrate(configs, args.threads, steps=args.steps, batch=args.batch, progress=False))
        table = cached(args.cache_dir, "cpu")
    assert table is not None
    print(json.dumps({"bench": "plan_speed", "line": "calibration", "spec": args.spec, "arms": len(arms),
                      "source": table.source, "seconds": round(time.perf_counter() - started, 1),
                      "stream_s_per_batch": table.stream, "own_s_per_step": table.own}), flush=True)
    jobs, stream_cost = table.jobs(configs)
    rows = []
    for slots in args.slots:
        earlier = schedule(even_shares(spec, arms, slots), jobs, stream_cost, slots, longest_first=False)
        plan = plan_packs(spec, arms, slots, "--slots", costs=table)
        assert plan.planned is not None
        new = plan.planned.schedule
        rows.append((slots, "even shares (earlier)", earlier))
        rows.append((slots, "planner", new))
    print(f"{'slots':>5}  {'plan':<22} {'packs':>5} {'makespan h':>11} {'device h':>10} {'idle':>6} "
          f"{'bound h':>8} {'vs bound':>8}")
    for slots, name, s in rows:
        bound = max(s.device_time / slots, max(s.durations))
        print(f"{slots:>5}  {name:<22} {len(s.packs):>5} {s.makespan / 3600:>11.1f} {s.device_time / 3600:>10.1f} "
              f"{s.idle_fraction:>6.1%} {bound / 3600:>8.1f} {s.makespan / bound:>8.2f}")
    for k in range(0, len(rows), 2):
        (slots, _, old), (_, _, new) = rows[k], rows[k + 1]
        print(json.dumps({"bench": "plan_speed", "line": "gain", "slots": slots,
                          "makespan_ratio_planner_over_earlier": round(new.makespan / old.makespan, 3),
                          "device_time_ratio_planner_over_earlier": round(new.device_time / old.device_time, 3)}))


if __name__ == "__main__":
    main()
