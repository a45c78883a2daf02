"""The pack planner on synthetic cost tables: full_grid's shape with measured per-step costs, one slot,
and random tables against the plan an earlier release made (even shares of the arms over the slots)."""

from __future__ import annotations

import math
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from ablate.sweep.planner import SLACK, Job, plan, schedule, simulate, split

# hypothesis keeps caches in ./.hypothesis by default: the working directory is the user's
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="ablate-hypothesis-"))

# benchmarks/projected_cost.py's per-step costs (RN101 @ 448): the image stream and each method's own compute
STREAM, OWN = 51.0, {"dualcoop": 19.5, "positivecoop": 10.0, "negativecoop": 10.0, "baseline": 0.4}


def full_grid() -> tuple[list[Job], dict[str, float]]:
    """full_grid's arms in its grid order (methods innermost): per data set and seed (the stream), per label
    ratio, each prompt method at 3 context lengths and the baseline once (no contexts); and one zero-shot
    arm per data set (evaluation passes only)."""
    jobs, cost = [], {}
    for dataset in ("coco2014", "voc2007"):
        for seed in range(3):
            key = f"{dataset}/{seed}"
            cost[key] = STREAM
            for _ratio in range(9):
                jobs += [Job(key, own) for _ctx in range(3) for m, own in OWN.items() if m != "baseline"]
                jobs.append(Job(key, OWN["baseline"]))
        cost[f"{dataset}/zeroshot"] = 1.0
        jobs.append(Job(f"{dataset}/zeroshot", 0.0))
    return jobs, cost


def even_shares(jobs: list[Job], slots: int, max_pack_arms: int) -> list[list[int]]:
    """The earlier release's plan (ablate.sweep.packs before the planner): each stream in packs of at most
    min(max_pack_arms, an even share of all arms over the slots)."""
    size = min(max_pack_arms, math.ceil(len(jobs) / slots))
    groups: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.stream, []).append(i)
    packs = []
    for members in groups.values():
        count = math.ceil(len(members) / size)
        base, extra = divmod(len(members), count)
        start = 0
        for k in range(count):
            packs.append(members[start:start + base + (k < extra)])
            start += base + (k < extra)
    return packs


def test_full_grid_on_16_slots_is_within_10_percent_of_the_bound():
    jobs, cost = full_grid()
    chosen = plan(jobs, cost, 16, 32).schedule
    bound = max(chosen.device_time / 16, max(chosen.durations))
    assert chosen.makespan <= 1.10 * bound
    earlier = schedule(even_shares(jobs, 16, 32), jobs, cost, 16, longest_first=False)
    assert chosen.makespan < earlier.makespan  # the earlier plan's second wave of 2 packs on 16 slots


def test_one_slot_gets_the_cheapest_plan():
    jobs, cost = full_grid()
    planned = plan(jobs, cost, 1, 32)
    fewest = sum(math.ceil(n / 32) for n in (90,) * 6) + 2  # each stream in as few packs as max_pack_arms allows
    assert len(planned.schedule.packs) == fewest
    assert planned.schedule.device_time == pytest.approx(planned.cheapest_device_time)
    assert planned.schedule.makespan == pytest.approx(planned.schedule.device_time)


def test_cost_objective_takes_the_least_device_time():
    jobs, cost = full_grid()
    by_time, by_cost = plan(jobs, cost, 16, 32), plan(jobs, cost, 16, 32, objective="cost")
    assert by_cost.schedule.device_time == pytest.approx(by_cost.cheapest_device_time)
    assert by_cost.schedule.device_time < by_time.schedule.device_time
    assert by_time.schedule.makespan < by_cost.schedule.makespan


def test_packs_launch_longest_first_and_hold_every_arm_once():
    jobs, cost = full_grid()
    chosen = plan(jobs, cost, 16, 32).schedule
    assert chosen.durations == sorted(chosen.durations, reverse=True)
    assert sorted(i for p in chosen.packs for i in p) == list(range(len(jobs)))
    assert all(len({jobs[i].stream for i in p}) == 1 and len(p) <= 32 for p in chosen.packs)
    assert sum(len(w) for w in chosen.waves()) == len(chosen.packs) and len(chosen.waves()[0]) == 16


def test_split_balances_own_cost_and_size():
    jobs = [Job("s", c) for c in (9, 1, 1, 1, 8, 1, 1, 2)]
    packs = split(list(range(len(jobs))), jobs, 2)
    assert sorted(map(len, packs)) == [4, 4]
    assert sorted(sum(jobs[i].own for i in p) for p in packs) == [12, 12]


def test_simulate_puts_each_pack_on_the_first_free_slot():
    assert simulate([5, 3, 2, 2], 2) == [(0, 0.0, 5.0), (1, 0.0, 3.0), (1, 3.0, 5.0), (0, 5.0, 7.0)]


def test_idle_fraction_counts_the_slots_no_pack_used():
    jobs = [Job("a", 0.0), Job("b", 0.0)]
    two = schedule([[0], [1]], jobs, {"a": 3.0, "b": 1.0}, 2)
    assert two.makespan == 3.0 and two.idle_fraction == pytest.approx(1 - 4 / 6)


tables = st.lists(st.tuples(st.floats(0.0, 100.0),  # a stream's cost
                            st.lists(st.floats(0.0, 40.0), min_size=1, max_size=40)),  # its arms' own costs
                  min_size=1, max_size=6)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables, st.integers(1, 70), st.integers(1, 40))
def test_never_slower_than_the_earlier_plan_nor_more_than_slack_over_its_device_time(table, slots, max_pack_arms):
    jobs = [Job(str(s), own) for s, (_, owns) in enumerate(table) for own in owns]
    cost = {str(s): stream for s, (stream, _) in enumerate(table)}
    earlier_packs = even_shares(jobs, slots, max_pack_arms)
    earlier = schedule(earlier_packs, jobs, cost, slots, longest_first=False)
    planned = plan(jobs, cost, slots, max_pack_arms, also=[earlier_packs])
    chosen = planned.schedule
    tol = 1e-9 * max(1.0, earlier.makespan)
    assert chosen.makespan <= earlier.makespan + tol
    assert chosen.device_time <= max((1 + SLACK) * planned.cheapest_device_time, earlier.device_time) + tol
    assert chosen.device_time <= (1 + SLACK) * earlier.device_time + tol
    assert sorted(i for p in chosen.packs for i in p) == list(range(len(jobs)))
    assert all(len(p) <= max_pack_arms for p in chosen.packs)
    if slots == 1:
        assert chosen.device_time == pytest.approx(planned.cheapest_device_time)
