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
from sweep_helpers import free_port, sweep_store, write_spec

from ablate.catalogue import significant
from ablate.report import write_report
from ablate.server import healthy
from ablate.sweep import run_sweep
from ablate.tracking import NOT_READ, NOTE_TAG, SOURCE_TAGS, git_commit, report_link, ui_address, ui_hint
from ablate.tracking.names import ARM_FIELDS, GIT_DIRTY_TAG, REPO_URL_TAG, SPEC_TAGS
from ablate.tracking.notes import view_links
from ablate.tracking.view import SECTION, VIEW_TAG_PREFIX, decode, view_key

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
    runs = trials(sweep)
    metrics = runs["dualcoop · 30%"].data.metrics
    # one monitor a Ray trial: a pack's machine samples go into its first arm's run, not once per arm
    pack = runs["dualcoop · 30%"].data.tags.get("ablate.pack")
    sampled = [r for r in runs.values() if r.data.tags.get("ablate.pack") == pack
               and "system/cpu_utilization_percentage" in r.data.metrics]
    assert len(sampled) == 1 and "system/system_memory_usage_megabytes" in sampled[0].data.metrics
    assert "gpu_hours" not in metrics  # identically 0 on CPU: not logged
    assert metrics["device_hours"] == pytest.approx(metrics["wall_time_s"] / 3600) and metrics["device_hours"] > 0
    assert metrics["wall_time_s"] >= metrics["train_time_s"]


def test_cost_is_device_hours_rounded_where_a_person_reads_it(sweep):
    md = (sweep["tmp"] / "report" / "table.md").read_text()
    assert "attributed device-h / run" in md and "GPU-h" not in md and "0.0000" not in md
    runs = trials(sweep)
    hours = sum(runs[f"dualcoop · {r}"].data.metrics["device_hours"] for r in ("30%", "70%")) / 2
    assert md.split("| dualcoop |")[1].splitlines()[0].endswith(f" {significant(hours)} |")  # mean per trial, 2 digits


def test_tags_never_state_a_value_the_params_deny(sweep):
    for name, run in trials(sweep).items():
        tags, params = run.data.tags, run.data.params
        for field in ARM_FIELDS:
            assert tags[f"ablate.{field}"] == params[field], (name, field)
        assert "" not in params.values()  # one sentinel for "does not apply" (n/a), "none" for unset
    zeroshot, baseline = trials(sweep)["zeroshot"].data, trials(sweep)["baseline · 30%"].data
    assert {zeroshot.tags[f"ablate.{k}"] for k in ("label_ratio", "seed", "n_ctx")} == {NOT_READ}
    assert baseline.tags["ablate.n_ctx"] == baseline.tags["ablate.csc"] == NOT_READ
    assert baseline.params["ctx_init"] == NOT_READ and trials(sweep)["dualcoop · 30%"].data.params["ctx_init"] == "none"


def test_each_trial_describes_itself_and_carries_the_spec_and_code_state(sweep):
    runs, parent = trials(sweep), sweep["client"].get_run(sweep["parent_run_id"]).data.tags
    note = runs["dualcoop · 30%"].data.tags[NOTE_TAG]
    metrics = runs["dualcoop · 30%"].data.metrics
    assert re.match(rf"\*\*dualcoop, synthetic, 30 % labels, seed 0\*\*: test mAP {metrics['test_map']:.2f} at the "
                    rf"epoch val picked \({int(metrics['best_epoch'])} of 2\)", note)
    assert "step = epoch" in note and "`last_test_map`: test mAP in percent (0-100) after the last epoch" in note
    assert runs["zeroshot"].data.tags[NOTE_TAG].startswith("**zeroshot, synthetic**: test mAP ")
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                           capture_output=True, text=True).stdout.strip() != ""
    for run in runs.values():
        tags = run.data.tags
        assert tags[SPEC_TAGS[0]] == parent[SPEC_TAGS[0]] and tags[SPEC_TAGS[1]].endswith("spec.yaml")
        assert tags[GIT_DIRTY_TAG] == str(dirty).lower()
        assert tags.get(REPO_URL_TAG) == parent.get(REPO_URL_TAG)


