"""A pack isolates every arm: a method (a plugin, registered from outside the package) that raises in its
forward at a chosen step fails its own arm alone, with its own error on its own MLflow run, while the
healthy arms of its pack finish with their metrics; a Ray retry trains only the arm that failed."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from pathlib import Path

import pytest
from sweep_helpers import run_with_plugins, write_spec
from sweep_helpers import runs as sweep_runs

from ablate.methods import METHODS
from ablate.tracking import connect

pytestmark = pytest.mark.usefixtures("one_thread")

PLUGIN = textwrap.dedent('''
    """Two copies of the baseline: `flaky` raises in its forward at training step `fail_at_step`, `steady`
    never does; each notes every time it is built in the file `builds`."""
    from pydantic import BaseModel, ConfigDict

    from ablate.methods import METHODS, MethodInfo, register_method
    from ablate.methods.baseline import Baseline


    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        fail_at_step: int = 0  # 0: never
        builds: str = ""


    class Flaky(Baseline):
        def __init__(self, backbone, classnames, cfg):
            super().__init__(backbone, classnames, cfg)
            self.fail_at, self.steps = cfg.options["fail_at_step"], 0
            with open(cfg.options["builds"], "a") as f:
                f.write(cfg.method + "\\n")

        def head(self, dense, embeddings):
            if self.training:
                self.steps += 1
                if self.steps == self.fail_at:
                    raise RuntimeError(f"flaky forward broke at step {self.steps}")
            return super().head(dense, embeddings)


    for name in ("flaky", "steady"):
        if name not in METHODS:
            register_method(MethodInfo(name, Flaky, {"training"}, text_encoder=False, embeds_classes=False,
                                       options=Options))
''')


@pytest.fixture()
def flaky_plugin(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "ablate_flaky_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", f"{folder}:{os.environ.get('PYTHONPATH', '')}")
    importlib.import_module("ablate_flaky_plugin")
    yield folder
    for name in ("flaky", "steady"):
        METHODS.unregister(name)
    sys.modules.pop("ablate_flaky_plugin", None)


def sweep_with_a_flaky_arm(tmp_path, cache_dir, plugin, max_failures: int) -> tuple[dict, list, dict, Path]:
    """A pack of baseline, flaky (raises at its 4th training step: the first of epoch 2) and steady, swept on
    local Ray with one trial slot: (summary, parent runs, trial runs by method, the file of arm builds)."""
    builds = tmp_path / "builds.txt"
    spec = write_spec(tmp_path, cache_dir, name="iso", plugins=["ablate_flaky_plugin"], max_failures=max_failures,
                      max_concurrent_trials=1, base={"dataset_options": {"synthetic_images": 40}, "epochs": 2},
                      per_method={"flaky": {"fail_at_step": 4, "builds": str(builds)},
                                  "steady": {"builds": str(builds)}},
                      grid={"method": ["baseline", "flaky", "steady"]})
    summary = run_with_plugins(spec, plugin, cpus=1)
    parents, trials = sweep_runs(tmp_path, "iso")
    assert len(trials) == 3 and len({r.data.tags["ablate.pack"] for r in trials}) == 1  # one pack of three
    for healthy in ("baseline", "steady"):
        run = next(r for r in trials if r.data.tags["ablate.method"] == healthy)
        assert run.info.status == "FINISHED" and "ablate.error" not in run.data.tags, run.data.tags
        assert {"test_map", "trainable_params"} <= set(run.data.metrics)
    return summary, parents, {r.data.tags["ablate.method"]: r for r in trials}, builds


def test_an_arm_that_raises_fails_alone_with_its_own_error(flaky_plugin, tmp_path, cache_dir):
    summary, parents, runs, builds = sweep_with_a_flaky_arm(tmp_path, cache_dir, flaky_plugin, max_failures=0)
    flaky = runs["flaky"]
    assert flaky.info.status == "FAILED" and "test_map" not in flaky.data.metrics
    assert flaky.data.tags["ablate.error"].startswith("RuntimeError: flaky forward broke at step 4"), flaky.data.tags
    assert summary["trials"] == 3 and summary["errored"] == 1 and parents[0].info.status == "FAILED"
    assert sorted(builds.read_text().split()) == ["flaky", "steady"]


def test_a_retry_trains_only_the_arm_that_failed(flaky_plugin, tmp_path, cache_dir):
    """The retry resumes flaky from its epoch-1 checkpoint (its step count starts again, so it finishes);
    the arms that finished are neither built nor logged again."""
    summary, parents, runs, builds = sweep_with_a_flaky_arm(tmp_path, cache_dir, flaky_plugin, max_failures=1)
    assert runs["flaky"].info.status == "FINISHED" and "ablate.error" not in runs["flaky"].data.tags
    assert summary["trials"] == 3 and summary["errored"] == 0 and parents[0].info.status == "FINISHED"
    assert sorted(builds.read_text().split()) == ["flaky", "flaky", "steady"]
    client = connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for method, run in runs.items():
        assert len(client.get_metric_history(run.info.run_id, "test_map")) == 1, method  # its result logged once
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2], method
