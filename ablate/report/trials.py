"""What the report reads: the sweep's FINISHED trial runs from MLflow, as typed rows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mlflow import MlflowClient

from ..errors import ReportError
from ..spec import FIELD_ROLES, ignored_fields
from ..stats import MeanInterval
from ..tracking import ROLE_TAG, children_filter, retried


@dataclass
class RunRecord:
    """One finished (or failed) trial run as the report reads it back from MLflow: its tags, final metrics and error."""

    run_id: str
    status: str
    tags: dict[str, str]
    metrics: dict[str, float]
    error: str | None = None
    params: dict[str, str] = field(default_factory=dict)  # the trial's config, flattened (tracking.flatten_config)
    start_ms: int = 0  # when the run started and ended (MLflow's times; 0: unknown)
    end_ms: int = 0

    def tag(self, name: str) -> str:
        return self.tags.get(f"ablate.{name}", "")

    @property
    def settings(self) -> dict[str, str]:
        """The trial's settings: its params; for a run recorded without them, its `ablate.<field>` tags."""
        if self.params:
            return self.params
        return {k.removeprefix("ablate."): v for k, v in self.tags.items()
                if k.startswith("ablate.") and k.removeprefix("ablate.") in FIELD_ROLES}

    @property
    def ratio(self) -> float | None:
        """The label ratio; None where the method reads none (its tag, like its param, says n/a)."""
        if ratio_free(self.tag("method")):
            return None
        return float(self.tag("label_ratio"))

    @property
    def test_selected(self) -> bool:
        return self.tag("selected_on") == "test"


TEST_SELECTED = "†"  # marks numbers whose epoch was picked on the test split itself
TEST_SELECTED_NOTE = (f"{TEST_SELECTED} epoch selected on the test set (the reference's protocol, `select_on: test`): "
                      "optimistic, not comparable with numbers selected on a validation split.")


RATIO_FREE = "‡"  # marks a row whose method reads no labels: one run repeated in every ratio column
RATIO_FREE_NOTE = (f"{RATIO_FREE} ratio-independent: the method reads no labels, so its run (per seed) is the same "
                   "number in every label-ratio column and the average.")
TIE = "≈"  # marks a column's best mean not separated from other rows (paired per seed), and those rows
TOP = "▲"  # marks a column's best mean where nothing supports a ranking claim (one seed; one replicated row)
STILL_IMPROVING = "↗"  # the picked epoch is the last one: training had not levelled off
DROPPED = "↘"  # the picked epoch's test mAP is far below the last epoch's: a selection artefact
DROP_POINTS = 2.0  # "far below": more than this many mAP points
FLAG_NOTES = {STILL_IMPROVING: f"{STILL_IMPROVING} a run of the cell picked its last epoch (still improving: more "
                               "epochs may change the ranking)",
              DROPPED: f"{DROPPED} a run of the cell scores more than {DROP_POINTS:g} mAP points lower on test at its "
                       "picked epoch than at its last (the selection picked an early epoch)"}
ONE_SEED = "1 seed: no intervals, no ranking claim."


@dataclass
class Cell:
    mean: float
    std: float
    n: int
    test_selected: bool = False
    low: float = math.nan  # 95 % t interval of the mean over seeds (nan with one seed)
    high: float = math.nan
    expected: int = 0  # seeds the sweep asks for (0: unknown); fewer finished marks the cell incomplete
    values: dict[str, float] = field(default_factory=dict)  # seed -> value: what paired comparisons pair
    flags: set[str] = field(default_factory=set)  # STILL_IMPROVING, DROPPED

    @property
    def interval(self) -> MeanInterval:
        return MeanInterval(self.mean, self.low, self.high, 0.95, self.n)

    def text(self, common_n: int | None = None) -> str:
        """mean ± half the 95 % interval over seeds; the number of seeds where it differs from the table's
        `common_n`, or where seeds the sweep asks for are missing; its selection flags."""
        half = f" ± {(self.high - self.low) / 2:.2f}" if self.interval.exists else ""
        n = f" (n={self.n} of {self.expected})" if self.n < self.expected else \
            f" (n={self.n})" if self.n != common_n else ""
        flags = "".join(f for f in (STILL_IMPROVING, DROPPED) if f in self.flags)
        return f"{self.mean:.2f}{half}{n}" + (f" {flags}" if flags else "") + \
            (f" {TEST_SELECTED}" if self.test_selected else "")


@dataclass
class Table:
    """One data set: rows x (label ratios + Avg), plus cost columns (and any asked-for metric columns)."""

    dataset: str
    ratios: list[float]
    cells: dict[str, dict[str, Cell]]  # row -> column -> cell
    cost: dict[str, dict[str, float]]  # row -> the catalogue's "report" metrics and --columns (means per run)
    best: dict[str, str] = field(default_factory=dict)  # column -> best row, separated from every other
    tied: dict[str, list[str]] = field(default_factory=dict)  # column -> rows not separated from the best mean
    top: dict[str, str] = field(default_factory=dict)  # column -> best mean where no ranking claim is possible
    ratio_free_rows: set[str] = field(default_factory=set)  # rows whose method reads no labels (zero-shot)
    columns_extra: list[str] = field(default_factory=list)  # --columns: metric names after the cost columns

    @property
    def common_n(self) -> int | None:
        """The number of seeds most cells have (said once under the table)."""
        counts = [c.n for cells in self.cells.values() for c in cells.values()]
        return max(set(counts), key=counts.count) if counts else None

    @property
    def one_seed(self) -> bool:
        """No cell has more than one run: nothing to rank on."""
        return all(c.n <= 1 for cells in self.cells.values() for c in cells.values())

    @property
    def columns(self) -> list[str]:
        return [f"{r:g}" for r in self.ratios] + ["Avg"]

    @property
    def test_selected(self) -> bool:
        return any(c.test_selected for cells in self.cells.values() for c in cells.values())

    @property
    def flags(self) -> set[str]:
        return {f for cells in self.cells.values() for c in cells.values() for f in c.flags}


# ---- reading ---------------------------------------------------------------------------------------

def load_trials(client: MlflowClient, experiment: str, parent_run_id: str | None = None) -> tuple[str, list[RunRecord]]:
    """(parent run id, trial runs of that sweep); the newest sweep of the experiment by default."""
    exp = retried(client.get_experiment_by_name, experiment)
    if exp is None:
        names = sorted(e.name for e in retried(client.search_experiments))
        raise ReportError(f"no MLflow experiment named '{experiment}'; experiments: {', '.join(names) or 'none'}")
    if parent_run_id is None:
        parents = retried(client.search_runs, [exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'sweep'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
        if not parents:
            raise ReportError(f"experiment '{experiment}' has no sweep run (was it made by `ablate sweep`?)")
        parent_run_id = parents[0].info.run_id
    runs = retried(client.search_runs, [exp.experiment_id], filter_string=children_filter(parent_run_id),
                              max_results=50000)
    trials = [RunRecord(r.info.run_id, r.info.status, r.data.tags, r.data.metrics, r.data.tags.get("ablate.error"),
                        dict(r.data.params), r.info.start_time or 0, r.info.end_time or 0)
              for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    return parent_run_id, trials


def ratio_free(method: str) -> bool:
    return "label_ratio" in ignored_fields(method)
