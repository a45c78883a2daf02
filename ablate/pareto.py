"""Pareto fronts of a multi-objective search: which sampled configurations no other one beats on every
objective. Pure functions of run tags and metrics, shared by the MLflow tagging and the report."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

PARETO_TAG = "ablate.pareto_front"  # "true" / "false" on every seed run of a multi-objective search
OBJECTIVES_TAG = "ablate.objectives"  # "val_map:max,device_hours:min": what the front was computed on
SAMPLE_TAG = "ablate.sample"  # "<arm>#<n>": the sampled configuration a trial run belongs to
# an objective's name in Tune's results -> the trial run's MLflow metric holding the same number
OBJECTIVE_METRICS = {"val_map": "best_val_map", "loss": "train_loss", "device_hours": "device_hours",
                     "trainable_params": "trainable_params"}


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """a is at least as good as b on every objective and better on one."""
    better = [(x - y) if m == "max" else (y - x) for x, y, m in zip(a, b, modes)]
    return all(d >= 0 for d in better) and any(d > 0 for d in better)


K = TypeVar("K", bound=Hashable)


def pareto_front(points: dict[K, Sequence[float]], modes: Sequence[str]) -> list[K]:
    """The keys no other point dominates (ties both stay), in the order given."""
    return [k for k, p in points.items() if not any(dominates(q, p, modes) for o, q in points.items() if o != k)]


def objectives_text(objectives: Iterable[tuple[str, str]]) -> str:
    return ",".join(f"{m}:{mode}" for m, mode in objectives)


def parse_objectives(text: str) -> list[tuple[str, str]]:
    return [(part.split(":")[0], part.split(":")[1]) for part in text.split(",") if ":" in part]


@dataclass
class Sample:
    """One sampled configuration: its runs (one per seed) and the mean of each objective over them."""

    arm: str
    key: str
    run_ids: list[str] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)

    def mean(self, objective: str) -> float:
        return float(np.mean(self.values.get(objective, [np.nan])))


def samples(runs: Iterable[tuple[str, dict[str, str], dict[str, float]]],
            objectives: Sequence[tuple[str, str]]) -> dict[str, list[Sample]]:
    """Arm -> its samples, from (run id, tags, metrics) of finished runs tagged with their sample; runs
    missing an objective's metric are left out (a trial stopped before it was measured)."""
    found: dict[str, Sample] = {}
    for run_id, tags, metrics in runs:
        key = tags.get(SAMPLE_TAG)
        if not key or any(OBJECTIVE_METRICS[m] not in metrics for m, _ in objectives):
            continue
        sample = found.setdefault(key, Sample(key.rsplit("#", 1)[0], key))
        sample.run_ids.append(run_id)
        for m, _ in objectives:
            sample.values.setdefault(m, []).append(float(metrics[OBJECTIVE_METRICS[m]]))
    arms: dict[str, list[Sample]] = {}
    for sample in found.values():
        arms.setdefault(sample.arm, []).append(sample)
    return arms


def fronts(arms: dict[str, list[Sample]], objectives: Sequence[tuple[str, str]]) -> dict[str, list[Sample]]:
    """Arm -> the samples on its Pareto front (objectives averaged over seeds)."""
    modes = [mode for _, mode in objectives]
    out = {}
    for arm, members in arms.items():
        points: dict[str, Sequence[float]] = {s.key: [s.mean(m) for m, _ in objectives] for s in members}
        keep = set(pareto_front(points, modes))
        out[arm] = [s for s in members if s.key in keep]
    return out
