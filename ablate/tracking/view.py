"""The prepared MLflow UI view of a sweep: the columns, sort, grouping and charts a researcher needs,
saved where the UI reads saved views and opened by the address `ablate sweep` prints.

MLflow 3's experiment page restores a shared view from an experiment tag
`mlflow.sharedViewState.<key>` when the address carries `viewStateShareKey=<key>` and no search
parameters of its own (its "Share" button writes the same tag). The value is the page's state as JSON,
zlib-compressed and base64-encoded behind `deflate;`. What the state cannot hold: the chart view
itself (a second address with `compareRunsMode=CHART`), and zero-shot's n/a label ratio on the
parallel-coordinates axis (MLflow leaves runs with a non-numeric value on a numeric axis out).
"""

from __future__ import annotations

import base64
import json
import zlib

from mlflow import MlflowClient

from ..catalogue import metrics
from .names import SWEPT_AXES, children_filter
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


def _scatter(uuid: str, x: str, y: str, title: str) -> dict:
    return _chart(uuid, "SCATTER", title, xaxis={"key": x, "type": "METRIC"}, yaxis={"key": y, "type": "METRIC"})


def _line(uuid: str, key: str, title: str) -> dict:
    return _chart(uuid, "LINE", title, metricKey=key, selectedMetricKeys=[key], xAxisKey="step",
                  useGlobalXaxisKey=False, scaleType="linear", xAxisScaleType="linear", lineSmoothness=0,
                  useGlobalLineSmoothing=False, range={})


def view_state(parent_run_id: str, axes: list[str] | None = None) -> dict:
    """The page state: this sweep's trial runs, all shown, best test mAP first, grouped by label ratio
    (the best method heads each group), the arm and cost columns, and the charts."""
    swept = list(axes or SWEPT_AXES)
    costs = [m.name for m in metrics(column="trials")]
    charts = [_scatter("ablate-cost-params", "trainable_params", "test_map", "test mAP vs trainable parameters"),
              _scatter("ablate-cost-device-h", "device_hours", "test_map", "test mAP vs device-hours"),
              _line("ablate-train-loss", "train_loss", "train loss per epoch"),
              _line("ablate-val-map", "val_map", "val mAP per epoch"),
              _chart("ablate-parallel", "PARALLEL", "swept axes → test mAP", selectedParams=swept,
                     selectedMetrics=["test_map"], showAllRuns=True)]
    # ours first; the UI files every other metric's generated chart under its own two sections
    sections = [{"uuid": name, "name": name, "display": True, "isReordered": False, "deleted": False,
                 "isGenerated": name != SECTION} for name in (SECTION, "Model metrics", "System metrics")]
    columns = [*(_column("params", a) for a in swept), *(_column("metrics", c) for c in costs)]
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


def save_view(client: MlflowClient, experiment_id: str, parent_run_id: str) -> str:
    """Store the sweep's prepared view as the experiment tag the UI reads; returns its key."""
    key = view_key(parent_run_id)
    retried(client.set_experiment_tag, experiment_id, VIEW_TAG_PREFIX + key, encode(view_state(parent_run_id)))
    return key
