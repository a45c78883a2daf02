"""The world's pre-training effect with its interval: the statistics on constructed numbers with a
known answer, and the report section on a small MLflow store built through the tracking code."""

from __future__ import annotations

import math

import pytest
import yaml

from ablate.report import write_report
from ablate.spec import TrialConfig
from ablate.stats import pooled_sd, welch_interval
from ablate.tracking import TrackingContext, TrialRun, connect, ensure_experiment, start_parent_run
from ablate.world.effect import Observation, checkpoint_scores, effects_markdown, pretraining_effects

T_975_DF4 = 2.7764451051977987  # Student t quantile, 97.5 %, 4 degrees of freedom


def test_welch_interval_known_answer():
    # equal variances (1) and sizes (3): se = sqrt(1/3 + 1/3), Welch df = (2/3)^2 / (2 * (1/3)^2 / 2) = 4
    iv = welch_interval([1, 2, 3], [4, 5, 6])
    half = T_975_DF4 * math.sqrt(2 / 3)
    assert iv.diff == pytest.approx(3.0)
    assert iv.df == pytest.approx(4.0)
    assert (iv.low, iv.high) == pytest.approx((3 - half, 3 + half))
    assert iv.excludes_zero and iv.text() == "+3.0 [+0.7, +5.3]"


def test_welch_interval_unequal_variances_and_degenerate_cases():
    # worked by hand: a = [0, 1] (variance 1/2), b = [0, 2, 4, 6] (variance 20/3)
    iv = welch_interval([0, 1], [0, 2, 4, 6])
    va, vb = 0.5 / 2, (20 / 3) / 4
    df = (va + vb) ** 2 / (va**2 / 1 + vb**2 / 3)
    assert iv.diff == pytest.approx(2.5) and iv.df == pytest.approx(df)
    assert not iv.excludes_zero  # 2.5 against se ~1.37 with ~3.5 df

    one = welch_interval([1.0], [2.0, 3.0])  # no variance to estimate on one side
    assert one.diff == pytest.approx(1.5) and math.isnan(one.low) and not one.excludes_zero
    assert "no interval" in one.text()
    flat = welch_interval([1.0, 1.0], [2.0, 2.0])  # no spread: the point itself
    assert (flat.low, flat.high) == (1.0, 1.0) and flat.excludes_zero


def test_pooled_sd_known_answer():
    # variances 1 and 4 -> sqrt(2.5); a single value has no variance and is left out
    assert pooled_sd([[1, 2, 3], [0, 2, 4], [7]]) == pytest.approx(math.sqrt(2.5))
    assert math.isnan(pooled_sd([[1], [2]]))


# pre-training seed -> checkpoint score per caption style; every trial = score + ratio offset + seed offset,
# and both offsets average to zero, so a checkpoint's score is exactly the number here
SCORES = {"presence": [20.0, 22.0, 24.0], "negation": [26.0, 28.0, 30.0]}
ZERO_SHOT = {"presence": [10.0, 11.0, 12.0], "negation": [10.5, 11.0, 11.5]}
RATIO_OFFSET = {0.1: -3.0, 0.5: 3.0}
SEED_OFFSET = {0: -1.0, 1: 1.0}


def _alias(style: str, seed: int) -> str:
    return f"world-{style}" + (f"@seed={seed}" if seed else "")


def _observations() -> list[Observation]:
    obs = [Observation("negativecoop", _alias(style, p), ratio, str(seed),
                       score + RATIO_OFFSET[ratio] + SEED_OFFSET[seed])
           for style, scores in SCORES.items() for p, score in enumerate(scores)
           for ratio in RATIO_OFFSET for seed in SEED_OFFSET]
    obs += [Observation("zeroshot", _alias(style, p), 0.1, "0", score)
            for style, scores in ZERO_SHOT.items() for p, score in enumerate(scores)]
    return obs


