"""The prepared MLflow UI view of a sweep: the columns, sort, grouping and charts a researcher needs,
saved where the UI reads saved views and opened by the address `ablate sweep` prints.

MLflow 3's experiment page restores a shared view from an experiment tag
`mlflow.sharedViewState.<key>` when the address carries `viewStateShareKey=<key>` and no search
parameters of its own (its "Share" button writes the same tag). The value is the page's state as JSON,
zlib-compressed and base64-encoded behind `deflate;`. What the state cannot hold: the chart view
itself (a second address with `compareRunsMode=CHART`), a run filter per chart (so no scatter per label
ratio: one chart of test mAP against the ratio instead), rounding of the table's values, a group header
without aggregates (it shows each column's max separately: the sweep's description says so), and chart
titles of our own. MLflow's parallel coordinates leave out a run whose value on a numeric axis is not a
number (zero-shot's n/a label ratio, the baseline's n/a n_ctx): the chart takes only the swept axes every
trial has as a number (or none has: a categorical axis such as the method) that vary, then cost and
test mAP, so no run drops out.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Sequence

from mlflow import MlflowClient

from ..catalogue import metrics
from .names import ARM_FIELDS, SWEPT_AXES, children_filter
from .store import retried

VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # the UI's own tag for shared views
SECTION = "ablate: the sweep at a glance"


def view_key(parent_run_id: str) -> str:
    return f"ablate-{parent_run_id}"


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's canonical column key


def _chart(uuid: str, kind: str, title: str, **config: object) -> dict:
    return {"uuid": uuid, "type": kind, "displayName": title, "metricSectionId": SECTION, "deleted": False,
            "isGenerated": False, "runsCountToCompare": 10000, **config}


def _scatter(uuid: str, x: str, y: str, title: str, x_type: str = "METRIC") -> dict:
    return _chart(uuid, "SCATTER", title, xaxis={"key": x, "type": x_type}, yaxis={"key": y, "type": "METRIC"})


def _line(uuid: str, key: str, title: str) -> dict:
    return _chart(uuid, "LINE", title, metricKey=key, selectedMetricKeys=[key], xAxisKey="step",
                  useGlobalXaxisKey=False, scaleType="linear", xAxisScaleType="linear", lineSmoothness=0,
                  useGlobalLineSmoothing=False, range={})


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def parallel_axes(trial_params: Sequence[dict[str, str]], axes: Sequence[str]) -> list[str]:
    """The swept axes the parallel-coordinates chart can draw for every trial: those that vary over the
    trials and that every trial has as a number, or none has (a categorical axis); `method` when nothing is
    known yet."""
    keep = []
    for axis in axes:
        values = [p.get(axis, "") for p in trial_params]
        numeric = [_is_number(v) for v in values]
        if len(set(values)) > 1 and (all(numeric) or not any(numeric)):
            keep.append(axis)
    return keep or ["method"]


PACK_COLUMN = "ablate.pack"  # the tag naming the Ray trial (pack) that trained an arm


def view_state(parent_run_id: str, axes: list[str] | None = None,
               trial_params: Sequence[dict[str, str]] = ()) -> dict:
    """The page state: this sweep's trial runs, all shown, best test mAP first, grouped by label ratio
    (the best method heads each group); columns method, label ratio, test mAP and the cost columns right
    after it, then the other swept axes and the pack; the charts."""
    swept = list(axes or SWEPT_AXES)
    costs = [m.name for m in metrics(column="trials") if m.name != "test_map"]
    charts = [_scatter("ablate-cost-params", "trainable_params", "test_map", "test mAP vs trainable parameters"),
              _scatter("ablate-cost-device-h", "device_hours", "test_map", "test mAP vs device-hours"),
              _scatter("ablate-ratio", "label_ratio", "test_map", "test mAP vs label ratio", x_type="PARAM"),
              _line("ablate-train-loss", "train_loss", "train loss per epoch"),
              _line("ablate-val-map", "val_map", "val mAP per epoch"),
              _chart("ablate-parallel", "PARALLEL", "swept axes and cost → test mAP",
                     selectedParams=parallel_axes(trial_params, swept),
                     selectedMetrics=["trainable_params", "test_map"], showAllRuns=True)]
    # ours first; the UI files every other metric's generated chart under its own two sections
    sections = [{"uuid": name, "name": name, "display": True, "isReordered": False, "deleted": False,
                 "isGenerated": name != SECTION} for name in (SECTION, "Model metrics", "System metrics")]
    # the UI shows params, then metrics, then tags (each group in the given order): the other axes come as
    # their arm tags (the same values as the params), so test mAP and cost follow method and ratio
    first = [a for a in ("method", "label_ratio") if a in swept]
    rest = [_column("tags", f"ablate.{a}") if a in ARM_FIELDS else _column("params", a) for a in swept
            if a not in first]
    columns = [*(_column("params", a) for a in first), _column("metrics", "test_map"),
               *(_column("metrics", c) for c in costs), *rest, _column("tags", PACK_COLUMN)]
    return {
        "searchFilter": children_filter(parent_run_id),
        "orderByKey": _column("metrics", "test_map"), "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": columns,
        "runsHiddenMode": "SHOW_ALL",
        "groupBy": {"aggregateFunction": "max", "groupByKeys": [{"mode": "param", "groupByData": "label_ratio"}]},
        "useGroupedValuesInCharts": False,
        "hideEmptyCharts": True,
        "compareRunCharts": charts,
        "compareRunSections": sections,
        "isAccordionReordered": False,
    }


def encode(state: dict) -> str:
    """The UI's compressed form (what its Share button stores)."""
    return "deflate;" + base64.b64encode(zlib.compress(json.dumps(state).encode())).decode()


def decode(value: str) -> dict:
    return json.loads(zlib.decompress(base64.b64decode(value.removeprefix("deflate;"))))


def save_view(client: MlflowClient, experiment_id: str, parent_run_id: str,
              trial_params: Sequence[dict[str, str]] | None = None) -> str:
    """Store the sweep's prepared view as the experiment tag the UI reads; returns its key. `trial_params`:
    the trials' params (default: those of the sweep's runs so far)."""
    if trial_params is None:
        trial_params = [r.data.params for r in retried(client.search_runs, [experiment_id],
                                                        children_filter(parent_run_id), max_results=10_000)]
    key = view_key(parent_run_id)
    retried(client.set_experiment_tag, experiment_id, VIEW_TAG_PREFIX + key,
            encode(view_state(parent_run_id, trial_params=trial_params)))
    return key
