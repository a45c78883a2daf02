"""The reference recipe, point by point, each checked against the formulas it is described by (not
against the reference's code): RN101 from the `openai` tag at 448, the summed x weighted ASL, the
prompt-side offset, the schedule, per-method overrides, COCO's empty images, the reference
augmentation, selection on test, CF1; and the shipped paper specs load and build."""

from __future__ import annotations

import functools
import http.server
import json
import math
import shlex
import threading
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sweep_helpers import sweep_store

from ablate.arm import build_optimizer, set_lr
from ablate.cli import build_parser, resolve_config
from ablate.data import load_splits
from ablate.data.classnames import class_names
from ablate.data.transforms import REFERENCE_OPS, Cutout, ReferenceRandAugment, build_transform
from ablate.factory import backbone_from_config
from ablate.loss import AsymmetricLoss
from ablate.methods import FREE, LINEAR, create_method
from ablate.metrics import threshold_metrics
from ablate.prompts import PROMPT
from ablate.report import TEST_SELECTED, write_report
from ablate.spec import ConfigError, TrialConfig
from ablate.sweep import expand
from ablate.sweep.spec import SweepSpec, load_sweep_spec
from ablate.tracking import TrialRun
from ablate.trainer import Trial, run_trial

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


# ---- RN101 from the `openai` tag at 448 px ----------------------------------------------------------

@pytest.fixture(scope="module")
def openai_rn101(tmp_path_factory):
    """OpenAI's RN101 file as open_clip's `openai` tag names it (same keys, shapes, fp16, the three
    extra entries OpenAI's files carry), random values, served over HTTP on 127.0.0.1; the tag's
    download address points at it while the tests of this module run."""
    folder = tmp_path_factory.mktemp("openai_weights")
    torch.manual_seed(0)
    state = {k: v.half() for k, v in open_clip.create_model("RN101", pretrained=None).state_dict().items()}
    state.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    torch.save(state, folder / "RN101.pt")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cfg = open_clip.get_pretrained_cfg("RN101", "openai")
    saved = dict(cfg)
    cfg.update(url=f"http://127.0.0.1:{server.server_address[1]}/RN101.pt", hf_hub="")
    yield state, tmp_path_factory.mktemp("weights_dir")
    cfg.clear()
    cfg.update(saved)
    server.shutdown()


@pytest.fixture(scope="module")
def backbones(openai_rn101):
    """One backbone per distinct (name, weights, size, activation): every check below shares them."""
    weights_dir = openai_rn101[1]

    @functools.cache
    def build(name: str, pretrained: str, image_size: int | None, quick_gelu: bool | None):
        cfg = TrialConfig(backbone=name, pretrained=pretrained, image_size=image_size, quick_gelu=quick_gelu,
                          weights_dir=weights_dir, device="cpu")
        return backbone_from_config(cfg)

    return lambda cfg: build(cfg.backbone, cfg.pretrained, cfg.image_size, cfg.quick_gelu)


def _bicubic_grid(pos: torch.Tensor, side: int) -> torch.Tensor:
    """The formula: the mean/class token kept, the square grid resized bicubically (no corner alignment)."""
    old = int(math.isqrt(pos.shape[0] - 1))
    grid = pos[1:].float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1].float(), grid.permute(0, 2, 3, 1).reshape(side * side, -1)])


def test_rn101_openai_tag_loads_at_448_with_a_resized_attention_pool(openai_rn101, backbones):
    state, weights_dir = openai_rn101
    cfg = TrialConfig(backbone="RN101", pretrained="openai", image_size=448)
    backbone = backbones(cfg)
    assert (weights_dir / "RN101.pt").is_file()  # downloaded through open_clip's own downloader
    assert backbone.info.image_size == 448 and backbone.info.quick_gelu
    pos = backbone.visual.attnpool.positional_embedding
    assert pos.shape == (197, 2048)
    torch.testing.assert_close(pos, _bicubic_grid(state["visual.attnpool.positional_embedding"], 14))
    # every other tensor is the file's
    model_state = backbone.model.state_dict()
    for key in ("visual.layer4.2.conv3.weight", "token_embedding.weight", "text_projection"):
        torch.testing.assert_close(model_state[key], state[key].float())
    dense = backbone.dense_features(torch.randn(2, 3, 448, 448))
    assert dense.shape == (2, 197, 512)


README_EXAMPLE = "ablate train --method positivecoop --dataset coco2014"


