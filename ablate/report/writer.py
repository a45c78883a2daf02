"""Writing a report: the folder (staged, then swapped in), the self-contained page, MLflow's copy."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import html
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ..catalogue import metrics
from ..errors import ReportError, TrackingError
from ..files import current_umask
from ..pathnames import component_problem
from ..published import PublishedTable
from ..secret_uri import mask
from ..sweep.spec import SweepSpec
from ..tracking import (
    bill_text,
    connect_existing,
    report_link,
    resolve_tracking_uri,
    retried,
    save_view,
    set_sweep_note,
    sweep_bill,
    sweep_note,
)
from .cost import cost_report
from .rows import assign_rows
from .sections import SECTIONS, DatasetContext
from .tables import build_table, expected_missing, expected_seeds, table_frame
from .trials import RunRecord, load_trials

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.best{font-weight:bold;background:#e8f5e9}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}pre{background:#f6f6f6;padding:1em;overflow:auto}
.warn{color:#b00020}"""


def write_report(experiment: str, out_dir: Path, tracking_uri: str | None = None, parent_run_id: str | None = None,
                 reference: str | None = None, heatmap_ratio: float | None = None, log_to_mlflow: bool = True,
                 published: list[PublishedTable] | None = None, columns: list[str] | None = None) -> dict:
    """Build every output into `out_dir`; returns the numbers (tables, Pareto sets, differences...). The
    report is built beside it and renamed into place, so a failure leaves no partial folder behind.
    `reference` (default dualcoop, when it ran) and `heatmap_ratio` must be among the finished trials';
    `published` tables must cover one of their data sets; `columns`: catalogue metrics added to the table."""
    check_columns(columns or [])
    out_dir = Path(os.path.abspath(out_dir))
    check_report_folder(out_dir)
    client = connect_existing(resolve_tracking_uri(tracking_uri))
    if parent_run_id is not None:
        check_parent_run(client, parent_run_id)
    parent_run_id, trials = load_trials(client, experiment, parent_run_id)
    trials = [t if t.status != "FINISHED" or "test_map" in t.metrics else
              dataclasses.replace(t, status="FINISHED without its metrics (test_map)") for t in trials]
    check_choices(trials, reference, heatmap_ratio)
    check_published(trials, published or [])
    reference = reference or "dualcoop"
    with _staged(out_dir) as staging:
        result = _build(client, experiment, parent_run_id, trials, staging, reference, heatmap_ratio, published,
                        columns or [])
        (staging / MANIFEST).write_text(json.dumps({"files": sorted(_files(staging))}, indent=1))
    experiment_id = retried(client.get_run, parent_run_id).info.experiment_id
    if log_to_mlflow:
        retried(client.log_artifacts, parent_run_id, str(out_dir), "report")
        note_report(client, experiment_id, parent_run_id, out_dir)
    result.update(out_dir=str(out_dir), experiment_id=experiment_id, tracking_uri=client.tracking_uri)
    return result


def check_parent_run(client: MlflowClient, run_id: str) -> None:
    """ReportError unless `run_id` names a run (a quote or other text would break MLflow's search filter)."""
    if not re.fullmatch(r"[0-9a-zA-Z_-]{1,64}", run_id):
        raise ReportError(f"--parent-run {run_id!r} is not an MLflow run id (letters and digits, as in the run's "
                          "page); leave it out for the experiment's newest sweep")
    try:
        retried(client.get_run, run_id)
    except MlflowException:
        raise ReportError(f"--parent-run {run_id}: no such MLflow run; leave it out for the experiment's newest "
                          "sweep") from None


def check_choices(trials: list[RunRecord], reference: str | None, heatmap_ratio: float | None) -> None:
    """ReportError when --reference or --heatmap-ratio names nothing the finished trials have (the report
    would silently leave out the differences or the heatmap); the message lists what they have."""
    done = [t for t in trials if t.status == "FINISHED"]
    methods = sorted({t.tag("method") for t in done})
    if reference is not None and done and reference not in methods:
        raise ReportError(f"--reference {reference}: no finished trial of that method; choose one of "
                          f"{', '.join(methods)}")
    ratios = sorted({t.ratio for t in done if t.ratio is not None})  # zero-shot reads no label ratio
    if heatmap_ratio is not None and ratios and not any(math.isclose(heatmap_ratio, r) for r in ratios):
        raise ReportError(f"--heatmap-ratio {heatmap_ratio:g}: no finished trial at that label ratio; choose one "
                          f"of {', '.join(f'{r:g}' for r in ratios)}")


