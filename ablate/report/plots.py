"""The figures: cost-vs-mAP with its Pareto frontier, and the per-class AP heatmap (matplotlib, Agg)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from ..catalogue import significant
from ..errors import TrackingError
from ..tracking import retried
from ..tracking.names import method_colour
from .tables import COST_TOLERANCE, near_ties, pareto
from .trials import RunRecord, Table


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


COSTS = (("trainable_params", "trainable parameters"), ("train_time_s", "train time per trial (s)"))


def cost_plot(table: Table) -> tuple[bytes, dict]:
    """Test mAP against trainable parameters (top) and train time (bottom), one panel per label ratio plus
    their average, so crossovers between ratios stay visible. The x axis is symlog: zero (zero-shot) gets
    its own tick. Error bars only where a point has several seeds; the frontier's points are ringed."""
    columns = table.columns
    fig, axes = plt.subplots(len(COSTS), len(columns), figsize=(3.9 * len(columns) + 1, 7.6), squeeze=False,
                             sharey="col")
    fronts: dict = {"per_ratio": {}}
    for j, col in enumerate(columns):
        for i, (key, label) in enumerate(COSTS):
            front = _cost_panel(axes[i][j], table, col, key)
            axes[i][j].set_xlabel(label, fontsize=8)
            if col == "Avg":
                fronts[key] = front
            else:
                fronts["per_ratio"].setdefault(col, {})[key] = front
        axes[0][j].set_title("average over label ratios" if col == "Avg" else f"label ratio {col}", fontsize=10)
    axes[0][0].set_ylabel("test mAP")
    axes[1][0].set_ylabel("test mAP")
    handles = [Line2D([], [], marker="o", ls="", color="C0", label="method (mean over seeds)"),
               Line2D([], [], marker="o", ls="", mfc="none", mec="C3", ms=12, mew=1.5, label="on the Pareto frontier"),
               Line2D([], [], color="C3", alpha=0.6, label="Pareto frontier (lower cost, higher mAP)"),
               Line2D([], [], marker="|", ls="", color="k", ms=10, label="± std over seeds (only where n > 1)")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    common = table.common_n
    fig.suptitle(f"{table.dataset}: cost vs test mAP, per label ratio (n = {common} seed{'s' if common != 1 else ''}"
                 f" per point; ≈ near-tie: costs within {COST_TOLERANCE:.0%}; ‡ ratio-independent)")
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    return _png(fig), fronts


def _cost_panel(ax, table: Table, col: str, key: str) -> list[str]:
    """One panel: each row's mean at column `col` against its cost `key`; returns the frontier."""
    rows = [r for r in table.cells if col in table.cells[r]]
    points = {r: (table.cost[r][key], table.cells[r][col].mean) for r in rows}
    front = pareto(points)
    ties = near_ties(points, front)
    for r in rows:
        x, y = points[r]
        cell = table.cells[r][col]
        ax.errorbar(x, y, yerr=cell.std if cell.n > 1 else None, fmt="o", capsize=3,
                    color=method_colour(r.split()[0]))  # the method's colour in the MLflow UI too
        if r in front:
            ax.plot(x, y, "o", mfc="none", mec="C3", ms=12, mew=1.5)
        tag = (" ‡" if r in table.ratio_free_rows else "") + (" ≈" if r in ties else "")
        tag += f" (n={cell.n})" if cell.n != table.common_n else ""
        ax.annotate(r + tag, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.step([points[r][0] for r in front], [points[r][1] for r in front], where="post", color="C3", alpha=0.6)
    positive = [c for c, _ in points.values() if c > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0, linscale=0.5)
    ax.set_xticks(_cost_ticks(positive))
    ax.set_xlim(-0.05 * max(positive, default=1.0), 1.6 * max(positive, default=1.0))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: significant(v) if v else "0"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelsize=7, rotation=30)
    ax.grid(alpha=0.3)
    return front


def _cost_ticks(costs: list[float]) -> list[float]:
    """0 (zero-shot's cost) and 1-2-5 steps across the positive costs; the costs themselves when the range is
    too short for two such steps."""
    if not costs:
        return [0.0]
    low, high = min(costs), max(costs)
    steps = [m * 10.0**e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
             for m in (1, 2, 5) if low / 1.3 <= m * 10.0**e <= high * 1.3]
    return [0.0, *(steps if len(steps) >= 2 else sorted({float(significant(c).replace(",", "")) for c in costs}))]


def per_class_heatmap(client: MlflowClient, dataset: str, trials: list[RunRecord], labels: dict[str, str],
                      ratios: list[float]) -> bytes | None:
    """Per-class test AP (mean over seeds), one panel per label ratio in `ratios`; classes in one order for
    every panel, by their mean AP over rows and ratios (hardest left), the value written in each cell."""
    found = {r: _ap_grid(client, dataset, trials, labels, r) for r in ratios}
    grids = {r: g for r, g in found.items() if g is not None}
    if not grids:
        return None
    classes = next(iter(grids.values()))[1]
    rows = sorted({row for g in grids.values() for row in g[0]})
    stack = {r: np.array([[g[0].get(row, {}).get(c, np.nan) for c in classes] for row in rows])
             for r, g in grids.items()}
    with np.errstate(all="ignore"):
        order = np.argsort(np.nanmean(np.concatenate(list(stack.values())), axis=0))
    names = [classes[i] for i in order]
    fig, axes = plt.subplots(len(stack), 1, figsize=(max(6, 0.45 * len(names) + 3), (0.5 * len(rows) + 1.6)
                                                     * len(stack) + 1), squeeze=False)
    for ax, (ratio, grid) in zip(axes[:, 0], stack.items()):
        grid = grid[:, order]
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=100)
        if len(names) <= 40:
            for (i, j), value in np.ndenumerate(grid):
                if np.isfinite(value):
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if value < 55 else "black")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_title(f"label ratio {ratio:g}", fontsize=9)
        fig.colorbar(im, ax=ax, label="AP")
    axes[-1, 0].set_xlabel("class, ordered by mean AP over methods and ratios (hardest first)")
    fig.suptitle(f"{dataset}: per-class test AP (mean over seeds)")
    fig.tight_layout()
    return _png(fig)


def _ap_grid(client: MlflowClient, dataset: str, trials: list[RunRecord], labels: dict[str, str],
             ratio: float) -> tuple[dict[str, dict[str, float]], list[str]] | None:
    """row -> class -> AP (mean over seeds) at `ratio` (ratio-free rows included), and the class list."""
    chosen = [t for t in trials if t.status == "FINISHED" and t.tag("dataset") == dataset and t.run_id in labels
              and (t.ratio is None or t.ratio == ratio)]
    per_row: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for t in chosen:
            try:
                path = retried(client.download_artifacts, t.run_id, "per_class_ap.json", tmp)
            except TrackingError:  # the server stayed down: the whole report waits for it, not one cell
                raise
            except Exception:  # a run without the artifact: leave it out of the heatmap only
                continue
            per_row.setdefault(labels[t.run_id], []).append(json.loads(Path(path).read_text()))
    if not per_row:
        return None
    classes = list(next(iter(per_row.values()))[0])
    with np.errstate(all="ignore"):
        grid = {row: {c: float(np.nanmean([d[c] if d.get(c) is not None else np.nan for d in runs]))
                      for c in classes} for row, runs in per_row.items()}
    return grid, classes


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
