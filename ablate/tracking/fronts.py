"""A multi-objective search's Pareto fronts in MLflow: every seed run of a sampled configuration on its arm's
front gets `ablate.pareto_front = true` (the others `false`), so a UI filter shows the front."""

from __future__ import annotations

from collections.abc import Sequence

from ..pareto import OBJECTIVES_TAG, PARETO_TAG, SAMPLE_TAG, fronts, objectives_text, samples
from .store import open_client, retried


def tag_pareto_fronts(uri: str, experiment_id: str, parent_run_id: str,
                      objectives: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """Tag the finished sampled runs of a sweep; returns arm -> the sample keys on its front."""
    client = open_client(uri)
    runs = retried(client.search_runs, [experiment_id], max_results=50000,
                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'FINISHED'")
    sampled = [(r.info.run_id, r.data.tags, r.data.metrics) for r in runs if SAMPLE_TAG in r.data.tags]
    arms = samples(sampled, objectives)
    front = fronts(arms, objectives)
    on_front = {s.key for members in front.values() for s in members}
    text = objectives_text(objectives)
    for members in arms.values():
        for sample in members:
            for run_id in sample.run_ids:
                retried(client.set_tag, run_id, PARETO_TAG, str(sample.key in on_front).lower())
                retried(client.set_tag, run_id, OBJECTIVES_TAG, text)
    return {arm: [s.key for s in members] for arm, members in front.items()}
