"""Core model tests: aggregation, ASL, metrics, frozen backbone, prompts and methods.

Expected values are computed in the test itself from plain formulas (math / numpy) on small
explicit inputs, never by calling the code under test a second time. Backbones are the tiny
shipped configs (random weights, `pretrained="none"`); RN101 is built once, only to count parameters.
"""

from __future__ import annotations

import json
import math
from functools import cache

import numpy as np
import open_clip
import pytest
import torch
from sklearn.metrics import average_precision_score

from ablate.aggregation import aggregate, aggregate_outputs
from ablate.backbone import CONFIG_DIR, create_backbone
from ablate.data import class_names
from ablate.errors import WeightsError
from ablate.loss import AsymmetricLoss
from ablate.methods import create_method, method_names
from ablate.metrics import multilabel_metrics
from ablate.spec import TrialConfig

TINY_VIT, TINY_RN = "ablate-tiny-vit", "ablate-tiny-rn"
CLASSES = ["cat", "dog", "traffic light"]
N_CTX = 4
ALL_METHODS = method_names()


# ---- helpers --------------------------------------------------------------------------------
@cache
def tiny(name: str):
    """A shared tiny backbone (never mutate it; build a fresh one for that)."""
    torch.manual_seed(0)
    return create_backbone(name, pretrained="none")


def open_clip_text(backbone, texts: list[str]) -> torch.Tensor:
    """Text features straight from open_clip's own tokenizer and encode_text."""
    with torch.no_grad():
        return backbone.model.encode_text(open_clip.get_tokenizer(backbone.info.name)(texts))


def photo_of(template: str = "a photo of a {}.") -> list[str]:
    return [template.format(c) for c in CLASSES]


def images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def make_method(method: str, backbone, classnames=CLASSES, **cfg):
    torch.manual_seed(0)
    config = TrialConfig(method=method, backbone=backbone.info.name, n_ctx=cfg.pop("n_ctx", N_CTX), **cfg)
    return create_method(config, backbone, list(classnames))


def softmax_weighted_sum(weight_logits: list[float], values: list[float]) -> float:
    """sum_i values_i * softmax(weight_logits)_i, in plain Python."""
    top = max(weight_logits)
    e = [math.exp(x - top) for x in weight_logits]
    return sum(v * x / sum(e) for v, x in zip(values, e))


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def assert_close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, atol=atol, rtol=1e-5), (actual, expected)


# ---- 1. aggregation -------------------------------------------------------------------------
DENSE = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]  # three locations, D = 2
POSITIVE = [[3.0, 0.0], [-1.0, 2.0]]  # two classes; norms differ on purpose
NEGATIVE = [[0.0, 2.0], [1.0, 0.0]]


def hand_aggregate(temperature: float, logit_scale: float) -> list[list[float]]:
    """[2, N] (negative row, positive row) from the DualCoOp formula, plain Python."""
    out = [[], []]
    for pos, neg in zip(POSITIVE, NEGATIVE):
        s_pos = [temperature * cosine(loc, pos) for loc in DENSE]
        s_neg = [temperature * cosine(loc, neg) for loc in DENSE]
        out[0].append(logit_scale * softmax_weighted_sum(s_pos, s_neg))  # weights from the positive side
        out[1].append(logit_scale * softmax_weighted_sum(s_pos, s_pos))
    return out


def run_aggregate(**kwargs) -> torch.Tensor:
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return aggregate(t([DENSE]), t(POSITIVE), t(NEGATIVE), **kwargs)


def test_aggregate_default_matches_written_out_values():
    out = run_aggregate()
    assert out.shape == (1, 2, 2)
    # class 0: cos_pos = (1, 0, 1/sqrt2), cos_neg = (0, 1, 1/sqrt2); 20 x cosine, 5 x weighted sum
    assert out[0, 1, 0].item() == pytest.approx(99.91654871009052, abs=1e-9)
    assert out[0, 0, 0].item() == pytest.approx(0.20146894523638492, abs=1e-9)


