"""Every finished run counts exactly once, in a row that names its configuration: a property test over random
grids of real configurations, and real sweeps on local Ray (a grid over lr; a seed-averaged Optuna search)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sweep_helpers import runs, write_spec

from ablate.report import RunRecord, assign_rows, build_table, write_report
from ablate.sweep import expand, run_sweep
from ablate.sweep.spec import SweepSpec
from ablate.tracking.names import ARM_FIELDS, flatten_config

# grid axes to draw from: identity settings of several groups, and one that is not identity (num_workers)
AXES = {"lr": [1e-3, 2e-3, 5e-3], "n_ctx": [4, 8], "prompt_offset": ["none", "normal"], "epochs": [1, 2],
        "gamma_neg": [1.0, 2.0], "num_workers": [0, 1], "csc": [True, False]}


@st.composite
def sweeps(draw) -> tuple[SweepSpec, list[RunRecord]]:
    methods = draw(st.lists(st.sampled_from(["dualcoop", "positivecoop", "baseline", "zeroshot"]), min_size=1,
                            max_size=3, unique=True))
    grid: dict[str, list] = {"method": methods,
                             "label_ratio": draw(st.lists(st.sampled_from([0.1, 0.5, 0.9]), min_size=1, max_size=2,
                                                          unique=True)),
                             "seed": list(range(draw(st.integers(1, 3))))}
    for axis in draw(st.lists(st.sampled_from(sorted(AXES)), max_size=2, unique=True)):
        grid[axis] = draw(st.lists(st.sampled_from(AXES[axis]), min_size=1, max_size=len(AXES[axis]), unique=True))
    spec = SweepSpec(name="p", grid=grid)
    records = []
    for i, arm in enumerate(expand(spec)):
        params = flatten_config(arm.config)
        status = draw(st.sampled_from(["FINISHED", "FINISHED", "FINISHED", "FAILED"]))
        metrics = {"test_map": draw(st.floats(0, 100)), "train_time_s": draw(st.floats(1, 100)),
                   "trainable_params": 10.0, "device_hours": 0.01}
        records.append(RunRecord(f"r{i}", status, {"ablate.role": "trial", **{f"ablate.{k}": params[k]
                                                                                for k in ARM_FIELDS}},
                                 metrics if status == "FINISHED" else {}, params=params))
    return spec, records


@settings(max_examples=60, deadline=None)
@given(sweeps())
def test_every_finished_run_is_in_exactly_one_cell_or_listed_with_its_reason(drawn):
    _, records = drawn
    rows = assign_rows(records)
    done = [t for t in records if t.status == "FINISHED"]
    assert not set(rows.label) & set(rows.excluded) and set(rows.label) | set(rows.excluded) == {t.run_id
                                                                                                for t in done}
    assert all(reason for reason in rows.excluded.values())
    table = build_table("synthetic", records, rows.label)
    counted = [t for t in done if t.run_id in rows.label]
    for col in table.columns[:-1]:  # each ratio column holds each counted run of that ratio (zero-shot: all)
        at = [t for t in counted if t.ratio is None or f"{t.ratio:g}" == col]
        assert sum(cells[col].n for cells in table.cells.values() if col in cells) == len(at)
        for t in at:
            assert table.cells[rows.label[t.run_id]][col].values[t.tag("seed")] == t.metrics["test_map"]
    for row, members in ((r, [t for t in counted if rows.label[t.run_id] == r]) for r in table.cells):
        assert table.cost[row]["train_time_s"] == pytest.approx(np.mean([t.metrics["train_time_s"] for t in members]))
    # two runs of one row, ratio and seed differ only in settings that do not change the result
    assert all("counted once" in reason for reason in rows.excluded.values())


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_grid_over_lr_gives_one_row_per_method_and_lr(tmp_path, cache_dir, local_ray):
    spec = write_spec(tmp_path, cache_dir, base={"epochs": 1, "label_ratio": 0.5},
                      grid={"method": ["baseline", "dualembed"], "lr": [1e-3, 3e-2], "seed": [0, 1]})
    summary = run_sweep(spec)
    assert summary["trials"] == 8 and summary["errored"] == 0
    result = write_report("t", tmp_path / "report", summary["tracking_uri"], log_to_mlflow=False)
    with open(tmp_path / "report" / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert sorted({r["row"] for r in table}) == ["baseline lr=0.001", "baseline lr=0.03", "dualembed lr=0.001",
                                                 "dualembed lr=0.03"]
    _, children = runs(tmp_path)
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert sum(int(r["n"]) for r in table if r["column"] == "0.5") == len(finished) == 8
    # each cell is the mean of exactly its own runs, read back from MLflow
    for r in (r for r in table if r["column"] == "0.5"):
        method, lr = r["row"].split(" lr=")
        values = [c.data.metrics["test_map"] for c in finished
                  if c.data.tags["ablate.method"] == method and float(c.data.params["lr"]) == float(lr)]
        assert float(r["mean"]) == pytest.approx(np.mean(values)) and len(values) == 2
    # the bill: each Ray trial (a pack here) once, the sweep's own figure equal to the sum of its packs'
    packs = {c.data.tags["ablate.pack"]: c.data.metrics["pack_device_hours"] for c in finished}
    assert result["bill"]["device_hours"] == pytest.approx(sum(packs.values()))
    assert summary["bill"]["device_hours"] == pytest.approx(sum(packs.values()))
    assert result["bill"]["device_hours"] < sum(c.data.metrics["device_hours"] for c in finished)  # shares overstate


def test_a_seed_averaged_search_reports_the_sample_best_on_validation(tmp_path, cache_dir, local_ray):
    space = {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}
    spec = write_spec(tmp_path, cache_dir, base={"method": "baseline", "epochs": 2, "label_ratio": 0.5},
                      grid={"method": ["baseline", "dualembed"]},
                      optuna={"num_samples": 3, "seeds": [0, 1], "space": space}, max_concurrent_trials=2)
    summary = run_sweep(spec)
    assert summary["trials"] == 12 and summary["errored"] == 0
    result = write_report("t", tmp_path / "report", summary["tracking_uri"], log_to_mlflow=False)
    _, children = runs(tmp_path)
    table = result["tables"]["synthetic"]
    assert sorted(table.cells) == ["baseline", "dualembed"]  # one row per arm, not per sample
    searches = result["searches"]["synthetic"]
    for method in ("baseline", "dualembed"):
        samples: dict[str, list] = {}
        for c in children:
            if c.data.tags["ablate.method"] == method:
                samples.setdefault(c.data.tags["ablate.sample"], []).append(c)
        assert len(samples) == 3 and all(len(s) == 2 for s in samples.values())
        val = {k: np.mean([c.data.metrics["best_val_map"] for c in s]) for k, s in samples.items()}
        best = max(val, key=lambda k: val[k])  # chosen on mean validation mAP, from MLflow itself
        expected = np.mean([c.data.metrics["test_map"] for c in samples[best]])
        cell = table.cells[method]["0.5"]
        assert cell.mean == pytest.approx(expected) and cell.n == 2
        search = next(s for s in searches.values() if s["row"] == method)
        assert search["chosen"] == best and [s["sample"] for s in search["samples"]][0] == best
        assert [s["val_map"] for s in search["samples"]] == sorted(val.values(), reverse=True)
        assert math.isclose(float(samples[best][0].data.params["lr"]),
                            float(search["samples"][0]["settings"]["lr"]))
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Search: baseline" in page and "val mAP (chooses)" in page
    assert result["incomplete"] == []  # the other samples are in the search table, not "not included"
