"""Reports from an MLflow experiment built with known values through the project's tracking code."""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from ablate.cli import main
from ablate.report import ReportError, write_report
from ablate.spec import TrialConfig, ignored_fields
from ablate.tracking import TrackingContext, TrialRun, connect, ensure_experiment, start_parent_run

# (method, label_ratio, seed) -> (test mAP, trainable params, train seconds)
FINISHED = {
    ("dualcoop", 0.1, 0): 70.0, ("dualcoop", 0.1, 1): 72.0, ("dualcoop", 0.5, 0): 80.0, ("dualcoop", 0.5, 1): 84.0,
    ("baseline", 0.1, 0): 71.0, ("baseline", 0.1, 1): 73.0, ("baseline", 0.5, 0): 78.0,
    ("positivecoop", 0.1, 0): 70.0, ("positivecoop", 0.1, 1): 70.0, ("positivecoop", 0.5, 0): 75.0,
    ("positivecoop", 0.5, 1): 75.0,
    ("zeroshot", 0.5, 0): 60.0,
}
COST = {"dualcoop": (1000, 10.0), "baseline": (100, 5.0), "positivecoop": (2000, 20.0), "zeroshot": (0, 0.0)}
CLASSES = [f"class{i}" for i in range(4)]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    spec = {"name": "rep", "base": {"dataset": "synthetic"},
            "grid": {"method": ["dualcoop", "baseline", "positivecoop", "zeroshot"], "label_ratio": [0.1, 0.5],
                     "seed": [0, 1, 2]}}
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    client = connect(uri)
    exp = ensure_experiment(client, "rep")
    ctx = TrackingContext(uri, exp, start_parent_run(client, exp, "rep", spec_path, spec_path.read_text()))

    def attach(i: int, method: str, ratio: float, seed: int) -> TrialRun:
        cfg = TrialConfig(method=method, label_ratio=ratio, seed=seed, dataset="synthetic")
        arm = {"method": method, "label_ratio": ratio, "seed": seed}  # the grid values the method reads, as a sweep
        return TrialRun.attach(ctx, cfg, f"trial{i}", {k: v for k, v in arm.items() if k not in ignored_fields(method)})

    for i, ((method, ratio, seed), value) in enumerate(FINISHED.items()):
        run = attach(i, method, ratio, seed)
        params, secs = COST[method]
        run.log_metrics({"test_map": value, "trainable_params": params, "train_time_s": secs,
                         "device_hours": secs / 3600})
        run.log_dict({c: value + k for k, c in enumerate(CLASSES)}, "per_class_ap.json")
        if method == "dualcoop" and ratio == 0.1:  # diagnostics logged next to the trial metrics
            run.log_metrics({"probe_negation_farther_pct": 40.0 + 20.0 * seed})
        run.finish()
    attach(100, "baseline", 0.5, 1).fail("TrialDiverged: loss became nan at epoch 3")
    attach(101, "positivecoop", 0.1, 2)  # still RUNNING
    return uri


