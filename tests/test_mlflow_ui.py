"""What the MLflow UI shows of a sweep: readable run names, ignored fields marked, filters that select
exactly an arm, final figures as bars, system metrics, dataset inputs, source tags, descriptions with
the report's link, and the UI itself (a real `mlflow server`, headless Chromium) on one small sweep."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from sweep_helpers import free_port, write_spec

from ablate.report import write_report
from ablate.server import healthy
from ablate.sweep import run_sweep
from ablate.tracking import NOT_READ, NOTE_TAG, SOURCE_TAGS, git_commit, report_link, ui_address, ui_hint

DESCRIPTION = "Baseline vs DualCoOp vs zero-shot on the synthetic set, two label ratios"
NAMES = {"baseline · 30%", "baseline · 70%", "dualcoop · 30%", "dualcoop · 70%", "zeroshot"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir) -> dict:
    """One finished sweep (5 trials: the zero-shot arms merge) with its report logged; system metrics
    sampled often enough for trials of a few seconds (the variable reaches the Ray workers)."""
    import ray

    tmp = tmp_path_factory.mktemp("ui")
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "0.5"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        spec = write_spec(tmp, cache_dir, description=DESCRIPTION,
                          grid={"method": ["baseline", "dualcoop", "zeroshot"], "label_ratio": [0.3, 0.7]})
        summary = run_sweep(spec)
    finally:
        ray.shutdown()
        os.environ.pop("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
    assert summary["trials"] == 5 and summary["errored"] == 0
    write_report("t", tmp / "report", summary["tracking_uri"])
    return {**summary, "tmp": tmp, "client": MlflowClient(summary["tracking_uri"])}


def trials(sweep: dict, where: str = "") -> dict:
    """run name -> run, for the sweep's trial runs matching the filter `where`."""
    query = f"tags.mlflow.parentRunId = '{sweep['parent_run_id']}'" + (f" and {where}" if where else "")
    return {r.info.run_name: r for r in sweep["client"].search_runs([sweep["experiment_id"]], query)}


def test_run_names_are_readable_unique_and_carry_only_the_varying_axes(sweep):
    assert set(trials(sweep)) == NAMES
    parent = sweep["client"].get_run(sweep["parent_run_id"])
    assert re.fullmatch(r"t · \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", parent.info.run_name)  # unique per launch


def test_fields_a_method_ignores_are_logged_as_not_read(sweep):
    runs = trials(sweep)
    zeroshot, baseline, dualcoop = runs["zeroshot"].data.params, runs["baseline · 30%"].data.params, \
        runs["dualcoop · 30%"].data.params
    assert {zeroshot[k] for k in ("epochs", "lr", "label_ratio", "seed", "n_ctx")} == {NOT_READ}
    assert baseline["n_ctx"] == NOT_READ and baseline["epochs"] == "2" and baseline["label_ratio"] == "0.3"
    assert dualcoop["n_ctx"] == "4" and dualcoop["method"] == "dualcoop"


def test_a_filter_on_an_axis_returns_exactly_that_arms_runs(sweep):
    assert set(trials(sweep, "params.label_ratio = '0.3'")) == {"baseline · 30%", "dualcoop · 30%"}
    assert set(trials(sweep, "params.n_ctx = '4'")) == {"dualcoop · 30%", "dualcoop · 70%"}
    assert set(trials(sweep, "params.epochs = '2'")) == NAMES - {"zeroshot"}
    assert set(trials(sweep, "params.method = 'zeroshot'")) == {"zeroshot"}


def test_final_figures_are_bars_and_names_do_not_clash(sweep):
    client, run = sweep["client"], trials(sweep)["dualcoop · 30%"]
    metrics, params = run.data.metrics, run.data.params
    for key in ("test_map", "test_cf1", "trainable_params", "train_time_s", "device_hours", "wall_time_s"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0], key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "cum_train_time_s")][-1] == \
        pytest.approx(metrics["train_time_s"])
    assert not set(metrics) & set(params)  # `lr` and `loss` are params only
    assert all(key == key.lower() for key in metrics)
    assert 0 <= metrics["test_map"] <= 100


def test_system_metrics_and_device_hours_on_cpu(sweep):
    metrics = trials(sweep)["dualcoop · 30%"].data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics
    assert metrics["gpu_hours"] == 0  # resources.gpu: 0; the trial held 1 CPU
    assert metrics["device_hours"] == pytest.approx(metrics["wall_time_s"] / 3600) and metrics["device_hours"] > 0
    assert metrics["wall_time_s"] >= metrics["train_time_s"]


def test_each_split_is_a_dataset_input_and_source_tags_are_set(sweep):
    runs = trials(sweep)
    digests = {}
    for name, run in runs.items():
        inputs = {[t.value for t in i.tags if t.key == "mlflow.data.context"][0]: i.dataset
                  for i in run.inputs.dataset_inputs}
        assert set(inputs) == {"train", "val", "test"} and {d.name for d in inputs.values()} == {"synthetic"}
        dst = sweep["tmp"] / run.info.run_id
        dst.mkdir(exist_ok=True)
        sizes = json.loads(Path(sweep["client"].download_artifacts(run.info.run_id, "metrics.json", str(dst)))
                           .read_text())["split_sizes"]
        assert {k: json.loads(d.profile)["num_rows"] for k, d in inputs.items()} == sizes
        digests[name] = {k: d.digest for k, d in inputs.items()}
    assert len({d["test"] for d in digests.values()}) == 1  # one test split, fully labelled
    # the partial labels differ with the ratio; the methods of one ratio read the same training split
    assert digests["baseline · 30%"]["train"] == digests["dualcoop · 30%"]["train"] != \
        digests["dualcoop · 70%"]["train"]
    commit = git_commit(Path(__file__).parent)
    for run in [*runs.values(), sweep["client"].get_run(sweep["parent_run_id"])]:
        tags = run.data.tags
        assert set(SOURCE_TAGS) - {"mlflow.source.git.commit"} <= set(tags)
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"].endswith("spec.yaml")
        assert tags.get("mlflow.source.git.commit") == commit


