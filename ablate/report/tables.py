"""The numbers: per-dataset tables (mean over seeds per method and ratio), Pareto sets, paired differences,
diagnostics, and their markdown / HTML / CSV forms."""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd
import yaml

from ..catalogue import CATALOGUE, metrics
from ..probes import probe_columns  # the registry and markdown only: no torch
from ..spec import fields_where, ignored_fields
from ..stats import mean_interval, welch_interval
from ..sweep.arms import expand, samples_per_arm
from ..sweep.spec import SweepSpec
from ..tracking.names import NOT_READ
from .trials import (
    DROP_POINTS,
    DROPPED,
    FLAG_NOTES,
    ONE_SEED,
    RATIO_FREE,
    RATIO_FREE_NOTE,
    STILL_IMPROVING,
    TEST_SELECTED_NOTE,
    TIE,
    TOP,
    Cell,
    RunRecord,
    Table,
)

# ---- numbers ---------------------------------------------------------------------------------------

def _cell(values: dict[str, float], test_selected: bool = False, expected: int = 0,
          flags: set[str] | None = None) -> Cell:
    """Mean, std and the 95 % t interval over seeds (`values`: seed -> value) (the world section's code)."""
    arr = np.asarray(list(values.values()), dtype=float)
    ci = mean_interval(list(values.values()))
    return Cell(float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, len(arr), test_selected,
                ci.low, ci.high, expected, dict(values), set(flags or ()))


def separated(better: Cell, other: Cell) -> bool:
    """`better`'s mean is above `other`'s beyond chance: the 95 % t interval of their per-seed differences
    (seeds both ran; paired, as every arm of a seed sees the same mask and images) lies above 0; with fewer
    than two shared seeds, Welch's interval of the two samples."""
    shared = sorted(set(better.values) & set(other.values))
    if len(shared) >= 2:
        return mean_interval([better.values[s] - other.values[s] for s in shared]).low > 0
    return welch_interval(list(other.values.values()), list(better.values.values())).low > 0


def mark_best(table: Table) -> None:
    """Per column: with one seed, the best mean is marked (TOP), as no claim; otherwise only replicated rows
    (n >= 2) compete, a row of one run (zero-shot) is shown but blocks nothing: the best replicated mean is
    bold when it is separated from every other replicated row, else it and the rows it is not separated
    from are a tie."""
    for col in table.columns:
        scored = {row: c[col] for row, c in table.cells.items() if col in c}
        if table.one_seed:
            if scored:
                table.top[col] = max(scored, key=lambda row: scored[row].mean)
            continue
        replicated = {row: c for row, c in scored.items() if c.n >= 2}
        if len(replicated) < 2:
            if replicated:
                table.top[col] = next(iter(replicated))
            continue
        top = max(replicated, key=lambda row: replicated[row].mean)
        tied = [row for row, c in replicated.items() if row != top and not separated(replicated[top], c)]
        if tied:
            table.tied[col] = [top, *sorted(tied, key=lambda row: -replicated[row].mean)]
        else:
            table.best[col] = top


def _mark(table: Table, row: str, col: str, text: str) -> str:
    """A cell's text with its tie or top mark (bold is the caller's: markdown and HTML differ)."""
    if row in table.tied.get(col, ()):
        return f"{text} {TIE}"
    return f"{text} {TOP}" if table.top.get(col) == row else text


def selection_flags(t: RunRecord) -> set[str]:
    """The run's selection artefacts: it picked its last epoch, or an epoch far worse on test than the last."""
    flags = set()
    epochs = t.settings.get("epochs", NOT_READ)
    picked, last, test = (t.metrics.get(k) for k in ("best_epoch", "last_test_map", "test_map"))
    if epochs not in (NOT_READ, "") and picked is not None and int(float(epochs)) > 1 and picked >= float(epochs):
        flags.add(STILL_IMPROVING)
    if last is not None and test is not None and last - test > DROP_POINTS:
        flags.add(DROPPED)
    return flags


