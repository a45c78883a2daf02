"""The figures: cost-vs-mAP with its Pareto frontier, and the per-class AP heatmap (matplotlib, Agg)."""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from .tables import pareto
from .trials import Table, Trial, ratio_free


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def cost_plot(table: Table) -> tuple[bytes, dict[str, list[str]]]:
    """mAP (Avg) against trainable parameters and train time, log x, Pareto frontier drawn."""
    rows = [r for r in table.cells if "Avg" in table.cells[r]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    fronts = {}
    for ax, key, label in ((axes[0], "trainable_params", "trainable parameters"),
                           (axes[1], "train_time_s", "train time per trial (s)")):
        costs = {r: table.cost[r][key] for r in rows}
        floor = min([c for c in costs.values() if c > 0], default=1.0) / 2  # 0 (zero-shot) on a log axis
        points = {r: (max(costs[r], floor), table.cells[r]["Avg"].mean) for r in rows}
        fronts[key] = pareto(points)
        for r in rows:
            x, y = points[r]
            ax.errorbar(x, y, yerr=table.cells[r]["Avg"].std, fmt="o", capsize=3,
                        color="C3" if r in fronts[key] else "C0")
            ax.annotate(r + (" (0)" if costs[r] == 0 else ""), (x, y), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
        front = fronts[key]
        ax.step([points[r][0] for r in front], [points[r][1] for r in front], where="post", color="C3",
                alpha=0.6, label="Pareto frontier")
        ax.set_xscale("log")
        # 1-2-5 labels: readable on short log ranges, where matplotlib's minor labels collide
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("test mAP, average over label ratios")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"{table.dataset}: cost vs mAP (error bars: std over seeds)")
    return _png(fig), fronts


def per_class_heatmap(client: MlflowClient, dataset: str, trials: list[Trial], labels: dict[str, str],
                      ratio: float) -> bytes | None:
    chosen = [t for t in trials if t.status == "FINISHED" and t.tag("dataset") == dataset
              and (t.ratio == ratio or ratio_free(t.tag("method")))]
    per_row: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for t in chosen:
            try:
                path = client.download_artifacts(t.run_id, "per_class_ap.json", tmp)
            except Exception:  # a run without the artifact: leave it out of the heatmap only
                continue
            per_row.setdefault(labels[t.run_id], []).append(json.loads(Path(path).read_text()))
    if not per_row:
        return None
    classes = list(next(iter(per_row.values()))[0])
    rows = sorted(per_row)
    grid = np.array([[np.nanmean([d[c] if d.get(c) is not None else np.nan for d in per_row[r]]) for c in classes]
                     for r in rows])
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(classes) + 3), 0.45 * len(rows) + 2))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    fig.colorbar(im, ax=ax, label="AP")
    ax.set_title(f"{dataset}: per-class test AP at label ratio {ratio:g} (mean over seeds)")
    return _png(fig)


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
