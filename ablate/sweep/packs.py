"""Which arms train together: a grid sweep's arms grouped by pack key (ablate/pack.py), each group split
into packs no larger than an even share of the arms over the cluster's concurrent trial slots, and none
over `max_pack_arms`.

Packing trades parallelism for shared work: full_grid has 542 arms but only 6 image streams, so 6
packs would leave most GPUs idle. No Ray, no torch: this also serves `--dry-run`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..pack import feature_bytes, pack_id, pack_key
from .arms import Arm, expand, samples_per_arm
from .spec import SweepSpec


@dataclass(frozen=True)
class Plan:
    """Arm indices per pack, and why this many."""

    packs: list[list[int]]
    reason: str

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


def plan_packs(spec: SweepSpec, arms: Sequence[Arm], slots: int, slots_from: str) -> Plan:
    """One pack per arm unless the spec packs; else each stream's arms in packs of at most `max_pack_arms`
    and at most an even share of the arms over the `slots` concurrent trials (so no slot idles while
    another works through an oversized pack), each with a like mix of methods."""
    if not spec.packing:
        why = "pack: off" if spec.pack == "off" else "Optuna / ASHA sweeps run one arm per trial"
        return Plan([[i] for i in range(len(arms))], why)
    groups = list(streams(arms).values())
    share = math.ceil(len(arms) / max(slots, 1))
    size = min(spec.max_pack_arms, share)
    counts = [math.ceil(len(g) / size) for g in groups]
    packs = [chunk for group, count in zip(groups, counts) for chunk in _deal(group, arms, count)]
    reason = (f"{len(groups)} image stream(s); at most {size} arms a pack: max_pack_arms {spec.max_pack_arms}, "
              f"and {len(arms)} arms over {slots} concurrent trial slot(s) ({slots_from})")
    return Plan(packs, reason)


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


def describe(spec: SweepSpec) -> dict:
    """`--dry-run`: the arms, the trainings they make (child runs) and, for a packed grid, the packs as a
    sweep on this machine would form them (the launch forms them from what its Ray offers)."""
    arms = expand(spec)
    rows = [{"arm": a.slug, "trials": samples_per_arm(spec, a), "search": sorted(a.search)} for a in arms]
    plan = plan_packs(spec, arms, *local_slots(spec, float(os.cpu_count() or 1), 0.0, "on this machine"))
    out: dict[str, Any] = {"name": spec.name, "arms": len(arms), "trials": sum(r["trials"] for r in rows),
                           "arm_list": rows}
    if spec.packing:
        out |= {"ray_trials": len(plan.packs), "packing": plan.line(len(arms)), "packs": describe_packs(plan, arms)}
    return out