def test_effects_are_two_sample_over_checkpoints():
    effects = {e.row: e for e in pretraining_effects(_observations())}
    neg = effects["negativecoop"]
    assert neg.scores == {"presence": pytest.approx(SCORES["presence"]), "negation": pytest.approx(SCORES["negation"])}
    half = T_975_DF4 * math.sqrt(4 / 3 + 4 / 3)  # sd 2 in each style, 3 checkpoints each
    assert (neg.interval.diff, neg.interval.low, neg.interval.high) == pytest.approx((6.0, 6 - half, 6 + half))
    assert neg.training_seeds == (2, 2) and neg.between_sd == pytest.approx(2.0)
    assert neg.within_sd == pytest.approx(math.sqrt(2))  # seed means score-1, score+1 in every checkpoint
    zs = effects["zeroshot"]
    assert zs.interval.diff == pytest.approx(0.0) and not zs.interval.excludes_zero
    assert zs.training_seeds == (1, 1) and math.isnan(zs.within_sd)

    text = effects_markdown(list(effects.values()))
    assert "| negativecoop | 22.0 ± 2.0 | 28.0 ± 2.0 | +6.0 [+1.5, +10.5] | 3, 3 × 2 | 2.0 | 1.4 |" in text
    assert "Distinguishable from zero: negativecoop (+6.0 [+1.5, +10.5])." in text
    assert "Not distinguishable from zero: zeroshot." in text
    assert "not paired by pre-training seed" in text


def test_training_seeds_missing_a_ratio_are_left_out_and_recipes_kept_apart():
    obs = [o for o in _observations() if not (o.pretrained == "world-presence" and o.training_seed == "1"
                                              and o.ratio == 0.5)]
    scores = checkpoint_scores(obs)
    assert list(scores["negativecoop", "world-presence"]) == ["0"]  # seed 1 lacks ratio 0.5
    assert scores["negativecoop", "world-presence"]["0"] == pytest.approx([20 - 4.0, 20 + 2.0])
    assert pretraining_effects(obs)[0].training_seeds == (1, 2)  # said as "1–2" in the table
    # a second recipe (other epochs) is its own comparison, never pooled with the default one
    other = [Observation(o.row, o.pretrained.replace("@", "@epochs=2@") if "@" in o.pretrained
                         else o.pretrained + "@epochs=2", o.ratio, o.training_seed, o.test_map + 50) for o in obs]
    rows = {e.row: e for e in pretraining_effects(obs + other)}
    assert set(rows) == {"negativecoop recipe=default", "negativecoop recipe=epochs=2",
                         "zeroshot recipe=default", "zeroshot recipe=epochs=2"}
    assert rows["negativecoop recipe=epochs=2"].mean("presence") == pytest.approx(rows[
        "negativecoop recipe=default"].mean("presence") + 50)
    only_one_style = [o for o in obs if "presence" in o.pretrained]
    assert pretraining_effects(only_one_style) == [] and effects_markdown([]) == ""


@pytest.fixture(scope="module")
def world_store(tmp_path_factory) -> str:
    """A sweep over six world checkpoints (3 pre-training seeds x 2 caption styles), trials logged with
    the constructed numbers above."""
    tmp = tmp_path_factory.mktemp("world_report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    aliases = [_alias(s, p) for s in SCORES for p in range(3)]
    spec = {"name": "worldrep", "base": {"dataset": "world"},
            "grid": {"pretrained": aliases, "method": ["negativecoop", "zeroshot"],
                     "label_ratio": list(RATIO_OFFSET), "seed": list(SEED_OFFSET)}}
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    client = connect(uri)
    exp = ensure_experiment(client, "worldrep")
    ctx = TrackingContext(uri, exp, start_parent_run(client, exp, "worldrep", spec_path, spec_path.read_text()))
    for i, o in enumerate(_observations()):
        method = o.row
        cfg = TrialConfig(method=method, dataset="world", pretrained=o.pretrained, label_ratio=o.ratio,
                          seed=int(o.training_seed))
        run = TrialRun.attach(ctx, cfg, f"trial{i}", {"method": method, "pretrained": o.pretrained,
                                                      "label_ratio": o.ratio, "seed": int(o.training_seed)})
        run.log_metrics({"test_map": o.test_map, "trainable_params": 10.0, "train_time_s": 1.0, "device_hours": 0.0})
        run.finish()
    return uri


def test_report_section_on_a_world_store(world_store, tmp_path):
    result = write_report("worldrep", tmp_path / "rep", world_store, log_to_mlflow=False)
    effects = {e.row: e for e in result["pretraining_effects"]["world"]}
    assert set(effects) == {"negativecoop", "zeroshot"}
    assert effects["negativecoop"].interval.diff == pytest.approx(6.0)
    table = (tmp_path / "rep" / "table.md").read_text()
    assert "#### Pre-training effect: negation − presence captions" in table
    assert "| negativecoop | 22.0 ± 2.0 | 28.0 ± 2.0 | +6.0 [+1.5, +10.5] | 3, 3 × 2 |" in table
    assert "Pre-training effect" in (tmp_path / "rep" / "report.html").read_text()
