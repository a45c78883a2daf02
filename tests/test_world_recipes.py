"""World checkpoints named by their pre-training recipe (`world-negation@seed=1`): the grammar, its
errors, and one cached checkpoint per recipe (pre-training kept to one step on a tiny world)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError

from ablate.errors import ConfigError
from ablate.spec import TrialConfig, load_trial_config
from ablate.sweep import expand
from ablate.sweep.spec import load_sweep_spec
from ablate.world import checkpoints as checkpoints_mod
from ablate.world.checkpoints import build_checkpoint
from ablate.world.dataset import WorldConfig
from ablate.world.pretrain import PretrainConfig, manifest_path
from ablate.world.recipe import canonical_alias, is_alias, parse_alias

TINY = WorldConfig(n_train=24, n_val=18, n_test=20, n_pretrain=24, seed=3)


def test_aliases_parse_to_recipes_and_have_one_spelling():
    cfg = parse_alias("world-negation@seed=2@epochs=4", model="ablate-tiny-rn")
    assert cfg == PretrainConfig(model="ablate-tiny-rn", captions="negation", seed=2, epochs=4)
    assert canonical_alias("world-negation@seed=2@epochs=4") == "world-negation@epochs=4@seed=2"  # sorted
    assert canonical_alias("world-negation@seed=0") == "world-negation"  # defaults dropped: the old names
    assert canonical_alias("world-presence@lr=1e-3@ seed = 1") == "world-presence@lr=0.001@seed=1"
    assert parse_alias("world-presence") == PretrainConfig()
    assert TrialConfig(pretrained="world-negation@seed=1").pretrained == "world-negation@seed=1"
    assert TrialConfig(pretrained="world-negation@seed=0").pretrained == "world-negation"
    assert not is_alias("world-presence-run2.pt") and not is_alias("./world-negation@seed=1")  # files


@pytest.mark.parametrize("alias, problem", [
    ("world-negation@seed=x", "seed must be an integer"),
    ("world-negation@lr=fast", "lr must be a number"),
    ("world-negation@model=RN50", "cannot set 'model=RN50'"),
    ("world-negation@captions=presence", "cannot set"),
    ("world-negation@seed", "expects <field>=<value>"),
    ("world-negation@seed=1@seed=2", "repeats 'seed=2'"),
    ("world-negation@epochs=0", "out of range"),
    ("world-negation@seed=1,epochs=2", "seed must be an integer"),  # commas would split a YAML list
    ("world-negaton@seed=1", "unknown world checkpoint"),
])
def test_bad_aliases_name_the_alias_and_the_grammar(alias, problem, tmp_path):
    with pytest.raises(ValidationError) as err:
        TrialConfig(pretrained=alias)
    text = str(err.value)
    assert problem in text and repr(alias) in text and "world-<captions>[@<field>=<value>]" in text
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump({"pretrained": alias}))
    with pytest.raises(ConfigError, match="pretrained"):
        load_trial_config(config)


def test_a_sweep_checks_aliases_first_and_counts_a_recipe_once(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "w", "base": {"dataset": "world", "method": "zeroshot"},
                                    "grid": {"pretrained": ["world-negation", "world-negation@seed=0",
                                                            "world-negation@seed=1"]}}))
    assert sorted(a.config.pretrained for a in expand(load_sweep_spec(spec))) == [
        "world-negation", "world-negation@seed=1"]
    spec.write_text(yaml.safe_dump({"name": "w", "base": {"dataset": "world"},
                                    "grid": {"pretrained": ["world-negation@sed=1"]}}))
    with pytest.raises(ConfigError, match=r"grid.*world-negation@sed=1.*cannot set 'sed=1'"):
        load_sweep_spec(spec)


def test_distinct_seeds_give_distinct_cached_checkpoints_and_the_same_seed_reuses(tmp_path, monkeypatch):
    calls: list[PretrainConfig] = []
    real = checkpoints_mod.pretrain

    def counting(world_root: Path, out: Path, cfg: PretrainConfig, progress: bool = True) -> dict:
        calls.append(cfg)
        return real(world_root, out, cfg, progress)

    monkeypatch.setattr(checkpoints_mod, "pretrain", counting)
    kwargs = dict(cache_dir=tmp_path, progress=False, world=TINY, base=PretrainConfig(epochs=1, batch_size=16))
    one = build_checkpoint("world-negation@seed=1", **kwargs)
    two = build_checkpoint("world-negation@seed=2", **kwargs)
    assert one != two and [c.seed for c in calls] == [1, 2]
    assert build_checkpoint("world-negation@seed=1", **kwargs) == one and len(calls) == 2  # reused
    # the manifest names the whole recipe: the alias that rebuilds this checkpoint anywhere
    assert json.loads(manifest_path(two).read_text())["alias"] == "world-negation@batch_size=16@epochs=1@seed=2"
    # different seeds are different initialisations: different weights
    a, b = (torch.load(p, weights_only=True) for p in (one, two))
    assert not torch.equal(a["text_projection"], b["text_projection"])

    zero = build_checkpoint("world-negation", **kwargs)  # the plain name is seed 0 of the recipe
    assert build_checkpoint("world-negation@seed=0", **kwargs) == zero and len(calls) == 3
    assert zero not in (one, two) and calls[-1].seed == 0
    longer = build_checkpoint("world-negation@seed=1@epochs=2", **kwargs)  # any field, on top of base
    assert longer not in (one, two, zero) and (calls[-1].seed, calls[-1].epochs, calls[-1].batch_size) == (1, 2, 16)