def build_table(dataset: str, trials: list[RunRecord], labels: dict[str, str], expected: int = 0,
                columns: list[str] | None = None) -> Table:
    """The runs of `labels` (the main table's: assign_rows) on `dataset`. `expected`: seeds the sweep asks for
    per cell (`expected_seeds`); cells with fewer are marked. `columns`: metrics shown after the costs."""
    done = [t for t in trials if t.status == "FINISHED" and t.tag("dataset") == dataset and t.run_id in labels]
    ratios = sorted({t.ratio for t in done if t.ratio is not None})
    by_row: dict[str, list[RunRecord]] = {}
    for t in done:
        by_row.setdefault(labels[t.run_id], []).append(t)
    extra = list(columns or [])
    cells, cost, free = {}, {}, set()
    for row, members in sorted(by_row.items()):
        # ratio -> seed -> (test mAP, flags); ratio-free rows (zero-shot) count for every ratio column
        per_ratio: dict[float, dict[str, tuple[float, set[str]]]] = {}
        for t in members:
            for r in (ratios if t.ratio is None else [t.ratio]):
                per_ratio.setdefault(r, {})[t.tag("seed")] = (t.metrics["test_map"], selection_flags(t))
        if all(t.ratio is None for t in members):
            free.add(row)
        on_test = any(t.test_selected for t in members)
        # a method that ignores the seed (zero-shot) runs once: its cells wait for no other seed
        wanted = 1 if all(t.tag("seed") == NOT_READ for t in members) else expected
        row_cells = {f"{r:g}": _cell({s: v for s, (v, _) in got.items()}, on_test, wanted,
                                     {f for _, (_, fl) in got.items() for f in fl}) for r, got in per_ratio.items()}
        seeds = {s for got in per_ratio.values() for s in got}
        complete = {s: float(np.mean([per_ratio[r][s][0] for r in ratios])) for s in seeds
                    if all(s in per_ratio.get(r, {}) for r in ratios)}
        if row in free and not ratios:  # only ratio-free trials in the data set: their own numbers
            complete = {t.tag("seed"): t.metrics["test_map"] for t in members}
        if complete:
            row_cells["Avg"] = _cell(complete, on_test, wanted)
        cells[row] = row_cells
        cost[row] = {name: float(np.mean([t.metrics.get(name, float("nan")) for t in members]))
                     for name in [m.name for m in metrics(column="report")] + extra}
    table = Table(dataset, ratios, cells, cost, ratio_free_rows=free, columns_extra=extra)
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


def _weights(t: RunRecord) -> tuple[str, ...]:
    """The named weights a run's features come from (fields whose Role says weights and identity): runs on
    other weights are not paired."""
    return tuple(t.settings.get(f, "") for f in fields_where(weights=True, identity=True))


def paired_differences(dataset: str, trials: list[RunRecord], labels: dict[str, str], reference: str) -> list[dict]:
    """Each row vs the reference method on the same weights, paired per seed.

    A seed's difference is the mean, over the label ratios both ran with that seed, of (row − reference).
    `mean_diff` is the mean over the paired seeds, [`low`, `high`] the 95 % t interval of the per-seed
    differences (None with fewer than two), `wins` the seeds whose difference is above 0. A row of one run
    that reads no seed (zero-shot) pairs with no seed: its `mean_diff` is against the reference's mean over
    seeds, with no interval and no wins (`over: "unpaired"`). The reference row is the reference method's
    row on the same weights (the first label when it has several, e.g. several n_ctx).
    """
    done = [t for t in trials if t.status == "FINISHED" and t.tag("dataset") == dataset and t.run_id in labels]
    ref_label: dict[tuple[str, ...], str] = {}
    for t in sorted((t for t in done if t.tag("method") == reference), key=lambda t: labels[t.run_id]):
        ref_label.setdefault(_weights(t), labels[t.run_id])
    values: dict[str, dict[str, dict[float | None, float]]] = {}  # row -> seed -> ratio -> test mAP
    for t in done:
        values.setdefault(labels[t.run_id], {}).setdefault(t.tag("seed"), {})[t.ratio] = t.metrics["test_map"]
    out = []
    for row in sorted(set(values) - set(ref_label.values())):
        member = next(t for t in done if labels[t.run_id] == row)
        against = ref_label.get(_weights(member))
        if against is None:
            continue
        ref = values[against]
        diffs: dict[str, float] = {}
        for seed, got in values[row].items():
            if seed == NOT_READ:  # zero-shot: one run, the same number at every ratio
                continue
            shared = [r for r in got if r in ref.get(seed, {})]
            if shared:
                diffs[seed] = float(np.mean([got[r] - ref[seed][r] for r in shared]))
        if diffs:
            ci = mean_interval(list(diffs.values()))
            out.append({"row": row, "reference": against, "over": "seeds", "pairs": len(diffs),
                        "mean_diff": float(np.mean(list(diffs.values()))), "low": ci.low if ci.exists else None,
                        "high": ci.high if ci.exists else None, "wins": int(sum(d > 0 for d in diffs.values()))})
        elif NOT_READ in values[row]:
            own = next(iter(values[row][NOT_READ].values()))
            ref_means = [float(np.mean(list(by_ratio.values()))) for by_ratio in ref.values()]
            out.append({"row": row, "reference": against, "over": "unpaired", "pairs": 0,
                        "mean_diff": own - float(np.mean(ref_means)), "low": None, "high": None, "wins": None})
    return out


