"""Which arms train together: a grid sweep's arms grouped by pack key (ablate/pack.py), each group split
into packs (none over `max_pack_arms`) and launched longest first, as the planner (ablate/sweep/planner.py)
chooses from what each stream and arm costs (ablate/sweep/costs.py) on the concurrent trial slots.

Packing trades parallelism for shared work: full_grid has 542 arms but only 6 image streams, so 6
packs would leave most GPUs idle, and 542 would pass every image 542 times. No Ray, no torch: this also
serves `--dry-run` and `ablate plan`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..pack import STREAM_FIELDS, feature_bytes, pack_id, pack_key
from . import planner
from .arms import Arm, expand, samples_per_arm
from .costs import CostTable, relative, trains
from .spec import SweepSpec


@dataclass(frozen=True)
class Plan:
    """Arm indices per pack (in launch order), and why this many; the planner's schedule and the costs it
    was made from, when it was planned (not when kept from a launch)."""

    packs: list[list[int]]
    reason: str
    planned: planner.Planned | None = None
    costs: CostTable | None = None

    def line(self, arms: int) -> str:
        sizes = sorted(len(p) for p in self.packs)
        span = f"{sizes[0]}" if sizes[0] == sizes[-1] else f"{sizes[0]}-{sizes[-1]}"
        return f"packs: {arms} arm(s) in {len(self.packs)} Ray trial(s) of {span} arm(s); {self.reason}"


def streams(arms: Sequence[Arm]) -> dict[str, list[int]]:
    """Arm indices by image stream (pack key), in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, arm in enumerate(arms):
        groups.setdefault(json.dumps(pack_key(arm.config), sort_keys=True), []).append(i)
    return groups


def plan_packs(spec: SweepSpec, arms: Sequence[Arm], slots: int, slots_from: str,
               costs: CostTable | None = None) -> Plan:
    """One pack per arm unless the spec packs; else the planner's packs for the `slots` concurrent trials
    from `costs` (default: relative costs), judged against the even-share plan of earlier releases."""
    if not spec.packing:
        why = "pack: off" if spec.pack == "off" else "Optuna / ASHA sweeps run one arm per trial"
        return Plan([[i] for i in range(len(arms))], why)
    table = costs or relative()
    jobs, stream_cost = table.jobs([a.config for a in arms])
    planned = planner.plan(jobs, stream_cost, slots, spec.max_pack_arms, spec.pack_objective,
                           also=[even_shares(spec, arms, slots)])
    groups = streams(arms)
    reason = (f"{len(groups)} image stream(s) on {slots} concurrent trial slot(s) ({slots_from}); "
              f"{planned.reason()}; costs: {table.source}")
    alone = untrained_alone(arms, groups)
    return Plan(planned.schedule.packs, reason + (f"; {alone}" if alone else ""), planned, table)


def even_shares(spec: SweepSpec, arms: Sequence[Arm], slots: int) -> list[list[int]]:
    """The plan of earlier releases: each stream's arms in packs of at most `max_pack_arms` and at most
    an even share of the arms over the slots, each with a like mix of methods. The planner must beat it."""
    groups = list(streams(arms).values())
    size = min(spec.max_pack_arms, math.ceil(len(arms) / max(slots, 1)))
    counts = [math.ceil(len(g) / size) for g in groups]
    return [chunk for group, count in zip(groups, counts) for chunk in _deal(group, arms, count)]


def untrained_alone(arms: Sequence[Arm], groups: dict[str, list[int]]) -> str:
    """Why arms that train nothing (zero-shot) are in packs of their own, when they are: their stream
    differs from every trained arm's of their data set, in the fields their method ignores."""
    lonely = [members for members in groups.values() if not any(trains(arms[i].config) for i in members)]
    if not lonely:
        return ""
    fields: set[str] = set()
    for members in lonely:
        mine = pack_key(arms[members[0]].config)
        for others in groups.values():
            theirs = pack_key(arms[others[0]].config)
            if others is not members and theirs["dataset"] == mine["dataset"] and trains(arms[others[0]].config):
                fields |= {f for f in STREAM_FIELDS if theirs[f] != mine[f]}
    why = (f"their stream differs from the trained arms' in {', '.join(sorted(fields))} (fields they ignore, "
           "so set to their defaults), and a pack shares one stream only between equal pack keys") if fields \
        else "no trained arm reads their data set"
    arm_count = sum(map(len, lonely))
    return (f"{arm_count} arm(s) that train nothing run in {len(lonely)} pack(s) of their own, paying the "
            f"evaluation passes only: {why}")


def _deal(group: list[int], arms: Sequence[Arm], count: int) -> list[list[int]]:
    """`group` in `count` packs of near-equal size, methods interleaved first (each method's first arm,
    then each one's second...), so every pack holds a like mix of methods whatever order the grid has."""
    seen: dict[str, int] = {}
    keyed = []
    for i in group:
        method = arms[i].config.method
        keyed.append((seen.get(method, 0), i))
        seen[method] = seen.get(method, 0) + 1
    order = [i for _, i in sorted(keyed)]
    sizes = [len(order) // count + (k < len(order) % count) for k in range(count)]
    starts = [sum(sizes[:k]) for k in range(count)]
    return [order[start:start + size] for start, size in zip(starts, sizes)]


def local_slots(spec: SweepSpec, cpus: float, gpus: float, source: str) -> tuple[int, str]:
    """Concurrent trials: `max_concurrent_trials`, else what a machine or cluster with these CPUs and GPUs
    runs at once at the spec's resources per trial (at least 1)."""
    if spec.max_concurrent_trials:
        return spec.max_concurrent_trials, "max_concurrent_trials"
    res = spec.resources
    fit = cpus / res.cpu
    if res.gpu > 0:
        fit = min(fit, gpus / res.gpu)
    return max(1, int(fit)), f"{cpus:g} CPUs / {gpus:g} GPUs {source} at {res.cpu:g} CPU, {res.gpu:g} GPU a trial"


def describe_packs(plan: Plan, arms: Sequence[Arm]) -> list[dict]:
    """What `--dry-run` lists per pack: its arms, its pack key and an estimate of its memory."""
    rows = []
    for number, members in enumerate(plan.packs):
        cfg = arms[members[0]].config
        rows.append({"pack": number, "id": pack_id(cfg), "arms": [arms[i].slug for i in members],
                     "key": pack_key(cfg), "shared_features_mib": round(feature_bytes(cfg) / 2**20, 1)})
    return rows


def describe(spec: SweepSpec, plan: Plan | None = None) -> dict:
    """`--dry-run`: the arms, the trainings they make (child runs) and, for a packed grid, the packs of
    `plan` (default: as a sweep on this machine would form them, from relative costs)."""
    arms = expand(spec)
    rows = [{"arm": a.slug, "trials": samples_per_arm(spec, a), "search": sorted(a.search)} for a in arms]
    plan = plan or plan_packs(spec, arms, *local_slots(spec, float(os.cpu_count() or 1), 0.0, "on this machine"))
    out: dict[str, Any] = {"name": spec.name, "arms": len(arms), "trials": sum(r["trials"] for r in rows),
                           "arm_list": rows}
    if spec.packing:
        out |= {"ray_trials": len(plan.packs), "packing": plan.line(len(arms)), "packs": describe_packs(plan, arms)}
    return out