@pytest.mark.parametrize("temperature, logit_scale", [(20.0, 5.0), (1.0, 1.0), (3.0, 2.5)])
def test_aggregate_matches_hand_formula(temperature, logit_scale):
    out = run_aggregate(temperature=temperature, logit_scale=logit_scale)
    assert_close(out, [hand_aggregate(temperature, logit_scale)], atol=1e-9)


def test_aggregate_negative_side_does_not_set_the_weights():
    # With its own softmax the negative logit of class 0 would be near 5 * 20 (location 2 is a
    # perfect match), but the positive side puts almost all weight on location 1.
    neg = run_aggregate()[0, 0, 0].item()
    s_neg = [20 * cosine(loc, NEGATIVE[0]) for loc in DENSE]
    own = 5 * softmax_weighted_sum(s_neg, s_neg)
    assert own > 90 and neg < 1


def test_aggregate_temperature_and_scale_effects():
    base = run_aggregate(temperature=20.0, logit_scale=5.0)
    assert_close(run_aggregate(temperature=20.0, logit_scale=10.0), 2 * base, atol=1e-9)
    # Temperature changes both the similarity and the softmax sharpness: not a plain rescale.
    other = run_aggregate(temperature=2.0, logit_scale=5.0)
    assert not torch.allclose(other, base / 10)
    assert_close(other, [hand_aggregate(2.0, 5.0)], atol=1e-9)


def test_aggregate_outputs_each_channel_has_its_own_softmax():
    channels = [[1.0, 2.0, 3.0], [3.0, 0.0, -1.0]]  # [C=2][L=3]
    outputs = torch.tensor(channels, dtype=torch.float64).t().unsqueeze(0)  # [1, 3, 2]
    for scale in (5.0, 2.0):
        expected = [[scale * softmax_weighted_sum(c, c) for c in channels]]
        assert_close(aggregate_outputs(outputs, logit_scale=scale), expected, atol=1e-9)


# ---- 2. asymmetric loss ---------------------------------------------------------------------
# [B=2, 2, N=3]: logits[b, 0] negative, logits[b, 1] positive.
NEG_LOGITS = [[0.0, 1.0, -1.0], [2.0, 1.0, 0.0]]
POS_LOGITS = [[1.0, 0.0, 2.0], [-3.0, -1.0, 0.5]]
TARGETS = [[1, 0, 0], [0, 1, -1]]  # (1,0): clipped easy negative; (1,2): unknown


def loss_inputs(targets=TARGETS):
    logits = torch.tensor([[n, p] for n, p in zip(NEG_LOGITS, POS_LOGITS)], dtype=torch.float32)
    return logits.requires_grad_(True), torch.tensor(targets)


def hand_asl(z_by_entry, targets, gamma_neg, gamma_pos=1.0, clip=0.05):
    """Per entry: (loss, d loss / d z) with z = pos - neg, focal weight held constant."""
    out = []
    for z, y in zip(z_by_entry, targets):
        p = sigmoid(z)
        if y == 1:
            w = (1 - p) ** gamma_pos
            out.append((-w * math.log(p), -w * (1 - p)))
        elif y == 0:
            q = min(1 - p + clip, 1.0)
            w = (1 - q) ** gamma_neg
            grad = 0.0 if q >= 1.0 else w * p * (1 - p) / q  # d(-w log q)/dz, dq/dz = -p(1-p)
            out.append((-w * math.log(q), grad))
        else:
            out.append((0.0, 0.0))
    return out


def flat_z():
    return [p - n for row_p, row_n in zip(POS_LOGITS, NEG_LOGITS) for p, n in zip(row_p, row_n)]


