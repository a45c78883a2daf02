"""How a packed grid's arms are split into packs and launched on a number of concurrent trial slots, from
what each pack costs: a pack pays its image stream once and every arm's own compute, so fewer packs cost
less device time and more packs spread over the slots sooner.

Pure (no Ray, torch or spec): the planner sees arms as (stream, own cost), the streams' costs and the slots.
It tries, for every pack duration a stream could be cut to, the pack counts per stream that fit it, splits
each stream's arms into that many packs of near-equal own cost, simulates them launched longest first on
the slots, and keeps the plan that finishes first (objective `time`, among plans within `slack` of the
cheapest plan's device time) or the cheapest one (objective `cost`); ties go to the other figure.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Objective = Literal["time", "cost"]
SLACK = 0.10  # `time` may spend this much more device time than the cheapest plan


@dataclass(frozen=True)
class Job:
    """An arm as the planner sees it: its image stream and its own compute (the stream's cost aside)."""

    stream: str
    own: float


@dataclass(frozen=True)
class Schedule:
    """Packs in launch order, each pack's duration, and where it runs: (slot, start, end) per pack."""

    packs: list[list[int]]
    durations: list[float]
    placed: list[tuple[int, float, float]]
    slots: int

    @property
    def makespan(self) -> float:
        return max((end for _, _, end in self.placed), default=0.0)

    @property
    def device_time(self) -> float:
        return sum(self.durations)

    @property
    def idle_fraction(self) -> float:
        """Of the slots' time from the first launch to the last pack's end, the part no pack used."""
        span = self.makespan * self.slots
        return 0.0 if span <= 0 else max(0.0, 1.0 - self.device_time / span)

    def waves(self) -> list[list[int]]:
        """Packs grouped by how many packs ran before them on their slot: wave 0 is the first launch."""
        depth: dict[int, int] = {}
        waves: list[list[int]] = []
        for pack, (slot, _, _) in enumerate(self.placed):
            wave = depth.get(slot, 0)
            depth[slot] = wave + 1
            waves.extend([] for _ in range(wave + 1 - len(waves)))
            waves[wave].append(pack)
        return waves


@dataclass(frozen=True)
class Planned:
    """The chosen schedule and why: the cheapest plan's device time and the limit the choice kept to."""

    schedule: Schedule
    objective: Objective
    cheapest_device_time: float
    limit: float
    candidates: int
    slack: float = SLACK

    def reason(self) -> str:
        s = self.schedule
        extra = s.device_time / self.cheapest_device_time - 1 if self.cheapest_device_time else 0.0
        over = self.limit / self.cheapest_device_time - 1 if self.cheapest_device_time else 0.0
        what = (f"the shortest makespan among plans within {over:+.0%} of the cheapest plan's device time"
                if self.objective == "time" else "the least device time")
        if self.objective == "time" and over > self.slack + 1e-9:
            what += " (what the even-share plan of earlier releases spends: never slower than that plan)"
        return (f"pack_objective {self.objective}: {what}, of {self.candidates} candidate plan(s); this one uses "
                f"{extra:+.1%} device time over the cheapest and leaves {s.idle_fraction:.1%} of the slots idle")


def simulate(durations: Sequence[float], slots: int) -> list[tuple[int, float, float]]:
    """(slot, start, end) of each pack launched in the given order, each on the slot that frees first."""
    free = [(0.0, slot) for slot in range(max(1, slots))]
    placed = []
    for duration in durations:
        start, slot = heapq.heappop(free)
        placed.append((slot, start, start + duration))
        heapq.heappush(free, (start + duration, slot))
    return placed


def schedule(packs: Sequence[Sequence[int]], jobs: Sequence[Job], stream_cost: Mapping[str, float], slots: int,
             longest_first: bool = True) -> Schedule:
    """`packs` launched on `slots`: longest first, or in the order given (as Tune launches a grid)."""
    durations = [pack_duration(p, jobs, stream_cost) for p in packs]
    order = sorted(range(len(packs)), key=lambda k: (-durations[k], k)) if longest_first else list(range(len(packs)))
    ordered = [list(packs[k]) for k in order]
    times = [durations[k] for k in order]
    return Schedule(ordered, times, simulate(times, slots), max(1, slots))


def pack_duration(pack: Sequence[int], jobs: Sequence[Job], stream_cost: Mapping[str, float]) -> float:
    return stream_cost[jobs[pack[0]].stream] + sum(jobs[i].own for i in pack)


def split(members: Sequence[int], jobs: Sequence[Job], count: int) -> list[list[int]]:
    """`members` in `count` packs of near-equal own cost and size (sizes differ by at most one): the
    costliest arm first, each into the lightest pack that still has room."""
    base, extra = divmod(len(members), count)
    room = [base + (k < extra) for k in range(count)]
    packs: list[list[int]] = [[] for _ in range(count)]
    heap = [(0.0, k) for k in range(count)]
    for i in sorted(members, key=lambda i: (-jobs[i].own, i)):
        skipped = []
        load, k = heapq.heappop(heap)
        while len(packs[k]) >= room[k]:
            skipped.append((load, k))
            load, k = heapq.heappop(heap)
        packs[k].append(i)
        heapq.heappush(heap, (load + jobs[i].own, k))
        for item in skipped:
            heapq.heappush(heap, item)
    return [sorted(p) for p in packs]


def streams(jobs: Sequence[Job]) -> dict[str, list[int]]:
    """Arm indices by stream, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.stream, []).append(i)
    return groups


def _counts_for(target: float, groups: dict[str, list[int]], jobs: Sequence[Job],
                stream_cost: Mapping[str, float], max_pack_arms: int) -> tuple[int, ...]:
    """Packs per stream so that none lasts much over `target` (as few as fit; at least what max_pack_arms asks)."""
    counts = []
    for stream, members in groups.items():
        own = sum(jobs[i].own for i in members)
        room = target - stream_cost[stream]
        fit = math.ceil(own / room - 1e-9) if room > 0 else len(members)
        counts.append(min(len(members), max(math.ceil(len(members) / max_pack_arms), fit, 1)))
    return tuple(counts)


def plan(jobs: Sequence[Job], stream_cost: Mapping[str, float], slots: int, max_pack_arms: int,
         objective: Objective = "time", slack: float = SLACK,
         also: Sequence[Sequence[Sequence[int]]] = ()) -> Planned:
    """The packs and their launch order for `jobs` on `slots` (see the module's doc). `also`: further
    candidate pack lists (the plan an earlier release made), judged like the planner's own; under `time`
    the device-time limit is at least what each of them spends, so the choice never finishes later."""
    if not jobs:
        raise ValueError("no arms to plan")
    groups = streams(jobs)
    targets = {stream_cost[s] + sum(jobs[i].own for i in members) / n
               for s, members in groups.items() for n in range(1, len(members) + 1)}
    vectors = {_counts_for(t, groups, jobs, stream_cost, max_pack_arms) for t in targets}
    vectors.add(tuple(math.ceil(len(m) / max_pack_arms) for m in groups.values()))  # the cheapest
    candidates = [schedule([p for members, n in zip(groups.values(), counts) for p in split(members, jobs, n)],
                           jobs, stream_cost, slots) for counts in sorted(vectors)]
    earlier = [s for packs in also for s in (schedule(packs, jobs, stream_cost, slots, longest_first=False),
                                             schedule(packs, jobs, stream_cost, slots))]
    candidates += earlier  # judged in the order given and longest first: whichever finishes sooner
    cheapest = min(c.device_time for c in candidates)
    if objective == "cost":
        limit = cheapest
        best = min(candidates, key=lambda c: (_close(c.device_time), _close(c.makespan)))
    else:  # never slower than an earlier plan for want of the device time that plan spent
        limit = max([cheapest * (1 + slack), *(c.device_time for c in earlier)])
        eligible = [c for c in candidates if c.device_time <= limit * (1 + 1e-12)]
        best = min(eligible, key=lambda c: (_close(c.makespan), _close(c.device_time)))
    return Planned(best, objective, cheapest, limit, len(candidates), slack)


def _close(x: float) -> float:
    """`x` to 9 significant digits: sums of the same costs in another order tie."""
    return float(f"{x:.9g}")