def _readme_train_command() -> list[str]:
    """The README's first training example (a backslash-continued command), as argv."""
    text = (ROOT / "README.md").read_text()
    start = text.index(README_EXAMPLE)
    lines = []
    for line in text[start:].splitlines():
        lines.append(line.rstrip("\\").strip())
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(" ".join(lines))[1:]


def test_readme_training_example_loads(backbones):
    argv = _readme_train_command()
    assert argv[0] == "train"
    cfg = resolve_config(build_parser()[0].parse_args(argv))
    assert (cfg.backbone, cfg.pretrained, cfg.image_size) == ("RN101", "openai", 448)
    backbone = backbones(cfg)
    method = create_method(cfg, backbone, class_names(cfg.dataset))
    logits = method(backbone.dense_features(torch.randn(1, 3, 448, 448)))
    assert logits.shape == (1, 2, 80)


# seed 000's parameter counts, from the formulas (N classes, d = 512, n_ctx = 16, class-specific):
# DualCoOp 2*N*16*d; PositiveCoOp / NegativeCoOp N*16*d + N*d (free side) + N*d (prompt-side offset);
# baseline (d + 1) * 2N
PAPER_COUNTS = {("dualcoop", 80): 1_310_720, ("positivecoop", 80): 737_280, ("negativecoop", 80): 737_280,
                ("baseline", 80): 82_080, ("dualcoop", 20): 327_680, ("positivecoop", 20): 184_320,
                ("negativecoop", 20): 184_320, ("baseline", 20): 20_520}


@pytest.mark.parametrize("spec_name", ["paper_reproduction", "full_grid"])
def test_paper_specs_load_every_arm(spec_name, backbones):
    """Every distinct backbone and model an arm of the spec builds, built as the trial would."""
    spec = load_sweep_spec(ROOT / "tune_specs" / f"{spec_name}.yaml")
    arms = expand(spec)
    dense = {}
    models = {}
    for arm in arms:
        cfg = arm.config
        key = (cfg.method, cfg.dataset, cfg.n_ctx, cfg.csc, cfg.prompt_offset)
        models.setdefault(key, cfg)
    for cfg in models.values():
        backbone = backbones(cfg)
        if backbone.info.image_size not in dense:
            dense[backbone.info.image_size] = backbone.dense_features(torch.randn(1, 3, 448, 448))
        torch.manual_seed(cfg.seed)
        method = create_method(cfg, backbone, class_names(cfg.dataset))
        assert method(dense[448]).shape == (1, 2, len(class_names(cfg.dataset)))
        if spec_name == "paper_reproduction":
            assert method.trainable_params() == PAPER_COUNTS[(cfg.method, method.n_classes)], cfg.method
            optimizer = build_optimizer(method, cfg)  # every parameter in a group of its declared kind
            assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == method.trainable_params()


# ---- loss: summed over known labels, times the weight -----------------------------------------------

def test_summed_weighted_asl_and_its_gradient_by_hand():
    logits = torch.tensor([[[0.3, -1.2, 2.0], [1.1, 0.4, -0.5]],
                           [[-0.7, 0.9, 0.1], [0.2, 2.5, 0.0]]], requires_grad=True)  # [B=2, (neg, pos), N=3]
    targets = torch.tensor([[1, 0, -1], [0, 1, 1]])
    w, clip, eps, g_neg, g_pos = 0.03, 0.05, 1e-6, 2.0, 1.0
    loss = AsymmetricLoss("asl_softmax", gamma_neg=g_neg, gamma_pos=g_pos, clip=clip, eps=eps, reduction="sum",
                          loss_weight=w)(logits, targets)
    loss.backward()
    # by hand: p_pos = sigmoid(pos - neg); positives -(1-p)^g+ log p; negatives with p_n' = min(1-p + clip, 1)
    x = logits.detach().numpy()
    expected, grad = 0.0, np.zeros_like(x)
    for b in range(2):
        for c in range(3):
            y = int(targets[b, c])
            if y < 0:
                continue
            p = 1 / (1 + math.exp(-(x[b, 1, c] - x[b, 0, c])))
            if y == 1:
                focal = (1 - p) ** g_pos
                expected += -focal * math.log(p)
                d_pos = -focal * (1 - p)  # d/d pos of -focal*log p (focal held constant)
            else:
                q = min(1 - p + clip, 1.0)
                focal = (1 - q) ** g_neg
                expected += -focal * math.log(q)
                d_pos = focal * p * (1 - p) / q if 1 - p + clip < 1 else 0.0  # dq/dpos = -p(1-p)
            grad[b, 1, c], grad[b, 0, c] = w * d_pos, -w * d_pos
    assert loss.item() == pytest.approx(w * expected, rel=1e-6)
    np.testing.assert_allclose(logits.grad.numpy(), grad, rtol=1e-5, atol=1e-9)


