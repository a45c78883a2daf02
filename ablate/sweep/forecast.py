"""A sweep's plan before it runs: the slots it will have, the costs (with their source), the packs and
their waves, and the projected wall time, device-hours and price. `ablate plan`, `ablate sweep --dry-run`
and the driver (which stores it on the sweep's parent run) share it. No Ray, no torch (calibrating
imports torch, on request).

Costs are for one whole device (a GPU, or the trial's CPUs). A trial holding a fraction f < 1 of a GPU is
assumed to run at f of its speed (a pack keeps its device busy): its wall time is its cost / f, its
device-hours its cost, whatever f. A CPU trial's device-hours count its CPUs (as the trials record them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .arms import Arm
from .capacity import cluster_capacity
from .costs import CostTable, cached, choose, from_runs, store
from .packs import Plan, even_shares, plan_packs, streams
from .planner import schedule
from .spec import SweepSpec

PLAN_ARTIFACT = "plan.json"  # on the sweep's parent run: the plan and its predictions


@dataclass(frozen=True)
class Slots:
    count: int
    source: str
    device: str  # the device type trials run on: a GPU's name (A10G), "gpu" when unknown, or "cpu"


def slots_for(spec: SweepSpec, cluster: Path | None = None, slots: int | None = None) -> Slots:
    """max_concurrent_trials, else --slots, else the cluster config's capacity, else this machine's CPUs."""
    import os

    from .packs import local_slots

    device = "cpu" if spec.resources.gpu == 0 else "gpu"
    try:
        capacity = cluster_capacity(cluster, spec.resources) if cluster is not None else None
    except ConfigError:
        if not spec.max_concurrent_trials:
            raise
        capacity = None  # the spec says how many trials run at once: the config need not say
    if capacity is not None and capacity.gpu_name:
        device = capacity.gpu_name
    if spec.max_concurrent_trials:
        return Slots(spec.max_concurrent_trials, "max_concurrent_trials", device)
    if slots is not None:
        if slots < 1:
            raise ConfigError(f"--slots {slots}: give the number of trials the cluster holds at once (1 or more)")
        return Slots(slots, "--slots", device)
    if capacity is not None:
        return Slots(capacity.slots, capacity.source, device)
    count, source = local_slots(spec, float(os.cpu_count() or 1), 0.0, "on this machine")
    return Slots(count, f"{source}; --cluster CONFIG or --slots N plans for a cluster", device)


def cost_table(spec: SweepSpec, arms: list[Arm], device: str, tracking_uri: str | None = None,
               experiment: str | None = None, cache_dir: Path | None = None) -> tuple[CostTable, list[str]]:
    """An earlier sweep's runs on `device`, else the cached calibration, else relative costs."""
    from ..tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, spec.tracking_uri)
    configs = [a.config for a in arms]
    return choose(configs, [from_runs(uri, experiment or spec.name, device),
                            cached(cache_dir or calibration_dir(spec), device)])


def calibration_dir(spec: SweepSpec) -> Path:
    return spec.base.resolved_cache_dir().expanduser()


def run_calibration(spec: SweepSpec, arms: list[Arm], cache_dir: Path | None = None, steps: int = 3,
                    batch: int | None = None) -> CostTable:
    """Calibrate every shape of the spec on this machine and cache it."""
    from .calibrate import calibrate

    folder = cache_dir or calibration_dir(spec)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".ablate-write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"cannot write the calibration cache in {folder} ({err}); pass --cache-dir") from None
    table = calibrate([a.config for a in arms], int(spec.resources.cpu), steps=steps, batch=batch)
    store(folder, table)
    return table


def forecast(spec: SweepSpec, arms: list[Arm], slots: Slots, table: CostTable, passed: Sequence[str] = (),
             price: float | None = None, plan: Plan | None = None) -> dict[str, Any]:
    """The plan on `slots` from `table`, with its projected figures; `plan`: one already made."""
    plan = plan or plan_packs(spec, arms, slots.count, slots.source, costs=table)
    res = spec.resources
    speed = min(1.0, res.gpu) if res.gpu > 0 else 1.0
    held = res.gpu if res.gpu > 0 else res.cpu  # the devices a pack holds: device time = its wall x these
    unit = "s" if table.priced else "relative units"
    out: dict[str, Any] = {"slots": slots.count, "slots_from": slots.source, "device": slots.device,
                           "resources_per_pack": {"cpu": res.cpu, "gpu": res.gpu},
                           "costs": table.source, "costs_passed_over": list(passed), "unit": unit,
                           "arms": len(arms), "reason": plan.reason}
    if plan.planned is None:  # one arm a trial: the planner's figures of these packs
        jobs, stream_cost = table.jobs([a.config for a in arms])
        sched = schedule(plan.packs, jobs, stream_cost, slots.count, longest_first=False)
    else:
        sched = plan.planned.schedule
        jobs, stream_cost = table.jobs([a.config for a in arms])
        earlier = schedule(even_shares(spec, arms, slots.count), jobs, stream_cost, slots.count, longest_first=False)
        out["earlier_plan"] = {"packs": len(earlier.packs), "wall": earlier.makespan / speed,
                               "device_time": earlier.device_time * held / speed}
    keys = {key: number for number, key in enumerate(streams(arms))}
    out["packs"] = [{"pack": k, "arms": len(p), "stream": keys[jobs[p[0]].stream],
                     "dataset": arms[p[0]].config.dataset, "seed": arms[p[0]].config.seed,
                     "methods": _methods(arms, p), "predicted": d / speed,
                     "start": start / speed, "slot": slot}
                    for k, (p, d, (slot, start, _)) in enumerate(zip(sched.packs, sched.durations, sched.placed))]
    out["waves"] = [{"wave": w, "packs": len(members), "ends": max(sched.placed[k][2] for k in members) / speed}
                    for w, members in enumerate(sched.waves())]
    out |= {"wall": sched.makespan / speed, "device_time": sched.device_time * held / speed,
            "idle_fraction": sched.idle_fraction}
    if table.priced:
        out["wall_h"] = out["wall"] / 3600
        out["device_hours"] = out["device_time"] / 3600
        if price is not None:
            out["price"] = out["device_hours"] * price
            out["price_per_device_hour"] = price
    return out


