"""Negation probe (text only, seed 000): does the text encoder move a prompt's negation farther away
than a paraphrase of it?

Per class: cosine between the positive prompt P and each paraphrase (P-P pairs), and between P and
each negation (P-N pairs); summarised as mean ± std (min, max) over all (class, template) pairs.
A class counts as "negation farther" when its mean P-N cosine is below its mean P-P cosine. For
scale, the cosine between the positive prompts of different classes (each unordered pair once):
`gap_over_spread` = (P-P − P-N) / (P-P − P-other class), how far a negation moves a prompt as a
fraction of the way to another class (0: not at all, 1: as far as another class).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ablate.backbone import Backbone
from ablate.data import class_names
from ablate.errors import ProbeError
from ablate.factory import load_backbone, resolve_device
from ablate.spec import TrialConfig

from .common import describe, encode_texts, format_stats, write_json
from .trial import ProbeContext

POSITIVE = "a photo of a {}."
PARAPHRASES = (
    "a picture of a {}.",
    "an image of a {}.",
    "a photo showing a {}.",
    "there is a {} in this photo.",
    "a photo that contains a {}.",
)
NEGATIONS = (
    "a photo without a {}.",
    "a photo of no {}.",
    "there is no {} in this photo.",
    "a photo that does not contain a {}.",
    "not a photo of a {}.",
)


def negation_stats(pos: Tensor, paraphrases: Tensor, negations: Tensor) -> dict:
    """pos [N, D], paraphrases [N, P, D], negations [N, K, D] (any norm) -> cosine statistics."""
    if pos.ndim != 2 or paraphrases.ndim != 3 or negations.ndim != 3:
        raise ValueError("expected pos [N, D], paraphrases [N, P, D] and negations [N, K, D]")
    p = F.normalize(pos.double(), dim=-1)
    cos_para = torch.einsum("nd,npd->np", p, F.normalize(paraphrases.double(), dim=-1))
    cos_neg = torch.einsum("nd,nkd->nk", p, F.normalize(negations.double(), dim=-1))
    n = p.shape[0]
    rows, cols = torch.triu_indices(n, n, offset=1)
    inter = (p @ p.t())[rows, cols]
    para_c, neg_c = cos_para.mean(dim=1), cos_neg.mean(dim=1)
    farther = neg_c < para_c
    para, neg, other = describe(cos_para), describe(cos_neg), describe(inter)
    spread = para["mean"] - other["mean"]
    return {
        "n_classes": n, "n_paraphrases": cos_para.shape[1], "n_negations": cos_neg.shape[1],
        "paraphrase": para, "negation": neg, "inter_class": other,
        "negation_farther_pct": 100.0 * farther.double().mean().item(),
        "gap_over_spread": (para["mean"] - neg["mean"]) / spread if spread else math.nan,
        "paraphrase_by_template": cos_para.mean(dim=0).tolist(),
        "negation_by_template": cos_neg.mean(dim=0).tolist(),
        "per_class": {"paraphrase": para_c.tolist(), "negation": neg_c.tolist(),
                      "negation_farther": farther.tolist()},
    }


def resolve_classes(classes: str | Sequence[str]) -> list[str]:
    """A list as given, a built-in data set's names, or a text file with one class name per line."""
    if not isinstance(classes, str):
        names = [c.strip() for c in classes if c.strip()]
    else:
        path = Path(classes).expanduser()
        if path.is_file():
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            if not names:
                raise ProbeError(f"class file {path} is empty; write one class name per line")
        else:
            try:
                names = class_names(classes)
            except ValueError as err:  # names the built-in data sets
                raise ProbeError(f"--classes: {err}; or pass an existing file with one class name per line") from None
    if not names:
        raise ProbeError("no class names to probe")
    return names


def encode_prompts(backbone: Backbone, classes: Sequence[str], positive: str = POSITIVE,
                   paraphrases: Sequence[str] = PARAPHRASES,
                   negations: Sequence[str] = NEGATIONS) -> tuple[Tensor, Tensor, Tensor]:
    """Text features of every template filled with every class: [N, D], [N, P, D], [N, K, D]."""
    templates = [positive, *paraphrases, *negations]
    feats = encode_texts(backbone, [t.format(c) for c in classes for t in templates])
    feats = feats.view(len(classes), len(templates), -1)
    return feats[:, 0], feats[:, 1 : 1 + len(paraphrases)], feats[:, 1 + len(paraphrases) :]


def run_negation_probe(backbone_name: str, pretrained: str, classes: str | Sequence[str],
                       out_json: Path | None = None, device: str = "auto",
                       backbone: Backbone | None = None) -> dict:
    """Encode the prompts with a real text encoder, compute `negation_stats`, write JSON."""
    names = resolve_classes(classes)
    backbone = backbone or load_backbone(backbone_name, pretrained, device=resolve_device(device))
    pos, para, neg = encode_prompts(backbone, names)
    result = negation_stats(pos, para, neg)
    per_class = result.pop("per_class")
    result.update(
        backbone=backbone_name, pretrained=pretrained, positive_template=POSITIVE,
        paraphrase_templates=list(PARAPHRASES), negation_templates=list(NEGATIONS),
        per_class={c: {k: v[i] for k, v in per_class.items()} for i, c in enumerate(names)},
    )
    write_json(out_json, result)
    return result


def format_negation(result: dict) -> str:
    """The seed-000 poster's table (P1-N1 vs P1-P2 pairs) plus the inter-class scale."""
    head = (f"Cosine similarity ({result['n_classes']} classes; 1 prompt, {result['n_paraphrases']} paraphrases, "
            f"{result['n_negations']} negations)")
    rows = [("P-N pairs (negation)", result["negation"]), ("P-P pairs (paraphrase)", result["paraphrase"]),
            ("P-P other class", result["inter_class"])]
    lines = [head, f"{'':<24} mean ± std (min, max)"]
    lines += [f"{name:<24} {format_stats(s)}" for name, s in rows]
    lines.append(f"negation farther than paraphrase: {result['negation_farther_pct']:.1f}% of classes; "
                 f"gap / spread: {result['gap_over_spread']:.3f}")
    return "\n".join(lines)


def run_for_trial(ctx: ProbeContext) -> dict:
    """The probe on the trial's data set's class names, with its backbone."""
    cfg = ctx.cfg
    return run_negation_probe(cfg.backbone, cfg.pretrained, cfg.dataset, ctx.output("negation.json"),
                              backbone=ctx.backbone)


def flat(result: dict) -> dict[str, float]:
    return {"probe_negation_paraphrase_cos": result["paraphrase"]["mean"],
            "probe_negation_negation_cos": result["negation"]["mean"],
            "probe_negation_inter_class_cos": result["inter_class"]["mean"],
            "probe_negation_farther_pct": result["negation_farther_pct"],
            "probe_negation_gap_over_spread": result["gap_over_spread"]}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default=TrialConfig.model_fields["backbone"].default)
    p.add_argument("--pretrained", default="none", help="open_clip tag, local checkpoint or 'none'")
    p.add_argument("--classes", required=True, help="built-in data set (coco2014, voc2007, nuswide, synthetic, "
                   "world) or a file, one class per line")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("runs/probe/negation.json"), help="JSON output")


def command(args: argparse.Namespace) -> str:
    return format_negation(run_negation_probe(args.backbone, args.pretrained, args.classes, args.out,
                                              device=args.device))
