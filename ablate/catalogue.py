"""The one catalogue of what a trial records: every metric's name, title, unit, direction, scope and
meaning. The trainer's result, MLflow logging, the console and description tables, the report and the
Optuna/ASHA metric check all read it, so a new metric is one `register_metric` call plus the code that
computes it. Torch-free and MLflow-free: the config layer imports it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .result import TrialResult

Step = Literal["epoch", "step", "final"]  # logged at the epoch number, the optimiser step, or once (step 0)
Per = Literal["trial", "pack"]  # the trial's own figure, or its Ray trial's when several arms trained together


@dataclass(frozen=True)
class Metric:
    name: str  # the MLflow metric name (lower case, never also a param name)
    title: str  # what a column heading says
    unit: str  # "%" (mAP, 0-100), "count", "s", "device-h", "MiB", "" (a plain number)
    direction: Literal["max", "min"] | None  # which way is better; None: neither (a cost or a setting)
    step: Step
    description: str  # one sentence a person reads in the README, the UI's run description and the report
    per: Per = "trial"
    row_key: str | None = None  # epoch metrics: the key in the trainer's per-epoch row (and Ray Tune's report)
    searchable: bool = False  # Optuna and ASHA may optimise it (reported to Ray Tune every epoch)
    value: Callable[[TrialResult], Any] | None = None  # final metrics the trainer's result carries
    columns: tuple[str, ...] = ()  # where it is a column: "trials" (console + description), "report" (cost)
    digits: int | None = None  # decimals a person reads; None: two significant digits

    def text(self, value: float | None) -> str:
        """The value as a person reads it, rounded (– when missing)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if self.digits is not None:
            return f"{value:,.{self.digits}f}"
        return significant(value)

    @property
    def heading(self) -> str:
        plain = not self.unit or self.unit in ("count", "%") or self.unit in self.title.split()
        return self.title if plain else f"{self.title} ({self.unit})"


