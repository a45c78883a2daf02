"""The "Pareto front of the search" section: for a multi-objective Optuna search (`optuna.metric` a list), per
arm, the sampled configurations no other sample beats on every objective (objectives averaged over a
sample's seeds), beside a scatter of all samples on the first two objectives. Empty for other sweeps."""

from __future__ import annotations

import html
import json

import matplotlib.pyplot as plt

from ..pareto import OBJECTIVES_TAG, PARETO_TAG, Sample, fronts, parse_objectives, samples
from .plots import _img, _png
from .sections import DatasetContext, Section, register_section
from .trials import RunRecord


def _configuration(trial: RunRecord) -> str:
    """The sampled configuration as its arm's values, without the seed (one run per seed)."""
    arm = json.loads(trial.tags.get("ablate.arm", "{}"))
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in arm.items() if k != "seed")


def _plot(dataset: str, arms: dict[str, list[Sample]], front: dict[str, list[Sample]],
          objectives: list[tuple[str, str]]) -> bytes:
    (x, xmode), (y, ymode) = objectives[:2]
    fig, axes = plt.subplots(1, len(arms), figsize=(5.5 * len(arms), 4.2), squeeze=False)
    for ax, (arm, members) in zip(axes[0], sorted(arms.items())):
        keys = {s.key for s in front[arm]}
        for s in members:
            ax.scatter(s.mean(x), s.mean(y), color="C3" if s.key in keys else "C0", zorder=3)
            ax.annotate(s.key.rsplit("#", 1)[-1], (s.mean(x), s.mean(y)), textcoords="offset points",
                        xytext=(4, 3), fontsize=8)
        line = sorted(front[arm], key=lambda s: s.mean(x))
        ax.plot([s.mean(x) for s in line], [s.mean(y) for s in line], color="C3", alpha=0.6, label="Pareto front")
        ax.set_xlabel(f"{x} ({xmode})")
        ax.set_ylabel(f"{y} ({ymode})")
        ax.set_title(arm, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{dataset}: sampled configurations (mean over seeds), Pareto front in red")
    return _png(fig)


@register_section
def search_front_section(ctx: DatasetContext) -> Section:
    done = [t for t in ctx.trials if t.status == "FINISHED" and t.tag("dataset") == ctx.dataset
            and OBJECTIVES_TAG in t.tags]
    if not done:
        return Section()
    objectives = parse_objectives(done[0].tags[OBJECTIVES_TAG])
    by_id = {t.run_id: t for t in done}
    arms = samples([(t.run_id, t.tags, t.metrics) for t in done], objectives)
    front = fronts(arms, objectives)
    heads = ["sample", "configuration", *(f"{m} ({mode})" for m, mode in objectives), "seeds",
             f"MLflow {PARETO_TAG}"]
    md, page, data = [], [], {}
    first, first_mode = objectives[0]
    for arm, members in sorted(front.items()):
        members = sorted(members, key=lambda s: s.mean(first), reverse=first_mode == "max")  # best first
        rows = [[s.key.rsplit("#", 1)[-1], _configuration(by_id[s.run_ids[0]]),
                 *(f"{s.mean(m):.4g}" for m, _ in objectives), str(len(s.run_ids)),
                 by_id[s.run_ids[0]].tags.get(PARETO_TAG, "—")] for s in members]
        title = f"Pareto front of the search: {arm} ({len(members)} of {len(arms[arm])} sampled configurations)"
        md += [f"#### {title}", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads),
               *("| " + " | ".join(r) + " |" for r in rows), ""]
        th = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in rows)
        page.append(f"<h3>{html.escape(title)}</h3><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>")
        data[arm] = [{"sample": s.key, **{m: s.mean(m) for m, _ in objectives}, "seeds": len(s.run_ids)}
                     for s in members]
    plot = _plot(ctx.dataset, arms, front, objectives)
    page.append(_img(plot, f"search Pareto front {ctx.dataset}"))
    return Section("\n".join(md), "".join(page), files={f"search_front_{ctx.dataset}.png": plot},
                   data={"search_fronts": data})
