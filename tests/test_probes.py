"""Diagnostics: negation, presence and hard-positive probes, learned-prompt analysis, OpenAI checkpoints.

Metric functions are checked against values worked out by hand on inputs whose cosines are known
by construction (unit vectors at chosen angles, small score tables). The runners go through the
real (tiny, random) encoders, and their numbers are cross-checked against open_clip or the
project's own zero-shot trial where one exists.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from sweep_helpers import sweep_store

from ablate.backbone import Backbone, create_backbone
from ablate.factory import seed_everything
from ablate.probes import (
    PROBE_COLUMNS,
    ProbeError,
    add_probe_commands,
    probe_images,
    probe_markdown,
    run_probes_for_trial,
)
from ablate.probes.analyze import (
    analyze_run,
    analyze_trained,
    cross_seed_similarity,
    learned_prompt_similarity,
    map_correlation,
    similarity_maps,
)
from ablate.probes.hard_positive import (
    Triple,
    hard_positive_metrics,
    run_hard_positive_probe,
    synthesize_triples,
    triple_scores,
)
from ablate.probes.negation import negation_stats, resolve_classes, run_negation_probe
from ablate.probes.presence import presence_metrics, run_presence_probe
from ablate.spec import ConfigError, TrialConfig
from ablate.trainer import load_trained, run_trial

TINY_VIT = "ablate-tiny-vit"


def at(cos: float, axis: int, dim: int = 4) -> torch.Tensor:
    """A unit vector with cosine `cos` to basis vector `axis` (the rest along basis vector `axis + 1`)."""
    v = torch.zeros(dim, dtype=torch.float64)
    v[axis] = cos
    v[axis + 1] = math.sqrt(1 - cos**2)
    return v


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


@pytest.fixture(scope="module")
def cfg(cache_dir: Path) -> TrialConfig:
    return TrialConfig(dataset="synthetic", dataset_options={"synthetic_images": 40},
                       backbone=TINY_VIT, pretrained="none", n_ctx=4,
                       epochs=0, warmup_epochs=0, batch_size=16, num_workers=0, augment=False, device="cpu",
                       cache_dir=cache_dir)


@pytest.fixture(scope="module")
def trained(cfg: TrialConfig, tmp_path_factory) -> dict[str, Path]:
    """trained.pt files (0 epochs: the analysis reads class embeddings, whatever their values):
    dualcoop at seeds 0 and 1, and the vision-only baseline."""
    root = tmp_path_factory.mktemp("trained")
    runs = {"seed0": cfg, "seed1": cfg.model_copy(update={"seed": 1}),
            "baseline": cfg.model_copy(update={"method": "baseline"})}
    for name, c in runs.items():
        run_trial(c, progress=False, trained_path=root / name / "trained.pt")
    return {name: root / name / "trained.pt" for name in runs}


# ---- negation -----------------------------------------------------------------------------------

def test_negation_stats_hand_computed():
    # class 0 along e0: paraphrases at cos 0.9, 0.7; negations at 0.5, 0.3 (negation farther)
    # class 1 along e2: paraphrases at cos 0.6, 0.4; negations at 0.9, 0.7 (negation closer)
    pos = torch.stack([at(1.0, 0), 3 * at(1.0, 2)])  # norms must not matter
    para = torch.stack([torch.stack([at(0.9, 0), 2 * at(0.7, 0)]), torch.stack([at(0.6, 2), at(0.4, 2)])])
    neg = torch.stack([torch.stack([at(0.5, 0), at(0.3, 0)]), torch.stack([5 * at(0.9, 2), at(0.7, 2)])])
    s = negation_stats(pos, para, neg)
    # P-P pairs 0.9 0.7 0.6 0.4: mean 0.65, population var (.25² + .05² + .05² + .25²) / 4 = 0.0325
    assert s["paraphrase"] == pytest.approx({"mean": 0.65, "std": math.sqrt(0.0325), "min": 0.4, "max": 0.9, "n": 4})
    # P-N pairs 0.5 0.3 0.9 0.7: mean 0.6, var (.1² + .3² + .3² + .1²) / 4 = 0.05
    assert s["negation"] == pytest.approx({"mean": 0.6, "std": math.sqrt(0.05), "min": 0.3, "max": 0.9, "n": 4})
    assert s["inter_class"] == pytest.approx({"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0, "n": 1})
    assert s["negation_farther_pct"] == pytest.approx(50.0)
    assert s["per_class"]["negation_farther"] == [True, False]
    assert s["gap_over_spread"] == pytest.approx((0.65 - 0.6) / (0.65 - 0.0))
    assert s["paraphrase_by_template"] == pytest.approx([0.75, 0.55])
    assert s["negation_by_template"] == pytest.approx([0.7, 0.5])


def test_negation_probe_with_real_encoder_and_class_file(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\n\n dog \ntraffic light\n")
    out = tmp_path / "neg.json"
    torch.manual_seed(0)
    backbone = create_backbone(TINY_VIT, "none")
    result = run_negation_probe(TINY_VIT, "none", str(classes), out, backbone=backbone)
    saved = json.loads(out.read_text())
    assert list(saved["per_class"]) == ["cat", "dog", "traffic light"]
    assert saved["n_classes"] == 3 and saved["n_paraphrases"] == 5 and saved["n_negations"] == 5
    # the per-class numbers are cosines of open_clip's own text features
    tokens = open_clip.get_tokenizer(TINY_VIT)([result["positive_template"].format("dog")]
                                               + [t.format("dog") for t in result["negation_templates"]])
    with torch.no_grad():
        feats = F.normalize(backbone.model.encode_text(tokens).double(), dim=-1)
    assert result["per_class"]["dog"]["negation"] == pytest.approx(float((feats[1:] @ feats[0]).mean()), abs=1e-5)


def test_class_list_errors(tmp_path):
    assert resolve_classes("voc2007")[0] == "aeroplane"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ProbeError, match="empty"):
        resolve_classes(str(empty))
    with pytest.raises(ProbeError, match="unknown dataset .*known: coco2014.*world.*one class name per line"):
        resolve_classes(str(tmp_path / "missing.txt"))
    assert issubclass(ProbeError, ConfigError)  # the CLI's error handling covers it


# ---- presence -----------------------------------------------------------------------------------

def test_presence_metrics_hand_computed():
    targets = np.array([[1, 0], [0, 1], [1, -1], [0, 0]])
    s_pos = np.array([[0.9, 0.2], [0.8, 0.4], [0.3, 0.9], [0.1, 0.6]])
    s_neg = np.array([[0.1, 0.5], [0.9, 0.1], [0.0, 0.0], [0.5, 0.2]])
    m = presence_metrics(s_pos, s_neg, targets)
    # class 0 by s_pos: + - + -  -> AP (1 + 2/3) / 2; by s_pos - s_neg: + + - - -> AP 1
    # class 1 (image 2 unknown) by s_pos: - + - -> AP 1/2; by s_pos - s_neg (-.3 .3 .4): - + - -> AP 1/2
    assert m["map_positive"] == pytest.approx(100 * (5 / 6 + 1 / 2) / 2)
    assert m["map_contrast"] == pytest.approx(100 * (1 + 1 / 2) / 2)
    assert m["delta_map"] == pytest.approx(100 * (1 - 5 / 6) / 2)
    assert m["per_class_delta_ap"] == pytest.approx([100 / 6, 0.0])
    # 3 known presences, all predicted present; 4 known absences, 3 predicted absent
    assert m["present_recall"] == pytest.approx(100.0)
    assert m["absent_recall"] == pytest.approx(75.0)
    assert m["balanced_acc"] == pytest.approx(87.5)
    assert m["predicted_present_pct"] == pytest.approx(100 * 4 / 7)
    assert m["n_labels"] == 7


def test_presence_probe_matches_the_zeroshot_trial(cfg, tmp_path):
    out = tmp_path / "presence.json"
    torch.manual_seed(cfg.seed)  # the random weights the trial below draws
    result = run_presence_probe(cfg, out, backbone=create_backbone(TINY_VIT, "none"))
    assert json.loads(out.read_text())["split"] == "test"
    assert set(result["per_class_delta_ap"]) == set(resolve_classes("synthetic"))
    assert 0 <= result["balanced_acc"] <= 100
    # (positive - negative) ranks like the zero-shot method's softmax, so its mAP is the trial's test mAP
    trial = run_trial(cfg.model_copy(update={"method": "zeroshot"}), progress=False)
    assert result["map_contrast"] == pytest.approx(trial.test_map, abs=1e-4)
    assert result["delta_map"] == pytest.approx(result["map_contrast"] - result["map_positive"])


# ---- hard positives -----------------------------------------------------------------------------

def test_hard_positive_metrics_hand_computed():
    #            s(c)  s(c_p) s(c_n)   correct  hard  both  brittle
    table = [(0.9, 0.8, 0.1),  # yes      yes   yes   no
             (0.9, 0.1, 0.5),  # yes      no    no    c > c_n > c_p
             (0.2, 0.8, 0.5),  # no       yes   no    c_p > c_n > c
             (0.1, 0.2, 0.5),  # no       no    no    no
             (0.5, 0.5, 0.5)]  # ties fail everything
    s_c, s_cp, s_cn = np.array(table).T
    m = hard_positive_metrics(s_c, s_cp, s_cn)
    assert m == pytest.approx({"accuracy": 40.0, "hard_positive_acc": 40.0, "augmented_acc": 20.0,
                               "brittleness": 40.0, "n": 5})


def test_triples_from_multilabel_ground_truth():
    labels = np.array([[1, 1, 0], [0, 0, 0], [1, -1, 0]])
    triples = synthesize_triples(labels, ["red circle", "blue square", "apple"], seed=0)
    first = [t for t in triples if t.image == 0]
    assert {(t.hp_kind, t.hn_kind) for t in first} == {
        (hp, hn) for hp in ("order_swap", "synonym", "and_no_absent") for hn in ("absent_swap", "present_negated")}
    c = first[0].c
    assert c in ("a photo of a red circle and a blue square.", "a photo of a blue square and a red circle.")
    by_kind = {(t.hp_kind, t.hn_kind): t for t in first}
    assert by_kind["and_no_absent", "absent_swap"].c_p == c[:-1] + " and no apple."
    assert "an apple" in by_kind["and_no_absent", "absent_swap"].c_n
    assert not [t for t in triples if t.image == 1]  # nothing present: no true caption
    # one present class; the unknown class is neither present nor absent
    assert {(t.c, t.c_p, t.c_n) for t in triples if t.image == 2} == {
        (a, p, n) for a in ["a photo of a red circle."]
        for p in ("a photo of a red disc.", "a photo of a red circle and no apple.")
        for n in ("a photo of an apple.", "a photo without a red circle.")}


def test_triple_scores_are_cosines():
    image = torch.stack([at(1.0, 0), 2 * at(1.0, 2)])
    texts = {"c": at(0.9, 0), "p": 3 * at(0.8, 0), "n": at(0.1, 0), "x": at(0.7, 2)}
    triples = [Triple(0, "c", "p", "n", "k", "k"), Triple(1, "x", "n", "c", "k", "k")]
    s_c, s_cp, s_cn = triple_scores(image, texts, triples)
    assert s_c == pytest.approx([0.9, 0.7])
    assert s_cp == pytest.approx([0.8, 0.0])
    assert s_cn == pytest.approx([0.1, 0.0])


def test_hard_positive_probe_on_data_and_replace_json(cfg, tmp_path):
    result = run_hard_positive_probe(cfg, tmp_path / "hp.json", limit=10)
    assert result["n_images"] == 10 and result["n_triples"] == sum(m["n"] for m in result["by_hard_negative"].values())
    assert set(result["by_hard_positive"]) <= {"order_swap", "synonym", "and_no_absent"}
    assert json.loads((tmp_path / "hp.json").read_text())["overall"]["n"] == result["n_triples"]

    # the public layout: data/<name>.json (c, c_n) beside swapped_data/<name>.json (c_p, c_n)
    image = probe_images(cfg).paths[0]
    rows = [{"image_path": str(image), "true_caption": "a red circle", "false_caption": "a blue circle"}]
    (tmp_path / "data").mkdir()
    (tmp_path / "swapped_data").mkdir()
    (tmp_path / "data" / "replace_att.json").write_text(json.dumps(rows))
    with pytest.raises(ProbeError, match="--swapped-json"):
        run_hard_positive_probe(cfg, None, tmp_path / "data" / "replace_att.json")
    (tmp_path / "swapped_data" / "replace_att.json").write_text(json.dumps([{**rows[0], "true_caption": "a red disc"}]))
    torch.manual_seed(0)
    backbone = create_backbone(TINY_VIT, "none")
    result = run_hard_positive_probe(cfg, None, tmp_path / "data" / "replace_att.json", backbone=backbone)
    assert result["n_triples"] == 1 and result["by_hard_positive"] == {"replace_att": result["overall"]}
    # the score is CLIP's own image-text cosine
    example = result["examples"][0]
    x = load_image(image, backbone)
    with torch.no_grad():
        img = F.normalize(backbone.model.encode_image(x).double(), dim=-1)
        tokens = open_clip.get_tokenizer(TINY_VIT)(["a red disc"])
        txt = F.normalize(backbone.model.encode_text(tokens).double(), dim=-1)
    assert example["s_cp"] == pytest.approx(float(img[0] @ txt[0]), abs=1e-5)


def load_image(path: Path, backbone: Backbone) -> torch.Tensor:
    from PIL import Image

    from ablate.data import build_transform

    info = backbone.info
    with Image.open(path) as img:
        return build_transform(info.image_size, info.mean, info.std, False, False)(img.convert("RGB"))[None]


# ---- learned prompts and similarity maps ----------------------------------------------------------

def test_learned_prompt_similarity_hand_computed():
    s = learned_prompt_similarity(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [0.0, -2.0]]))
    r = 1 / math.sqrt(2)
    assert s["per_class"] == pytest.approx([r, -1.0])
    assert s["cosine"] == pytest.approx({"mean": (r - 1) / 2, "std": (r + 1) / 2, "min": -1.0, "max": r, "n": 2})
    assert s["inter_class_positive"]["mean"] == pytest.approx(0.0)


def test_cross_seed_similarity_hand_computed():
    seeds = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]]),
             torch.tensor([[0.0, 3.0], [0.0, 1.0]])]
    s = cross_seed_similarity(seeds)
    r = 1 / math.sqrt(2)
    # seed pairs (0,1) (0,2) (1,2): class 0 -> 1, 0, 0; class 1 -> r, 1, r
    assert s["per_class"] == pytest.approx([1 / 3, (2 * r + 1) / 3])
    assert s["cosine"]["mean"] == pytest.approx((1 + 2 * r + 1) / 6)
    assert s["n_seeds"] == 3


def test_similarity_maps_hand_computed():
    dense = torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-1.0, 0.0]])  # token 0 is global
    pos_map, neg_map = similarity_maps(dense, torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(pos_map, [[1, 0], [r, -1]], atol=1e-12)
    np.testing.assert_allclose(neg_map, [[0, 1], [r, 0]], atol=1e-12)
    a, b = pos_map.ravel(), neg_map.ravel()
    pearson = ((a - a.mean()) * (b - b.mean())).sum() / math.sqrt(((a - a.mean()) ** 2).sum()
                                                                  * ((b - b.mean()) ** 2).sum())
    assert map_correlation(pos_map, neg_map) == pytest.approx(pearson)
    assert math.isnan(map_correlation(pos_map, np.ones_like(neg_map)))


def test_analyze_run_finds_seed_siblings_draws_maps_and_logs_to_mlflow(cfg, trained, tmp_path):
    from ablate.tracking import TrialRun

    uri, client, ctx = sweep_store(tmp_path, {"name": "probes"})
    runs = {}
    for name, seed in (("seed0", 0), ("seed1", 1)):
        run = TrialRun.attach(ctx, cfg.model_copy(update={"seed": seed}), name, {"seed": seed})
        run.log_artifact(trained[name])
        run.finish()
        runs[name] = run.run_id
    out = tmp_path / "out"
    result = analyze_run(runs["seed0"], uri, out, n_images=2)

    assert result["sides"] == {"positive": "prompt", "negative": "prompt"}
    seed_everything(0)  # the trial's random backbone
    _, _, method = load_trained(trained["seed0"])
    with torch.no_grad():
        pos, neg = (F.normalize(e.double(), dim=-1) for e in method.class_embeddings())
    assert result["pos_vs_neg"]["per_class"] == pytest.approx((pos * neg).sum(-1).tolist(), abs=1e-6)
    assert result["seed_runs"] == [runs["seed1"]] and result["cross_seed"]["n_seeds"] == 2
    assert len(result["maps"]) == 2 and math.isfinite(result["map_correlation"])
    for m in result["maps"]:
        png = out / m["png"]
        assert png.stat().st_size > 20_000
        pixels = mpimg.imread(png)[..., :3]
        assert pixels.std() > 0.05  # not a blank or constant image
    assert json.loads((out / "analysis.json").read_text())["run_id"] == runs["seed0"]

    logged = client.get_run(runs["seed0"]).data.metrics
    assert logged["analysis_pos_neg_cos"] == pytest.approx(result["pos_vs_neg"]["cosine"]["mean"])
    assert logged["analysis_cross_seed_cos"] == pytest.approx(result["cross_seed"]["cosine"]["mean"])
    artifacts = {a.path for a in client.list_artifacts(runs["seed0"], "analysis")}
    assert "analysis/analysis.json" in artifacts and sum(p.endswith(".png") for p in artifacts) == 2
    bare = TrialRun.attach(ctx, cfg.model_copy(update={"seed": 2}), "bare", {"seed": 2})
    with pytest.raises(ProbeError, match="no trained.pt artifact"):
        analyze_run(bare.run_id, uri, tmp_path / "bare", log=False)


def test_analyze_refuses_a_method_without_class_embeddings(trained):
    with pytest.raises(ProbeError, match="no class embeddings"):
        analyze_trained(trained["baseline"], None)


# ---- sweep hook and command line ----------------------------------------------------------------

def test_run_probes_for_trial_returns_flat_metrics(cfg, trained, tmp_path):
    flat = run_probes_for_trial(cfg, ["negation", "presence", "hard-positive", "prompts"], trained["seed0"],
                                tmp_path, limit=6)
    assert all(isinstance(v, float) and math.isfinite(v) for v in flat.values())
    assert {"probe_negation_farther_pct", "probe_presence_delta_map", "probe_hp_brittleness",
            "analysis_pos_neg_cos"} <= set(flat)
    assert {p.name for p in tmp_path.glob("*.json")} == {"negation.json", "presence.json", "hard_positive.json"}
    assert list((tmp_path / "analysis").glob("simmap_*.png"))
    assert run_probes_for_trial(cfg.model_copy(update={"method": "baseline"}), ["prompts"], trained["baseline"]) == {}
    with pytest.raises(ProbeError, match="unknown probe"):
        run_probes_for_trial(cfg, ["negatoin"])
    header, _, _, baseline = probe_markdown({"dualcoop": flat, "baseline": {"probe_hp_accuracy": 50.0}}).splitlines()
    assert PROBE_COLUMNS["probe_negation_farther_pct"] in header and PROBE_COLUMNS["analysis_pos_neg_cos"] in header
    cells = [c.strip() for c in baseline.strip("|").split("|")]
    assert cells[0] == "baseline" and "50.000" in cells and cells.count("-") == len(cells) - 2


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ablate")
    handlers = add_probe_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return handlers[args.command](args)


def test_cli_commands(cfg, trained, tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    assert cli(["probe", "negation", "--backbone", TINY_VIT, "--classes", str(classes), "--device", "cpu",
                "--out", str(tmp_path / "neg.json")]) == 0
    assert "P-N pairs (negation)" in capsys.readouterr().out and (tmp_path / "neg.json").is_file()
    common = ["--dataset", "synthetic", "--cache-dir", str(cfg.cache_dir), "--backbone", TINY_VIT, "--device", "cpu",
              "--num-workers", "0", "--limit", "6"]
    assert cli(["probe", "presence", *common, "--out", str(tmp_path / "p.json")]) == 0
    assert "ΔmAP" in capsys.readouterr().out
    assert cli(["probe", "hard-positive", *common, "--split", "val", "--out", str(tmp_path / "hp.json")]) == 0
    assert "brittle" in capsys.readouterr().out
    assert cli(["analyze", "--trained", str(trained["seed0"]), "--images", "0", "--out", str(tmp_path / "a")]) == 0
    assert "cos(positive, negative)" in capsys.readouterr().out
    with pytest.raises(ProbeError):
        cli(["probe", "negation", "--classes", str(tmp_path / "nope.txt")])


# ---- OpenAI-format checkpoints -------------------------------------------------------------------

def test_openai_format_checkpoint_loads_with_quickgelu(tmp_path):
    name = TINY_VIT  # NegationCLIP and CoN-CLIP are ViTs
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None, force_quick_gelu=True).eval()
    state = model.state_dict()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    # OpenAI's own checkpoints carry these three ints beside the parameters
    markers = {"input_resolution": torch.tensor(size), "context_length": torch.tensor(77),
               "vocab_size": torch.tensor(49408)}
    torch.save({**state, **markers}, tmp_path / "openai.pt")
    torch.save(state, tmp_path / "plain.pt")

    loaded = create_backbone(name, pretrained=str(tmp_path / "openai.pt"))
    assert loaded.info.quick_gelu
    assert isinstance(loaded.model.transformer.resblocks[0].mlp.gelu, QuickGELU)
    reference = Backbone(model, loaded.info)  # the model the checkpoint was saved from
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    texts = ["a photo of a dog.", "a photo without a dog."]
    torch.testing.assert_close(loaded.dense_features(x), reference.dense_features(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(loaded.encode_text(texts), reference.encode_text(texts), atol=1e-5, rtol=0)

    # Without the markers nothing says "QuickGELU": the same weights give other text features.
    gelu = create_backbone(name, pretrained=str(tmp_path / "plain.pt"))
    assert not gelu.info.quick_gelu
    assert (gelu.encode_text(texts) - reference.encode_text(texts)).abs().max() > 1e-4
