"""Extending ablate from outside the package: a new method and a new report section, each registered
here (no file under ablate/ edited), trained / rendered for real, and named by a sweep."""

from __future__ import annotations

import pytest
import torch
from sweep_helpers import sweep_store
from torch import Tensor, nn

from ablate.aggregation import aggregate
from ablate.arm import build_optimizer
from ablate.methods import FREE, METHODS, Method, MethodInfo, register_method
from ablate.report import SECTIONS, DatasetContext, Section, register_section, write_report
from ablate.spec import TrialConfig
from ablate.sweep import expand
from ablate.sweep.spec import SweepSpec
from ablate.tracking import TrialRun
from ablate.trainer import run_trial

pytestmark = pytest.mark.usefixtures("one_thread")


class GlobalEmbed(Method):
    """A toy method: free positive / negative class embeddings scored on the global token only."""

    def __init__(self, backbone, classnames: list[str], cfg: TrialConfig) -> None:
        super().__init__(cfg, len(classnames))
        dim = backbone.info.embed_dim
        self.pos = nn.Parameter(torch.randn(len(classnames), dim) * cfg.free_init_std)
        self.neg = nn.Parameter(torch.randn(len(classnames), dim) * cfg.free_init_std)
        self.param_kinds = {"pos": FREE, "neg": FREE}

    def class_embeddings(self) -> tuple[Tensor, Tensor]:
        return self.pos, self.neg

    def head(self, dense: Tensor, embeddings: tuple[Tensor, Tensor] | None) -> Tensor:
        positive, negative = embeddings if embeddings is not None else self.class_embeddings()
        return aggregate(dense[:, :1], positive, negative, self.temperature, self.logit_scale)


@pytest.fixture()
def global_embed():
    info = register_method(MethodInfo("global-embed", GlobalEmbed, {"training", "free"}, text_encoder=False))
    yield info
    METHODS.unregister(info.name)


def test_a_method_registered_from_outside_trains_and_sweeps(global_embed, tiny_cfg, tmp_path):
    cfg = tiny_cfg(method="global-embed", epochs=2, lr=0.05)
    result = run_trial(cfg, tmp_path / "run", progress=False)
    assert result.method == "global-embed" and result.trainable_params == 2 * 10 * result.backbone["embed_dim"]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    from ablate.backbone import create_backbone
    from ablate.methods import create_method

    method = create_method(cfg, create_backbone("ablate-tiny-vit", "none"), ["a", "b"])
    assert {g["kind"] for g in build_optimizer(method, cfg).param_groups} == {FREE}  # its declared kind's lr
    # a sweep names it; n_ctx is not among the fields it reads, so its grid values merge into one trial
    spec = SweepSpec(name="ext", base={"dataset": "synthetic"},
                     grid={"method": ["global-embed", "dualcoop"], "n_ctx": [4, 8]})
    arms = expand(spec)
    assert sorted(a.config.method for a in arms) == ["dualcoop", "dualcoop", "global-embed"]


def test_an_unregistered_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown method 'global-embed'; registered: dualcoop"):
        TrialConfig(method="global-embed")


def test_a_report_section_registered_from_outside_appears(tmp_path):
    def ratios(ctx: DatasetContext) -> Section:
        text = f"{ctx.dataset}: {len(ctx.table.ratios)} label ratio(s)"
        return Section(markdown=f"#### Ratios\n\n{text}\n", html=f"<p id='toy'>{text}</p>",
                       files={f"ratios_{ctx.dataset}.txt": text.encode()}, data={"ratios": ctx.table.ratios})

    uri, _, ctx = sweep_store(tmp_path, {"name": "sec", "grid": {"method": ["dualcoop"]}})
    run = TrialRun.attach(ctx, TrialConfig(method="dualcoop", dataset="synthetic"), "t0", {"method": "dualcoop"})
    run.log_metrics({"test_map": 42.0, "trainable_params": 1, "train_time_s": 1.0, "device_hours": 0.0})
    run.finish()
    register_section(ratios)
    try:
        result = write_report("sec", tmp_path / "out", uri, log_to_mlflow=False)
    finally:
        SECTIONS.remove(ratios)
    assert result["ratios"] == {"synthetic": [0.5]}
    assert "#### Ratios\n\nsynthetic: 1 label ratio(s)" in (tmp_path / "out" / "table.md").read_text()
    assert "<p id='toy'>synthetic: 1 label ratio(s)</p>" in (tmp_path / "out" / "report.html").read_text()
    assert (tmp_path / "out" / "ratios_synthetic.txt").read_text() == "synthetic: 1 label ratio(s)"
