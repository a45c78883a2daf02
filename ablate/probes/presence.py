"""Presence probe (image-grounded, zero-shot): does the negated hand prompt mark class absence?

Per (image, class), the positive prompt ("a photo of a {}.") and the negated one ("a photo without a
{}.") are scored exactly as the `zeroshot` method scores them: DualCoOp's spatial aggregation over
the dense features, the negative side weighted by the positive side's softmax. The decision
"present" is s_pos > s_neg; its balanced accuracy over the known labels shows whether the negation
separates presence from absence at all. ΔmAP = mAP of (s_pos − s_neg) − mAP of s_pos alone: what
the negative prompt adds to ranking (the `zeroshot` method's mAP is the first term).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, recall_score

from ablate.aggregation import aggregate
from ablate.backbone import Backbone
from ablate.data import LabelledImages
from ablate.errors import ProbeError
from ablate.methods import create_method
from ablate.metrics import per_class_ap
from ablate.spec import TrialConfig

from .common import image_loader, probe_backbone, probe_images, write_json
from .flags import add_config_flags, config_from_args
from .trial import ProbeContext


def _mean_ap(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    ap = per_class_ap(scores, targets)
    return (float(np.nanmean(ap)) if np.isfinite(ap).any() else math.nan), ap


def presence_metrics(s_pos: np.ndarray, s_neg: np.ndarray, targets: np.ndarray) -> dict:
    """Scores [M, N] of the positive and negated prompts, targets [M, N] in {1, 0, -1 unknown}."""
    s_pos, s_neg, targets = (np.asarray(a, dtype=np.float64) for a in (s_pos, s_neg, targets))
    if not s_pos.shape == s_neg.shape == targets.shape:
        raise ValueError(f"shapes differ: {s_pos.shape}, {s_neg.shape}, {targets.shape}")
    known = targets >= 0
    y, pred = targets[known].astype(int), (s_pos > s_neg)[known].astype(int)
    map_pos, ap_pos = _mean_ap(s_pos, targets)
    map_con, ap_con = _mean_ap(s_pos - s_neg, targets)
    return {
        "balanced_acc": 100 * balanced_accuracy_score(y, pred),
        "present_recall": 100 * recall_score(y, pred, pos_label=1, zero_division=0),
        "absent_recall": 100 * recall_score(y, pred, pos_label=0, zero_division=0),
        "predicted_present_pct": 100 * float(pred.mean()),
        "map_positive": map_pos,
        "map_contrast": map_con,
        "delta_map": map_con - map_pos,
        "per_class_delta_ap": [None if np.isnan(d) else float(d) for d in ap_con - ap_pos],
        "n_images": int(targets.shape[0]),
        "n_labels": int(known.sum()),
    }


@torch.no_grad()
def presence_scores(cfg: TrialConfig, backbone: Backbone, images: LabelledImages) -> tuple[np.ndarray, np.ndarray]:
    """(s_pos, s_neg), each [M, N], with the zero-shot method's prompts and aggregation."""
    zeroshot = create_method(cfg.model_copy(update={"method": "zeroshot"}), backbone, images.classnames)
    embeddings = zeroshot.class_embeddings()
    assert embeddings is not None  # the zero-shot method scores class embeddings
    pos, neg = embeddings
    s_pos, s_neg = [], []
    for x, _ in image_loader(images, backbone, cfg):
        logits = aggregate(backbone.dense_features(x.to(pos.device)), pos, neg, cfg.temperature, cfg.logit_scale)
        s_neg.append(logits[:, 0].float().cpu())
        s_pos.append(logits[:, 1].float().cpu())
    return torch.cat(s_pos).numpy(), torch.cat(s_neg).numpy()


def run_presence_probe(cfg: TrialConfig, out: Path | None = None, split: str = "test", limit: int | None = None,
                       backbone: Backbone | None = None) -> dict:
    """Score a split of `cfg`'s data set with the backbone `cfg` names; write JSON."""
    images = probe_images(cfg, split, limit)
    if not (images.labels == 1).any() or not (images.labels == 0).any():
        raise ProbeError(f"{cfg.dataset}/{split}: the probed images need both present and absent labels")
    s_pos, s_neg = presence_scores(cfg, probe_backbone(cfg, backbone), images)
    result = presence_metrics(s_pos, s_neg, images.labels)
    result["per_class_delta_ap"] = dict(zip(images.classnames, result["per_class_delta_ap"]))
    result.update(dataset=cfg.dataset, split=split, backbone=cfg.backbone, pretrained=cfg.pretrained,
                  positive_prompt=cfg.zeroshot_positive, negative_prompt=cfg.zeroshot_negative)
    write_json(out, result)
    return result


def format_presence(result: dict) -> str:
    return "\n".join([
        f"Presence vs absence, zero-shot ({result['n_images']} images, {result['n_labels']} labels): "
        f"'{result['positive_prompt']}' vs '{result['negative_prompt']}'",
        f"balanced accuracy (s_pos > s_neg)   {result['balanced_acc']:6.2f}  "
        f"(present recall {result['present_recall']:.2f}, absent recall {result['absent_recall']:.2f})",
        f"mAP positive only                   {result['map_positive']:6.2f}",
        f"mAP positive − negative             {result['map_contrast']:6.2f}",
        f"ΔmAP                                {result['delta_map']:+6.2f}",
    ])


def run_for_trial(ctx: ProbeContext) -> dict:
    """The probe on the first `ctx.limit` test images of the trial's data set."""
    return run_presence_probe(ctx.cfg, ctx.output("presence.json"), limit=ctx.limit, backbone=ctx.backbone)


def flat(result: dict) -> dict[str, float]:
    return {f"probe_presence_{k}": result[k] for k in
            ("balanced_acc", "present_recall", "absent_recall", "map_positive", "map_contrast", "delta_map")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flags(p)
    p.add_argument("--out", type=Path, default=Path("runs/probe/presence.json"), help="JSON output")


def command(args: argparse.Namespace) -> str:
    return format_presence(run_presence_probe(config_from_args(args), args.out, split=args.split, limit=args.limit))
