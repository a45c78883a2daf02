"""Balanced partial sweeps: grid arms interleave methods and label ratios within each seed, so a sweep
stopped part-way has comparable cells; the report says how many seeds each cell has of those asked for."""

from __future__ import annotations

from ablate.sweep import expand
from ablate.sweep.arms import spread_ranks
from ablate.sweep.spec import SweepSpec

METHODS = ["dualcoop", "positivecoop", "baseline"]
RATIOS = [0.1, 0.3, 0.5, 0.7, 0.9]


def arms_of(grid: dict) -> list[tuple]:
    spec = SweepSpec(name="b", base={"dataset": "synthetic"}, grid=grid)
    return [(a.config.seed, a.config.label_ratio, a.config.method) for a in expand(spec)]


def test_each_seed_runs_every_method_at_one_ratio_before_the_next():
    arms = arms_of({"method": METHODS, "label_ratio": RATIOS, "seed": [0, 1]})
    assert len(arms) == 30
    assert [s for s, _, _ in arms] == [0] * 15 + [1] * 15  # seed 0 complete before seed 1 starts
    for start in range(0, 30, 3):  # every run of three is one (seed, ratio) cell with all methods
        block = arms[start:start + 3]
        assert len({(s, r) for s, r, _ in block}) == 1 and [m for *_, m in block] == METHODS
    # ratios spread: the ends, then the middle, so a third of a seed already spans the range
    assert [r for _, r, _ in arms[0:15:3]] == [0.1, 0.9, 0.5, 0.3, 0.7]


def test_merged_arms_keep_their_first_place():
    # zero-shot ignores ratio and seed: one arm, at its first combination's place
    arms = arms_of({"method": ["zeroshot", "baseline"], "label_ratio": [0.1, 0.9], "seed": [0, 1]})
    assert arms == [(0, 0.5, "zeroshot"), (0, 0.1, "baseline"), (0, 0.9, "baseline"), (1, 0.1, "baseline"),
                    (1, 0.9, "baseline")]


def test_spread_ranks_put_the_ends_and_midpoints_first():
    assert spread_ranks(1) == [0] and spread_ranks(2) == [0, 1]
    ranks = spread_ranks(9)
    assert sorted(range(9), key=ranks.__getitem__) == [0, 8, 4, 2, 6, 1, 3, 5, 7]