def test_asl_softmax_value_and_gradient_match_hand_formula():
    logits, targets = loss_inputs()
    loss = AsymmetricLoss("asl_softmax")(logits, targets)
    entries = hand_asl(flat_z(), sum(TARGETS, []), gamma_neg=2.0)
    known = sum(1 for y in sum(TARGETS, []) if y >= 0)
    assert known == 5
    assert loss.item() == pytest.approx(sum(term for term, _ in entries) / known, rel=1e-5)
    # the easy negative (z = -5) is clipped away entirely
    assert entries[3] == (0.0, 0.0)
    loss.backward()
    dz = torch.tensor([g for _, g in entries], dtype=torch.float32).view(2, 3) / known
    assert_close(logits.grad[:, 1], dz, atol=1e-6)
    assert_close(logits.grad[:, 0], -dz, atol=1e-6)


def test_asl_focal_weight_carries_no_gradient():
    """Autograd on a manual re-computation where only the focal weight is detached."""
    logits, targets = loss_inputs()
    AsymmetricLoss("asl_softmax")(logits, targets).backward()
    x = logits.detach().clone().requires_grad_(True)
    p = x.softmax(dim=1)
    p_pos, p_neg = p[:, 1], (p[:, 0] + 0.05).clamp(max=1.0)
    pos, neg = (targets == 1).float(), (targets == 0).float()
    w_pos, w_neg = (1 - p_pos).detach(), ((1 - p_neg) ** 2).detach()
    manual = -(pos * w_pos * p_pos.log() + neg * w_neg * p_neg.log()).sum() / (pos + neg).sum()
    manual.backward()
    assert_close(logits.grad, x.grad, atol=1e-7)
    # and a focal weight *with* gradient would give something else
    z = x.detach().clone().requires_grad_(True)
    q = z.softmax(dim=1)
    qp, qn = q[:, 1], (q[:, 0] + 0.05).clamp(max=1.0)
    wrong = -(pos * (1 - qp) * qp.log() + neg * (1 - qn) ** 2 * qn.log()).sum() / (pos + neg).sum()
    wrong.backward()
    assert not torch.allclose(z.grad, x.grad, atol=1e-4)


def test_asl_sum_reduction_times_loss_weight():
    logits, targets = loss_inputs()
    total = sum(term for term, _ in hand_asl(flat_z(), sum(TARGETS, []), gamma_neg=2.0))
    loss = AsymmetricLoss("asl_softmax", reduction="sum", loss_weight=3.0)(logits, targets)
    assert loss.item() == pytest.approx(3.0 * total, rel=1e-5)


def test_asl_sigmoid_defaults_to_gamma_neg_4():
    assert AsymmetricLoss("asl_sigmoid").gamma_neg == 4.0
    assert AsymmetricLoss("asl_softmax").gamma_neg == 2.0
    z = torch.tensor([flat_z()[:3], flat_z()[3:]], requires_grad=True)  # single-logit head [B, N]
    _, targets = loss_inputs()
    loss = AsymmetricLoss("asl_sigmoid")(z, targets)
    entries = hand_asl(flat_z(), sum(TARGETS, []), gamma_neg=4.0)
    assert loss.item() == pytest.approx(sum(term for term, _ in entries) / 5, rel=1e-5)
    loss.backward()
    assert_close(z.grad, torch.tensor([g for _, g in entries]).view(2, 3) / 5, atol=1e-6)
    # a [B, 2, N] head scores z = pos - neg, the same value
    logits, _ = loss_inputs()
    assert AsymmetricLoss("asl_sigmoid")(logits, targets).item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("variant", ["asl_softmax", "asl_sigmoid"])
def test_asl_unknown_labels_contribute_nothing(variant):
    logits, targets = loss_inputs()
    criterion = AsymmetricLoss(variant)
    loss = criterion(logits, targets)
    loss.backward()
    unknown = targets == -1
    assert torch.equal(logits.grad[:, 0][unknown], torch.zeros(1))
    assert torch.equal(logits.grad[:, 1][unknown], torch.zeros(1))
    # wild values at the unknown entry change neither the loss nor the other gradients
    for value in (1e4, -1e4, 0.3):
        other = logits.detach().clone()
        other[1, 1, 2] = value
        other[1, 0, 2] = -value
        other.requires_grad_(True)
        again = criterion(other, targets)
        again.backward()
        assert again.item() == pytest.approx(loss.item(), rel=1e-6)
        assert torch.equal(other.grad, logits.grad)


