"""The numbers: per-dataset tables (mean over seeds per method and ratio), Pareto sets, paired differences,
diagnostics, and their markdown / HTML / CSV forms."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import yaml

from ..probes import probe_columns  # the registry and markdown only: no torch
from ..spec import SweepSpec
from ..stats import mean_interval
from ..sweep.arms import expand, samples_per_arm
from ..tracking import (
    ARM_FIELDS,
)
from .trials import CELL_NOTE, TEST_SELECTED_NOTE, TIE, Cell, Table, Trial, ratio_free

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


def build_table(dataset: str, trials: list[Trial], labels: dict[str, str], expected: int = 0) -> Table:
    """`expected`: seeds the sweep asks for per cell (`expected_seeds`); cells with fewer are marked."""
    done = [t for t in trials if t.status == "FINISHED" and t.tag("dataset") == dataset]
    ratios = sorted({t.ratio for t in done if not ratio_free(t.tag("method"))}) or sorted({t.ratio for t in done})
    by_row: dict[str, list[Trial]] = {}
    for t in done:
        by_row.setdefault(labels[t.run_id], []).append(t)
    cells, cost = {}, {}
    for row, members in sorted(by_row.items()):
        # seed -> ratio -> test mAP; ratio-free rows (zero-shot) count for every ratio column
        per_seed: dict[str, dict[float, float]] = {}
        for t in members:
            for r in (ratios if ratio_free(t.tag("method")) else [t.ratio]):
                per_seed.setdefault(t.tag("seed"), {})[r] = t.metrics["test_map"]
        row_cells = {}
        on_test = any(t.test_selected for t in members)
        for r in ratios:
            values = [s[r] for s in per_seed.values() if r in s]
            if values:
                row_cells[f"{r:g}"] = _cell(values, on_test, expected)
        complete = [float(np.mean([s[r] for r in ratios])) for s in per_seed.values() if all(r in s for r in ratios)]
        if complete:
            row_cells["Avg"] = _cell(complete, on_test, expected)
        cells[row] = row_cells
        cost[row] = {k: float(np.mean([t.metrics.get(k, float("nan")) for t in members]))
                     for k in ("trainable_params", "train_time_s", "gpu_hours")}
    table = Table(dataset, ratios, cells, cost)
    mark_best(table)
    return table


def pareto(points: dict[str, tuple[float, float]]) -> list[str]:
    """Rows not dominated in (lower cost, higher mAP), ordered by cost."""
    front = []
    for name, (cost, score) in points.items():
        dominated = any(c <= cost and s >= score and (c < cost or s > score)
                        for other, (c, s) in points.items() if other != name)
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])


WEIGHT_FIELDS = ("backbone", "pretrained")  # trials on other weights are not paired


def _weights(t: Trial) -> tuple[str, ...]:
    return tuple(t.tag(f) for f in WEIGHT_FIELDS)


def paired_differences(dataset: str, trials: list[Trial], labels: dict[str, str], reference: str) -> list[dict]:
    """Each row vs the reference method on the same weights, label ratio and seed: mean difference and wins.

    The reference row is the reference method's row on the same backbone and pre-trained weights (the first
    label when it has several, e.g. several n_ctx); a ratio-free row (zero-shot) is compared with every trial
    of that reference row. Rows on weights the reference method never ran on are left out.
    """
    done = [t for t in trials if t.status == "FINISHED" and t.tag("dataset") == dataset]
    ref_label: dict[tuple[str, ...], str] = {}
    for t in sorted((t for t in done if t.tag("method") == reference), key=lambda t: labels[t.run_id]):
        ref_label.setdefault(_weights(t), labels[t.run_id])
    ref: dict[str, dict[tuple[float, str], float]] = {}
    for t in done:
        if labels[t.run_id] in ref_label.values():
            ref.setdefault(labels[t.run_id], {})[(t.ratio, t.tag("seed"))] = t.metrics["test_map"]
    out = []
    for row in sorted({labels[t.run_id] for t in done} - set(ref)):
        members = [t for t in done if labels[t.run_id] == row]
        against = ref_label.get(_weights(members[0]))
        if against is None:
            continue
        diffs = []
        for t in members:
            keys = list(ref[against]) if ratio_free(t.tag("method")) else [(t.ratio, t.tag("seed"))]
            diffs += [t.metrics["test_map"] - ref[against][k] for k in keys if k in ref[against]]
        if diffs:
            out.append({"row": row, "reference": against, "pairs": len(diffs),
                        "mean_diff": float(np.mean(diffs)),
                        "std_diff": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0,
                        "wins": int(sum(d > 0 for d in diffs))})
    return out


# ---- writing ---------------------------------------------------------------------------------------

def table_markdown(table: Table) -> str:
    head = ["method", *table.columns, "params", "train s / trial", "GPU-h / trial"]
    lines = [f"### {table.dataset}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, cells in table.cells.items():
        values = []
        for col in table.columns:
            text = _mark(table, row, col, cells[col].text()) if col in cells else "—"
            values.append(f"**{text}**" if table.best.get(col) == row else text)
        cost = table.cost[row]
        values += [f"{cost['trainable_params']:,.0f}", f"{cost['train_time_s']:.1f}", f"{cost['gpu_hours']:.4f}"]
        lines.append("| " + " | ".join([row, *values]) + " |")
    lines += ["", CELL_NOTE]
    if table.test_selected:
        lines += ["", TEST_SELECTED_NOTE]
    return "\n".join(lines) + "\n"


def table_frame(table: Table) -> pd.DataFrame:
    rows = []
    for row, cells in table.cells.items():
        for col, cell in cells.items():
            rows.append({"dataset": table.dataset, "row": row, "column": col, "mean": cell.mean, "std": cell.std,
                         "n": cell.n, "ci_low": cell.low, "ci_high": cell.high, "expected_n": cell.expected,
                         "best": table.best.get(col) == row, "tied": row in table.tied.get(col, ()),
                         "selected_on_test": cell.test_selected,
                         **table.cost[row]})
    return pd.DataFrame(rows)


def expected_missing(spec_text: str | None, trials: list[Trial]) -> list[str]:
    """Arms the spec expects that have fewer trial runs than it asks for."""
    if not spec_text:
        return []
    spec = SweepSpec(**yaml.safe_load(spec_text))
    # a seed-averaged search runs each arm under optuna.seeds, not under the arm's own seed
    fields = [f for f in ARM_FIELDS if not (f == "seed" and spec.optuna and spec.optuna.seeds)]
    have: dict[tuple, int] = {}
    for t in trials:
        key = tuple(t.tag(f) for f in fields)
        have[key] = have.get(key, 0) + 1
    missing = []
    for arm in expand(spec):
        key = tuple(str(getattr(arm.config, f)) for f in fields)
        lacking = samples_per_arm(spec, arm) - have.get(key, 0)
        if lacking > 0:
            missing.append(f"{arm.slug}: {lacking} trial(s) never started")
    return missing


def expected_seeds(spec_text: str | None, trials: list[Trial], dataset: str) -> int:
    """Seeds per cell the sweep asks for on `dataset`: its spec's arms' seeds, with every seed a trial of it
    ran under (a sweep without its spec: the seeds seen)."""
    seeds = {t.tag("seed") for t in trials if t.tag("dataset") == dataset}
    if spec_text:
        seeds |= {str(a.config.seed) for a in expand(SweepSpec(**yaml.safe_load(spec_text)))
                  if a.config.dataset == dataset}
    return len(seeds)


def diagnostics(dataset: str, trials: list[Trial], labels: dict[str, str]) -> dict[str, dict[str, float]]:
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
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["method", *table.columns, "params", "train s / trial",
                                                           "GPU-h / trial"])
    body = []
    for row, cells in table.cells.items():
        tds = [f"<td>{html.escape(row)}</td>"]
        for col in table.columns:
            text = html.escape(_mark(table, row, col, cells[col].text())) if col in cells else "—"
            tds.append(f'<td class="best">{text}</td>' if table.best.get(col) == row else f"<td>{text}</td>")
        cost = table.cost[row]
        tds += [f"<td>{cost['trainable_params']:,.0f}</td>", f"<td>{cost['train_time_s']:.1f}</td>",
                f"<td>{cost['gpu_hours']:.4f}</td>"]
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
