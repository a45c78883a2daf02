"""The report's sections: each a function of one data set's context returning markdown, HTML and files;
`register_section` adds one to every report."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field

from mlflow import MlflowClient

from ..probes import probe_markdown  # the registry and markdown only: no torch
from ..published import PublishedTable
from ..world.effect import Observation, effects_html, effects_markdown, pretraining_effects
from ..world.recipe import is_alias
from .plots import _img, cost_plot, per_class_heatmap
from .rows import Search
from .tables import (
    COST_TOLERANCE,
    SCORE_TOLERANCE,
    _diagnostics_html,
    _html_table,
    diagnostics,
    paired_differences,
    table_markdown,
)
from .trials import TEST_SELECTED_NOTE, RunRecord, Table

# ---- sections ---------------------------------------------------------------------------------------

@dataclass
class DatasetContext:
    """What a report section sees for one data set."""

    dataset: str
    trials: list[RunRecord]
    labels: dict[str, str]  # run id -> row label, for the runs of the main table (report.rows.assign_rows)
    table: Table
    client: MlflowClient
    reference: str  # the method paired differences compare against
    heatmap_ratio: float | None  # the per-class heatmap's label ratio; None: every ratio
    published: list[PublishedTable] = field(default_factory=list)  # `--published`: the Reproduction section
    searches: list[Search] = field(default_factory=list)  # the sweep's searched arms, their samples ranked


@dataclass
class Section:
    """A section's share of the report: markdown (table.md), HTML (report.html), files written beside
    them, and numbers returned by `write_report` under `data`'s keys (per data set)."""

    markdown: str = ""
    html: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    data: dict[str, object] = field(default_factory=dict)


SectionFn = Callable[[DatasetContext], Section]


def table_section(ctx: DatasetContext) -> Section:
    note = f"<p class='warn'>{html.escape(TEST_SELECTED_NOTE)}</p>" if ctx.table.test_selected else ""
    return Section(table_markdown(ctx.table), _html_table(ctx.table) + note, data={"tables": ctx.table})


def cost_section(ctx: DatasetContext) -> Section:
    plot, fronts = cost_plot(ctx.table)
    per_ratio = "; ".join(f"{r}: {', '.join(f['trainable_params'])}" for r, f in fronts["per_ratio"].items())
    text = (f"<p>Pareto frontier by trainable parameters, averaged over ratios: "
            f"{html.escape(', '.join(fronts['trainable_params']))}; by train time: "
            f"{html.escape(', '.join(fronts['train_time_s']))}. Per label ratio (parameters): {html.escape(per_ratio)}."
            f" Costs within {COST_TOLERANCE:.0%} and mAP within {SCORE_TOLERANCE} of each other are ties, so a "
            f"method a few parameters cheaper does not push another off the frontier.</p>"
            f"{_img(plot, 'cost vs mAP ' + ctx.dataset)}")
    return Section(html=text, files={f"cost_vs_map_{ctx.dataset}.png": plot}, data={"pareto": fronts})


def paired_section(ctx: DatasetContext) -> Section:
    paired = paired_differences(ctx.dataset, ctx.trials, ctx.labels, ctx.reference)
    rows = "".join(f"<tr><td>{html.escape(p['row'])}</td><td>{html.escape(p['reference'])}</td>"
                   f"<td>{_diff_text(p)}</td><td>{_wins_text(p)}</td></tr>" for p in paired)
    text = (f"<h3>Paired difference vs {html.escape(ctx.reference)} on the same weights</h3>"
            f"<p>{html.escape(PAIRED_NOTE)}</p><table><thead><tr><th>method</th><th>against</th><th>mean ΔmAP "
            f"[95 % interval]</th><th>wins</th></tr></thead><tbody>{rows}</tbody></table>")
    return Section(html=text, data={"paired": paired})


PAIRED_NOTE = ("Each seed's difference is the mean, over the label ratios both ran with that seed, of (method − "
               "reference): pairs share the seed's label mask and images. The interval is the 95 % t interval of "
               "those per-seed differences (none with one seed); wins count the seeds above 0. A row of one run "
               "that reads no seed (zero-shot) pairs with none: its difference is to the reference's mean, with no "
               "interval and no wins.")


def _diff_text(p: dict) -> str:
    interval = f" [{p['low']:+.2f}, {p['high']:+.2f}]" if p["low"] is not None else ""
    return f"{p['mean_diff']:+.2f}{interval}"


def _wins_text(p: dict) -> str:
    if p["wins"] is None:
        return "— (unpaired: one run)"
    return f"{p['wins']} of {p['pairs']} seed{'s' if p['pairs'] != 1 else ''}"


def heatmap_section(ctx: DatasetContext) -> Section:
    ratios = [ctx.heatmap_ratio] if ctx.heatmap_ratio is not None else ctx.table.ratios
    heat = per_class_heatmap(ctx.client, ctx.dataset, ctx.trials, ctx.labels, ratios)
    if heat is None:
        return Section()
    return Section(html=_img(heat, "per-class AP " + ctx.dataset), files={f"per_class_ap_{ctx.dataset}.png": heat})


def diagnostics_section(ctx: DatasetContext) -> Section:
    probes = diagnostics(ctx.dataset, ctx.trials, ctx.labels)
    if not probes:
        return Section(data={"diagnostics": probes})
    return Section("#### Diagnostics\n\n" + probe_markdown(probes), _diagnostics_html(probes),
                   data={"diagnostics": probes})


def world_observations(ctx: DatasetContext) -> list[Observation]:
    """Finished trials on ablate's world checkpoints, labelled by their row without the weights."""
    return [Observation(" ".join(w for w in ctx.labels[t.run_id].split() if not w.startswith("pretrained=")),
                        t.tag("pretrained"), t.ratio if t.ratio is not None else 0.0,  # ratio-free: one key
                        t.tag("seed"), t.metrics["test_map"])
            for t in ctx.trials if t.status == "FINISHED" and t.tag("dataset") == ctx.dataset and t.run_id in ctx.labels
            and is_alias(t.tag("pretrained")) and "test_map" in t.metrics]


def pretraining_section(ctx: DatasetContext) -> Section:
    """Negation- vs presence-captioned world checkpoints, with intervals over checkpoints; empty unless
    both caption styles were run."""
    effects = pretraining_effects(world_observations(ctx))
    return Section(effects_markdown(effects), effects_html(effects), data={"pretraining_effects": effects})


# the report of every data set, in this order; `register_section` adds one
SECTIONS: list[SectionFn] = [table_section, cost_section, paired_section, heatmap_section, diagnostics_section,
                             pretraining_section]


def register_section(section: SectionFn) -> SectionFn:
    """Append a section (a function of DatasetContext returning a Section) to every report."""
    if section not in SECTIONS:
        SECTIONS.append(section)
    return section