@pytest.mark.parametrize("variant", ["asl_softmax", "asl_sigmoid"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_asl_all_unknown_batch_is_zero_without_nan(variant, reduction):
    logits, _ = loss_inputs()
    loss = AsymmetricLoss(variant, reduction=reduction)(logits, torch.full((2, 3), -1))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(logits.grad).all() and torch.equal(logits.grad, torch.zeros_like(logits))


# ---- 3. metrics -----------------------------------------------------------------------------
def test_map_equals_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    scores = rng.random((50, 6))
    targets = (rng.random((50, 6)) < 0.3).astype(int)
    targets[0] = 1  # every class has a positive
    expected = 100 * np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(6)])
    result = multilabel_metrics(scores, targets)
    assert result["mAP"] == pytest.approx(expected, abs=1e-9)
    assert result["classes_scored"] == 6 and result["classes_without_positives"] == 0


def test_map_tiny_hand_example():
    scores = np.array([[0.9, 0.1], [0.8, 0.4], [0.7, 0.35], [0.6, 0.8]])
    targets = np.array([[1, 1], [0, 0], [1, 0], [0, 1]])
    # class 0: ranks 1 (pos, P=1), 3 (pos, P=2/3); class 1: ranks 1 (pos, P=1), 4 (pos, P=2/4)
    result = multilabel_metrics(scores, targets)
    assert result["per_class_ap"] == pytest.approx([100 * (1 + 2 / 3) / 2, 100 * (1 + 0.5) / 2])
    assert result["mAP"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 0.75) / 2)


def test_map_excludes_and_counts_classes_without_positives():
    scores = np.array([[0.9, 0.1, 0.5, 0.2], [0.8, 0.4, 0.6, 0.9], [0.7, 0.35, 0.3, 0.1], [0.6, 0.8, 0.2, 0.4]])
    targets = np.array([[1, 1, 0, -1], [0, 0, 0, -1], [1, 0, 0, -1], [0, 1, 0, -1]])
    result = multilabel_metrics(scores, targets)
    assert result["classes_scored"] == 2 and result["classes_without_positives"] == 2
    assert result["per_class_ap"][2:] == [None, None]
    assert result["mAP"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 0.75) / 2)


def test_unknown_entries_are_left_out():
    scores = np.array([[0.9], [0.8], [0.7], [0.6]])
    # without the unknown first row: ranks 1 (pos, P=1), 3 (pos, P=2/3); as a negative it would be 50
    result = multilabel_metrics(scores, np.array([[-1], [1], [0], [1]]))
    assert result["mAP"] == pytest.approx(100 * (1 + 2 / 3) / 2)

    rng = np.random.default_rng(1)
    scores = rng.random((40, 5))
    targets = (rng.random((40, 5)) < 0.4).astype(int)
    targets[:2] = 1
    targets[rng.random((40, 5)) < 0.3] = -1
    base = multilabel_metrics(scores, targets)
    changed = scores.copy()
    changed[targets == -1] = rng.random(int((targets == -1).sum()))
    changed[(targets == -1) & (rng.random((40, 5)) < 0.5)] = 0.99  # would be false positives
    assert multilabel_metrics(changed, targets) == base


