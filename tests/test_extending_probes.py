"""Adding a probe from outside the package: one `register_probe` call makes it runnable by sweeps,
valid in specs, a column of the report and an `ablate probe` command; no file under ablate/ changes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ablate.probes import (
    ProbeContext,
    ProbeInfo,
    add_probe_commands,
    probe_columns,
    probe_markdown,
    probe_names,
    register_probe,
    run_probes_for_trial,
)
from ablate.probes.common import write_json
from ablate.probes.registry import PROBES
from ablate.registry import resolve
from ablate.report import RunRecord, _diagnostics_html, diagnostics
from ablate.spec import TrialConfig
from ablate.sweep.spec import SweepSpec
from ablate.trainer import TRAINED, load_trained, run_trial

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

COLUMN = "probe_toy_norm_mean"


# ---- the toy probe, as a plugin would write it -------------------------------------------------------

def class_embedding_norms(trained: Path) -> dict:
    """Mean L2 norm of the trained method's positive and negative class embeddings."""
    _, _, method = load_trained(trained)
    with torch.no_grad():
        pos, neg = method.class_embeddings()
    return {"positive": pos.norm(dim=-1).mean().item(), "negative": neg.norm(dim=-1).mean().item()}


def run_toy(ctx: ProbeContext) -> dict:
    result = class_embedding_norms(ctx.trained)
    write_json(ctx.output("toy_norm.json"), result)
    return result


def flat_toy(result: dict) -> dict[str, float]:
    return {COLUMN: (result["positive"] + result["negative"]) / 2}


def add_toy_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trained", type=Path, required=True)


def toy_command(args: argparse.Namespace) -> str:
    return f"mean class-embedding norm: {flat_toy(class_embedding_norms(args.trained))[COLUMN]:.3f}"


TOY = ProbeInfo(name="toy_norm", columns={COLUMN: "mean |class embedding|"}, run=run_toy, flat=flat_toy,
                needs_trained=True, help="mean norm of the learned class embeddings",
                add_arguments=add_toy_arguments, command=toy_command)


@pytest.fixture()
def toy():
    register_probe(TOY)
    yield TOY
    PROBES.unregister(TOY.name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir: Path) -> tuple[TrialConfig, Path]:
    cfg = TrialConfig(dataset="synthetic", dataset_options={"synthetic_images": 40},
                      backbone="ablate-tiny-vit", pretrained="none",
                      epochs=1, warmup_epochs=0, batch_size=8, num_workers=0, device="cpu", augment=False,
                      cache_dir=cache_dir)
    out = tmp_path_factory.mktemp("toy_trial")
    run_trial(cfg, out, progress=False)
    return cfg, out / TRAINED


# ---- tests ---------------------------------------------------------------------------------------------

def test_a_registered_probe_runs_for_a_trial_and_reaches_spec_report_and_cli(toy, trained, tmp_path, capsys):
    cfg, trained_pt = trained
    assert "toy_norm" in probe_names() and probe_columns()[COLUMN] == "mean |class embedding|"

    flat = run_probes_for_trial(cfg, ["toy_norm"], trained_pt, tmp_path)
    expected = flat_toy(class_embedding_norms(trained_pt))[COLUMN]
    assert flat == {COLUMN: pytest.approx(expected)} and expected > 0
    assert (tmp_path / "toy_norm.json").is_file()

    assert SweepSpec(name="toy", probes=["toy_norm"]).probes == ["toy_norm"]

    report_trial = RunRecord(run_id="r0", status="FINISHED", tags={"ablate.dataset": "synthetic"}, metrics=flat)
    rows = diagnostics("synthetic", [report_trial], {"r0": "dualcoop"})
    assert rows == {"dualcoop": {COLUMN: pytest.approx(expected)}}
    assert "mean |class embedding|" in probe_markdown(rows).splitlines()[0]
    assert "<th>mean |class embedding|</th>" in _diagnostics_html(rows)

    parser = argparse.ArgumentParser(prog="ablate")
    handlers = add_probe_commands(parser.add_subparsers(dest="command", required=True))
    assert handlers["probe"](parser.parse_args(["probe", "toy-norm", "--trained", str(trained_pt)])) == 0
    assert f"{expected:.3f}" in capsys.readouterr().out


def test_an_unregistered_probe_is_refused_with_the_registered_names(trained):
    cfg, trained_pt = trained
    with pytest.raises(ValueError, match="unknown probe.*toy_norm.*registered: negation, presence"):
        SweepSpec(name="toy", probes=["toy_norm"])
    with pytest.raises(ValueError, match="unknown probe.*toy_norm.*negation"):
        run_probes_for_trial(cfg, ["toy_norm"], trained_pt)


def test_a_probe_needing_the_trained_method_refuses_to_run_without_it(toy, trained):
    with pytest.raises(ValueError, match="'toy_norm' probe needs the trial's trained.pt"):
        run_probes_for_trial(trained[0], ["toy_norm"])


def test_registration_refuses_a_name_or_column_taken(toy):
    with pytest.raises(ValueError, match="already registered"):
        register_probe(TOY)
    with pytest.raises(ValueError, match="already belong to probe 'negation'"):
        register_probe(ProbeInfo(name="other", columns={"probe_negation_farther_pct": "x"}, run=run_toy,
                                 flat=flat_toy))
    assert "other" not in probe_names()


@pytest.mark.parametrize("name", probe_names())
def test_each_builtin_declares_its_report_columns_and_code(name):
    info = PROBES.get(name)
    assert info.columns and all(probe_columns()[col] == title for col, title in info.columns.items())
    hooks = [info.run, info.flat] + ([info.add_arguments, info.command] if info.command else [])
    assert all(callable(resolve(ref)) for ref in hooks)


def test_the_probe_registry_and_report_columns_import_no_torch():
    code = ("import sys, ablate.probes as p; from ablate.probes import probe_markdown; p.probe_columns(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
