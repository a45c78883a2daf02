"""The catalogue of what a trial records: one entry makes a metric reach the result, MLflow, the tables
and the report; the README's table and the Optuna/ASHA metric check read it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from sweep_helpers import sweep_store

from ablate.catalogue import CATALOGUE, Metric, markdown_table, metrics, register_metric, searchable
from ablate.sweep.spec import AshaSpec, OptunaSpec

README = Path(__file__).parent.parent / "README.md"
GAP = Metric("val_test_gap", "val − test", "%", None, "final", "best_val_map − test_map: how optimistic the "
             "selection split was", value=lambda r: None if r.best_val_map is None else r.best_val_map - r.test_map,
             columns=("trials", "report"), digits=2)


@pytest.fixture()
def gap_metric():
    register_metric(GAP)
    yield GAP
    del CATALOGUE[GAP.name]


def test_a_new_metric_is_one_entry_and_reaches_mlflow_the_tables_and_the_report(gap_metric, tiny_cfg, tmp_path):
    from ablate.report import write_report
    from ablate.tracking import (
        TrackingContext,
        TrialRun,
        trial_table,
        trials_markdown,
    )
    from ablate.trainer import run_trial

    uri, client, ctx = sweep_store(tmp_path, {"name": "cat", "base": {"dataset": "synthetic"},
                                              "grid": {"method": ["dualcoop"]}})
    experiment_id = ctx.experiment_id
    parent = ctx.parent_run_id
    cfg = tiny_cfg(method="dualcoop", epochs=1)
    run = TrialRun.attach(TrackingContext(uri, experiment_id, parent), cfg, "t0", {"method": "dualcoop"})
    result = run_trial(cfg, tmp_path / "trial", progress=False)
    run.log_result(result, result.final_metrics())
    run.finish()
    expected = result.best_val_map - result.test_map
    assert client.get_run(run.run_id).data.metrics["val_test_gap"] == pytest.approx(expected)
    assert f"| {expected:,.2f} |" in trials_markdown(trial_table(uri, experiment_id, parent))
    out = write_report("cat", tmp_path / "report", uri)
    md = (Path(out["out_dir"]) / "table.md").read_text()
    assert "val − test / run" in md and f"| {expected:,.2f} |" in md
    assert out["tables"]["synthetic"].cost["dualcoop"]["val_test_gap"] == pytest.approx(expected)


def test_the_result_records_every_final_metric_the_catalogue_computes(tiny_cfg, tmp_path):
    from ablate.trainer import run_trial

    result = run_trial(tiny_cfg(method="dualcoop", epochs=1), tmp_path, progress=False)
    computed = {m.name for m in metrics("final") if m.value is not None}
    assert set(result.final_metrics()) == computed  # nothing dropped, nothing unlisted
    assert "gpu_hours" not in CATALOGUE and CATALOGUE["device_hours"].unit == "device-h"
    assert {m.name for m in metrics() if m.per == "pack"} == {"pack_wall_time_s", "pack_device_hours"}


def test_the_readme_metric_table_is_the_catalogues():
    text = README.read_text()
    table = re.search(r"<!-- metrics:start -->\n(.*?)\n<!-- metrics:end -->", text, re.S)
    assert table is not None and table.group(1) == markdown_table()


def test_optuna_and_asha_accept_only_metrics_reported_every_epoch(gap_metric):
    space = {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}}
    assert OptunaSpec(space=space, metric="loss", mode="min").metric == "loss"
    with pytest.raises(ValidationError, match="metric 'test_map' is not reported to Ray Tune every epoch; use one "
                                              "of loss, val_map"):
        AshaSpec(metric="test_map")
    register_metric(Metric("val_cf1", "val CF1", "%", "max", "epoch", "validation CF1 after the epoch",
                           row_key="val_cf1", searchable=True))
    try:
        assert "val_cf1" in searchable() and AshaSpec(metric="val_cf1").metric == "val_cf1"
    finally:
        del CATALOGUE["val_cf1"]


def test_the_console_table_shows_the_catalogues_trial_columns_rounded(gap_metric, capsys):
    from ablate.cli import print_table

    row = {"dataset": "world", "method": "dualcoop", "label_ratio": "0.5", "seed": "0", "status": "FINISHED",
           "test_map": 42.0712, "trainable_params": 10240.0, "train_time_s": 12.345, "device_hours": 0.0012345,
           "val_test_gap": 1.5}
    print_table([row])
    head, line = capsys.readouterr().out.splitlines()
    for title in ("test mAP", "params", "train s", "device-h", "val − test"):
        assert title in head
    assert line.split()[-5:] == ["42.07", "10,240", "12.3", "0.0012", "1.50"]