# ---- the prompt-side offset ---------------------------------------------------------------------------

def test_prompt_offset_starts_standard_normal_and_trains_at_the_free_rate():
    from ablate.backbone import create_backbone

    backbone = create_backbone("ablate-tiny-rn", "none")
    names = [f"thing {i}" for i in range(40)]
    cfg = TrialConfig(method="positivecoop", backbone="ablate-tiny-rn", prompt_offset="normal", lr=0.5,
                      prompt_lr_mult=0.01, free_lr_mult=1.0, warmup_epochs=1, warmup_lr=0.005,
                      warmup_rule="same_for_all", epochs=4)
    torch.manual_seed(3)
    method = create_method(cfg, backbone, names)
    offset = method.positive.offset
    assert offset.shape == (40, backbone.info.embed_dim)
    values = offset.detach().flatten().numpy()
    n = values.size  # mean ~ N(0, 1/n), std within a few 1/sqrt(2n) of 1
    assert abs(values.mean()) < 4 / math.sqrt(n) and abs(values.std() - 1) < 4 / math.sqrt(2 * n)
    optimizer = build_optimizer(method, cfg)
    kind_of = {id(p): g["kind"] for g in optimizer.param_groups for p in g["params"]}
    assert kind_of[id(offset)] == FREE and kind_of[id(method.negative.embedding)] == FREE
    assert kind_of[id(method.positive.prompts.ctx)] == PROMPT
    lrs = {}
    for epoch in (0, 1):
        set_lr(optimizer, epoch, cfg)
        lrs[epoch] = {g["kind"]: g["lr"] for g in optimizer.param_groups}
    assert lrs[0] == {PROMPT: 0.005, FREE: 0.005}  # warm-up: every group alike
    assert lrs[1] == {PROMPT: pytest.approx(0.005), FREE: pytest.approx(0.5)}
    assert create_method(cfg.model_copy(update={"prompt_offset": "none"}), backbone, names).positive.offset is None
    # DualCoOp has no free side, so no offset
    dual = create_method(cfg.model_copy(update={"method": "dualcoop"}), backbone, names)
    assert dual.positive.offset is None and dual.negative.offset is None


def test_a_parameter_without_a_declared_kind_is_refused():
    from ablate.backbone import create_backbone

    method = create_method(TrialConfig(method="baseline"), create_backbone("ablate-tiny-rn", "none"), ["a", "b"])
    method.extra = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(TypeError, match="declares no parameter kind"):
        method.param_groups()


# ---- the schedule ---------------------------------------------------------------------------------------

