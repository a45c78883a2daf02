"""MLflow runs -> paper-style tables, cost-vs-mAP Pareto plots, per-class AP heatmap, paired
differences and one self-contained `report.html`.

Only FINISHED trial runs enter any number; failed, running, killed and missing trials (expected
from the sweep's own spec, logged on its parent run) are listed separately. Outputs are written to
a folder and logged to the sweep's parent run under `report/`.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from .data.base import current_umask  # noqa: E402
from .errors import ReportError  # noqa: E402
from .pretrain_recipe import is_alias  # noqa: E402
from .probes import probe_columns, probe_markdown  # noqa: E402  (the registry and markdown only: no torch)
from .spec import SweepSpec, ignored_fields  # noqa: E402
from .sweep.arms import expand, samples_per_arm  # noqa: E402
from .tracking import (  # noqa: E402
    ARM_FIELDS,
    ROLE_TAG,
    connect,
    report_link,
    resolve_tracking_uri,
    set_sweep_note,
    sweep_note,
)
from .world_effect import Observation, effects_html, effects_markdown, pretraining_effects  # noqa: E402

# Fields that split a method into several rows when they vary within the experiment.
ROW_FIELDS = ("backbone", "pretrained", "n_ctx", "csc")


@dataclass
class Trial:
    run_id: str
    status: str
    tags: dict[str, str]
    metrics: dict[str, float]
    error: str | None = None

    def tag(self, name: str) -> str:
        return self.tags.get(f"ablate.{name}", "")

    @property
    def ratio(self) -> float:
        return float(self.tag("label_ratio"))

    @property
    def test_selected(self) -> bool:
        return self.tag("selected_on") == "test"


TEST_SELECTED = "†"  # marks numbers whose epoch was picked on the test split itself
TEST_SELECTED_NOTE = (f"{TEST_SELECTED} epoch selected on the test set (the reference's protocol, `select_on: test`): "
                      "optimistic, not comparable with numbers selected on a validation split.")


@dataclass
class Cell:
    mean: float
    std: float
    n: int
    test_selected: bool = False

    def text(self) -> str:
        std = f" ± {self.std:.2f}" if self.n > 1 else ""
        return f"{self.mean:.2f}{std} (n={self.n})" + (f" {TEST_SELECTED}" if self.test_selected else "")


@dataclass
class Table:
    """One data set: rows x (label ratios + Avg), plus cost columns."""

    dataset: str
    ratios: list[float]
    cells: dict[str, dict[str, Cell]]  # row -> column -> cell
    cost: dict[str, dict[str, float]]  # row -> params / train_time_s / gpu_hours (means per trial)
    best: dict[str, str] = field(default_factory=dict)  # column -> best row

    @property
    def columns(self) -> list[str]:
        return [f"{r:g}" for r in self.ratios] + ["Avg"]

    @property
    def test_selected(self) -> bool:
        return any(c.test_selected for cells in self.cells.values() for c in cells.values())


# ---- reading ---------------------------------------------------------------------------------------

def load_trials(client: MlflowClient, experiment: str, parent_run_id: str | None = None) -> tuple[str, list[Trial]]:
    """(parent run id, trial runs of that sweep); the newest sweep of the experiment by default."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ReportError(f"no MLflow experiment named '{experiment}'; experiments: {', '.join(names) or 'none'}")
    if parent_run_id is None:
        parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'sweep'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
        if not parents:
            raise ReportError(f"experiment '{experiment}' has no sweep run (was it made by `ablate sweep`?)")
        parent_run_id = parents[0].info.run_id
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              max_results=50000)
    trials = [Trial(r.info.run_id, r.info.status, r.data.tags, r.data.metrics, r.data.tags.get("ablate.error"))
              for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    return parent_run_id, trials


def row_labels(trials: list[Trial]) -> dict[str, str]:
    """run id -> row label: the method, plus each ROW_FIELD that varies among methods reading it."""
    varying = [f for f in ROW_FIELDS if len({t.tag(f) for t in trials
                                            if f not in ignored_fields(t.tag("method"))}) > 1]
    labels = {}
    for t in trials:
        extra = [f"{f}={t.tag(f)}" for f in varying if f not in ignored_fields(t.tag("method"))]
        labels[t.run_id] = " ".join([t.tag("method"), *extra])
    return labels


def ratio_free(method: str) -> bool:
    return "label_ratio" in ignored_fields(method)


# ---- numbers ---------------------------------------------------------------------------------------

def _cell(values: list[float], test_selected: bool = False) -> Cell:
    arr = np.asarray(values, dtype=float)
    return Cell(float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, len(arr), test_selected)


def build_table(dataset: str, trials: list[Trial], labels: dict[str, str]) -> Table:
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
                row_cells[f"{r:g}"] = _cell(values, on_test)
        complete = [float(np.mean([s[r] for r in ratios])) for s in per_seed.values() if all(r in s for r in ratios)]
        if complete:
            row_cells["Avg"] = _cell(complete, on_test)
        cells[row] = row_cells
        cost[row] = {k: float(np.mean([t.metrics.get(k, float("nan")) for t in members]))
                     for k in ("trainable_params", "train_time_s", "gpu_hours")}
    table = Table(dataset, ratios, cells, cost)
    for col in table.columns:
        scored = {row: c[col].mean for row, c in cells.items() if col in c}
        if scored:
            table.best[col] = max(scored, key=scored.__getitem__)
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
            text = cells[col].text() if col in cells else "—"
            values.append(f"**{text}**" if table.best.get(col) == row else text)
        cost = table.cost[row]
        values += [f"{cost['trainable_params']:,.0f}", f"{cost['train_time_s']:.1f}", f"{cost['gpu_hours']:.4f}"]
        lines.append("| " + " | ".join([row, *values]) + " |")
    if table.test_selected:
        lines += ["", TEST_SELECTED_NOTE]
    return "\n".join(lines) + "\n"


def table_frame(table: Table) -> pd.DataFrame:
    rows = []
    for row, cells in table.cells.items():
        for col, cell in cells.items():
            rows.append({"dataset": table.dataset, "row": row, "column": col, "mean": cell.mean, "std": cell.std,
                         "n": cell.n, "best": table.best.get(col) == row, "selected_on_test": cell.test_selected,
                         **table.cost[row]})
    return pd.DataFrame(rows)


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


def expected_missing(spec_text: str | None, trials: list[Trial]) -> list[str]:
    """Arms the spec expects that have fewer trial runs than it asks for."""
    if not spec_text:
        return []
    spec = SweepSpec(**yaml.safe_load(spec_text))
    have: dict[tuple, int] = {}
    for t in trials:
        key = tuple(t.tag(f) for f in ARM_FIELDS)
        have[key] = have.get(key, 0) + 1
    missing = []
    for arm in expand(spec):
        key = tuple(str(getattr(arm.config, f)) for f in ARM_FIELDS)
        lacking = samples_per_arm(spec, arm) - have.get(key, 0)
        if lacking > 0:
            missing.append(f"{arm.slug}: {lacking} trial(s) never started")
    return missing


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


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["method", *table.columns, "params", "train s / trial",
                                                           "GPU-h / trial"])
    body = []
    for row, cells in table.cells.items():
        tds = [f"<td>{html.escape(row)}</td>"]
        for col in table.columns:
            text = html.escape(cells[col].text()) if col in cells else "—"
            tds.append(f'<td class="best">{text}</td>' if table.best.get(col) == row else f"<td>{text}</td>")
        cost = table.cost[row]
        tds += [f"<td>{cost['trainable_params']:,.0f}</td>", f"<td>{cost['train_time_s']:.1f}</td>",
                f"<td>{cost['gpu_hours']:.4f}</td>"]
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.best{font-weight:bold;background:#e8f5e9}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}pre{background:#f6f6f6;padding:1em;overflow:auto}
.warn{color:#b00020}"""


# ---- sections ---------------------------------------------------------------------------------------

@dataclass
class DatasetContext:
    """What a report section sees for one data set."""

    dataset: str
    trials: list[Trial]
    labels: dict[str, str]  # run id -> row label
    table: Table
    client: MlflowClient
    reference: str  # the method paired differences compare against
    heatmap_ratio: float


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
    text = (f"<p>Cells: test mAP at the selected epoch, mean ± std over seeds (n seeds); bold: best in its column. "
            f"Pareto frontier (params): {html.escape(', '.join(fronts['trainable_params']))}; "
            f"(time): {html.escape(', '.join(fronts['train_time_s']))}.</p>{_img(plot, 'cost vs mAP ' + ctx.dataset)}")
    return Section(html=text, files={f"cost_vs_map_{ctx.dataset}.png": plot}, data={"pareto": fronts})


def paired_section(ctx: DatasetContext) -> Section:
    paired = paired_differences(ctx.dataset, ctx.trials, ctx.labels, ctx.reference)
    rows = "".join(f"<tr><td>{html.escape(p['row'])}</td><td>{html.escape(p['reference'])}</td>"
                   f"<td>{p['mean_diff']:+.2f} ± {p['std_diff']:.2f}</td><td>{p['wins']} / {p['pairs']}</td></tr>"
                   for p in paired)
    text = (f"<h3>Paired difference vs {html.escape(ctx.reference)} on the same weights</h3><table><thead><tr>"
            "<th>method</th><th>against</th><th>mean ΔmAP</th><th>wins / pairs</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")
    return Section(html=text, data={"paired": paired})


def heatmap_section(ctx: DatasetContext) -> Section:
    heat = per_class_heatmap(ctx.client, ctx.dataset, ctx.trials, ctx.labels, ctx.heatmap_ratio)
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
                        t.tag("pretrained"), t.ratio, t.tag("seed"), t.metrics["test_map"])
            for t in ctx.trials if t.status == "FINISHED" and t.tag("dataset") == ctx.dataset
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


def write_report(experiment: str, out_dir: Path, tracking_uri: str | None = None, parent_run_id: str | None = None,
                 reference: str = "dualcoop", heatmap_ratio: float | None = None, log_to_mlflow: bool = True) -> dict:
    """Build every output into `out_dir`; returns the numbers (tables, Pareto sets, differences...). The
    report is built beside it and renamed into place, so a failure leaves no partial folder behind."""
    out_dir = Path(os.path.abspath(out_dir))
    check_report_folder(out_dir)
    client = connect(resolve_tracking_uri(tracking_uri))
    parent_run_id, trials = load_trials(client, experiment, parent_run_id)
    with _staged(out_dir) as staging:
        result = _build(client, experiment, parent_run_id, trials, staging, reference, heatmap_ratio)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    if log_to_mlflow:
        client.log_artifacts(parent_run_id, str(out_dir), "report")
        note_report(client, experiment_id, parent_run_id, out_dir)
    result.update(out_dir=str(out_dir), experiment_id=experiment_id, tracking_uri=client.tracking_uri)
    return result


def note_report(client: MlflowClient, experiment_id: str, parent_run_id: str, out_dir: Path) -> None:
    """The sweep's (and experiment's) description in the MLflow UI: the spec's description, the report's
    tables and a link to the whole report logged under the parent's `report/`."""
    spec_path = out_dir / "spec.yaml"
    spec = yaml.safe_load(spec_path.read_text()) if spec_path.is_file() else {}
    link = f"**[The whole report (report.html)]({report_link(experiment_id, parent_run_id)})**: plots, paired " \
           "differences, per-class AP, incomplete trials."
    tables = (out_dir / "table.md").read_text().split("\n", 1)[1]  # without its title: the experiment's name
    set_sweep_note(client, experiment_id, parent_run_id,
                   sweep_note(str((spec or {}).get("description") or ""), link, tables))


def check_report_folder(out_dir: Path) -> None:
    """ReportError, before anything is written, when `out_dir` cannot become (or be replaced by) a report:
    a file, a folder of other files (they would be lost), or a place that cannot be written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportError(f"report folder {out_dir} is a file; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "report.html").is_file():
        raise ReportError(f"{out_dir} holds files that are not a report (they would be replaced); choose "
                          "another --out or empty it")
    parent = out_dir.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK) or (
            out_dir.is_dir() and not os.access(out_dir, os.W_OK | os.X_OK)):
        raise ReportError(f"report folder {out_dir} cannot be written (no write permission on it or {parent}); "
                          "choose another --out")


@contextlib.contextmanager
def _staged(out_dir: Path) -> Iterator[Path]:
    """A fresh folder beside `out_dir`; when the block completes it replaces `out_dir`, else it is removed."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield staging
        staging.chmod(0o777 & ~current_umask())  # mkdtemp makes it owner-only
        _replace_folder(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_folder(new: Path, target: Path) -> None:
    """Rename `new` to `target`; an existing `target` is moved aside first and deleted once `new` is in."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old)  # onto the empty folder just made
    try:
        os.replace(new, target)
    except OSError:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build(client: MlflowClient, experiment: str, parent_run_id: str, trials: list[Trial], out_dir: Path,
           reference: str, heatmap_ratio: float | None) -> dict:
    """Every output of the report, written into `out_dir`; returns its numbers."""
    spec_text = _spec_text(client, parent_run_id, out_dir)
    labels = row_labels(trials)
    incomplete = [f"{labels[t.run_id]} dataset={t.tag('dataset')} ratio={t.tag('label_ratio')} seed={t.tag('seed')}: "
                  f"{t.status}" + (f" — {t.error.splitlines()[0]}" if t.error else "")
                  for t in trials if t.status != "FINISHED"]
    incomplete += expected_missing(spec_text, trials)
    datasets = sorted({t.tag("dataset") for t in trials if t.status == "FINISHED"})
    if not datasets:
        raise ReportError(f"experiment '{experiment}' has no finished trial yet; not finished: {len(incomplete)}")
    markdown, frames, pages = [f"# {experiment}\n"], [], []
    result: dict = {"tables": {}, "pareto": {}, "paired": {}}
    for ds in datasets:
        table = build_table(ds, trials, labels)
        ratio = heatmap_ratio if heatmap_ratio is not None else table.ratios[len(table.ratios) // 2]
        ctx = DatasetContext(ds, trials, labels, table, client, reference, ratio)
        frames.append(table_frame(table))
        pages.append(f"<h2>{html.escape(ds)}</h2>")
        for make in SECTIONS:
            section = make(ctx)
            markdown += [section.markdown] if section.markdown else []
            pages.append(section.html)
            for name, content in section.files.items():
                (out_dir / name).write_bytes(content)
            for key, value in section.data.items():
                result.setdefault(key, {})[ds] = value
    pd.concat(frames).to_csv(out_dir / "table.csv", index=False)
    (out_dir / "table.md").write_text("\n".join(markdown))
    (out_dir / "report.html").write_text(_page(experiment, parent_run_id, trials, incomplete, pages, spec_text))
    (out_dir / "incomplete.json").write_text(json.dumps(incomplete, indent=2))
    result.update(parent_run_id=parent_run_id, incomplete=incomplete)
    return result


def _spec_text(client: MlflowClient, parent_run_id: str, out_dir: Path) -> str | None:
    """The sweep's spec as logged on its parent run (None for runs made without one)."""
    try:
        return Path(client.download_artifacts(parent_run_id, "spec.yaml", str(out_dir))).read_text()
    except Exception:  # MLflow raises several types for a missing artifact
        return None


def _page(experiment: str, parent_run_id: str, trials: list[Trial], incomplete: list[str], pages: list[str],
          spec_text: str | None) -> str:
    listing = "".join(f"<li>{html.escape(line)}</li>" for line in incomplete) or "<li>none</li>"
    spec_html = f"<h2>Spec</h2><pre>{html.escape(spec_text)}</pre>" if spec_text else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>ablate report: {html.escape(experiment)}"
            f"</title><style>{STYLE}</style></head><body><h1>ablate report: {html.escape(experiment)}</h1>"
            f"<p>{sum(t.status == 'FINISHED' for t in trials)} finished trials of sweep run "
            f"<code>{parent_run_id}</code>; only finished trials enter the numbers.</p>"
            f"<h2 class='warn'>Not included (failed, running, stopped or missing)</h2><ul>{listing}</ul>"
            f"{''.join(pages)}{spec_html}</body></html>")
