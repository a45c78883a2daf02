"""A method owns its settings: a toy method registered from outside the package (a plugin module) brings
its own parameter kind (a tiny meta-network with its own learning-rate multiplier and decay) and its own
options model; a spec sets them under per_method.<method>, they are validated with the field named, reach
the optimizer and MLflow's params, and the method lands in the report. Nothing under ablate/ is edited."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap

import pytest
import yaml
from sweep_helpers import run_with_plugins, write_spec
from sweep_helpers import runs as sweep_runs

from ablate.errors import ConfigError
from ablate.methods import METHODS
from ablate.sweep import expand
from ablate.sweep.spec import SweepSpec, load_sweep_spec

PLUGIN = textwrap.dedent('''
    """Meta-embed: free class embeddings shifted by a meta-network of the global image token (CoCoOp-style)."""
    import torch
    from pydantic import BaseModel, ConfigDict, Field
    from torch import nn

    from ablate.aggregation import aggregate
    from ablate.methods import FREE, METHODS, Kind, Method, MethodInfo, register_method


    class MetaOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")
        meta_hidden: int = Field(8, ge=1)
        meta_lr_mult: float = Field(10.0, gt=0)
        meta_weight_decay: float = Field(0.0, ge=0)


    class MetaEmbed(Method):
        def __init__(self, backbone, classnames, cfg):
            super().__init__(cfg, len(classnames))
            dim, hidden = backbone.info.embed_dim, cfg.options["meta_hidden"]
            self.pos = nn.Parameter(torch.randn(len(classnames), dim))
            self.neg = nn.Parameter(torch.randn(len(classnames), dim))
            self.meta = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
            self.param_kinds = {"pos": FREE, "neg": FREE}
            for layer in (self.meta[0], self.meta[2]):
                layer.param_kinds = {"weight": "meta", "bias": "meta"}

        def class_embeddings(self):
            return self.pos, self.neg

        def head(self, dense, embeddings):
            positive, negative = embeddings if embeddings is not None else self.class_embeddings()
            shift = self.meta(dense[:, 0]).mean(0)  # one shift from the batch's global tokens
            return aggregate(dense, positive + shift, negative, self.temperature, self.logit_scale)


    if "meta-embed" not in METHODS:
        register_method(MethodInfo("meta-embed", MetaEmbed, {"training", "free"}, text_encoder=False,
                                   options=MetaOptions, kinds={"meta": Kind("meta_lr_mult", "meta_weight_decay")}))
''')


@pytest.fixture()
def meta_plugin(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "ablate_meta_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", f"{folder}:{os.environ.get('PYTHONPATH', '')}")
    importlib.import_module("ablate_meta_plugin")  # registers meta-embed
    yield folder
    METHODS.unregister("meta-embed")
    sys.modules.pop("ablate_meta_plugin", None)  # the next test imports (and registers) it afresh


def test_a_method_brings_its_own_kind_and_options(meta_plugin, tiny_cfg):
    from ablate.arm import build_optimizer
    from ablate.backbone import create_backbone
    from ablate.methods import create_method

    cfg = tiny_cfg(method="meta-embed", lr=0.01, options={"meta_lr_mult": 3})
    assert cfg.options == {"meta_hidden": 8, "meta_lr_mult": 3.0, "meta_weight_decay": 0.0}  # defaults filled
    method = create_method(cfg, create_backbone("ablate-tiny-vit", "none"), ["a", "b"])
    groups = {g["kind"]: g for g in build_optimizer(method, cfg).param_groups}
    assert groups["meta"]["lr_mult"] == 3.0 and groups["meta"]["weight_decay"] == 0.0
    assert len(groups["meta"]["params"]) == 4 and groups["free"]["lr_mult"] == cfg.free_lr_mult
    with pytest.raises(ValueError, match=r"options\.meta_lr_mul: unknown option \(method meta-embed; its options: "
                                         r"meta_hidden, meta_lr_mult, meta_weight_decay\)"):
        tiny_cfg(method="meta-embed", options={"meta_lr_mul": 3})
    with pytest.raises(ValueError, match="options: method dualcoop takes no options"):
        tiny_cfg(method="dualcoop", options={"meta_lr_mult": 3})


def test_a_spec_sets_a_methods_options_under_its_name(meta_plugin):
    spec = SweepSpec(name="m", base={"dataset": "synthetic"}, grid={"method": ["meta-embed", "dualcoop"]},
                     per_method={"meta-embed": {"meta_lr_mult": 2.5, "lr": 0.1}})
    by_method = {a.config.method: a.config for a in expand(spec)}
    assert by_method["meta-embed"].options["meta_lr_mult"] == 2.5 and by_method["meta-embed"].lr == 0.1
    assert by_method["dualcoop"].options == {}
    with pytest.raises(ValueError, match=r"per_method\.meta-embed\.meta_lr_mult: Input should be greater than 0"):
        SweepSpec(name="m", per_method={"meta-embed": {"meta_lr_mult": -1}})
    with pytest.raises(ValueError, match=r"per_method\.dualcoop\.meta_lr_mult: not a TrialConfig field, and method "
                                         r"dualcoop registers no options"):
        SweepSpec(name="m", per_method={"dualcoop": {"meta_lr_mult": 2}})


def test_a_swept_method_with_options_reaches_mlflow_and_the_report(meta_plugin, tmp_path, cache_dir):
    from ablate.report import write_report

    spec_path = write_spec(tmp_path, cache_dir, name="meta", plugins=["ablate_meta_plugin"],
                           base={"dataset_options": {"synthetic_images": 40}, "epochs": 1, "lr": 0.05},
                           per_method={"meta-embed": {"meta_lr_mult": 4, "meta_hidden": 6}},
                           grid={"method": ["meta-embed", "baseline"]})
    assert load_sweep_spec(spec_path).per_method["meta-embed"]["meta_lr_mult"] == 4
    summary = run_with_plugins(spec_path, meta_plugin)
    assert summary["trials"] == 2 and summary["errored"] == 0
    runs = {r.data.tags["ablate.method"]: r for r in sweep_runs(tmp_path, "meta")[1]}
    params = runs["meta-embed"].data.params
    assert params["options.meta_lr_mult"] == "4.0" and params["options.meta_hidden"] == "6"
    assert runs["meta-embed"].info.status == "FINISHED" and "options.meta_lr_mult" not in runs["baseline"].data.params
    write_report("meta", tmp_path / "report", f"sqlite:///{tmp_path / 'mlflow.db'}", log_to_mlflow=False)
    assert "| meta-embed" in (tmp_path / "report" / "table.md").read_text()


def test_a_bad_option_in_a_spec_file_is_one_line(meta_plugin, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "plugins": ["ablate_meta_plugin"],
                                    "per_method": {"meta-embed": {"meta_hidden": 0}}}))
    with pytest.raises(ConfigError, match=r"per_method\.meta-embed\.meta_hidden: Input should be greater than or "
                                          r"equal to 1"):
        load_sweep_spec(path)