def _reference_lrs(group_lrs: list[float], warmup_lr: float, epochs: int) -> list[list[float]]:
    """As described: epoch 0 at the constant warm-up lr for every group; then torch's CosineAnnealingLR
    with T_max = all epochs, created at the start and stepped once per epoch after the warm-up epoch."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in group_lrs]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, group_lrs)], lr=group_lrs[0])
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    out = [[warmup_lr] * len(group_lrs)]
    for _ in range(1, epochs):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        cosine.step()
    return out


@pytest.mark.parametrize("method, overrides, mults", [
    ("dualcoop", {"lr": 0.002, "warmup_lr": 1e-5}, {PROMPT: 1.0}),
    ("positivecoop", {"lr": 0.5, "prompt_lr_mult": 0.01, "free_lr_mult": 1.0, "warmup_lr": 5e-3},
     {PROMPT: 0.01, FREE: 1.0}),
    ("baseline", {"lr": 0.5, "linear_lr_mult": 0.01, "warmup_lr": 5e-3}, {LINEAR: 0.01}),
])
def test_schedule_equals_the_reference_at_every_epoch(method, overrides, mults):
    from ablate.backbone import create_backbone

    cfg = TrialConfig(method=method, backbone="ablate-tiny-rn", epochs=50, warmup_epochs=1,
                      warmup_rule="same_for_all", cosine_span="all_epochs", **overrides)
    optimizer = build_optimizer(create_method(cfg, create_backbone("ablate-tiny-rn", "none"), ["a", "b"]), cfg)
    kinds = [g["kind"] for g in optimizer.param_groups]
    assert set(kinds) == set(mults)
    reference = _reference_lrs([cfg.lr * mults[k] for k in kinds], cfg.warmup_lr, 50)
    for epoch in range(50):
        set_lr(optimizer, epoch, cfg)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(reference[epoch], rel=1e-9, abs=1e-15), epoch
    assert reference[-1][0] > 0  # T_max = all epochs: the last epoch is not at 0


def test_default_schedule_spans_the_epochs_after_warmup_and_scales_warmup():
    from ablate.arm import lr_at

    cfg = TrialConfig(epochs=11, warmup_epochs=1, lr=0.1, warmup_lr=1e-3)
    assert lr_at(0, cfg) == 1e-3 and lr_at(1, cfg) == pytest.approx(0.1)
    assert lr_at(10, cfg) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 9 / 10)))


# ---- per-method overrides -------------------------------------------------------------------------------

def test_per_method_overrides_reach_the_trials_after_per_dataset_before_the_grid():
    spec = SweepSpec(name="pm", base={"dataset": "synthetic", "lr": 0.01},
                     per_dataset={"synthetic": {"lr": 0.02, "weight_decay": 0.001}},
                     per_method={"positivecoop": {"lr": 0.5, "prompt_lr_mult": 0.01, "prompt_offset": "normal"},
                                 "baseline": {"linear_lr_mult": 0.01, "epochs": 3}},
                     grid={"method": ["dualcoop", "positivecoop", "baseline"], "epochs": [2]})
    configs = {a.config.method: a.config for a in expand(spec)}
    assert configs["dualcoop"].lr == 0.02 and configs["dualcoop"].prompt_lr_mult == 1.0
    assert configs["positivecoop"].lr == 0.5 and configs["positivecoop"].prompt_offset == "normal"
    assert configs["positivecoop"].weight_decay == 0.001  # from per_dataset, untouched by per_method
    assert configs["baseline"].linear_lr_mult == 0.01 and configs["baseline"].epochs == 2  # the grid wins


def test_per_method_errors_name_the_field():
    with pytest.raises(ValueError, match=r"per_method\.positivecoop\.lrr: not a TrialConfig field"):
        SweepSpec(name="x", per_method={"positivecoop": {"lrr": 1}})
    with pytest.raises(ValueError, match=r"per_method\.baseline\.lr = -1"):
        SweepSpec(name="x", per_method={"baseline": {"lr": -1}})
    with pytest.raises(ValueError, match="per_method"):
        SweepSpec(name="x", per_method={"maple": {"lr": 1}})


# ---- COCO images without annotations --------------------------------------------------------------------

def _coco2014_tree(root: Path, empty: dict[str, int]) -> None:
    """80 categories (non-contiguous ids); 12 annotated images per split plus `empty[split]` without any."""
    cats = [{"id": i + 1 + i // 10, "name": name} for i, name in enumerate(class_names("coco2014"))]
    rng = np.random.default_rng(0)
    for split, folder in (("train", "train2014"), ("test", "val2014")):
        (root / folder).mkdir(parents=True)
        images, anns = [], []
        for i in range(12 + empty[split]):
            images.append({"id": 100 + i, "file_name": f"{folder}_{i}.jpg", "width": 8, "height": 8})
            Image.new("RGB", (8, 8), (i * 7 % 255, 30, 60)).save(root / folder / f"{folder}_{i}.jpg")
            if i < 12:
                for c in rng.choice(len(cats), size=3, replace=False):
                    anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cats[c]["id"],
                                 "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0})
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{folder}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))


def test_coco_images_without_annotations_are_dropped_by_default_and_counted(tmp_path, capsys):
    _coco2014_tree(tmp_path / "coco", {"train": 3, "test": 2})
    cfg = TrialConfig(dataset="coco2014", data_root=tmp_path / "coco", cache_dir=tmp_path / "cache")
    splits = load_splits(cfg)
    assert len(splits["train"]) + len(splits["val"]) == 12 and len(splits["test"]) == 12
    assert splits["train"].dropped_empty == 3 and splits["test"].dropped_empty == 2
    assert (splits["test"].labels.sum(axis=1) > 0).all()
    err = capsys.readouterr().err
    assert "coco2014 train: dropped 3 of 15 images without any annotation" in err
    assert "coco2014 test: dropped 2 of 14 images" in err
    kept = load_splits(cfg.model_copy(update={"dataset_options": {"coco_empty_images": "keep"}}))
    assert len(kept["train"]) + len(kept["val"]) == 15 and len(kept["test"]) == 14


# ---- the reference augmentation --------------------------------------------------------------------------

def _chi_square_ok(counts: np.ndarray, probs: np.ndarray) -> bool:
    """Pearson's test at the 0.1 % level (a fixed seed: deterministic, not flaky)."""
    from scipy.stats import chisquare

    return chisquare(counts, counts.sum() * probs).pvalue > 1e-3