def test_threshold_metrics_hand_example():
    scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.3, 0.8]])
    targets = np.array([[1, 0], [0, 1], [1, 0]])
    # predictions at 0.5: [[1, 0], [1, 1], [0, 1]]
    # class 0: TP 1, FP 1, FN 1 -> P 1/2, R 1/2; class 1: TP 1, FP 1, FN 0 -> P 1/2, R 1
    # overall: TP 2, FP 2, FN 1 -> P 1/2, R 2/3
    cp, cr, op, orr = 0.5, 0.75, 0.5, 2 / 3
    result = multilabel_metrics(scores, targets)
    expected = {
        "CP": cp, "CR": cr, "CF1": 2 * cp * cr / (cp + cr),
        "OP": op, "OR": orr, "OF1": 2 * op * orr / (op + orr),
    }
    for key, value in expected.items():
        assert result[key] == pytest.approx(100 * value), key


# ---- 4. backbone ----------------------------------------------------------------------------
def config(name: str) -> dict:
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


@pytest.mark.parametrize(
    "name, size, tokens",
    [(TINY_VIT, 64, 8 * 8 + 1), (TINY_VIT, 96, 12 * 12 + 1), (TINY_RN, 64, 2 * 2 + 1), (TINY_RN, 128, 4 * 4 + 1)],
)
def test_dense_feature_shapes(name, size, tokens):
    backbone = tiny(name)
    assert backbone.info.embed_dim == config(name)["embed_dim"]
    assert backbone.info.text_width == config(name)["text_cfg"]["width"]
    dense = backbone.dense_features(images(size))
    assert dense.shape == (2, tokens, backbone.info.embed_dim)
    assert torch.isfinite(dense).all() and not dense.requires_grad


def test_vit_class_token_equals_encode_image():
    backbone = tiny(TINY_VIT)
    x = images(backbone.info.image_size)
    with torch.no_grad():
        expected = backbone.model.encode_image(x)
    assert_close(backbone.dense_features(x)[:, 0], expected, atol=1e-5)


