"""The "Reproduction" section (`ablate report --published ...`): this sweep's cells against a paper's table.

Per published cell: the sweep's mean over seeds, the published value, the gap, and whether the published
value lies inside the 95 % prediction interval of one more run (mean ± t · sd · √(1 + 1/n): a published
number is one run, not a mean, so the mean's own interval would call equal methods "outside" far more
often than 5 %); † where the paper picked its epoch on the test split and this sweep on validation, and
every other difference between the paper's protocol (backbone, image size, n_ctx, csc, epochs, selection)
and the row's settings named beside the cell. Parameter counts side by side.
"""

from __future__ import annotations

import html
import math

from ..pack import image_size
from ..published import AVG, PublishedTable
from ..stats import prediction_interval
from .sections import DatasetContext, Section, register_section
from .trials import TEST_SELECTED, RunRecord, Table

PROTOCOL_NOTE = (f"{TEST_SELECTED} protocol difference: the paper picked its epoch on the test split (optimistic), "
                 "this sweep on a held-out validation split.")
NO_INTERVAL = "no interval (one seed)"
VERDICT_NOTE = ("Verdict: the published value against the 95 % prediction interval of one more run of this sweep "
                "(mean ± t · sd · √(1 + 1/n) over seeds): inside means the paper's single run is what this sweep "
                "would produce 95 % of the time.")


def _column(table: Table, paper: PublishedTable, key: str) -> str | None:
    """The report column of a published key; `avg` only when both average the same, known label ratios."""
    if key != AVG:
        return key
    return "Avg" if paper.protocol.avg_columns == sorted(f"{r:g}" for r in table.ratios) else None


def _avg_reason(table: Table, paper: PublishedTable) -> str:
    if paper.protocol.avg_over is None:
        return "the paper does not say which label ratios its average covers"
    return (f"the paper averages {', '.join(paper.protocol.avg_columns or [])}, this sweep "
            f"{', '.join(f'{r:g}' for r in table.ratios)}")


def _row_runs(ctx: DatasetContext) -> dict[str, RunRecord]:
    """Row label -> one of its runs, for the rows of this data set's table."""
    return {ctx.labels[t.run_id]: t for t in ctx.trials
            if t.tag("dataset") == ctx.dataset and ctx.labels.get(t.run_id) in ctx.table.cells}


def _differences(paper: PublishedTable, run: RunRecord) -> list[str]:
    settings = run.settings
    size = settings.get("image_size", "none")
    pixels = image_size(int(size) if size.isdigit() else None, settings.get("backbone", ""))
    return paper.protocol.differences(settings, pixels)


def compare(ctx: DatasetContext, paper: PublishedTable) -> dict:
    """The comparison as data: cells (one per row and published column), params, what was not compared."""
    entries = paper.results.get(ctx.dataset, {})
    runs = _row_runs(ctx)
    rows = {row: run.tag("method") for row, run in runs.items()}
    on_test = paper.protocol.selected_on == "test"
    cells, params, skipped = [], [], []
    for row, method in sorted(rows.items()):
        entry = entries.get(method)
        if entry is None:
            continue
        differs = _differences(paper, runs[row])
        for key, published in entry.map.items():
            col = _column(ctx.table, paper, key)
            cell = ctx.table.cells[row].get(col) if col else None
            if cell is None:
                skipped.append(f"{row} {key}: " + ("not run here" if col else _avg_reason(ctx.table, paper)))
                continue
            pi = prediction_interval(list(cell.values.values()))
            cells.append({"row": row, "method": method, "column": col, "mean": cell.mean, "n": cell.n,
                          "low": pi.low if pi.exists else None, "high": pi.high if pi.exists else None,
                          "published": published, "gap": cell.mean - published,
                          "inside": pi.contains(published) if pi.exists else None,
                          "protocol_differs": on_test and not cell.test_selected, "differences": differs})
        printed = entry.params_value
        here = ctx.table.cost[row]["trainable_params"]
        params.append({"row": row, "here": here, "printed": entry.params,
                       "ratio": here / printed if printed and not math.isnan(here) else None})
    missing = sorted(set(entries) - set(rows.values()))
    return {"paper": paper.name, "citation": paper.citation, "cells": cells, "params": params,
            "skipped": skipped, "not_in_sweep": missing}