def test_reference_randaugment_draws_its_15_operations_with_the_stated_probabilities():
    aug = ReferenceRandAugment()
    assert set(aug.ops) == {"invert", "cutout", "sharpness", "autocontrast", "posterize", "shear_x", "translate_x",
                            "translate_y", "shear_y", "rotate", "equalize", "contrast", "color", "solarize",
                            "brightness"}
    torch.manual_seed(0)
    draws = [aug.draw() for _ in range(15_000)]
    assert all(len(d) == 2 for d in draws)  # two operations per image
    slots = [s for d in draws for s in d]
    ops = np.array([sum(s[0] == op for s in slots) for op in aug.ops])
    assert _chi_square_ok(ops, np.full(15, 1 / 15))  # uniform over the 15, drawn independently
    applied = np.array([sum(s[1] for s in slots), sum(not s[1] for s in slots)])
    assert _chi_square_ok(applied, np.array([0.5, 0.5]))  # each applied with probability 0.5
    mags = np.array([sum(s[2] == m for s in slots) for m in range(0, 11)])
    assert mags[0] == 0 and mags[10] == 0  # never 0, never the maximum 10
    assert _chi_square_ok(mags[1:10], np.full(9, 1 / 9))  # uniform in 1..9
    both_same = sum(d[0][0] == d[1][0] for d in draws)  # with replacement: the same op twice ~ 1/15
    assert _chi_square_ok(np.array([both_same, len(draws) - both_same]), np.array([1 / 15, 14 / 15]))


def test_reference_operations_change_images_as_described():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    arr = np.asarray(img).astype(int)
    np.testing.assert_array_equal(np.asarray(REFERENCE_OPS["invert"](img, 5, 1)), 255 - arr)
    posterized = np.asarray(REFERENCE_OPS["posterize"](img, 9, 1))  # magnitude 9: 4 bits
    assert (posterized % 16 == 0).all()
    solarized = np.asarray(REFERENCE_OPS["solarize"](img, 9, 1))  # magnitude 9: threshold 0, all inverted
    np.testing.assert_array_equal(solarized, 255 - arr)
    darker = np.asarray(REFERENCE_OPS["brightness"](img, 9, -1)).astype(int)  # factor 0.1
    assert abs(darker.mean() - 0.1 * arr.mean()) < 2
    torch.manual_seed(1)
    cut = np.asarray(REFERENCE_OPS["cutout"](img, 9, 1))  # 20 px square of (125, 122, 113), clipped
    painted = (cut != arr).any(axis=-1)
    assert 0 < painted.sum() <= 400 and (cut[painted] == (125, 122, 113)).all()


def test_reference_cutout_paints_half_the_side_in_a_random_colour_every_time():
    img = Image.new("RGB", (64, 48), (0, 0, 0))
    torch.manual_seed(0)
    colours = set()
    for _ in range(50):
        out = np.asarray(Cutout(fill=None)(img))
        painted = out.any(axis=-1)
        ys, xs = np.nonzero(painted)
        assert painted.any() and xs.max() - xs.min() < 32 and ys.max() - ys.min() < 24
        colours.add(tuple(out[ys[0], xs[0]]))
    assert len(colours) > 40  # a new colour per image
    steps = build_transform(32, (0.5,) * 3, (0.5,) * 3, train=True, augment=True, recipe="reference",
                            interpolation="bilinear").transforms
    assert [type(s).__name__ for s in steps] == ["Resize", "Cutout", "ReferenceRandAugment", "ToTensor", "Normalize"]
    assert steps[0].interpolation.value == "bilinear"


# ---- selection on test, and CF1 -------------------------------------------------------------------------------