def check_columns(columns: list[str]) -> None:
    """ReportError for a --columns name that is not a final metric of the catalogue; the message lists them."""
    final = [m.name for m in metrics("final")]
    unknown = [c for c in columns if c not in final]
    if unknown:
        raise ReportError(f"--columns {', '.join(unknown)}: not a final metric of a trial; choose among "
                          f"{', '.join(final)}")


def check_published(trials: list[RunRecord], published: list[PublishedTable]) -> None:
    """ReportError when a --published table has numbers for none of the sweep's data sets (it would compare
    nothing, silently); the message names both lists."""
    datasets = sorted({t.tag("dataset") for t in trials if t.status == "FINISHED"})
    for paper in published:
        if datasets and not set(paper.results) & set(datasets):
            raise ReportError(f"--published {paper.name}: its data sets ({', '.join(sorted(paper.results))}) are "
                              f"none of this sweep's ({', '.join(datasets)}); nothing to compare")


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
    save_view(client, experiment_id, parent_run_id)  # sweeps recorded before the view existed get it too


MANIFEST = ".ablate-report.json"  # the files a report wrote: all a later report may replace


def _files(folder: Path) -> set[str]:
    """Every entry under `folder` but folders, as POSIX paths relative to it (links are entries too)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_symlink() or not p.is_dir()}


def _written_by_a_report(folder: Path) -> set[str] | None:
    """The files the manifest of an earlier report lists; None without a readable one."""
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {str(f) for f in listed} if isinstance(listed, list) else None


def check_report_folder(out_dir: Path) -> None:
    """ReportError, before anything is written, when `out_dir` cannot become (or be replaced by) a report:
    a file, a folder holding anything an earlier report did not write (it would be lost), or a place that
    cannot be written."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ReportError(f"report folder {out_dir} is a file or link; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        written = _written_by_a_report(out_dir)
        others = sorted(_files(out_dir) - (written or set()) - {MANIFEST})
        if written is None or others:
            what = f"{others[0]}" + (f" and {len(others) - 1} more" if len(others) > 1 else "") if others \
                else f"files but no {MANIFEST} of an earlier report"
            raise ReportError(f"{out_dir} holds {what} that no earlier report wrote (replacing the folder would "
                              "delete them); choose another --out, or move them away")
    parent = out_dir.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK) or (
            out_dir.is_dir() and not os.access(out_dir, os.W_OK | os.X_OK)):
        raise ReportError(f"report folder {out_dir} cannot be written (no write permission on it or {parent}); "
                          "choose another --out")


# what a file system answers when it refuses a write: the user's to fix, not a bug
REFUSED_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


