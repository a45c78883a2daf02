"""Which row of the report each finished run belongs to.

A row is one configuration: the method plus every identity setting (a TrialConfig field, or a method's or
data set's option, whose Role says `identity`) that varies among that method's runs, the table's own
axes aside (data set: one table each; label ratio: the columns; seed: the replicates in a cell). So a grid
over any setting gives one row per value, and no two configurations ever share a cell.

A search is reported as a search: the runs of one Optuna arm are its samples (tagged `ablate.sample`,
one run per seed); the settings that vary among them are the searched ones. The main table shows, per arm,
the sample with the best mean validation mAP over its seeds (test never chooses); every sample is listed,
ranked, in the search table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..pareto import SAMPLE_TAG
from ..spec import FIELD_ROLES, param_role
from ..tracking.names import NOT_READ
from .trials import RunRecord

# the table's own axes: they never split a row
TABLE_AXES = ("method", "dataset", "label_ratio", "seed")
SELECT_METRIC = "best_val_map"  # what chooses a search's sample: validation mAP at the picked epoch


def identity(t: RunRecord) -> dict[str, str]:
    """The run's identity settings: every param whose Role says identity and that its method reads."""
    method, dataset = t.tag("method"), t.tag("dataset")
    return {k: v for k, v in t.settings.items()
            if v != NOT_READ and param_role(k, method, dataset).identity}


def _order(name: str) -> tuple[int, str]:
    """Settings in the config's declaration order, then the method's options, then the data set's."""
    fields = list(FIELD_ROLES)
    if name in FIELD_ROLES:
        return fields.index(name), ""
    return len(fields) + name.startswith("dataset_options."), name


@dataclass
class Sample:
    """One sampled configuration of a search arm: its runs (one per seed) and mean val / test mAP."""

    key: str  # the `ablate.sample` tag: "<arm>#<n>"
    runs: list[RunRecord]
    settings: dict[str, str]  # the searched settings' values
    complete: bool  # every run of it finished with its metrics

    @property
    def number(self) -> str:
        return self.key.rsplit("#", 1)[-1]

    def mean(self, metric: str) -> float:
        values = [t.metrics[metric] for t in self.runs if metric in t.metrics]
        return float(np.mean(values)) if values else math.nan


@dataclass
class Search:
    """One Optuna arm: its samples ranked by mean validation mAP (incomplete ones last), the chosen first."""

    arm: str
    row: str  # the main table's row its chosen sample fills
    searched: list[str]
    samples: list[Sample]
    chosen: Sample | None


@dataclass
class Rows:
    label: dict[str, str] = field(default_factory=dict)  # run id -> row, for every run in the main table
    excluded: dict[str, str] = field(default_factory=dict)  # finished run id -> why it is not in the main table
    searches: list[Search] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # run id -> its configuration's label (all runs)


def _label(method: str, key: dict[str, str], varying: list[str]) -> str:
    return " ".join([method, *(f"{f}={key[f]}" for f in varying if f in key)])


def _searches(done: list[RunRecord], keys: dict[str, dict[str, str]], space: set[str]) -> dict[str, list[Sample]]:
    """arm -> its samples, from the finished runs tagged with one; the searched settings are those that vary
    among an arm's samples, with the search space's fields (`space`), the table's axes aside."""
    by_sample: dict[str, list[RunRecord]] = {}
    for t in done:
        if t.tags.get(SAMPLE_TAG):
            by_sample.setdefault(t.tags[SAMPLE_TAG], []).append(t)
    arms: dict[str, list[str]] = {}
    for key in by_sample:
        arms.setdefault(key.rsplit("#", 1)[0], []).append(key)
    out = {}
    for arm, sample_keys in arms.items():
        runs = [t for k in sample_keys for t in by_sample[k]]
        names = {n for t in runs for n in keys[t.run_id]}
        searched = {n for n in names if len({keys[t.run_id].get(n) for t in runs}) > 1} | (space & names)
        searched -= set(TABLE_AXES)
        out[arm] = [Sample(k, by_sample[k], {n: keys[by_sample[k][0].run_id].get(n, "") for n in
                                             sorted(searched, key=_order)}, True) for k in sample_keys]
    return out


def assign_rows(trials: list[RunRecord], space: set[str] | None = None) -> Rows:
    """Every run's row; finished runs that fill no cell (a search's samples not chosen, a second run of one
    configuration, ratio and seed) are listed in `excluded` with the reason. `space`: the search space's
    fields, when the spec is known (a field sampled to one value everywhere is still searched)."""
    done = [t for t in trials if t.status == "FINISHED"]
    keys = {t.run_id: identity(t) for t in trials}
    rows = Rows()
    failed = {t.tags.get(SAMPLE_TAG) for t in trials if t.status != "FINISHED" and t.tags.get(SAMPLE_TAG)}
    for arm, samples in _searches(done, keys, space or set()).items():
        for s in samples:
            s.complete = s.key not in failed and not math.isnan(s.mean(SELECT_METRIC))
        ranked = sorted(samples, key=lambda s: (not s.complete, -s.mean(SELECT_METRIC) if s.complete else 0,
                                                int(s.number) if s.number.isdigit() else 0))
        chosen = ranked[0] if ranked and ranked[0].complete else None
        searched = list(ranked[0].settings) if ranked else []
        rows.searches.append(Search(arm, "", searched, ranked, chosen))
        for s in samples:
            for t in s.runs:
                for name in searched:
                    keys[t.run_id].pop(name, None)
                if s is not chosen:
                    rows.excluded[t.run_id] = (f"search {arm}: sample #{s.number} not chosen on validation "
                                               "(the search table ranks every sample)")
    # the settings that split a method's rows: those with several values among its configurations (one that
    # differs only between methods, e.g. a per-method lr, adds nothing: the method already splits the rows)
    values: dict[tuple[str, str], set[str]] = {}
    for t in trials:
        for name, value in keys[t.run_id].items():
            values.setdefault((t.tag("method"), name), set()).add(value)
    varying: dict[str, list[str]] = {}
    for (method, name), options in sorted(values.items(), key=lambda kv: _order(kv[0][1])):
        if len(options) > 1 and name not in TABLE_AXES:
            varying.setdefault(method, []).append(name)
    rows.names = {t.run_id: _label(t.tag("method"), keys[t.run_id], varying.get(t.tag("method"), [])) for t in trials}
    for search in rows.searches:
        first = next(iter(search.samples[0].runs))
        search.row = rows.names[first.run_id]
    seen: dict[tuple[str, str, str, str], str] = {}
    for t in done:
        if t.run_id in rows.excluded:
            continue
        cell = (t.tag("dataset"), rows.names[t.run_id], t.tag("label_ratio"), t.tag("seed"))
        if cell in seen:
            rows.excluded[t.run_id] = (f"the same configuration, label ratio and seed as run {seen[cell]} "
                                       "(counted once)")
            continue
        seen[cell] = t.run_id
        rows.label[t.run_id] = rows.names[t.run_id]
    return rows