def significant(value: float, figures: int = 2) -> str:
    """`figures` significant digits without scientific notation: 0.0012, 0.35, 12, 1,234."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, figures - 1 - math.floor(math.log10(abs(value))))
    return f"{round(value, decimals):,.{decimals}f}"


def _test(key: str) -> Callable[[TrialResult], Any]:
    return lambda r: r.test_metrics.get(key)


_PERCENT = "mAP in percent (0-100)"
_BUILT_IN = [
    # per epoch: step = the epoch number (1...N)
    Metric("train_loss", "train loss", "", "min", "epoch", "mean training loss of the epoch (logged at step = "
           "epoch)", row_key="loss", searchable=True),
    Metric("epoch_lr", "learning rate", "", None, "epoch", "the base learning rate the epoch used (step = epoch)",
           row_key="lr"),
    Metric("val_map", "val mAP", "%", "max", "epoch", f"validation {_PERCENT} after the epoch (step = epoch)",
           row_key="val_map", searchable=True),
    Metric("epoch_test_map", "test mAP of the epoch", "%", "max", "epoch", f"test {_PERCENT} after the epoch, "
           "only when `select_on: test` picks epochs on it (step = epoch)", row_key="epoch_test_map"),
    Metric("cum_train_time_s", "train s so far", "s", None, "epoch", "seconds of training + validation up to "
           "the end of the epoch (cumulative; its last value is train_time_s; step = epoch)", row_key="time_s"),
    Metric("train_step_loss", "step loss", "", "min", "step", "the loss of each optimiser step (step = global "
           "optimiser step)"),
    # once, at step 0 (MLflow's chart view draws them as one bar per run)
    Metric("test_map", "test mAP", "%", "max", "final", f"test {_PERCENT} with the parameters of the epoch "
           "the selection split picked (see best_epoch)", value=lambda r: r.test_map, columns=("trials",),
           digits=2),
    Metric("last_test_map", "test mAP, last epoch", "%", "max", "final", f"test {_PERCENT} after the last "
           "epoch, whichever epoch was picked", value=lambda r: r.last_test_map, digits=2),
    Metric("best_val_map", "val mAP, picked epoch", "%", "max", "final", f"validation {_PERCENT} at the "
           "picked epoch", value=lambda r: r.best_val_map, digits=2),
    Metric("best_epoch", "picked epoch", "count", None, "final", "the epoch (1...N) whose parameters test_map "
           "scores; 0 when nothing was trained", value=lambda r: r.best_epoch, digits=0),
    *(Metric(f"test_{k.lower()}", f"test {k}", "%", "max", "final", f"{what} at threshold 0.5 on the test "
             "split (picked epoch), percent", value=_test(k), digits=2)
      for k, what in (("CP", "per-class precision"), ("CR", "per-class recall"), ("CF1", "per-class F1"),
                      ("OP", "overall precision"), ("OR", "overall recall"), ("OF1", "overall F1"))),
    Metric("trainable_params", "params", "count", None, "final", "trainable parameters, counted from the "
           "modules", value=lambda r: r.trainable_params, columns=("trials", "report"), digits=0),
    Metric("train_time_s", "train s", "s", None, "final", "seconds of training + validation passes (the test "
           "passes that pick epochs not counted); in a pack, the shared image stream's time plus the arm's own",
           value=lambda r: r.train_time_s, columns=("trials", "report"), digits=1),
    Metric("wall_time_s", "wall s", "s", None, "final", "seconds the whole trial took in its worker: data, "
           "caches, training, evaluation, probes; in a pack, the pack's less the other arms' own compute (what "
           "the arm would take alone)", digits=1),
    Metric("device_hours", "attributed device-h", "device-h", None, "final", "the arm's attributed share: "
           "wall_time_s x the devices its Ray trial held (its GPUs, else its CPUs) / 3600, what it would cost "
           "alone; arms of one pack share a stream, so their sum overstates the bill (the sweep's total counts "
           "pack_device_hours once per Ray trial)", columns=("trials", "report")),
    Metric("peak_memory_mb", "peak memory", "MiB", None, "final", "peak CUDA memory allocated, or the "
           "worker's peak resident memory on CPU", digits=0),
    Metric("pack_wall_time_s", "pack wall s", "s", None, "final", "seconds the Ray trial that trained this "
           "arm (with the others of its pack, if any) took; the same on every arm of the pack", per="pack",
           digits=1),
    Metric("pack_device_hours", "pack device-h", "device-h", None, "final", "pack_wall_time_s x the devices "
           "the Ray trial held / 3600; the same on every arm of the pack (an arm alone is a pack of one): the "
           "sweep's bill counts it once per Ray trial", per="pack"),
]

CATALOGUE: dict[str, Metric] = {m.name: m for m in _BUILT_IN}


def register_metric(metric: Metric) -> Metric:
    """Add (or replace) a metric: the result, MLflow, the tables and the report pick it up."""
    CATALOGUE[metric.name] = metric
    return metric


def metric(name: str) -> Metric:
    return CATALOGUE[name]


def metrics(step: Step | None = None, column: str | None = None) -> list[Metric]:
    """The catalogue in order, optionally those logged at `step` or shown as `column`."""
    return [m for m in CATALOGUE.values() if (step is None or m.step == step)
            and (column is None or column in m.columns)]


def epoch_names() -> dict[str, str]:
    """The trainer's per-epoch row key -> its MLflow name (`loss` -> `train_loss`: `loss` is a param)."""
    return {m.row_key: m.name for m in metrics("epoch") if m.row_key}


def searchable() -> dict[str, Metric]:
    """What Optuna and ASHA may optimise, by the key Ray Tune sees every epoch."""
    return {m.row_key: m for m in metrics("epoch") if m.searchable and m.row_key}


def final_values(result: TrialResult) -> dict[str, float]:
    """Every final metric the result carries, as floats (missing values left out)."""
    values = {m.name: m.value(result) for m in metrics("final") if m.value is not None}
    return {k: float(v) for k, v in values.items() if v is not None}


def markdown_table(names: Iterable[str] | None = None) -> str:
    """The README's table of what a trial run records."""
    lines = ["| metric | step | unit | better | scope | meaning |", "|---|---|---|---|---|---|"]
    for m in (CATALOGUE[n] for n in names) if names is not None else CATALOGUE.values():
        step = {"epoch": "epoch 1…N", "step": "optimiser step", "final": "0"}[m.step]
        better = {"max": "higher", "min": "lower", None: ""}[m.direction]
        lines.append(f"| `{m.name}` | {step} | {m.unit} | {better} | per {m.per} | {m.description} |")
    return "\n".join(lines)