def test_resnet_dense_tokens_are_the_attention_pool_values():
    """With the query projection zeroed the pool attends uniformly, so its output is the mean token."""
    backbone = create_backbone(TINY_RN, pretrained="none")
    with torch.no_grad():
        backbone.visual.attnpool.q_proj.weight.zero_()
        backbone.visual.attnpool.q_proj.bias.zero_()
        x = images(backbone.info.image_size)
        expected = backbone.model.encode_image(x)
    dense = backbone.dense_features(x)
    assert dense.shape[1] == (backbone.info.image_size // 32) ** 2 + 1
    assert_close(dense.mean(dim=1), expected, atol=1e-5)


@pytest.mark.parametrize("name", [TINY_VIT, TINY_RN])
def test_backbone_is_frozen_and_stays_in_eval(name):
    backbone = create_backbone(name, pretrained="none")
    assert all(not p.requires_grad for p in backbone.parameters())
    assert backbone.train() is backbone
    backbone.train(True)
    assert not backbone.training and all(not m.training for m in backbone.modules())


PROMPTS = ["a", "a photo of a dog.", "there is no traffic light, fire hydrant or stop sign in this photo at all."]


def test_eot_truncation_changes_nothing():
    backbone = tiny(TINY_RN)
    tokens = open_clip.get_tokenizer(TINY_RN)(PROMPTS)
    eot = tokens.argmax(dim=-1)
    assert len(set(eot.tolist())) == len(PROMPTS)  # varying lengths
    with torch.no_grad():
        emb = backbone.model.token_embedding(tokens)
        short = backbone.encode_embeddings(emb, eot, truncate=True)
        full = backbone.encode_embeddings(emb, eot, truncate=False)
    assert short.shape == (len(PROMPTS), backbone.info.embed_dim)
    assert_close(short, full, atol=1e-5)


def test_encode_text_equals_open_clip():
    backbone = tiny(TINY_RN)
    assert_close(backbone.encode_text(PROMPTS), open_clip_text(backbone, PROMPTS), atol=1e-5)


@pytest.mark.parametrize("name, wrap", [(TINY_VIT, None), (TINY_RN, "state_dict"), (TINY_VIT, "state_dict")])
def test_local_checkpoint_gives_identical_features(tmp_path, name, wrap):
    source = create_backbone(name, pretrained="none")
    state = source.model.state_dict()
    path = tmp_path / "weights.pt"
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    loaded = create_backbone(name, pretrained=str(path))
    assert loaded.info.quick_gelu is False
    x = images(source.info.image_size)
    assert torch.equal(loaded.dense_features(x), source.dense_features(x))
    assert_close(loaded.encode_text(PROMPTS[:2]), source.encode_text(PROMPTS[:2]), atol=1e-6)


def test_openai_format_checkpoint_uses_quick_gelu(tmp_path):
    source = create_backbone(TINY_VIT, pretrained="none")
    state = dict(source.model.state_dict())
    state |= {
        "input_resolution": torch.tensor(64),
        "context_length": torch.tensor(77),
        "vocab_size": torch.tensor(49408),
    }
    path = tmp_path / "openai.pt"
    torch.save(state, path)
    loaded = create_backbone(TINY_VIT, pretrained=str(path))
    assert loaded.info.quick_gelu is True
    assert any(isinstance(m, open_clip.transformer.QuickGELU) for m in loaded.model.modules())
    for key, value in source.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_backbone_errors_are_helpful(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(WeightsError, match="not found") as err:
        create_backbone(TINY_RN, pretrained=str(missing))
    assert str(missing) in str(err.value)
    with pytest.raises(WeightsError, match="unknown backbone 'no-such-net'") as err:
        create_backbone("no-such-net", pretrained="none")
    assert TINY_RN in str(err.value)


# ---- 5. prompts and methods -----------------------------------------------------------------
def expected_params(method: str, n: int, n_ctx: int, d: int, w: int, csc=True, offset=False) -> int:
    ctx = (n if csc else 1) * n_ctx * w
    one_prompt = ctx + (n * d if offset else 0)
    return {
        "dualcoop": 2 * ctx,
        "positivecoop": one_prompt + n * d,
        "negativecoop": one_prompt + n * d,
        "dualembed": 2 * n * d,
        "baseline": (d + 1) * 2 * n,
        "zeroshot": 0,
    }[method]


EXPECTED_TRAINABLE = {
    "dualcoop": {"positive.prompts.ctx", "negative.prompts.ctx"},
    "positivecoop": {"positive.prompts.ctx", "negative.embedding"},
    "negativecoop": {"positive.embedding", "negative.prompts.ctx"},
    "dualembed": {"positive.embedding", "negative.embedding"},
    "baseline": {"linear.weight", "linear.bias"},
    "zeroshot": set(),
}


@pytest.mark.parametrize(
    "method, options",
    [(m, {}) for m in ALL_METHODS]
    + [("dualcoop", {"csc": False}), ("positivecoop", {"prompt_offset": "normal"}),
       ("negativecoop", {"prompt_offset": "zeros"}), ("positivecoop", {"csc": False}),
       ("dualcoop", {"prompt_offset": "normal"})],
)
def test_trainable_params_match_formula(method, options):
    backbone = tiny(TINY_RN)
    info = backbone.info
    m = make_method(method, backbone, **options)
    expected = expected_params(
        method, len(CLASSES), N_CTX, info.embed_dim, info.text_width,
        csc=options.get("csc", True),
        offset=options.get("prompt_offset", "none") != "none" and method in ("positivecoop", "negativecoop"),
    )
    assert m.trainable_params() == expected


@pytest.mark.parametrize("method", ALL_METHODS + ["positivecoop+offset", "negativecoop+offset"])
def test_forward_shape_and_gradients_reach_only_intended_params(method):
    offset = method.endswith("+offset")
    name = method.removesuffix("+offset")
    backbone = tiny(TINY_RN)
    m = make_method(name, backbone, prompt_offset="normal" if offset else "none")
    dense = backbone.dense_features(images(64))
    logits = m(dense)
    assert logits.shape == (2, 2, len(CLASSES))
    prompt_side = "positive" if name == "positivecoop" else "negative"
    expected = EXPECTED_TRAINABLE[name] | ({f"{prompt_side}.offset"} if offset else set())
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == expected
    if expected:
        (logits * torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        for n, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, n
    else:
        assert not logits.requires_grad
    assert all(p.grad is None for p in backbone.parameters())


@pytest.mark.parametrize("method", ALL_METHODS)
def test_precomputed_class_embeddings_give_same_logits(method):
    backbone = tiny(TINY_RN)
    m = make_method(method, backbone)
    dense = backbone.dense_features(images(64))
    with torch.no_grad():
        assert_close(m(dense, m.class_embeddings()), m(dense), atol=1e-6)


@pytest.mark.parametrize("csc", [True, False])
def test_ctx_init_phrase_fills_the_last_slots(csc):
    backbone = tiny(TINY_RN)
    m = make_method("dualcoop", backbone, n_ctx=6, csc=csc, ctx_init="a photo of a")
    tokens = open_clip.get_tokenizer(TINY_RN)(["a photo of a"])
    words = backbone.model.token_embedding.weight[tokens[0, 1:5]]  # 4 BPE tokens between SOT and EOT
    for side in (m.positive, m.negative):
        ctx = side.prompts.ctx.detach()
        tail = ctx[:, 2:] if csc else ctx[2:]
        assert torch.equal(tail, words.expand_as(tail))


def test_prompt_with_phrase_context_equals_the_written_prompt():
    """n_ctx = phrase length: the learned prompt is exactly 'a photo of a {class}.' through open_clip."""
    backbone = tiny(TINY_RN)
    m = make_method("dualcoop", backbone, n_ctx=4, ctx_init="a photo of a")
    tokens = open_clip.get_tokenizer(TINY_RN)(photo_of())
    with torch.no_grad():
        assert torch.equal(m.positive.prompts(), backbone.model.token_embedding(tokens))
        assert_close(m.positive(), open_clip_text(backbone, photo_of()), atol=1e-5)


def reference_logits(dense, positive, negative, temperature=20.0, logit_scale=5.0):
    """DualCoOp head written out with explicit sums: [B, L, D], [N, D] x 2 -> [B, 2, N]."""
    unit = lambda x: x / x.pow(2).sum(-1, keepdim=True).sqrt()  # noqa: E731
    s_pos = temperature * torch.einsum("bld,nd->bln", unit(dense), unit(positive))
    s_neg = temperature * torch.einsum("bld,nd->bln", unit(dense), unit(negative))
    e = torch.exp(s_pos - s_pos.max(dim=1, keepdim=True).values)
    w = e / e.sum(dim=1, keepdim=True)
    return logit_scale * torch.stack([(s_neg * w).sum(1), (s_pos * w).sum(1)], dim=1)


@pytest.mark.parametrize("method", ["dualcoop", "positivecoop", "negativecoop", "dualembed"])
def test_two_sided_logits_put_negative_first_and_use_the_right_sides(method):
    backbone = tiny(TINY_RN)
    m = make_method(method, backbone, n_ctx=4, ctx_init="a photo of a", temperature=7.0, logit_scale=3.0)
    dense = backbone.dense_features(images(64))
    text = open_clip_text(backbone, photo_of())
    with torch.no_grad():
        positive, negative = m.class_embeddings()
        assert_close(m(dense), reference_logits(dense, positive, negative, 7.0, 3.0), atol=1e-4)
    sides = {"dualcoop": ("prompt", "prompt"), "positivecoop": ("prompt", "free"),
             "negativecoop": ("free", "prompt"), "dualembed": ("free", "free")}[method]
    for kind, module, embedding in zip(sides, (m.positive, m.negative), (positive, negative)):
        if kind == "prompt":
            assert_close(embedding, text, atol=1e-5)  # the prompt goes through the text encoder
        else:
            assert torch.equal(embedding, module.embedding.detach())


def test_zeroshot_uses_positive_and_negated_hand_prompts():
    backbone = tiny(TINY_RN)
    m = make_method("zeroshot", backbone)
    dense = backbone.dense_features(images(64))
    pos, neg = open_clip_text(backbone, photo_of()), open_clip_text(backbone, photo_of("a photo without a {}."))
    with torch.no_grad():
        assert_close(m(dense), reference_logits(dense, pos, neg), atol=1e-4)


def test_baseline_head_negatives_first_each_output_own_softmax():
    backbone = tiny(TINY_RN)
    m = make_method("baseline", backbone, classnames=["cat", "dog"])
    d = backbone.info.embed_dim
    with torch.no_grad():
        m.linear.weight.zero_()
        m.linear.weight[:, :4] = torch.eye(4)  # output k reads feature k: [neg cat, neg dog, pos cat, pos dog]
        m.linear.bias.copy_(torch.tensor([0.0, 0.5, -1.0, 2.0]))
    features = [[1.0, 2.0, 3.0], [0.0, 1.0, -1.0], [2.0, -2.0, 0.5], [0.3, 0.1, 0.2]]  # [4 features][L=3]
    dense = torch.zeros(1, 3, d)
    dense[0, :, :4] = torch.tensor(features).t()
    bias = [0.0, 0.5, -1.0, 2.0]
    agg = [5 * softmax_weighted_sum([v + b for v in f], [v + b for v in f]) for f, b in zip(features, bias)]
    with torch.no_grad():
        assert_close(m(dense), [[agg[:2], agg[2:]]], atol=1e-5)


@pytest.fixture(scope="module")
def rn101():
    return create_backbone("RN101", pretrained="none")


@pytest.mark.parametrize(
    "dataset, method, options, count",
    [
        ("coco2014", "dualcoop", {}, 1_310_720),
        ("coco2014", "baseline", {}, 82_080),
        ("coco2014", "positivecoop", {}, 696_320),
        ("coco2014", "positivecoop", {"prompt_offset": "normal"}, 737_280),
        ("voc2007", "positivecoop", {}, 174_080),
        ("voc2007", "positivecoop", {"prompt_offset": "normal"}, 184_320),
        ("voc2007", "dualcoop", {}, 327_680),
        ("voc2007", "baseline", {}, 20_520),
    ],
)
def test_rn101_parameter_counts(rn101, dataset, method, options, count):
    names = class_names(dataset)
    assert len(names) == {"coco2014": 80, "voc2007": 20}[dataset]
    m = make_method(method, rn101, classnames=names, n_ctx=16, **options)
    assert m.trainable_params() == count


@pytest.mark.parametrize("name", [TINY_VIT, "rn101"])
def test_shared_context_prompts_encode_their_prefix_once_with_the_same_result(name, request):
    """csc: false sends the start token + shared context through the text tower once; every class's
    features and the context's gradient equal those of the full per-class prompts."""
    backbone = request.getfixturevalue("rn101") if name == "rn101" else tiny(name)
    assert backbone.shares_prefixes()
    side = make_method("positivecoop", backbone, classnames=class_names("coco2014"), n_ctx=8, csc=False).positive
    prompts = side.prompts
    assert len(set(prompts.eot.tolist())) > 1  # class names of different lengths
    with torch.no_grad():
        prompts.ctx.normal_()
    full = backbone.encode_embeddings(prompts(), prompts.eot)
    (full_grad,) = torch.autograd.grad(full.square().sum(), prompts.ctx)
    shared = side()
    (shared_grad,) = torch.autograd.grad(shared.square().sum(), prompts.ctx)
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared_grad, full_grad, atol=1e-5 * float(full_grad.abs().max()), rtol=1e-4)
    with pytest.raises(ValueError, match="share no prefix"):
        make_method("positivecoop", backbone, classnames=CLASSES, n_ctx=4).positive.prompts.shared_and_own()
