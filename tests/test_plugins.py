"""A spec's `plugins` register names in the driver and in every Ray worker: a method that exists only
in a module outside the package runs as a real sweep trial and lands in MLflow."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from sweep_helpers import run_with_plugins, write_spec
from sweep_helpers import runs as sweep_runs

from ablate.methods import METHODS
from ablate.sweep.spec import load_sweep_spec

PLUGIN = textwrap.dedent('''
    """A toy method, registered on import: free embeddings scored on the global token only."""
    import torch
    from torch import nn

    from ablate.aggregation import aggregate
    from ablate.methods import FREE, METHODS, Method, MethodInfo, register_method


    class GlobalEmbed(Method):
        def __init__(self, backbone, classnames, cfg):
            super().__init__(cfg, len(classnames))
            dim = backbone.info.embed_dim
            self.pos = nn.Parameter(torch.randn(len(classnames), dim))
            self.neg = nn.Parameter(torch.randn(len(classnames), dim))
            self.param_kinds = {"pos": FREE, "neg": FREE}

        def class_embeddings(self):
            return self.pos, self.neg

        def head(self, dense, embeddings):
            positive, negative = embeddings if embeddings is not None else self.class_embeddings()
            return aggregate(dense[:, :1], positive, negative, self.temperature, self.logit_scale)


    if "plugin-embed" not in METHODS:
        register_method(MethodInfo("plugin-embed", GlobalEmbed, {"training", "free"}, text_encoder=False))
''')


@pytest.fixture()
def plugin_dir(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "ablate_toy_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    METHODS.unregister("plugin-embed")


def test_a_spec_plugin_registers_in_the_driver_and_every_worker(plugin_dir, tmp_path, cache_dir):
    spec_path = write_spec(tmp_path, cache_dir, name="plug", plugins=["ablate_toy_plugin"],
                           base={"dataset_options": {"synthetic_images": 40}, "epochs": 1, "lr": 0.05},
                           grid={"method": ["plugin-embed"], "seed": [0, 1]})
    assert load_sweep_spec(spec_path).plugins == ["ablate_toy_plugin"]
    summary = run_with_plugins(spec_path, plugin_dir)  # only the spec's plugin list registers it in workers
    assert summary["trials"] == 2 and summary["errored"] == 0
    _, runs = sweep_runs(tmp_path, "plug")
    assert {r.data.tags["ablate.method"] for r in runs} == {"plugin-embed"} and len(runs) == 2
    assert all(r.info.status == "FINISHED" and r.data.metrics["trainable_params"] > 0 for r in runs)


def test_a_plugin_that_cannot_be_imported_is_named(tmp_path):
    from ablate.errors import ConfigError

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "plugins": ["no_such_plugin_module"]}))
    with pytest.raises(ConfigError, match="plugins: cannot import 'no_such_plugin_module'"):
        load_sweep_spec(path)