def _interval(c: dict) -> str:
    return NO_INTERVAL if c["low"] is None else f"[{c['low']:.2f}, {c['high']:.2f}]"


def _inside(c: dict) -> str:
    return "—" if c["inside"] is None else ("inside" if c["inside"] else "outside")


def _cell_rows(data: dict) -> list[list[str]]:
    return [[c["row"], c["column"], f"{c['mean']:.2f}", _interval(c), str(c["n"]),
             f"{c['published']:.1f}" + (f" {TEST_SELECTED}" if c["protocol_differs"] else ""), f"{c['gap']:+.2f}",
             _inside(c), "; ".join(c["differences"]) or "—"] for c in data["cells"]]


def _param_rows(data: dict) -> list[list[str]]:
    return [[p["row"], f"{p['here']:,.0f}", p["printed"] or "—", "—" if p["ratio"] is None else f"{p['ratio']:.2f}×"]
            for p in data["params"]]


CELL_HEAD = ["method", "label ratio", "this sweep (mean)", "95 % prediction interval", "n seeds", "published",
             "gap", "published value", "protocol differences"]
PARAM_HEAD = ["method", "trainable params here (exact)", "as printed there", "here / there"]


def _notes(data: dict, paper: PublishedTable) -> list[str]:
    notes = [VERDICT_NOTE]
    if any(c["differences"] for c in data["cells"]):
        notes.append("Rows with protocol differences are not like-for-like: the gap mixes the method with the "
                     "differences named beside it.")
    if any(c["protocol_differs"] for c in data["cells"]):
        notes.append(PROTOCOL_NOTE)
    if any(c["low"] is None for c in data["cells"]):
        notes.append("With one seed there is no interval: the gap alone says nothing about chance; run more seeds.")
    notes += [f"Not compared: {s}." for s in data["skipped"]]
    if data["not_in_sweep"]:
        notes.append(f"In the paper, not in this sweep: {', '.join(data['not_in_sweep'])}.")
    if paper.protocol.label_mask:
        notes.append(f"Paper's label mask: {paper.protocol.label_mask}; this sweep keeps each (image, class) label "
                     "with probability p, one seeded draw shared by every method.")
    notes += [f"Paper's protocol: {n}" for n in paper.protocol.notes]
    if paper.source.code is None:
        notes.append("The source gives no code address.")
    return notes


def _markdown(title: str, data: dict, notes: list[str]) -> str:
    def table(head: list[str], rows: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]

    lines = [f"#### {title}", "", *table(CELL_HEAD, _cell_rows(data)), "", *table(PARAM_HEAD, _param_rows(data))]
    return "\n".join([*lines, "", *notes]) + "\n"


def _html(title: str, data: dict, notes: list[str]) -> str:
    def table(head: list[str], rows: list[list[str]]) -> str:
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"

    listing = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (f"<h3>{html.escape(title)}</h3>{table(CELL_HEAD, _cell_rows(data))}"
            f"{table(PARAM_HEAD, _param_rows(data))}<ul>{listing}</ul>")


@register_section
def reproduction_section(ctx: DatasetContext) -> Section:
    """One part per published table that has numbers for this data set; nothing without --published."""
    markdown, pages, found = [], [], []
    for paper in ctx.published:
        if ctx.dataset not in paper.results:
            continue
        data = compare(ctx, paper)
        title = f"Reproduction: {paper.citation} ({paper.name})"
        notes = _notes(data, paper)
        markdown.append(_markdown(title, data, notes))
        pages.append(_html(title, data, notes))
        found.append(data)
    if not found:
        return Section()
    return Section("\n".join(markdown), "".join(pages), data={"reproduction": found})