# ---- writing ---------------------------------------------------------------------------------------

def _heading(col: str) -> str:
    return "avg over ratios" if col == "Avg" else col


def _value_columns(table: Table) -> list[tuple[str, str]]:
    """(metric name, heading) of the columns after the mAP cells: the costs (per run of the row), then the
    metrics asked for with --columns."""
    cost = [(m.name, f"{m.heading} / run") for m in metrics(column="report")]
    return cost + [(name, CATALOGUE[name].heading if name in CATALOGUE else name) for name in table.columns_extra]


def _value_text(name: str, value: float) -> str:
    return CATALOGUE[name].text(value) if name in CATALOGUE else f"{value:.4g}"


def table_markdown(table: Table) -> str:
    values = _value_columns(table)
    head = ["method", *(f"label ratio {_heading(c)}" if c != "Avg" else _heading(c) for c in table.columns),
            *(h for _, h in values)]
    lines = [f"### {table.dataset}", ""]
    if table.one_seed:
        lines += [f"**{ONE_SEED}**", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    common = table.common_n
    for row, cells in table.cells.items():
        free = f" {RATIO_FREE}" if row in table.ratio_free_rows else ""
        texts = []
        for col in table.columns:
            text = _mark(table, row, col, cells[col].text(common)) + free if col in cells else "—"
            texts.append(f"**{text}**" if table.best.get(col) == row else text)
        texts += [_value_text(name, table.cost[row][name]) for name, _ in values]
        lines.append("| " + " | ".join([row + free, *texts]) + " |")
    lines += ["", table_legend(table)]
    if table.ratio_free_rows:
        lines += ["", RATIO_FREE_NOTE]
    if table.test_selected:
        lines += ["", TEST_SELECTED_NOTE]
    return "\n".join(lines) + "\n"


def table_legend(table: Table) -> str:
    """What the cells and marks mean, as this table has them (the number of seeds said once)."""
    common = table.common_n
    parts = ["Cells: test mAP at the picked epoch"]
    if table.one_seed:
        parts.append(f"of one run each ({ONE_SEED}); {TOP}: the best mean of its column, a single run, no claim.")
    else:
        parts.append(f"mean ± half-width of its 95 % t interval over seeds (n = {common} seed"
                     f"{'s' if common != 1 else ''} per cell unless a cell says otherwise; \"n=1 of 3\": seeds the "
                     "spec asks for still missing).")
        marks = []
        if table.best:
            marks.append("bold: the best mean, above every other replicated row beyond chance (95 % t interval of "
                         "the per-seed paired differences clear of 0)")
        if table.tied:
            marks.append(f"{TIE}: the best mean and the rows it is not separated from by that test")
        if table.top:
            marks.append(f"{TOP}: the best mean where only one row has several seeds (no comparison)")
        if any(c.n == 1 for cells in table.cells.values() for c in cells.values()):
            marks.append("a row of one run (n=1) is shown but not ranked")
        if marks:
            parts.append("; ".join(marks).capitalize() + ".")
    parts += [FLAG_NOTES[f] + "." for f in (STILL_IMPROVING, DROPPED) if f in table.flags]
    parts.append("Cost columns: the mean per run of the row; device-h is each run's attributed share (the sweep's "
                 "total, each Ray trial counted once, is in the report's header).")
    return " ".join(parts)


def table_frame(table: Table) -> pd.DataFrame:
    rows = []
    for row, cells in table.cells.items():
        for col, cell in cells.items():
            rows.append({"dataset": table.dataset, "row": row, "column": col, "mean": cell.mean, "std": cell.std,
                         "n": cell.n, "ci_low": cell.low, "ci_high": cell.high, "expected_n": cell.expected,
                         "best": table.best.get(col) == row, "tied": row in table.tied.get(col, ()),
                         "top_mean": table.top.get(col) == row,
                         "still_improving": STILL_IMPROVING in cell.flags, "dropped": DROPPED in cell.flags,
                         "selected_on_test": cell.test_selected, "ratio_independent": row in table.ratio_free_rows,
                         **table.cost[row]})
    return pd.DataFrame(rows)


def expected_missing(spec_text: str | None, trials: list[RunRecord]) -> list[str]:
    """Arms the spec expects that have fewer trial runs than it asks for: a run counts for the arm whose grid
    values its `ablate.arm` tag holds (the sampled ones, and a seed-averaged search's seed, aside)."""
    if not spec_text:
        return []
    spec = SweepSpec(**yaml.safe_load(spec_text))
    # a search samples its space; a seed-averaged one runs each sample under optuna.seeds, not the arm's seed
    left_out = set(spec.optuna.space) | ({"seed"} if spec.optuna.seeds else set()) if spec.optuna else set()

    def key(values: dict) -> str:
        return json.dumps({k: v for k, v in values.items() if k not in left_out}, sort_keys=True)

    have: dict[str, int] = {}
    for t in trials:
        found = key(json.loads(t.tags.get("ablate.arm", "{}")))
        have[found] = have.get(found, 0) + 1
    missing = []
    for arm in expand(spec):
        lacking = samples_per_arm(spec, arm) - have.get(key(arm.overrides), 0)
        if lacking > 0:
            missing.append(f"{arm.slug}: {lacking} trial(s) never started")
    return missing


def expected_seeds(spec_text: str | None, trials: list[RunRecord], dataset: str) -> int:
    """Seeds per cell the sweep asks for on `dataset`: its spec's arms' seeds, with every seed a trial of it
    ran under (a sweep without its spec: the seeds seen)."""
    seeds = {t.tag("seed") for t in trials if t.tag("dataset") == dataset and t.tag("seed") != NOT_READ}
    if spec_text:  # a method that ignores the seed (zero-shot) runs once, under no seed of its own
        spec = SweepSpec(**yaml.safe_load(spec_text))
        if spec.optuna and spec.optuna.seeds:  # a seed-averaged search runs every sample under these
            seeds |= {str(s) for s in spec.optuna.seeds}
        else:
            seeds |= {str(a.config.seed) for a in expand(spec)
                      if a.config.dataset == dataset and "seed" not in ignored_fields(a.config.method)}
    return len(seeds)


def diagnostics(dataset: str, trials: list[RunRecord], labels: dict[str, str]) -> dict[str, dict[str, float]]:
    """Row label -> mean of each probe metric over its finished trials (rows without probes left out)."""
    columns = probe_columns()
    rows: dict[str, dict[str, list[float]]] = {}
    for t in trials:
        if t.status == "FINISHED" and t.tag("dataset") == dataset and t.run_id in labels:
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
    values = _value_columns(table)
    ratio_cols = [c for c in table.columns if c != "Avg"]
    head = (f"<tr><th rowspan='2'>method</th><th colspan='{len(table.columns)}'>label ratio</th>"
            + "".join(f"<th rowspan='2'>{html.escape(h)}</th>" for _, h in values) + "</tr><tr>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in ratio_cols) + "<th>avg</th></tr>")
    body = []
    common = table.common_n
    for row, cells in table.cells.items():
        free = f" {RATIO_FREE}" if row in table.ratio_free_rows else ""
        tds = [f"<td>{html.escape(row + free)}</td>"]
        for col in table.columns:
            text = html.escape(_mark(table, row, col, cells[col].text(common)) + free) if col in cells else "—"
            tds.append(f'<td class="best">{text}</td>' if table.best.get(col) == row else f"<td>{text}</td>")
        tds += [f"<td>{_value_text(name, table.cost[row][name])}</td>" for name, _ in values]
        body.append("<tr>" + "".join(tds) + "</tr>")
    banner = f"<p class='warn'><b>{html.escape(ONE_SEED)}</b></p>" if table.one_seed else ""
    notes = [table_legend(table)] + ([RATIO_FREE_NOTE] if table.ratio_free_rows else [])
    return (f"{banner}<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
            + "".join(f"<p>{html.escape(n)}</p>" for n in notes))