@pytest.fixture(scope="module")
def report(experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return write_report("rep", out, experiment), out


def cell(table, row, col):
    c = table.cells[row][col]
    return round(c.mean, 6), round(c.std, 6), c.n


def test_table_numbers(report):
    result, _ = report
    t = result["tables"]["synthetic"]
    assert t.columns == ["0.1", "0.5", "Avg"]
    assert cell(t, "dualcoop", "0.1") == (71.0, round(math.sqrt(2), 6), 2)
    assert cell(t, "dualcoop", "0.5") == (82.0, round(math.sqrt(8), 6), 2)
    assert cell(t, "dualcoop", "Avg") == (76.5, round(math.sqrt(4.5), 6), 2)  # per-seed averages 75 and 78
    assert cell(t, "baseline", "0.1") == (72.0, round(math.sqrt(2), 6), 2)
    assert cell(t, "baseline", "0.5") == (78.0, 0.0, 1)  # the failed seed is not averaged in
    assert cell(t, "baseline", "Avg") == (74.5, 0.0, 1)  # only seed 0 has every ratio
    assert cell(t, "positivecoop", "Avg") == (72.5, 0.0, 2)
    assert cell(t, "zeroshot", "0.1") == cell(t, "zeroshot", "0.5") == (60.0, 0.0, 1)  # ratio-free row
    # only replicated rows compete (baseline at 0.5 and zero-shot have one run: shown, not ranked); pairs are
    # per seed: at 0.1 baseline beats dualcoop by exactly 1 on both seeds (separated), not positivecoop (1, 3)
    assert t.best == {} and t.top == {}
    assert t.tied == {"0.1": ["baseline", "positivecoop"], "0.5": ["dualcoop", "positivecoop"],
                      "Avg": ["dualcoop", "positivecoop"]}
    assert t.cells["dualcoop"]["0.1"].values == {"0": 70.0, "1": 72.0}
    assert t.cells["dualcoop"]["Avg"].high - 76.5 == pytest.approx(12.7062047 * 1.5)  # t(.975, 1) · sd / √2
    assert t.cost["positivecoop"]["trainable_params"] == 2000 and t.cost["baseline"]["train_time_s"] == 5.0


def test_pareto_sets(report):
    result, _ = report
    fronts = result["pareto"]["synthetic"]
    assert fronts["trainable_params"] == ["zeroshot", "baseline", "dualcoop"]
    assert fronts["train_time_s"] == ["zeroshot", "baseline", "dualcoop"]


def test_paired_differences_against_dualcoop(report):
    result, _ = report
    paired = {p["row"]: p for p in result["paired"]["synthetic"]}
    # per seed, the mean over the ratios both ran; then the mean, its t interval and wins over seeds
    baseline = paired["baseline"]  # seed 0: (71-70, 78-80) -> -0.5; seed 1: (73-72) -> +1
    assert (baseline["over"], baseline["pairs"], baseline["wins"]) == ("seeds", 2, 1)
    half = 12.7062047 * math.sqrt(1.125) / math.sqrt(2)  # t(.975, 1) · sd / √2
    assert baseline["mean_diff"] == pytest.approx(0.25)
    assert (baseline["low"], baseline["high"]) == (pytest.approx(0.25 - half), pytest.approx(0.25 + half))
    assert (paired["positivecoop"]["pairs"], paired["positivecoop"]["wins"]) == (2, 0)
    assert paired["positivecoop"]["mean_diff"] == pytest.approx(-4.0)  # seeds: -2.5 and -5.5
    # zero-shot: one run, no seed to pair with: against the reference's mean, no interval, no wins counted
    zeroshot = paired["zeroshot"]
    assert (zeroshot["over"], zeroshot["wins"], zeroshot["low"]) == ("unpaired", None, None)
    assert zeroshot["mean_diff"] == pytest.approx(60 - 76.5)


def test_incomplete_trials_are_listed_not_averaged(report):
    result, out = report
    text = "\n".join(result["incomplete"])
    assert "FAILED — TrialDiverged: loss became nan" in text
    assert "RUNNING" in text
    # seed 2 was never started for dualcoop and baseline at both ratios, positivecoop at 0.5
    assert sum("never started" in line for line in result["incomplete"]) == 5
    assert "never started" in (out / "report.html").read_text()


def test_outputs_written_and_logged(report, experiment):
    result, out = report
    for name in ("table.md", "table.csv", "report.html", "cost_vs_map_synthetic.png", "per_class_ap_synthetic.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "table.md").read_text()
    # mean ± 95 % half-width; the spec asks for 3 seeds, so cells with fewer say so; no interval is clear
    assert "76.50 ± 19.06 (n=2 of 3) ≈" in md and "78.00 (n=1 of 3) |" in md and "**" not in md
    assert "| label ratio 0.1 | label ratio 0.5 | avg over ratios |" in md and "device-h" in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "label_ratio" in page  # plots and the spec inline
    client = connect(experiment)
    logged = [a.path for a in client.list_artifacts(result["parent_run_id"], "report")]
    assert "report/report.html" in logged


def test_the_table_marks_ratio_independent_rows_and_heads_the_ratio_columns(report):
    result, out = report
    md, page = (out / "table.md").read_text(), (out / "report.html").read_text()
    # zero-shot runs once (it ignores the seed), so it waits for no other seed; one run has no interval: ≈
    assert "| zeroshot ‡ | 60.00 (n=1) ‡ | 60.00 (n=1) ‡ |" in md and "‡ ratio-independent" in md
    assert "a row of one run (n=1) is shown but not ranked" in md
    assert "<th colspan='3'>label ratio</th>" in page and "<th>0.1</th><th>0.5</th><th>avg</th>" in page
    assert result["tables"]["synthetic"].ratio_free_rows == {"zeroshot"}
    assert "wins count the seeds above 0" in page and "unpaired: one run" in page  # what wins are taken over
    assert "Not included" in page  # this sweep has a failed, a running and never-started trials


def test_the_frontier_does_not_let_a_near_tie_win_outright():
    from ablate.report import pareto
    from ablate.report.tables import near_ties

    # b is 32 parameters (3 %) cheaper with the same score: a tie, both stay; c is dominated by a
    points = {"a": (1000.0, 40.0), "b": (968.0, 40.0), "c": (2000.0, 39.0), "d": (0.0, 10.0)}
    front = pareto(points)
    assert front == ["d", "b", "a"] and near_ties(points, front) == {"a", "b"}
    assert pareto({"a": (1000.0, 40.0), "b": (500.0, 40.0)}) == ["b"]  # half the cost: a real win


def test_diagnostics_are_averaged_per_row(report):
    result, out = report
    assert result["diagnostics"]["synthetic"] == {"dualcoop": {"probe_negation_farther_pct": 50.0}}
    assert "Diagnostics" in (out / "report.html").read_text() and "negation farther %" in (out / "table.md").read_text()


def test_missing_experiment_is_a_clear_error(experiment, tmp_path, capsys):
    with pytest.raises(ReportError, match="no MLflow experiment named 'nope'.*rep"):
        write_report("nope", tmp_path, experiment)
    assert main(["report", "--experiment", "nope", "--tracking-uri", experiment, "--out", str(tmp_path)]) == 2
    assert "no MLflow experiment" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    _, out = report
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = (out / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", *flags, f"--screenshot={shot}", "--window-size=1300,1800", url],
                   check=True, capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    dom = subprocess.run(["chromium", *flags, "--dump-dom", url], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert dom.count("<table") >= 2 and dom.count("<img") == 2 and "dualcoop" in dom


def test_artifacts_live_beside_the_sqlite_store_not_in_the_working_directory(experiment):
    from pathlib import Path

    from mlflow import MlflowClient

    db = Path(experiment.removeprefix("sqlite:///"))
    location = MlflowClient(experiment).get_experiment_by_name("rep").artifact_location
    assert location == (db.parent / "mlruns" / "rep").as_uri()
    assert not (Path.cwd() / "mlruns" / "rep").exists()


def test_paired_differences_compare_each_row_with_the_reference_on_its_own_weights():
    from ablate.report import RunRecord, assign_rows, paired_differences

    def trial(i: int, method: str, pretrained: str, seed: int, value: float) -> RunRecord:
        tags = {"method": method, "dataset": "world", "label_ratio": "0.5", "backbone": "ablate-tiny-vit",
                "pretrained": pretrained, "n_ctx": "8", "csc": "False", "seed": str(seed)}
        return RunRecord(f"r{i}", "FINISHED", {f"ablate.{k}": v for k, v in tags.items()}, {"test_map": value})

    trials = [trial(0, "dualcoop", "world-presence", 0, 40.0), trial(1, "dualcoop", "world-presence", 1, 42.0),
              trial(2, "dualcoop", "world-negation", 0, 30.0), trial(3, "dualcoop", "world-negation", 1, 34.0),
              trial(4, "negativecoop", "world-presence", 0, 20.0), trial(5, "negativecoop", "world-presence", 1, 24.0),
              trial(6, "negativecoop", "world-negation", 0, 31.0), trial(7, "negativecoop", "world-negation", 1, 33.0),
              trial(8, "baseline", "world-negation@seed=1", 0, 50.0)]  # weights dualcoop never ran on
    paired = {p["row"]: p for p in paired_differences("world", trials, assign_rows(trials).label, "dualcoop")}
    assert set(paired) == {"negativecoop pretrained=world-presence", "negativecoop pretrained=world-negation"}
    presence = paired["negativecoop pretrained=world-presence"]
    negation = paired["negativecoop pretrained=world-negation"]
    assert presence["reference"] == "dualcoop pretrained=world-presence" and presence["mean_diff"] == -19.0
    assert negation["reference"] == "dualcoop pretrained=world-negation" and negation["mean_diff"] == 0.0
    assert (negation["wins"], negation["pairs"]) == (1, 2)


def _seeded_trials(values: dict[str, list[float]]) -> list:
    from ablate.report import RunRecord

    return [RunRecord(f"{method}{seed}", "FINISHED", {"ablate.method": method, "ablate.dataset": "synthetic",
                                                  "ablate.label_ratio": "0.5", "ablate.seed": str(seed)},
                  {"test_map": v}) for method, vs in values.items() for seed, v in enumerate(vs)]


def test_best_is_bold_only_when_its_interval_clears_every_other_row():
    from ablate.report import assign_rows, build_table, table_markdown

    trials = _seeded_trials({"dualcoop": [80.0, 81.0, 82.0], "baseline": [70.0, 71.0, 72.0],
                             "positivecoop": [60.0, 70.0, 80.0]})
    table = build_table("synthetic", trials, assign_rows(trials).label, expected=3)
    # dualcoop 81 ± 2.48; positivecoop 70 ± 24.8 reaches it: a tie between those two, baseline not in it
    assert table.best == {} and table.tied["0.5"] == ["dualcoop", "positivecoop"]
    md = table_markdown(table)  # every cell has 3 seeds: n is said once, under the table
    assert "81.00 ± 2.48 ≈" in md and "71.00 ± 2.48 |" in md and "n = 3 seeds per cell" in md
    trials = _seeded_trials({"dualcoop": [80.0, 81.0, 82.0], "baseline": [70.0, 71.0, 72.0]})
    table = build_table("synthetic", trials, assign_rows(trials).label, expected=3)
    assert table.best == {"0.5": "dualcoop", "Avg": "dualcoop"} and table.tied == {}
    assert "**81.00 ± 2.48**" in table_markdown(table)


def test_mean_interval_is_the_t_interval_and_absent_for_one_value():
    from ablate.stats import mean_interval

    ci = mean_interval([1.0, 2.0, 3.0])
    assert (ci.mean, ci.n) == (2.0, 3) and ci.half_width == pytest.approx(4.302653 / math.sqrt(3))
    assert ci.contains(4.4) and not ci.contains(4.5)
    single = mean_interval([5.0])
    assert not single.exists and single.text() == "5.00 (n=1, no interval)" and single.overlaps(ci)


PUBLISHED = {
    "source": {"paper": "A test paper", "venue": "TESTCONF", "year": 2024, "code": "https://example.org/code"},
    "protocol": {"selected_on": "test", "avg_over": [0.1, 0.5]},
    "results": {"synthetic": {
        "dualcoop": {"params": "1k", "map": {0.1: 71.5, 0.5: 99.0, "avg": 76.0}},
        "positivecoop": {"params": "1.6k", "map": {0.1: 70.5}},
        "baseline": {"map": {0.5: 78.5}},
        "negativecoop": {"map": {0.1: 60.0}}}},
}


def test_reproduction_section_gives_gap_interval_and_inside_or_outside(experiment, tmp_path, capsys):
    paper = tmp_path / "paper.yaml"
    paper.write_text(yaml.safe_dump(PUBLISHED))
    out = tmp_path / "out"
    assert main(["report", "--experiment", "rep", "--tracking-uri", experiment, "--out", str(out), "--no-log",
                 "--published", str(paper)]) == 0
    md = capsys.readouterr().out
    from ablate.published import load_published

    result = write_report("rep", tmp_path / "again", experiment, log_to_mlflow=False,
                          published=[load_published(paper)])
    [data] = result["reproduction"]["synthetic"]
    cells = {(c["row"], c["column"]): c for c in data["cells"]}
    assert set(cells) == {("dualcoop", "0.1"), ("dualcoop", "0.5"), ("dualcoop", "Avg"), ("positivecoop", "0.1"),
                          ("baseline", "0.5")}
    half = 12.7062047 * math.sqrt(2) * math.sqrt(1 + 1 / 2)  # t(.975, 1) · sd · √(1 + 1/n), seeds 70, 72
    dual = cells["dualcoop", "0.1"]
    assert (dual["mean"], dual["n"], dual["gap"], dual["inside"]) == (71.0, 2, -0.5, True)
    assert dual["low"] == pytest.approx(71 - half) and dual["high"] == pytest.approx(71 + half)
    # one published run against one more run of two seeds 80, 84: the prediction interval is wide, 99 inside
    assert cells["dualcoop", "0.5"]["inside"] is True and cells["dualcoop", "0.5"]["gap"] == -17.0
    assert cells["dualcoop", "Avg"]["gap"] == 0.5 and cells["dualcoop", "Avg"]["inside"] is True
    assert cells["positivecoop", "0.1"]["inside"] is False  # seeds 70, 70: the interval is the point 70
    assert cells["baseline", "0.5"]["n"] == 1 and cells["baseline", "0.5"]["inside"] is None  # no interval
    assert all(c["protocol_differs"] for c in cells.values())  # paper on test, this sweep on val
    assert all(c["differences"] == ["epoch picked on: test there, val here"] for c in cells.values())
    params = {p["row"]: p for p in data["params"]}
    assert params["dualcoop"] == {"row": "dualcoop", "here": 1000.0, "printed": "1k", "ratio": 1.0}
    assert params["positivecoop"]["ratio"] == pytest.approx(2000 / 1600) and params["baseline"]["ratio"] is None
    assert data["not_in_sweep"] == ["negativecoop"]
    # as rendered: markdown on stdout and in table.md, HTML in the page
    assert "| dualcoop | 0.5 | 82.00 | [37.98, 126.02] | 2 | 99.0 † | -17.00 | inside | epoch picked on: test " \
        "there, val here |" in md
    assert "| positivecoop | 0.1 | 70.00 | [70.00, 70.00] | 2 | 70.5 † | -0.50 | outside |" in md
    assert "| baseline | 0.5 | 78.00 | no interval (one seed) | 1 | 78.5 † | -0.50 | — |" in md
    assert "| positivecoop | 2,000 | 1.6k | 1.25× |" in md and "there is no interval" in md
    assert "Reproduction: TESTCONF 2024: A test paper" in (out / "report.html").read_text()


def test_published_averages_are_compared_only_over_the_same_label_ratios(experiment, tmp_path):
    from ablate.published import load_published

    for avg_over, reason in ((None, "does not say which label ratios"), ([0.1, 0.3, 0.5], "averages 0.1, 0.3, 0.5")):
        paper = tmp_path / "paper.yaml"
        paper.write_text(yaml.safe_dump({**PUBLISHED, "protocol": {"avg_over": avg_over}}))
        result = write_report("rep", tmp_path / "out", experiment, log_to_mlflow=False,
                              published=[load_published(paper)])
        [data] = result["reproduction"]["synthetic"]
        assert ("dualcoop", "Avg") not in {(c["row"], c["column"]) for c in data["cells"]}
        assert any(s.startswith("dualcoop avg: ") and reason in s for s in data["skipped"])
        assert not any(c["protocol_differs"] for c in data["cells"])  # the paper's selection is not stated


def test_published_table_names_unknown_methods_data_sets_and_ratios(experiment, tmp_path, capsys):
    from ablate.published import load_published
    from ablate.spec import ConfigError

    paper = tmp_path / "paper.yaml"
    for results, named in (({"synthetic": {"tai-dpt": {"map": {0.1: 1.0}}}}, "unknown method(s) 'tai-dpt'"),
                           ({"imagenet": {"dualcoop": {"map": {0.1: 1.0}}}}, "unknown data set 'imagenet'"),
                           ({"synthetic": {"dualcoop": {"map": {10: 1.0}}}}, "(10 % is 0.1)"),
                           ({"synthetic": {"dualcoop": {"params": "lots", "map": {}}}}, "'lots'")):
        paper.write_text(yaml.safe_dump({**PUBLISHED, "results": results}))
        with pytest.raises(ConfigError, match=re.escape(named)):
            load_published(paper)
    assert main(["report", "--experiment", "rep", "--tracking-uri", experiment, "--out", str(tmp_path / "o"),
                 "--published", str(paper)]) == 2
    err = capsys.readouterr().err
    assert "published table" in err and "'lots'" in err and not (tmp_path / "o").exists()
    assert main(["report", "--experiment", "rep", "--tracking-uri", experiment, "--published", "nope"]) == 2
    assert "positivecoop_wacv2025" in capsys.readouterr().err  # the shipped names are listed


def test_shipped_positivecoop_table_is_the_posters():
    from ablate.published import load_published, shipped

    assert "positivecoop_wacv2025" in shipped()
    paper = load_published("positivecoop_wacv2025")
    assert (paper.source.venue, paper.source.year, paper.protocol.selected_on) == ("WACV", 2025, "test")
    coco, voc = paper.results["coco2014"], paper.results["voc2007"]
    assert coco["positivecoop"].map == {"0.1": 79.8, "0.3": 83.0, "0.5": 83.7, "0.7": 84.0, "avg": 83.2}
    assert voc["negativecoop"].map == {"0.1": 88.9, "0.3": 89.6, "0.5": 90.7, "0.7": 91.8, "avg": 90.8}
    assert [coco[m].params for m in ("dualcoop", "baseline", "negativecoop", "positivecoop")] == \
        ["1.3M", "80k", "730k", "730k"]
    assert [voc[m].params_value for m in ("dualcoop", "baseline")] == [300_000, 20_000]
    # the printed averages are not the mean of the printed ratios, so which ratios they cover is unknown
    assert coco["dualcoop"].map["avg"] != pytest.approx(sum(coco["dualcoop"].map[r] for r in
                                                            ("0.1", "0.3", "0.5", "0.7")) / 4, abs=0.05)
    assert paper.protocol.avg_over is None


def test_zero_shot_adds_no_seed_the_cells_wait_for():
    """Zero-shot ignores the seed (its tag says n/a): a one-seed sweep with it expects one seed a cell."""
    import yaml

    from ablate.report import RunRecord
    from ablate.report.tables import expected_seeds

    def spec(seeds: list[int]) -> str:
        return yaml.safe_dump({"name": "q", "base": {"dataset": "synthetic"},
                               "grid": {"method": ["dualcoop", "zeroshot"], "seed": seeds}})

    tags = {"ablate.dataset": "synthetic"}
    trials = [RunRecord("a", "FINISHED", {**tags, "ablate.method": "dualcoop", "ablate.seed": "0"}, {}),
              RunRecord("b", "FINISHED", {**tags, "ablate.method": "zeroshot", "ablate.seed": "n/a"}, {})]
    assert expected_seeds(spec([0]), trials, "synthetic") == 1
    assert expected_seeds(spec([0, 1]), trials, "synthetic") == 2


def test_one_seed_tables_claim_no_ranking_and_say_so():
    from ablate.report import assign_rows, build_table, table_markdown

    trials = _seeded_trials({"dualcoop": [43.9], "baseline": [40.0], "zeroshot": [12.4]})
    table = build_table("synthetic", trials, assign_rows(trials).label, expected=1)
    assert table.one_seed and table.top == {"0.5": "dualcoop", "Avg": "dualcoop"}
    assert table.best == {} and table.tied == {}
    md = table_markdown(table)
    assert "**1 seed: no intervals, no ranking claim.**" in md and "43.90 ▲" in md and "≈" not in md
    assert md.count("43.90 ▲") == 2 and "▲: the best mean of its column, a single run, no claim" in md


def test_a_single_run_row_does_not_block_the_bold_of_replicated_rows():
    from ablate.report import RunRecord, assign_rows, build_table, table_markdown

    trials = _seeded_trials({"dualcoop": [80.0, 81.0, 83.0], "baseline": [70.0, 72.0, 71.0]})
    trials.append(RunRecord("zs", "FINISHED", {"ablate.method": "zeroshot", "ablate.dataset": "synthetic",
                                               "ablate.label_ratio": "n/a", "ablate.seed": "n/a"}, {"test_map": 60.0}))
    table = build_table("synthetic", trials, assign_rows(trials).label, expected=3)
    # dualcoop − baseline per seed: 10, 9, 12: its t interval [6.2, 14.5] excludes 0; zero-shot is one run
    assert table.best == {"0.5": "dualcoop", "Avg": "dualcoop"} and table.tied == {}
    md = table_markdown(table)
    assert "**81.33 ± 3.79**" in md and "60.00 (n=1) ‡" in md and "≈" not in md


def test_selection_artefacts_are_flagged_per_cell():
    from ablate.report import RunRecord, assign_rows, build_table, table_markdown

    def run(i: int, method: str, picked: int, test: float, last: float) -> RunRecord:
        tags = {"ablate.method": method, "ablate.dataset": "synthetic", "ablate.label_ratio": "0.5",
                "ablate.seed": str(i)}
        return RunRecord(f"{method}{i}", "FINISHED", tags, {"test_map": test, "best_epoch": picked,
                                                            "last_test_map": last}, params={"epochs": "10"})

    trials = [run(0, "dualcoop", 10, 50.0, 50.0), run(1, "dualcoop", 9, 51.0, 51.5),
              run(0, "baseline", 1, 15.1, 20.3), run(1, "baseline", 4, 40.0, 40.5)]
    table = build_table("synthetic", trials, assign_rows(trials).label)
    assert table.cells["dualcoop"]["0.5"].flags == {"↗"} and table.cells["baseline"]["0.5"].flags == {"↘"}
    md = table_markdown(table)
    assert "↗ a run of the cell picked its last epoch" in md and "more than 2 mAP points lower" in md


def test_extra_columns_are_catalogue_metrics(experiment, tmp_path, capsys):
    out = tmp_path / "cols"
    assert main(["report", "--experiment", "rep", "--tracking-uri", experiment, "--out", str(out), "--no-log",
                 "--columns", "test_map", "last_test_map"]) == 0
    assert "| test mAP, last epoch |" in (out / "table.md").read_text()
    assert main(["report", "--experiment", "rep", "--tracking-uri", experiment, "--out", str(out), "--no-log",
                 "--columns", "test_f1"]) == 2
    [err] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert err.startswith("error: --columns test_f1: not a final metric") and "test_cf1" in err


def test_published_tables_of_other_data_sets_are_one_line(experiment, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["report", "--experiment", "rep", "--tracking-uri", experiment, "--out", str(out),
                 "--published", "positivecoop_wacv2025"]) == 2
    [err] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert "coco2014, voc2007" in err and "(synthetic)" in err and not out.exists()


def test_published_values_outside_percent_are_refused_naming_the_cell(tmp_path):
    from ablate.published import load_published
    from ablate.spec import ConfigError

    paper = tmp_path / "paper.yaml"
    for bad in (250.0, -40.0):
        paper.write_text(yaml.safe_dump({**PUBLISHED, "results": {"synthetic": {"dualcoop": {"map": {0.1: bad}}}}}))
        with pytest.raises(ConfigError, match=rf"results.synthetic.dualcoop.map.*0.1: {bad:g} is not an mAP"):
            load_published(paper)


def test_the_prediction_interval_covers_one_more_run_95_percent_of_the_time():
    """Simulated: equal methods, equal noise; a published single run against this sweep's seeds."""
    from ablate.stats import mean_interval, prediction_interval

    rng = np.random.default_rng(0)
    for n in (3, 5, 10):
        draws = rng.normal(80.0, 1.5, size=(4000, n + 1))
        covered = [prediction_interval(d[:n]).contains(d[n]) for d in draws]
        assert abs(np.mean(covered) - 0.95) < 0.02, n
        # the mean's own interval is the wrong test: it calls the same method "outside" far more often
        mean_covered = np.mean([mean_interval(d[:n]).contains(d[n]) for d in draws])
        assert mean_covered < 0.88, n
    assert not prediction_interval([80.0]).exists
