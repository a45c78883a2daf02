"""Descriptions and UI links: the sweep's note, the trials' table, the MLflow UI address."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag

from ..catalogue import metrics
from ..result import TrialResult
from ..secret_uri import mask
from ..spec import ignored_fields
from .names import CONFIG_ARTIFACT, GIT_DIRTY_TAG, NOTE_TAG, SPEC_TAGS, UI_DEFAULT, children_filter

RUNNING_NOTE = "**Running.** The trials' table follows when the sweep ends."
from .store import open_client, redact_uri, retried
from .view import view_key


def note_sweep_stopped(client: MlflowClient, experiment_id: str, parent_run_id: str, command: str) -> None:
    """An interrupted sweep's description stops saying it runs and says how to continue it."""
    note = retried(client.get_run, parent_run_id).data.tags.get(NOTE_TAG, "")
    description = note.split(RUNNING_NOTE)[0]
    set_sweep_note(client, experiment_id, parent_run_id,
                   sweep_note(description, f"**Stopped** before every trial finished. Resume with: `{command}`"))


def sweep_note(description: str, *sections: str) -> str:
    """The markdown the UI shows as the sweep's (and its experiment's) description."""
    return "\n\n".join(part for part in (description.strip(), *sections) if part)


def set_sweep_note(client: MlflowClient, experiment_id: str, parent_run_id: str, text: str) -> None:
    """The description of the parent run and of the experiment (which shows its newest sweep's), ending with
    links to the sweep's prepared view, so a reader who arrives without the printed address is one click
    from it."""
    text = sweep_note(text, view_links(experiment_id, parent_run_id))
    retried(client.set_tag, parent_run_id, NOTE_TAG, text)
    retried(client.set_experiment_tag, experiment_id, NOTE_TAG, text)


def view_links(experiment_id: str, parent_run_id: str) -> str:
    """Markdown links to the prepared view and its charts, relative to the UI (any host serving it)."""
    table = ui_address("", experiment_id, parent_run_id).split("/#", 1)[1]
    charts = ui_address("", experiment_id, parent_run_id, charts=True).split("/#", 1)[1]
    return (f"This sweep in the prepared view: [runs by label ratio](#{table}) · [charts](#{charts}). A group's "
            "header row shows the max of each column separately (MLflow's group aggregate), not one run's figures; "
            "the first run under it is the group's best test mAP.")


def ui_address(tracking_uri: str, experiment_id: str, parent_run_id: str, charts: bool = False) -> str:
    """The MLflow UI page of a sweep's trial runs in the training view (the UI opens on its GenAI view),
    opening the sweep's prepared view (`view.save_view`: columns, all runs, best test mAP first by label
    ratio, charts); `charts` opens its chart view. A server URI is the UI's own address; for a store file,
    `mlflow ui` serves it at the default port."""
    base = _without_credentials(tracking_uri).rstrip("/") if tracking_uri.startswith(("http://", "https://")) \
        else UI_DEFAULT
    query = urllib.parse.urlencode({"viewStateShareKey": view_key(parent_run_id), "workflowType": "machine_learning",
                                    **({"compareRunsMode": "CHART"} if charts else {})})
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def _without_credentials(uri: str) -> str:
    """A server's address for a browser: a `user:password@` stays out of printed links."""
    parts = urllib.parse.urlsplit(str(uri))
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


def ui_hint(tracking_uri: str, experiment_id: str, parent_run_id: str) -> str:
    """What `ablate sweep` and `ablate report` print: the address, and for a store file how to serve it."""
    line = (f"MLflow UI: {ui_address(tracking_uri, experiment_id, parent_run_id)}\n"
            f"  charts: {ui_address(tracking_uri, experiment_id, parent_run_id, charts=True)}")
    if tracking_uri.startswith(("http://", "https://")):
        return line
    return f"{line}\n  (serve it first: mlflow ui --backend-store-uri {mask(tracking_uri)})"


def trial_table(uri: str, experiment_id: str, parent_run_id: str) -> list[dict]:
    """One row per child run of a sweep: arm, status and the catalogue's "trials" columns."""
    client = open_client(uri)
    runs = retried(client.search_runs, [experiment_id], filter_string=children_filter(parent_run_id),
                  max_results=10000)
    rows = []
    for run in runs:
        tags, m = run.data.tags, run.data.metrics
        rows.append({"method": tags.get("ablate.method"), "dataset": tags.get("ablate.dataset"),
                     "label_ratio": tags.get("ablate.label_ratio"), "seed": tags.get("ablate.seed"),
                     "status": run.info.status, "run_name": run.info.run_name,
                     **{c.name: m.get(c.name) for c in metrics(column="trials")}})
    return sorted(rows, key=lambda r: tuple(str(r[k]) for k in ("dataset", "method", "label_ratio", "seed")))


def sweep_bill(runs: Iterable[tuple[dict[str, str], dict[str, float], int, int]]) -> dict[str, float]:
    """What a sweep held, from its trial runs' (tags, metrics, start ms, end ms): device-hours with each Ray
    trial counted once (a pack's arms share one figure, pack_device_hours; an arm alone has its own), and
    the wall time from the first run's start to the last run's end. Per-arm device_hours are attributed
    shares: their sum counts a pack's shared stream once per arm, so it overstates the bill."""
    held: dict[str, float] = {}
    starts, ends = [], []
    for tags, metrics_, start, end in runs:
        trial = tags.get("ablate.trial_id", "")
        hours = metrics_.get("pack_device_hours", metrics_.get("device_hours"))
        if hours is not None:
            held[trial] = max(held.get(trial, 0.0), float(hours))
        starts += [start] if start else []
        ends += [end] if end else []
    wall = (max(ends) - min(starts)) / 1000 if starts and ends else 0.0
    return {"device_hours": sum(held.values()), "ray_trials": len(held), "wall_time_s": max(wall, 0.0)}


