"""One declaration of what a trial is: every setting's Role, and everything derived from it (the pack key,
the fields a method ignores, tags, run names, the grid's order, CLI flags, the report's rows)."""

from __future__ import annotations

import importlib
import sys
import textwrap
from typing import Annotated

import pytest
from pydantic import BaseModel

from ablate.methods import METHODS, method_info, method_names
from ablate.pack import STREAM_FIELDS, pack_key
from ablate.report import RunRecord, assign_rows
from ablate.roles import Role, role_of, roles
from ablate.spec import FIELD_ROLES, TrialConfig, fields_where, ignored_fields, param_role
from ablate.sweep import expand
from ablate.sweep.spec import SweepSpec
from ablate.tracking.names import ARM_FIELDS, NOT_READ, flatten_config


def test_every_trial_field_declares_its_role():
    assert list(FIELD_ROLES) == list(TrialConfig.model_fields)  # every one, read from its own annotation
    for name in TrialConfig.model_fields:
        assert isinstance(role_of(TrialConfig, name), Role), name


def test_a_field_without_a_role_is_refused_by_name():
    class Incomplete(BaseModel):
        declared: Annotated[int, Role(stream=True)] = 1
        forgotten: int = 2

    with pytest.raises(ValueError, match=r"Incomplete\.forgotten declares no Role"):
        roles(Incomplete)
    assert roles(Incomplete, default=Role())["forgotten"] == Role()  # options models have a default
    with pytest.raises(ValueError, match="Role\\(reads='prompts'\\)"):
        Role(reads="prompts")  # type: ignore[arg-type]


def test_the_derived_sets_are_the_roles():
    assert STREAM_FIELDS == fields_where(stream=True) and "seed" in STREAM_FIELDS and "lr" not in STREAM_FIELDS
    assert ARM_FIELDS == fields_where(tag=True)
    for name in method_names():
        reads = method_info(name).reads | {"all"}
        assert ignored_fields(name) == {f for f, r in FIELD_ROLES.items() if r.reads not in reads}
    # zero-shot reads no training field, so no label ratio and no seed; dualcoop reads no free embedding
    assert {"label_ratio", "seed", "lr"} <= ignored_fields("zeroshot")
    assert "free_init_std" in ignored_fields("dualcoop") and "n_ctx" not in ignored_fields("dualcoop")


def test_every_single_valued_field_is_a_train_flag():
    from ablate.cli import build_parser

    parser, _ = build_parser()
    args = parser.parse_args(["train", "--gamma-neg", "3", "--no-augment", "--label-ratio", "0.3"])
    assert (args.gamma_neg, args.augment, args.label_ratio) == ("3", False, "0.3")  # TrialConfig converts
    from ablate.cli import resolve_config

    cfg = resolve_config(args)
    assert (cfg.gamma_neg, cfg.augment, cfg.label_ratio) == (3.0, False, 0.3)


def test_the_grid_runs_in_the_order_the_roles_nest():
    spec = SweepSpec(name="s", grid={"method": ["dualcoop", "baseline"], "label_ratio": [0.1, 0.5, 0.9],
                                     "seed": [0, 1]})
    order = [(a.config.seed, a.config.label_ratio, a.config.method) for a in expand(spec)]
    # seed outermost; ratios spread (ends, then the middle); methods innermost
    assert order[:6] == [(0, 0.1, "dualcoop"), (0, 0.1, "baseline"), (0, 0.9, "dualcoop"), (0, 0.9, "baseline"),
                         (0, 0.5, "dualcoop"), (0, 0.5, "baseline")]
    assert {o[0] for o in order[6:]} == {1}


PLUGIN = textwrap.dedent('''
    """A toy method whose options declare their roles: nothing under ablate/ is edited for it."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict

    from ablate.methods import METHODS, MethodInfo, register_method
    from ablate.roles import Role


    class RoledOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")
        views: Annotated[int, Role(stream=True)] = 1  # how many crops the stream feeds it: packs must agree
        width: int = 8  # an option without a Role: identity, as every option by default
        log_every: Annotated[int, Role(identity=False)] = 10  # how it reports: never splits a row


    if "roled" not in METHODS:
        register_method(MethodInfo("roled", "ablate.methods.baseline:Baseline", {"training"}, text_encoder=False,
                                   options=RoledOptions))
''')


@pytest.fixture()
def roled_plugin(tmp_path, monkeypatch):
    (tmp_path / "ablate_roled_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("ablate_roled_plugin")
    yield
    METHODS.unregister("roled")
    sys.modules.pop("ablate_roled_plugin", None)


def _record(i: int, cfg: TrialConfig, value: float) -> RunRecord:
    """A finished run as the report reads it back: the params and arm tags the tracking code writes."""
    params = flatten_config(cfg)
    tags = {f"ablate.{k}": params[k] for k in ARM_FIELDS}
    return RunRecord(f"r{i}", "FINISHED", tags, {"test_map": value}, params=params)


def test_a_plugin_option_with_a_role_reaches_the_pack_key_the_run_name_and_the_report_row(roled_plugin):
    assert param_role("options.views", "roled", "synthetic").stream
    assert not param_role("options.log_every", "roled", "synthetic").identity
    one, two = (TrialConfig(method="roled", options={"views": v}) for v in (1, 2))
    assert pack_key(one)["options.views"] == 1 and pack_key(one) != pack_key(two)  # a stream option splits packs
    assert "options.width" not in pack_key(one)  # an identity option does not
    spec = SweepSpec(name="s", grid={"method": ["roled", "baseline"], "options.width": [4, 16],
                                     "options.log_every": [1, 5]})
    arms = expand(spec)
    names = sorted(a.name(spec) for a in arms)
    # baseline has no such options: they are ignored for it, as a field it does not read (one arm)
    assert "baseline" in names and "roled · options.width=4 · options.log_every=1" in names and len(arms) == 5
    records = [_record(i, a.config, 50.0 + i) for i, a in enumerate(arms)]
    rows = assign_rows(records)
    labels = {r.run_id: rows.label.get(r.run_id) for r in records}
    # two widths: two rows; log_every is not identity, so its second value is the same configuration again
    assert sorted(set(labels.values()) - {None}) == ["baseline", "roled options.width=16", "roled options.width=4"]
    assert len(rows.excluded) == 2 and all("counted once" in why for why in rows.excluded.values())


def test_a_grid_over_an_option_no_method_has_is_one_line():
    with pytest.raises(ValueError, match=r"grid.options.nope\[0\]: no registered method has an option 'nope'"):
        SweepSpec(name="s", grid={"options.nope": [1]})


def test_params_say_n_a_for_what_a_method_does_not_read():
    params = flatten_config(TrialConfig(method="zeroshot"))
    assert params["label_ratio"] == NOT_READ and params["seed"] == NOT_READ and params["backbone"] != NOT_READ