def test_descriptions_carry_the_spec_description_results_and_report_link(sweep):
    client = sweep["client"]
    note = client.get_run(sweep["parent_run_id"]).data.tags[NOTE_TAG]
    assert note.startswith(DESCRIPTION) and report_link(sweep["experiment_id"], sweep["parent_run_id"]) in note
    assert "| dualcoop |" in note and "| zeroshot |" in note  # the report's table
    assert client.get_experiment(sweep["experiment_id"]).tags[NOTE_TAG] == note
    assert any(a.path == "report/report.html" for a in client.list_artifacts(sweep["parent_run_id"], "report"))


def test_the_ui_address_opens_the_sweeps_runs_in_the_training_view(sweep):
    address = sweep["ui"]
    assert address.startswith(f"http://127.0.0.1:5000/#/experiments/{sweep['experiment_id']}/runs?")
    assert "workflowType=machine_learning" in address and sweep["parent_run_id"] in address
    assert ui_address("http://head:5000/", "3", "abc").startswith("http://head:5000/#/experiments/3/runs?")
    assert "mlflow ui --backend-store-uri" in ui_hint(sweep["tracking_uri"], "1", "abc")
    assert "\n" not in ui_hint("http://head:5000", "1", "abc")


def test_the_suite_uses_a_temporary_default_store():
    """conftest points MLflow's default at a temporary store and checks, at the end of the session, that
    the working directory's mlruns/ and mlflow.db are as they were."""
    uri = os.environ["MLFLOW_TRACKING_URI"]
    assert uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_relative_to(Path.cwd())


# ---- the UI itself --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(sweep):
    """`mlflow server` on the sweep's store, on 127.0.0.1 and a free port: the UI a user opens."""
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    log = (sweep["tmp"] / "server.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                             sweep["tracking_uri"], "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not healthy(base):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((sweep["tmp"] / "server.log").read_text()[-2000:])
            time.sleep(1)
        yield base
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


def chromium(tmp: Path, url: str, *args: str) -> str:
    """The page after its scripts ran (virtual time: the React UI fetches and renders, charts included)."""
    profile = tmp / f"profile-{time.monotonic_ns()}"
    out = subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=60000",
                          *args, url], check=True, capture_output=True, text=True, timeout=180)
    return out.stdout


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_the_mlflow_ui_shows_names_charts_and_the_report_link(sweep, server, tmp_path):
    address = sweep["ui"].replace("http://127.0.0.1:5000", server)
    table = chromium(tmp_path, address, "--window-size=1600,1000", "--dump-dom")
    parent_name = sweep["client"].get_run(sweep["parent_run_id"]).info.run_name
    assert all(name in table for name in NAMES) and parent_name not in table  # the trials, flat
    assert DESCRIPTION in table  # the experiment's description heads the page
    charts = chromium(tmp_path, f"{address}&compareRunsMode=CHART", "--window-size=1600,3000", "--dump-dom")
    assert charts.count('class="barlayer') >= 6  # final figures (step 0) are drawn as per-run bars
    assert all(f">{key}<" in charts for key in ("test_map", "device_hours", "trainable_params"))
    parent = chromium(tmp_path, f"{server}/#/experiments/{sweep['experiment_id']}/runs/{sweep['parent_run_id']}",
                      "--window-size=1600,1200", "--dump-dom")
    assert DESCRIPTION in parent and f'href="{report_link(sweep["experiment_id"], sweep["parent_run_id"])}"' in parent
    for name in NAMES:  # the parent lists its trials by name
        assert name in parent
    shot = tmp_path / "runs.png"
    chromium(tmp_path, address, "--window-size=1600,1000", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def _log_split_at(uri: str, experiment_id: str, parent: str, index: int, start_at: float) -> str:
    """One trial process: its run, then the shared split logged at the agreed instant."""
    from ablate.result import TrialResult
    from ablate.spec import TrialConfig
    from ablate.tracking import TrackingContext, TrialRun

    run = TrialRun.attach(TrackingContext(uri, experiment_id, parent), TrialConfig(seed=index), f"t{index}",
                          {"method": "dualcoop", "seed": index})
    result = TrialResult("dualcoop", "synthetic", 0.5, 0, "val", None, 0, 0.0, 0.0, None, 0.0, 0,
                         split_sizes={"test": 20}, split_digests={"test": "0123456789ab"})
    time.sleep(max(0.0, start_at - time.time()))
    run.log_splits(result)
    return run.run_id


def test_trials_logging_the_same_split_at_once_all_record_it(tmp_path):
    """MLflow stores a dataset once per experiment (look up, then insert): trials sharing a split race."""
    from concurrent.futures import ProcessPoolExecutor

    from ablate.tracking import connect, ensure_experiment, start_parent_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: race\n")
    client = connect(uri)
    experiment_id = ensure_experiment(client, "race")
    parent = start_parent_run(client, experiment_id, "race", spec, spec.read_text())
    start_at = time.time() + 8.0  # after every process has imported and created its run
    with ProcessPoolExecutor(6) as pool:
        run_ids = list(pool.map(_log_split_at, *zip(*[(uri, experiment_id, parent, i, start_at) for i in range(6)])))
    for run_id in run_ids:
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("synthetic", "0123456789ab")]