def test_a_trial_shorter_than_one_sampling_interval_still_logs_finite_system_metrics(tmp_path):
    import math

    from ablate.spec import TrialConfig
    from ablate.tracking import TrialRun

    _, client, ctx = sweep_store(tmp_path, {"name": "short"})
    run = TrialRun.attach(ctx, TrialConfig(), "t0", {"method": "dualcoop"})
    with run.system_metrics(interval_s=60):  # the trial ends long before the first sample is due
        pass
    logged = {k: v for k, v in client.get_run(run.run_id).data.metrics.items() if k.startswith("system/")}
    assert "system/cpu_utilization_percentage" in logged and all(math.isfinite(v) for v in logged.values())


def test_each_split_is_a_dataset_input_and_source_tags_are_set(sweep):
    runs = trials(sweep)
    digests = {}
    for name, run in runs.items():
        inputs = {[t.value for t in i.tags if t.key == "mlflow.data.context"][0]: i.dataset
                  for i in run.inputs.dataset_inputs}
        zeroshot = name == "zeroshot"
        assert set(inputs) == ({"val", "test"} if zeroshot else {"train", "val", "test"})  # zero-shot trains on nothing
        dst = sweep["tmp"] / run.info.run_id
        dst.mkdir(exist_ok=True)
        result = json.loads(Path(sweep["client"].download_artifacts(run.info.run_id, "metrics.json", str(dst)))
                            .read_text())
        profiles = {k: json.loads(d.profile) for k, d in inputs.items()}
        assert {k: p["num_rows"] for k, p in profiles.items()} == {k: result["split_sizes"][k] for k in inputs}
        assert {k: [p["labels_known"], p["labels_total"]] for k, p in profiles.items()} == \
            {k: result["split_labels"][k] for k in inputs}
        # zero-shot ignores the ratio: its val split carries the default ratio's mask, and says so
        ratio = "50%" if zeroshot else name.split(" · ")[1]
        assert inputs["test"].name == "synthetic · test" and inputs["val"].name == f"synthetic · val · {ratio} labels"
        assert zeroshot == ("reads no labels" in json.loads(inputs["val"].source)["labels"])
        if not zeroshot:
            assert inputs["train"].name == f"synthetic · train · {ratio} labels"
            assert "the mask is drawn from the ratio and seed" in json.loads(inputs["val"].source)["labels"]
            known, total = profiles["train"]["labels_known"], profiles["train"]["labels_total"]
            assert 0 < known < total  # partial labels: the labelled count tells the ratios apart
        digests[name] = {k: d.digest for k, d in inputs.items()}
    assert len({d["test"] for d in digests.values()}) == 1  # one test split, fully labelled
    # the partial labels differ with the ratio; the methods of one ratio read the same training split
    assert digests["baseline · 30%"]["train"] == digests["dualcoop · 30%"]["train"] != \
        digests["dualcoop · 70%"]["train"]
    commit = git_commit(Path(__file__).parent)
    for run in [*runs.values(), sweep["client"].get_run(sweep["parent_run_id"])]:
        tags = run.data.tags
        assert set(SOURCE_TAGS) - {"mlflow.source.git.commit", REPO_URL_TAG} <= set(tags)  # (those: in a checkout)
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"].endswith("spec.yaml")
        assert tags.get("mlflow.source.git.commit") == commit


def test_the_report_of_a_complete_sweep_has_no_not_included_heading(sweep):
    page = (sweep["tmp"] / "report" / "report.html").read_text()
    assert "Not included" not in page and "<th colspan='3'>label ratio</th>" in page
    assert "zeroshot ‡" in page and "1 seed: no intervals, no ranking claim." in page  # one seed: said so
    assert "unpaired: one run" in page  # zero-shot's one run pairs with no seed: no wins counted for it