def test_select_on_test_trains_on_all_of_train_and_picks_the_best_test_epoch(tiny_cfg, tmp_path):
    cfg = tiny_cfg(method="positivecoop", epochs=3, val_fraction=0.0, select_on="test", prompt_offset="normal",
                   reduction="sum", loss_weight=0.03, warmup_epochs=1, warmup_rule="same_for_all",
                   cosine_span="all_epochs", augment=True, augment_recipe="reference", resize="bilinear",
                   cf1="mean_of_f1", eps=1e-6)
    metrics = run_trial(cfg, tmp_path / "out", progress=False)
    assert metrics.split_sizes["val"] == 0 and metrics.split_sizes["train"] == 80
    assert metrics.selected_on == "test" and metrics.best_val_map is None
    per_epoch = [row["epoch_test_map"] for row in metrics.history]
    assert all("val_map" not in row for row in metrics.history)
    assert metrics.best_epoch == 1 + int(np.argmax(per_epoch))
    assert metrics.test_map == pytest.approx(max(per_epoch))
    assert metrics.last_test_map == pytest.approx(per_epoch[-1])


def test_val_fraction_zero_needs_select_on_test():
    with pytest.raises(ValueError, match="set select_on: test"):
        TrialConfig(val_fraction=0.0)
    spec = SweepSpec(name="s", base={"val_fraction": 0.0, "select_on": "test"}, grid={"method": ["dualcoop"]},
                     asha={"metric": "val_map"})
    with pytest.raises(ConfigError, match="val_map needs a validation split"):
        expand(spec)


def test_test_selected_numbers_are_tagged_and_marked_in_the_report(tmp_path):
    uri, client, ctx = sweep_store(tmp_path, {"name": "sel", "grid": {"method": ["dualcoop", "baseline"]}})
    for i, (method, select_on) in enumerate((("dualcoop", "test"), ("baseline", "val"))):
        cfg = TrialConfig(method=method, dataset="synthetic", select_on=select_on,
                          val_fraction=0.0 if select_on == "test" else 0.1)
        run = TrialRun.attach(ctx, cfg, f"t{i}", {"method": method})
        assert client.get_run(run.run_id).data.tags["ablate.selected_on"] == select_on
        run.log_metrics({"test_map": 50.0 + i, "trainable_params": 10, "train_time_s": 1.0, "device_hours": 0.0})
        run.finish()
    out = tmp_path / "report"
    result = write_report("sel", out, uri, log_to_mlflow=False)
    table = result["tables"]["synthetic"]
    assert table.cells["dualcoop"]["Avg"].test_selected and not table.cells["baseline"]["Avg"].test_selected
    markdown = (out / "table.md").read_text()
    # one seed each: no interval and no ranking claim, the better mean marked ▲ as such; n said once
    assert f"50.00 {TEST_SELECTED} |" in markdown and "51.00 ▲ |" in markdown and "1 seed: no intervals" in markdown
    assert "selected on the test set" in markdown and "selected on the test set" in (out / "report.html").read_text()


def test_cf1_definitions_by_hand():
    targets = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    scores = np.array([[0.9, 0.8], [0.2, 0.7], [0.6, 0.1], [0.1, 0.3]])
    # class 0: tp 1 fp 1 fn 1 -> p 1/2 r 1/2 f 1/2; class 1: tp 1 fp 1 fn 1 -> same... make them differ:
    scores[2, 1] = 0.9  # class 1: tp 2, fp 1, fn 0 -> p 2/3, r 1, f 0.8
    p = [0.5, 2 / 3]
    r = [0.5, 1.0]
    f = [0.5, 0.8]
    mean_p, mean_r = np.mean(p), np.mean(r)
    usual = threshold_metrics(scores, targets)["CF1"]
    reference = threshold_metrics(scores, targets, cf1="mean_of_f1")["CF1"]
    assert usual == pytest.approx(100 * 2 * mean_p * mean_r / (mean_p + mean_r))
    assert reference == pytest.approx(100 * np.mean(f))
    assert usual != pytest.approx(reference)


def test_every_recipe_choice_is_recorded_as_a_param():
    from ablate.tracking import flatten_config

    params = flatten_config(TrialConfig(dataset="coco2014"))
    for field in ("reduction", "loss_weight", "eps", "prompt_offset", "prompt_offset_std", "prompt_lr_mult",
                  "free_lr_mult", "linear_lr_mult", "weight_decay", "free_weight_decay", "linear_weight_decay",
                  "warmup_lr", "warmup_rule", "cosine_span", "augment_recipe", "resize",
                  "dataset_options.coco_empty_images", "val_fraction", "select_on", "cf1", "grad_scaler",
                  "weights_dir"):
        assert field in params, field


def test_trial_uses_bilinear_resize_when_asked(tiny_cfg):
    trial = Trial(tiny_cfg(resize="bilinear"), progress=False)
    transform = trial.loader("train", train=False).dataset.transform
    assert transform.transforms[0].interpolation.value == "bilinear"
