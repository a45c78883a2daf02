"""The report's Cost section: the plan the sweep stored on its parent run (`plan.json`, ablate/sweep/forecast.py)
against what its trials measured, per pack and in total: wall time, device-hours and the slots' idle
fraction, so the next plan's calibration can be judged (and the next plan priced from these runs)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from mlflow import MlflowClient

from ..sweep.forecast import PLAN_ARTIFACT
from ..tracking import retried
from .sections import Section
from .trials import RunRecord

PACK_INDEX = re.compile(r"-(\d+) \(\d+ arms\)$")  # the `ablate.pack` tag: <stream id>-<pack> (<n> arms)


def stored_plan(client: MlflowClient, parent_run_id: str, folder: Path) -> dict | None:
    """The plan the sweep stored, or None (a sweep launched before plans were stored, or not packed)."""
    try:
        return json.loads(Path(retried(client.download_artifacts, parent_run_id, PLAN_ARTIFACT, str(folder)))
                          .read_text())
    except Exception:  # MLflow raises several types for a missing artifact
        return None


def measured(client: MlflowClient, parent_run_id: str, trials: list[RunRecord], slots: int) -> dict:
    """Per Ray trial (pack index, or run id for an arm alone) its wall seconds and device-hours, and the
    sweep's: the parent run's wall time, the device-hours summed once per Ray trial, the idle fraction."""
    packs: dict[str, dict[str, float]] = {}
    for t in trials:
        if "wall_time_s" not in t.metrics:
            continue
        found = PACK_INDEX.search(t.tag("pack"))
        key = found.group(1) if found else t.run_id
        wall = t.metrics.get("pack_wall_time_s", t.metrics.get("trial_wall_time_s", t.metrics["wall_time_s"]))
        hours = t.metrics.get("pack_device_hours", t.metrics.get("device_hours", 0.0))
        packs[key] = {"wall": wall, "device_hours": hours}
    info = retried(client.get_run, parent_run_id).info
    wall = ((info.end_time or info.start_time) - info.start_time) / 1000 if info.start_time else 0.0
    busy = sum(p["wall"] for p in packs.values())
    return {"packs": packs, "wall": wall, "device_hours": sum(p["device_hours"] for p in packs.values()),
            "idle_fraction": max(0.0, 1 - busy / (slots * wall)) if wall > 0 else None}


def _ratio(predicted: float, actual: float) -> str:
    return f"{predicted / actual - 1:+.0%}" if actual else "-"


def cost_report(client: MlflowClient, parent_run_id: str, trials: list[RunRecord], folder: Path) -> Section:
    """Predicted against measured, or nothing when the sweep stored no plan."""
    plan = stored_plan(client, parent_run_id, folder)
    if plan is None:
        return Section()
    got = measured(client, parent_run_id, trials, int(plan["slots"]))
    priced = plan["unit"] == "s"
    rows = []
    for p in plan["packs"]:
        m = got["packs"].get(str(p["pack"]))
        rows.append({"pack": p["pack"], "arms": p["arms"], "predicted_s": p["predicted"] if priced else None,
                     "measured_s": m["wall"] if m else None})
    total = {"predicted_wall_s": plan["wall"] if priced else None, "measured_wall_s": got["wall"],
             "predicted_device_hours": plan.get("device_hours"), "measured_device_hours": got["device_hours"],
             "predicted_idle_fraction": plan["idle_fraction"], "measured_idle_fraction": got["idle_fraction"]}
    head = (f"{len(plan['packs'])} Ray trial(s) on {plan['slots']} slot(s) ({plan['slots_from']}); costs: "
            f"{plan['costs']}")
    lines = ["## Cost: predicted against measured", "", head, "",
             "| | predicted | measured | predicted vs measured |", "|---|---:|---:|---:|"]
    html_rows = []

    def add(name: str, pred: float | None, meas: float | None, fmt: str) -> None:
        ptxt = "-" if pred is None else format(pred, fmt)
        mtxt = "-" if meas is None else format(meas, fmt)
        diff = _ratio(pred, meas) if pred is not None and meas else "-"
        lines.append(f"| {name} | {ptxt} | {mtxt} | {diff} |")
        html_rows.append(f"<tr><td>{html.escape(name)}</td><td>{ptxt}</td><td>{mtxt}</td><td>{diff}</td></tr>")

    add("wall time (s)", total["predicted_wall_s"], total["measured_wall_s"], ".1f")
    add("device-hours", total["predicted_device_hours"], total["measured_device_hours"], ".4g")
    add("idle fraction of the slots", total["predicted_idle_fraction"], total["measured_idle_fraction"], ".1%")
    for r in rows:
        add(f"pack {r['pack']} ({r['arms']} arms), wall s", r["predicted_s"], r["measured_s"], ".1f")
    if not priced:
        lines += ["", "No calibration when the sweep was planned: relative costs only, so only the idle fraction is "
                  "predicted; `ablate plan --spec ...` now prices the next plan from these runs."]
    text = (f"<h2>Cost: predicted against measured</h2><p>{html.escape(head)}</p><table><thead><tr><th></th>"
            f"<th>predicted</th><th>measured</th><th>predicted vs measured</th></tr></thead><tbody>"
            f"{''.join(html_rows)}</tbody></table>")
    return Section("\n".join(lines) + "\n", text, data={"cost": {"total": total, "packs": rows}})