def bill_text(bill: dict[str, float]) -> str:
    return (f"{bill['device_hours']:.4g} device-hours ({int(bill['ray_trials'])} Ray trials, each counted once), "
            f"{bill['wall_time_s'] / 60:.1f} min wall")


def trials_markdown(rows: list[dict]) -> str:
    """trial_table's rows as the markdown table of a sweep's description, best test mAP first."""
    columns = metrics(column="trials")
    lines = ["| run | status | " + " | ".join(c.heading for c in columns) + " |",
             "|---|---|" + "--:|" * len(columns)]
    for r in sorted(rows, key=lambda r: -(r["test_map"] if r["test_map"] is not None else -1.0)):
        lines.append(f"| {r['run_name']} | {r['status']} | " + " | ".join(c.text(r[c.name]) for c in columns) + " |")
    return "\n".join(lines)


def report_link(experiment_id: str, parent_run_id: str) -> str:
    """The report's page in the MLflow UI, relative to the UI (works on any host serving it)."""
    return f"#/experiments/{experiment_id}/runs/{parent_run_id}/artifacts/report/report.html"


def trial_note(result: TrialResult) -> str:
    """A trial run's own description: what it was, what it scored and at which epoch, and how its metrics
    are stepped (the UI's charts say only "step")."""
    cfg, ignored = result.config, ignored_fields(result.method)
    what = [result.method, result.dataset]
    what += [] if "label_ratio" in ignored else [f"{result.label_ratio * 100:g} % labels"]
    what += [] if "seed" in ignored else [f"seed {cfg.get('seed')}"]
    score = f"test mAP {result.test_map:.2f}"
    if result.epochs:
        score += (f" at the epoch {result.selected_on} picked ({result.best_epoch} of {result.epochs}); "
                  f"last epoch {result.last_test_map:.2f}")
    else:
        score += " (nothing trained)"
    legend = [f"- `{m.name}`: {m.description}" for m in metrics() if m.name in
              ("test_map", "last_test_map", "best_val_map", "val_map", "train_loss", "device_hours")]
    return "\n\n".join([f"**{', '.join(what)}**: {score}.",
                         "Per-epoch metrics are logged at step = epoch (1…N), `train_step_loss` at the optimiser "
                         "step, end-of-trial figures once at step 0.", "\n".join(legend)])


RERUN_HEADING = "**Rerun it**"


def rerun_note(run_id: str, tracking_uri: str, tags: dict[str, str], out_root: str = "runs") -> str:
    """How to retrain this run alone: download its resolved config (the artifact CONFIG_ARTIFACT) and give
    it to `ablate train`, at the code's commit; the sweep's spec named relative to its repository."""
    folder = f"{out_root}/rerun-{run_id[:8]}"
    commit = tags.get("mlflow.source.git.commit")
    code = (f" with the code at commit `{commit[:12]}` (`git checkout {commit[:12]}`"
            + (", which had uncommitted changes when this ran" if tags.get(GIT_DIRTY_TAG) == "true" else "")
            + ")") if commit else ""
    spec = f"; the sweep's spec: `{tags[SPEC_TAGS[1]]}`" if SPEC_TAGS[1] in tags else ""
    return (f"{RERUN_HEADING}{code}{spec}. Its config as it ran is the artifact `{CONFIG_ARTIFACT}`:\n\n"
            f"    MLFLOW_TRACKING_URI={redact_uri(tracking_uri)} mlflow artifacts download --run-id {run_id} "
            f"--artifact-path {CONFIG_ARTIFACT} --dst-path {folder}\n"
            f"    ablate train --config {folder}/{CONFIG_ARTIFACT} --out {folder}")


def split_input(result: TrialResult, split: str, digest: str) -> DatasetInput:
    """One split as an MLflow dataset input: a name that tells ratios apart, its size and labelled count."""
    counts = result.split_labels.get(split)
    partial = counts[0] < counts[1] if counts else split != "test"
    name = " · ".join([result.dataset, split, *([f"{result.label_ratio * 100:g}% labels"] if partial else [])])
    unread = (" The method reads no labels: only its val mAP is scored on them." if "label_ratio" in
              ignored_fields(result.method) else "")
    source = {"dataset": result.dataset, "split": split,
              "labels": (f"partial: each (image, class) label kept with probability {result.label_ratio:g}, "
                         "the rest unknown; the mask is drawn from the ratio and seed, so the digest differs by "
                         "ratio" + (" (val is held out of train and keeps its masked labels)" if split == "val"
                                    else "") + "." + unread) if partial else "complete"}
    profile = {"num_rows": result.split_sizes.get(split, 0),
               **({"labels_known": counts[0], "labels_total": counts[1]} if counts else {})}
    return DatasetInput(Dataset(name=name, digest=digest, source_type="ablate", source=json.dumps(source),
                                profile=json.dumps(profile)), [InputTag("mlflow.data.context", split)])
