"""The numbers: per-dataset tables (mean over seeds per method and ratio), Pareto sets, paired differences,
diagnostics, and their markdown / HTML / CSV forms."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import yaml

from ..catalogue import metrics
from ..probes import probe_columns  # the registry and markdown only: no torch
from ..spec import ignored_fields
from ..stats import mean_interval
from ..sweep.arms import expand, samples_per_arm
from ..sweep.spec import SweepSpec
from ..tracking.names import ARM_FIELDS, NOT_READ, arm_tags
from .trials import CELL_NOTE, RATIO_FREE, RATIO_FREE_NOTE, TEST_SELECTED_NOTE, TIE, Cell, RunRecord, Table

# ---- numbers ---------------------------------------------------------------------------------------

def _cell(values: list[float], test_selected: bool = False, expected: int = 0) -> Cell:
    """Mean, std and the 95 % t interval over seeds (the world section's statistics code)."""
    arr = np.asarray(values, dtype=float)
    ci = mean_interval(values)
    return Cell(float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, len(arr), test_selected,
                ci.low, ci.high, expected)


def mark_best(table: Table) -> None:
    """Per column: bold the best mean only when its interval overlaps no other row's; otherwise the best
    and every row it is not separated from are a tie."""
    for col in table.columns:
        scored = {row: c[col] for row, c in table.cells.items() if col in c}
        if not scored:
            continue
        top = max(scored, key=lambda row: scored[row].mean)
        tied = [row for row, c in scored.items() if row != top and c.interval.overlaps(scored[top].interval)]
        if tied:
            table.tied[col] = [top, *sorted(tied, key=lambda row: -scored[row].mean)]
        else:
            table.best[col] = top


def _mark(table: Table, row: str, col: str, text: str) -> str:
    """A cell's text with its tie mark (bold is the caller's: markdown and HTML differ)."""
    return f"{text} {TIE}" if row in table.tied.get(col, ()) else text


def build_table(dataset: str, trials: list[RunRecord], labels: dict[str, str], expected: int = 0) -> Table:
    """`expected`: seeds the sweep asks for per cell (`expected_seeds`); cells with fewer are marked."""
    done = [t for t in trials if t.status == "FINISHED" and t.tag("dataset") == dataset]
    ratios = sorted({t.ratio for t in done if t.ratio is not None})
    by_row: dict[str, list[RunRecord]] = {}
    for t in done:
        by_row.setdefault(labels[t.run_id], []).append(t)
    cells, cost, free = {}, {}, set()
    for row, members in sorted(by_row.items()):
        # seed -> ratio -> test mAP; ratio-free rows (zero-shot) count for every ratio column
        per_seed: dict[str, dict[float, float]] = {}
        for t in members:
            for r in (ratios if t.ratio is None else [t.ratio]):
                per_seed.setdefault(t.tag("seed"), {})[r] = t.metrics["test_map"]
        if all(t.ratio is None for t in members):
            free.add(row)
        row_cells = {}
        on_test = any(t.test_selected for t in members)
        # a method that ignores the seed (zero-shot) runs once: its cells wait for no other seed
        wanted = 1 if all(t.tag("seed") == NOT_READ for t in members) else expected
        for r in ratios:
            values = [s[r] for s in per_seed.values() if r in s]
            if values:
                row_cells[f"{r:g}"] = _cell(values, on_test, wanted)
        complete = [float(np.mean([s[r] for r in ratios])) for s in per_seed.values() if all(r in s for r in ratios)]
        if row in free and not ratios:  # only ratio-free trials in the data set: their own numbers
            complete = [t.metrics["test_map"] for t in members]
        if complete:
            row_cells["Avg"] = _cell(complete, on_test, wanted)
        cells[row] = row_cells
        cost[row] = {m.name: float(np.mean([t.metrics.get(m.name, float("nan")) for t in members]))
                     for m in metrics(column="report")}
    table = Table(dataset, ratios, cells, cost, ratio_free_rows=free)
    mark_best(table)
    return table


COST_TOLERANCE = 0.05  # costs within 5 % of each other are a tie on the frontier
SCORE_TOLERANCE = 0.1  # mAP points: scores this close are a tie


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a beats b: no meaningfully higher cost, no meaningfully lower score, and meaningfully better in one."""
    (ca, sa), (cb, sb) = a, b
    no_worse = ca <= cb * (1 + COST_TOLERANCE) and sa >= sb - SCORE_TOLERANCE
    return no_worse and (ca < cb * (1 - COST_TOLERANCE) or sa > sb + SCORE_TOLERANCE)


def pareto(points: dict[str, tuple[float, float]]) -> list[str]:
    """Rows not dominated in (lower cost, higher mAP), ordered by cost; a row a few percent cheaper with
    about the same score (COST_TOLERANCE, SCORE_TOLERANCE) does not push another off the frontier."""
    front = [name for name, p in points.items()
             if not any(_dominates(q, p) for other, q in points.items() if other != name)]
    return sorted(front, key=lambda n: points[n])


def near_ties(points: dict[str, tuple[float, float]], names: list[str]) -> set[str]:
    """Those of `names` whose cost is within COST_TOLERANCE of another's: the frontier cannot tell them apart."""
    return {a for a in names for b in names if a != b
            and abs(points[a][0] - points[b][0]) <= COST_TOLERANCE * max(points[a][0], points[b][0])}


WEIGHT_FIELDS = ("backbone", "pretrained")  # trials on other weights are not paired


def _weights(t: RunRecord) -> tuple[str, ...]:
    return tuple(t.tag(f) for f in WEIGHT_FIELDS)


def paired_differences(dataset: str, trials: list[RunRecord], labels: dict[str, str], reference: str) -> list[dict]:
    """Each row vs the reference method on the same weights, label ratio and seed.

    Per seed, the row's difference is its mean over the label ratios both ran; `mean_diff` ± `std_diff` and
    `wins` are taken over seeds (`over: "seeds"`). With one seed there is nothing to spread: `mean_diff` is
    that seed's mean over ratios, `std_diff` is None and `wins` counts ratios (`over: "ratios"`).
    The reference row is the reference method's row on the same backbone and pre-trained weights (the first
    label when it has several, e.g. several n_ctx); a ratio-free row (zero-shot) is compared with every trial
    of that reference row. Rows on weights the reference method never ran on are left out.
    """
    done = [t for t in trials if t.status == "FINISHED" and t.tag("dataset") == dataset]
    ref_label: dict[tuple[str, ...], str] = {}
    for t in sorted((t for t in done if t.tag("method") == reference), key=lambda t: labels[t.run_id]):
        ref_label.setdefault(_weights(t), labels[t.run_id])
    ref: dict[str, dict[tuple[float | None, str], float]] = {}
    for t in done:
        if labels[t.run_id] in ref_label.values():
            ref.setdefault(labels[t.run_id], {})[(t.ratio, t.tag("seed"))] = t.metrics["test_map"]
    out = []
    for row in sorted({labels[t.run_id] for t in done} - set(ref)):
        members = [t for t in done if labels[t.run_id] == row]
        against = ref_label.get(_weights(members[0]))
        if against is None:
            continue
        diffs: dict[str, list[float]] = {}  # the reference's seed -> differences over ratios
        for t in members:
            keys = list(ref[against]) if t.ratio is None else [(t.ratio, t.tag("seed"))]
            for k in keys:
                if k in ref[against]:
                    diffs.setdefault(k[1], []).append(t.metrics["test_map"] - ref[against][k])
        if diffs:
            out.append(_paired_row(row, against, diffs))
    return out


def _paired_row(row: str, against: str, diffs: dict[str, list[float]]) -> dict:
    pooled = [d for ds in diffs.values() for d in ds]
    if len(diffs) > 1:
        per_seed = [float(np.mean(ds)) for ds in diffs.values()]
        return {"row": row, "reference": against, "over": "seeds", "pairs": len(per_seed),
                "mean_diff": float(np.mean(per_seed)), "std_diff": float(np.std(per_seed, ddof=1)),
                "wins": int(sum(d > 0 for d in per_seed)), "ratio_pairs": len(pooled)}
    return {"row": row, "reference": against, "over": "ratios", "pairs": len(pooled),
            "mean_diff": float(np.mean(pooled)), "std_diff": None, "wins": int(sum(d > 0 for d in pooled)),
            "ratio_pairs": len(pooled)}


# ---- writing ---------------------------------------------------------------------------------------

def _heading(col: str) -> str:
    return "avg over ratios" if col == "Avg" else col


def table_markdown(table: Table) -> str:
    costs = metrics(column="report")
    head = ["method", *(f"label ratio {_heading(c)}" if c != "Avg" else _heading(c) for c in table.columns),
            *(f"{m.heading} / trial" for m in costs)]
    lines = [f"### {table.dataset}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    common = table.common_n
    for row, cells in table.cells.items():
        free = f" {RATIO_FREE}" if row in table.ratio_free_rows else ""
        values = []
        for col in table.columns:
            text = _mark(table, row, col, cells[col].text(common)) + free if col in cells else "—"
            values.append(f"**{text}**" if table.best.get(col) == row else text)
        values += [m.text(table.cost[row][m.name]) for m in costs]
        lines.append("| " + " | ".join([row + free, *values]) + " |")
    lines += ["", table_legend(table)]
    if table.ratio_free_rows:
        lines += ["", RATIO_FREE_NOTE]
    if table.test_selected:
        lines += ["", TEST_SELECTED_NOTE]
    return "\n".join(lines) + "\n"


def table_legend(table: Table) -> str:
    """What the cells and marks mean, with the number of seeds said once."""
    common = table.common_n
    seeds = f"n = {common} seed{'s' if common != 1 else ''} per cell unless a cell says otherwise"
    return f"{CELL_NOTE.format(seeds=seeds)} Cost columns: mean per trial."


def table_frame(table: Table) -> pd.DataFrame:
    rows = []
    for row, cells in table.cells.items():
        for col, cell in cells.items():
            rows.append({"dataset": table.dataset, "row": row, "column": col, "mean": cell.mean, "std": cell.std,
                         "n": cell.n, "ci_low": cell.low, "ci_high": cell.high, "expected_n": cell.expected,
                         "best": table.best.get(col) == row, "tied": row in table.tied.get(col, ()),
                         "selected_on_test": cell.test_selected, "ratio_independent": row in table.ratio_free_rows,
                         **table.cost[row]})
    return pd.DataFrame(rows)


def expected_missing(spec_text: str | None, trials: list[RunRecord]) -> list[str]:
    """Arms the spec expects that have fewer trial runs than it asks for."""
    if not spec_text:
        return []
    spec = SweepSpec(**yaml.safe_load(spec_text))
    # a seed-averaged search runs each arm under optuna.seeds, not under the arm's own seed
    fields = [f for f in ARM_FIELDS if not (f == "seed" and spec.optuna and spec.optuna.seeds)]
    have: dict[tuple, int] = {}
    for t in trials:  # stores written before arm tags said n/a for ignored fields read the same
        ignored = ignored_fields(t.tag("method"))
        key = tuple(NOT_READ if f in ignored else t.tag(f) for f in fields)
        have[key] = have.get(key, 0) + 1
    missing = []
    for arm in expand(spec):
        tags = arm_tags(arm.config)
        key = tuple(tags[f"ablate.{f}"] for f in fields)
        lacking = samples_per_arm(spec, arm) - have.get(key, 0)
        if lacking > 0:
            missing.append(f"{arm.slug}: {lacking} trial(s) never started")
    return missing


def expected_seeds(spec_text: str | None, trials: list[RunRecord], dataset: str) -> int:
    """Seeds per cell the sweep asks for on `dataset`: its spec's arms' seeds, with every seed a trial of it
    ran under (a sweep without its spec: the seeds seen)."""
    seeds = {t.tag("seed") for t in trials if t.tag("dataset") == dataset and t.tag("seed") != NOT_READ}
    if spec_text:  # a method that ignores the seed (zero-shot) runs once, under no seed of its own
        seeds |= {str(a.config.seed) for a in expand(SweepSpec(**yaml.safe_load(spec_text)))
                  if a.config.dataset == dataset and "seed" not in ignored_fields(a.config.method)}
    return len(seeds)


def diagnostics(dataset: str, trials: list[RunRecord], labels: dict[str, str]) -> dict[str, dict[str, float]]:
    """Row label -> mean of each probe metric over its finished trials (rows without probes left out)."""
    columns = probe_columns()
    rows: dict[str, dict[str, list[float]]] = {}
    for t in trials:
        if t.status == "FINISHED" and t.tag("dataset") == dataset:
            for key in columns:
                if key in t.metrics:
                    rows.setdefault(labels[t.run_id], {}).setdefault(key, []).append(t.metrics[key])
    return {row: {k: float(np.mean(v)) for k, v in m.items()} for row, m in sorted(rows.items())}


def _diagnostics_html(rows: dict[str, dict[str, float]]) -> str:
    titles = probe_columns()
    columns = [k for k in titles if any(k in m for m in rows.values())]
    head = "".join(f"<th>{html.escape(titles[k])}</th>" for k in columns)
    body = "".join("<tr><td>" + html.escape(row) + "</td>" + "".join(
        f"<td>{m[k]:.3f}</td>" if k in m else "<td>—</td>" for k in columns) + "</tr>" for row, m in rows.items())
    return f"<h3>Diagnostics</h3><table><thead><tr><th>method</th>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_table(table: Table) -> str:
    costs = metrics(column="report")
    ratio_cols = [c for c in table.columns if c != "Avg"]
    head = (f"<tr><th rowspan='2'>method</th><th colspan='{len(table.columns)}'>label ratio</th>"
            + "".join(f"<th rowspan='2'>{html.escape(m.heading)} / trial</th>" for m in costs) + "</tr><tr>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in ratio_cols) + "<th>avg</th></tr>")
    body = []
    common = table.common_n
    for row, cells in table.cells.items():
        free = f" {RATIO_FREE}" if row in table.ratio_free_rows else ""
        tds = [f"<td>{html.escape(row + free)}</td>"]
        for col in table.columns:
            text = html.escape(_mark(table, row, col, cells[col].text(common)) + free) if col in cells else "—"
            tds.append(f'<td class="best">{text}</td>' if table.best.get(col) == row else f"<td>{text}</td>")
        tds += [f"<td>{m.text(table.cost[row][m.name])}</td>" for m in costs]
        body.append("<tr>" + "".join(tds) + "</tr>")
    notes = [table_legend(table)] + ([RATIO_FREE_NOTE] if table.ratio_free_rows else [])
    return (f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
            + "".join(f"<p>{html.escape(n)}</p>" for n in notes))