def test_descriptions_carry_the_spec_description_results_and_report_link(sweep):
    client = sweep["client"]
    note = client.get_run(sweep["parent_run_id"]).data.tags[NOTE_TAG]
    assert note.startswith(DESCRIPTION) and report_link(sweep["experiment_id"], sweep["parent_run_id"]) in note
    assert "| dualcoop |" in note and "| zeroshot ‡ |" in note  # the report's table
    assert client.get_experiment(sweep["experiment_id"]).tags[NOTE_TAG] == note
    assert note.endswith(view_links(sweep["experiment_id"], sweep["parent_run_id"]))  # one click to the view
    assert any(a.path == "report/report.html" for a in client.list_artifacts(sweep["parent_run_id"], "report"))


def test_the_ui_address_opens_the_sweeps_runs_in_the_training_view(sweep):
    address = sweep["ui"]
    assert address.startswith(f"http://127.0.0.1:5000/#/experiments/{sweep['experiment_id']}/runs?")
    assert "workflowType=machine_learning" in address
    assert f"viewStateShareKey=ablate-{sweep['parent_run_id']}" in address
    assert ui_address("http://head:5000/", "3", "abc").startswith("http://head:5000/#/experiments/3/runs?")
    assert "mlflow ui --backend-store-uri" in ui_hint(sweep["tracking_uri"], "1", "abc")
    assert "mlflow ui" not in ui_hint("http://head:5000", "1", "abc")
    assert ui_address("http://head:5000", "3", "abc", charts=True).endswith("compareRunsMode=CHART")


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
    table = chromium(tmp_path, address, "--window-size=2400,1000", "--dump-dom")
    parent_name = sweep["client"].get_run(sweep["parent_run_id"]).info.run_name
    assert all(name in table for name in NAMES) and parent_name not in table  # the trials, flat
    assert DESCRIPTION in table  # the experiment's description heads the page
    charts = chromium(tmp_path, address + "&compareRunsMode=CHART", "--window-size=1600,3000", "--dump-dom")
    assert charts.count('class="barlayer') >= 6  # final figures (step 0) are drawn as per-run bars
    assert all(f">{key}<" in charts for key in ("test_map", "device_hours", "trainable_params"))
    parent = chromium(tmp_path, f"{server}/#/experiments/{sweep['experiment_id']}/runs/{sweep['parent_run_id']}",
                      "--window-size=1600,1200", "--dump-dom")
    assert DESCRIPTION in parent and f'href="{report_link(sweep["experiment_id"], sweep["parent_run_id"])}"' in parent
    view = f'href="#/experiments/{sweep["experiment_id"]}/runs?viewStateShareKey=ablate-{sweep["parent_run_id"]}'
    assert view in parent  # the description links the prepared view
    for name in NAMES:  # the parent lists its trials by name
        assert name in parent
    shot = tmp_path / "runs.png"
    chromium(tmp_path, address, "--window-size=1600,1000", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_the_sweep_has_a_prepared_view_the_ui_reads(sweep):
    tags = sweep["client"].get_experiment(sweep["experiment_id"]).tags
    state = decode(tags[VIEW_TAG_PREFIX + view_key(sweep["parent_run_id"])])
    assert state["searchFilter"] == f"tags.mlflow.parentRunId = '{sweep['parent_run_id']}'"
    assert state["runsHiddenMode"] == "SHOW_ALL" and state["orderByKey"] == "metrics.`test_map`"
    # method and ratio, test mAP with the cost columns right after it, then the other axes and the pack
    assert state["selectedColumns"] == [
        "params.`method`", "params.`label_ratio`", "metrics.`test_map`", "metrics.`trainable_params`",
        "metrics.`train_time_s`", "metrics.`device_hours`", "tags.`ablate.n_ctx`", "tags.`ablate.seed`",
        "tags.`ablate.pack`"]
    kinds = {(c["type"], c.get("metricKey") or c.get("xaxis", {}).get("key")) for c in state["compareRunCharts"]}
    assert {("SCATTER", "trainable_params"), ("SCATTER", "device_hours"), ("SCATTER", "label_ratio"),
            ("LINE", "train_loss"), ("LINE", "val_map"), ("PARALLEL", None)} == kinds
    # parallel coordinates keep every run: each axis is a number for every run or for none, and varies
    parallel = next(c for c in state["compareRunCharts"] if c["type"] == "PARALLEL")
    runs = trials(sweep).values()
    for axis in parallel["selectedParams"]:
        values = [r.data.params[axis] for r in runs]
        numeric = [v.replace(".", "", 1).isdigit() for v in values]
        assert (all(numeric) or not any(numeric)) and len(set(values)) > 1, (axis, values)
    assert parallel["selectedParams"] == ["method"]  # label_ratio, n_ctx and seed are n/a for some method
    assert all(key in r.data.metrics for r in runs for key in parallel["selectedMetrics"])
    colours = {r.data.tags["ablate.method"]: r.data.tags["mlflow.runColor"] for r in trials(sweep).values()}
    assert len(set(colours.values())) == 3  # one colour per method, so charts read by method


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_the_printed_address_opens_the_prepared_view(sweep, server, tmp_path):
    """No clicks: the columns, all runs grouped by label ratio with the best first, and the charts."""
    address = sweep["ui"].replace("http://127.0.0.1:5000", server)
    table = chromium(tmp_path, address, "--window-size=2400,1000", "--dump-dom")
    assert "viewing a shared view" in table and "share key" not in table  # found and applied
    # the header's columns in the order shown: method, ratio, test mAP with the cost columns right after it
    shown = {}
    for index, column in re.findall(r'aria-colindex="(\d+)" col-id="((?:params|metrics|tags)\.`[^"]+`)"', table):
        shown.setdefault(column, int(index))
    order = ["params.`method`", "params.`label_ratio`", "metrics.`test_map`", "metrics.`trainable_params`",
             "metrics.`train_time_s`", "metrics.`device_hours`", "tags.`ablate.n_ctx`", "tags.`ablate.seed`",
             "tags.`ablate.pack`"]
    assert sorted(shown, key=shown.get) == order, shown
    assert ">Group: 0.3<" in table and ">Group: 0.7<" in table
    best_first = [name for name in re.findall(r">((?:baseline|dualcoop) · [37]0%)<", table)]
    runs = trials(sweep)
    for ratio in ("30%", "70%"):  # within its ratio's group, the higher test mAP comes first
        order = [n for n in best_first if n.endswith(ratio)]
        assert order == sorted(order, key=lambda n: -runs[n].data.metrics["test_map"])
    charts = chromium(tmp_path, address.replace("workflowType", "compareRunsMode=CHART&workflowType"),
                      "--window-size=1600,3000", "--dump-dom")
    assert SECTION in charts and charts.count('class="scatterlayer') >= 6 and 'class="parcoords' in charts
    assert all(f">{key}<" in charts for key in ("train_loss", "val_map"))
    # every method is a tick of the parallel chart's method axis: no run (zero-shot, baseline) left out
    parcoords = charts[charts.index('class="parcoords'):]
    parcoords = parcoords[:parcoords.find("</svg>")]
    assert all(f">{method}<" in parcoords for method in ("baseline", "dualcoop", "zeroshot")), parcoords[:3000]
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

    uri, client, ctx = sweep_store(tmp_path, {"name": "race"})
    experiment_id = ctx.experiment_id
    parent = ctx.parent_run_id
    start_at = time.time() + 8.0  # after every process has imported and created its run
    with ProcessPoolExecutor(6) as pool:
        run_ids = list(pool.map(_log_split_at, *zip(*[(uri, experiment_id, parent, i, start_at) for i in range(6)])))
    for run_id in run_ids:
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("synthetic · test", "0123456789ab")]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_screenshots_are_taken_from_the_store_and_the_report(sweep, tmp_path):
    """`make screenshots`' step: the prepared view, its charts and the report page, as PNG files."""
    from ablate.tracking.screenshots import take

    shots = take(sweep["tracking_uri"], "t", sweep["tmp"] / "report", tmp_path / "shots", "t")
    assert [p.name for p in shots] == ["t_mlflow_runs.png", "t_mlflow_charts.png", "t_report.png"]
    for shot in shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000, shot