GPU_SHARES = (1.0, 0.5, 0.25)  # GPUs a pack: the alternatives `ablate plan --cluster` weighs


def resource_options(spec: SweepSpec, arms: list[Arm], cluster: Path, table: CostTable) -> list[dict[str, Any]]:
    """The plan's wall and device time at each share of a GPU a pack (the spec's CPUs), on the cluster's
    slots at that share, and which is recommended: the shortest wall, then the least device time; within
    1 % of the spec's own share, the spec's (the model cannot tell them apart)."""
    if spec.resources.gpu <= 0 or spec.max_concurrent_trials or not spec.packing:
        return []
    rows = []
    for gpu in sorted({spec.resources.gpu, *GPU_SHARES}, reverse=True):
        res = spec.resources.model_copy(update={"gpu": gpu})
        try:
            capacity = cluster_capacity(cluster, res)
        except ConfigError:  # no node holds a trial of this share
            continue
        variant = spec.model_copy(update={"resources": res})
        planned = plan_packs(variant, arms, capacity.slots, capacity.source, costs=table).planned
        assert planned is not None  # a packed grid
        speed = min(1.0, gpu)
        rows.append({"gpu": gpu, "slots": capacity.slots, "packs": len(planned.schedule.packs),
                     "wall": planned.schedule.makespan / speed,
                     "device_time": planned.schedule.device_time * gpu / speed,
                     "spec": gpu == spec.resources.gpu})
    best = min(rows, key=lambda r: (round(r["wall"], 6), r["device_time"]))
    own = next(r for r in rows if r["spec"])
    pick = own if own["wall"] <= best["wall"] * 1.01 and own["device_time"] <= best["device_time"] * 1.01 else best
    for row in rows:
        row["recommended"] = row is pick
    return rows


def _methods(arms: list[Arm], pack: list[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in pack:
        counts[arms[i].config.method] = counts.get(arms[i].config.method, 0) + 1
    return counts


def text(f: dict[str, Any]) -> str:
    """What `ablate plan` prints."""
    unit = f["unit"]
    num = _duration if unit == "s" else (lambda x: f"{x:,.0f} units")
    lines = [f"slots: {f['slots']} concurrent trial(s) ({f['slots_from']}); device: {f['device']}",
             f"resources per pack: {f['resources_per_pack']['cpu']:g} CPU, {f['resources_per_pack']['gpu']:g} GPU "
             "(costs are a whole device's; a fraction f of a GPU is assumed to run at f of its speed)",
             f"costs: {f['costs']}"]
    lines += [f"  passed over: {p}" for p in f["costs_passed_over"]]
    lines += [f"plan: {f['arms']} arm(s) in {len(f['packs'])} pack(s); {f['reason']}", "packs (launch order):"]
    for p in f["packs"]:
        mix = ", ".join(f"{n} {m}" for m, n in sorted(p["methods"].items()))
        lines.append(f"  {p['pack']:>3}  {p['arms']:>3} arm(s)  stream {p['stream']} ({p['dataset']}, seed "
                     f"{p['seed']})  {mix}  ~{num(p['predicted'])}, slot {p['slot']} from {num(p['start'])}")
    lines.append("waves: " + "; ".join(f"{w['wave'] + 1}: {w['packs']} pack(s), done by {num(w['ends'])}"
                                       for w in f["waves"]))
    wall = f"projected wall time: {num(f['wall'])}"
    if unit == "s":
        lines += [wall + f" ({f['costs']})",
                  f"device-hours: {f['device_hours']:.4g} ({f['costs']})"]
        if "price" in f:
            lines.append(f"price: {f['price']:,.2f} at {f['price_per_device_hour']:g} a device-hour ({f['costs']})")
        else:
            lines.append("price: pass --price-per-device-hour P")
    else:
        lines += [wall + " (no calibration: relative costs only; `ablate plan --calibrate` measures them)",
                  f"device time: {num(f['device_time'])}; price: unknown without calibration"]
    lines.append(f"idle fraction of the slots: {f['idle_fraction']:.1%}")
    for r in f.get("resource_options", []):
        lines.append(f"at {r['gpu']:g} GPU a pack{' (the spec)' if r['spec'] else ''}: {r['slots']} slots, "
                     f"{r['packs']} packs, wall {num(r['wall'])}, device time {num(r['device_time'])}"
                     + ("  <- recommended" if r["recommended"] else ""))
    if "earlier_plan" in f:
        e = f["earlier_plan"]
        lines.append(f"the even-share plan of earlier releases: {e['packs']} pack(s), wall {num(e['wall'])}, "
                     f"device time {num(e['device_time'])}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 360 else f"{seconds / 3600:.2f} h"


def forecast_line(f: dict[str, Any]) -> str:
    """The projection in one line (the driver's)."""
    if f["unit"] != "s":
        return (f"{len(f['packs'])} Ray trial(s) on {f['slots']} slot(s), {f['idle_fraction']:.0%} idle; "
                f"{f['costs']} (`ablate plan --calibrate` prices it)")
    return (f"{len(f['packs'])} Ray trial(s) on {f['slots']} slot(s): about {_duration(f['wall'])} wall, "
            f"{f['device_hours']:.3g} device-hours, {f['idle_fraction']:.0%} idle ({f['costs']})")