@contextlib.contextmanager
def _staged(out_dir: Path) -> Iterator[Path]:
    """A fresh folder beside `out_dir`; when the block completes it replaces `out_dir`, else it is removed.
    A write that the file system refuses (full, read-only, no permission) is a ReportError naming `out_dir`."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            yield staging
            staging.chmod(0o777 & ~current_umask())  # mkdtemp makes it owner-only
            _replace_folder(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as err:
        if err.errno not in REFUSED_WRITES:
            raise
        raise ReportError(f"cannot write the report into {out_dir} ({err.strerror}); free some space there or "
                          "choose another --out (an earlier report there is left as it was)") from None


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


def _search_space(spec_text: str | None) -> set[str]:
    spec = SweepSpec(**yaml.safe_load(spec_text)) if spec_text else None
    return set(spec.optuna.space) if spec is not None and spec.optuna else set()


def _build(client: MlflowClient, experiment: str, parent_run_id: str, trials: list[RunRecord], out_dir: Path,
           reference: str, heatmap_ratio: float | None, published: list[PublishedTable] | None = None,
           columns: list[str] | None = None) -> dict:
    """Every output of the report, written into `out_dir`; returns its numbers."""
    spec_text = _spec_text(client, parent_run_id, out_dir)
    rows = assign_rows(trials, _search_space(spec_text))
    labels = rows.label
    where = {t.run_id: f"{rows.names[t.run_id]} dataset={t.tag('dataset')} ratio={t.tag('label_ratio')} "
                       f"seed={t.tag('seed')}" for t in trials}
    incomplete = [f"{where[t.run_id]}: {t.status}" + (f" — {t.error.splitlines()[0]}" if t.error else "")
                  for t in trials if t.status != "FINISHED"]
    incomplete += [f"{where[run_id]}: {reason}" for run_id, reason in rows.excluded.items()
                   if not reason.startswith("search ")]  # a search's other samples are in its own table
    incomplete += expected_missing(spec_text, trials)
    datasets = sorted({t.tag("dataset") for t in trials if t.status == "FINISHED"})
    if not datasets:
        raise ReportError(f"experiment '{experiment}' has no finished trial yet; not finished: {len(incomplete)}")
    markdown, frames, pages = [f"# {experiment}\n"], [], []
    result: dict = {"tables": {}, "pareto": {}, "paired": {}}
    for ds in datasets:
        table = build_table(ds, trials, labels, expected_seeds(spec_text, trials, ds), columns)
        ctx = DatasetContext(ds, trials, labels, table, client, reference, heatmap_ratio, list(published or []),
                             rows.searches)
        frames.append(table_frame(table))
        pages.append(f"<h2>{html.escape(ds)}</h2>")
        for make in SECTIONS:
            section = make(ctx)
            markdown += [section.markdown] if section.markdown else []
            pages.append(section.html)
            for name, content in section.files.items():
                if (problem := component_problem(name)) is not None:  # a section's file stays in the report
                    raise ReportError(f"report section {getattr(make, '__name__', make)} names a file {name!r} "
                                      f"that {problem}")
                (out_dir / name).write_bytes(content)
            for key, value in section.data.items():
                result.setdefault(key, {})[ds] = value
    cost = cost_report(client, parent_run_id, trials, out_dir)  # the sweep's plan against its trials
    markdown += [cost.markdown] if cost.markdown else []
    pages.append(cost.html)
    result.update(cost.data)
    pd.concat(frames).to_csv(out_dir / "table.csv", index=False)
    bill = sweep_bill((t.tags, t.metrics, t.start_ms, t.end_ms) for t in trials)
    markdown.insert(1, f"The sweep held {bill_text(bill)}.\n")
    (out_dir / "table.md").write_text("\n".join(markdown))
    (out_dir / "report.html").write_text(_page(experiment, parent_run_id, trials, incomplete, pages, spec_text,
                                               bill))
    (out_dir / "incomplete.json").write_text(json.dumps(incomplete, indent=2))
    result.update(parent_run_id=parent_run_id, incomplete=incomplete, bill=bill)
    return result


def _spec_text(client: MlflowClient, parent_run_id: str, out_dir: Path) -> str | None:
    """The sweep's spec as logged on its parent run (None for runs made without one)."""
    try:
        path = Path(retried(client.download_artifacts, parent_run_id, "spec.yaml", str(out_dir)))
        text = mask(path.read_text())  # a spec an older release logged as written: no password in the report
        path.write_text(text)
        return text
    except TrackingError:  # the server stayed down: not the same as a run without a spec
        raise
    except Exception:  # MLflow raises several types for a missing artifact
        return None


def _page(experiment: str, parent_run_id: str, trials: list[RunRecord], incomplete: list[str], pages: list[str],
          spec_text: str | None, bill: dict[str, float]) -> str:
    listing = ("<h2 class='warn'>Not included (failed, running, stopped or missing)</h2><ul>"
               + "".join(f"<li>{html.escape(line)}</li>" for line in incomplete) + "</ul>") if incomplete else ""
    # a sweep recorded by an older release logged its spec as written: its URIs' passwords stay out of the page
    spec_html = f"<h2>Spec</h2><pre>{html.escape(mask(spec_text))}</pre>" if spec_text else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>ablate report: {html.escape(experiment)}"
            f"</title><style>{STYLE}</style></head><body><h1>ablate report: {html.escape(experiment)}</h1>"
            f"<p>{sum(t.status == 'FINISHED' for t in trials)} finished trials of sweep run "
            f"<code>{parent_run_id}</code>; only finished trials enter the numbers. The sweep held "
            f"{html.escape(bill_text(bill))}; a run's device-h column is its attributed share.</p>"
            f"{listing}"
            f"{''.join(pages)}{spec_html}</body></html>")
