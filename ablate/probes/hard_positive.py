"""Hard-positive probe (seed 003): is the image-caption score invariant to meaning-preserving edits
while still rejecting meaning-changing ones?

Each triple (image, c, c_p, c_n) holds a true caption c, a hard positive c_p (also true) and a hard
negative c_n (false). Scores s(·) are cosines between CLIP's pooled image embedding and the text
embedding. Metrics, in percent of triples (ties count as failures):
- accuracy: s(c) > s(c_n)
- hard-positive accuracy: s(c_p) > s(c_n)
- augmented accuracy: both
- brittleness: s(c) > s(c_n) > s(c_p) or s(c_p) > s(c_n) > s(c) — the negative sits between two
  true captions, so which "wins" depends on the wording of a true caption.

Triples come from multi-label ground truth (`synthesize_triples`): c = "a photo of a {p1} and a {p2}."
with present classes; hard positives: order swap, class-name synonym, "... and no {absent}";
hard negatives: an absent class swapped in, a present class negated. Or from the public REPLACE
JSON files (`load_replace_triples`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ablate.backbone import Backbone
from ablate.errors import ProbeError
from ablate.spec import TrialConfig

from .common import encode_images, encode_texts, probe_backbone, probe_images, write_json
from .flags import add_config_flags, config_from_args
from .trial import ProbeContext

# Meaning-preserving names; whole class names first, then the last word (the synthetic shapes).
SYNONYMS = {
    "person": "human", "bicycle": "bike", "car": "automobile", "motorcycle": "motorbike",
    "motorbike": "motorcycle", "airplane": "aeroplane", "aeroplane": "airplane", "plane": "airplane",
    "truck": "lorry", "traffic light": "traffic signal", "fire hydrant": "hydrant", "couch": "sofa",
    "sofa": "couch", "tv": "television", "tvmonitor": "television", "cell phone": "mobile phone",
    "dining table": "dinner table", "diningtable": "dining table", "potted plant": "houseplant",
    "pottedplant": "potted plant", "refrigerator": "fridge", "hair drier": "hair dryer", "donut": "doughnut",
    "sports ball": "ball", "remote": "remote control", "handbag": "purse", "teddy bear": "teddy",
    "laptop": "notebook computer", "cars": "automobiles", "ocean": "sea", "railroad": "railway",
    "nighttime": "night", "cityscape": "city skyline",
    "circle": "disc", "diamond": "rhombus", "cross": "plus sign",
}
HARD_POSITIVES = ("order_swap", "synonym", "and_no_absent")
HARD_NEGATIVES = ("absent_swap", "present_negated")


@dataclass(frozen=True)
class Triple:
    image: int  # index into the probe's image list
    c: str
    c_p: str
    c_n: str
    hp_kind: str
    hn_kind: str


def hard_positive_metrics(s_c: np.ndarray, s_cp: np.ndarray, s_cn: np.ndarray) -> dict[str, float]:
    """Scores [T] of the true caption, the hard positive and the hard negative -> seed-003 metrics (%)."""
    s_c, s_cp, s_cn = (np.asarray(a, dtype=np.float64).ravel() for a in (s_c, s_cp, s_cn))
    if not len(s_c) == len(s_cp) == len(s_cn):
        raise ValueError("s_c, s_cp and s_cn must have one score per triple")
    if len(s_c) == 0:
        return {"accuracy": np.nan, "hard_positive_acc": np.nan, "augmented_acc": np.nan, "brittleness": np.nan,
                "n": 0}
    correct, hard = s_c > s_cn, s_cp > s_cn
    brittle = (correct & (s_cn > s_cp)) | (hard & (s_cn > s_c))
    pct = lambda m: 100.0 * float(m.mean())  # noqa: E731
    return {"accuracy": pct(correct), "hard_positive_acc": pct(hard), "augmented_acc": pct(correct & hard),
            "brittleness": pct(brittle), "n": len(s_c)}


# ---- triples from multi-label ground truth --------------------------------------------------------

def synonym(name: str) -> str:
    if name in SYNONYMS:
        return SYNONYMS[name]
    *head, last = name.split(" ")
    return " ".join([*head, SYNONYMS[last]]) if head and last in SYNONYMS else name


def _np(name: str) -> str:
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def caption(objects: Sequence[str], absent: str | None = None) -> str:
    """'a photo of a dog and a cat.' / '... and no zebra.'"""
    text = "a photo of " + " and ".join(_np(o) for o in objects)
    return text + (f" and no {absent}." if absent else ".")


def synthesize_triples(labels: np.ndarray, classnames: Sequence[str], seed: int = 0) -> list[Triple]:
    """Every (hard positive, hard negative) kind an image allows; images without a present class are skipped.

    Up to two present classes are named (in random order); one absent class is drawn for the
    "and no" positive and the swap negative. Unknown labels (-1) are neither present nor absent.
    """
    rng = np.random.default_rng(seed)
    triples: list[Triple] = []
    for i, row in enumerate(np.asarray(labels)):
        present, absent = np.flatnonzero(row == 1), np.flatnonzero(row == 0)
        if not present.size:
            continue
        objs = [classnames[j] for j in rng.permutation(present)[:2]]
        other = classnames[rng.choice(absent)] if absent.size else None
        positives, negatives = {}, {}
        if len(objs) == 2:
            positives["order_swap"] = caption(objs[::-1])
        if [synonym(o) for o in objs] != objs:
            positives["synonym"] = caption([synonym(o) for o in objs])
        if other:
            positives["and_no_absent"] = caption(objs, absent=other)
            negatives["absent_swap"] = caption([other, *objs[1:]])
        negatives["present_negated"] = (caption(objs[1:], absent=objs[0]) if len(objs) == 2
                                        else f"a photo without {_np(objs[0])}.")
        c = caption(objs)
        triples += [Triple(i, c, cp, cn, hk, nk) for hk, cp in positives.items() for nk, cn in negatives.items()]
    return triples


# ---- triples from the public REPLACE files ---------------------------------------------------------

def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise ProbeError(f"REPLACE file not found: {path}")
    rows = json.loads(path.read_text())
    keys = ("image_path", "true_caption", "false_caption")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and all(k in r for k in keys)
                                                         for r in rows):
        raise ProbeError(f"{path}: expected a non-empty JSON list of objects with {', '.join(keys)}")
    return rows


def load_replace_triples(original: Path, swapped: Path | None = None, image_root: Path | None = None,
                         limit: int | None = None) -> tuple[list[Path], list[Triple]]:
    """(image paths, triples) from a REPLACE file (c, c_n) and its aligned hard-positive file (c_p, c_n).

    The public release keeps them as data/<name>.json and swapped_data/<name>.json, row by row; as
    in its evaluation, c_n is the hard-positive file's false caption.
    """
    original = Path(original)
    swapped = Path(swapped) if swapped else original.parent.parent / "swapped_data" / original.name
    if not swapped.is_file():
        raise ProbeError(f"no hard positives for {original}: {swapped} not found; pass --swapped-json "
                         "(the release's swapped_data/ file with the same name)")
    rows, srows = _read_rows(original)[:limit], _read_rows(swapped)[:limit]
    if len(rows) != len(srows) or any(r["image_path"] != s["image_path"] for r, s in zip(rows, srows)):
        raise ProbeError(f"{original} and {swapped} are not aligned row by row (length or image_path differ)")
    roots = [Path(image_root)] if image_root else [original.parent, original.parent.parent]
    index: dict[str, int] = {}
    paths: list[Path] = []
    for r in rows:
        if r["image_path"] not in index:
            found = next((root / r["image_path"] for root in roots if (root / r["image_path"]).is_file()), None)
            if found is None:
                raise ProbeError(f"image {r['image_path']} not found under {', '.join(map(str, roots))}; "
                                 "pass --image-root")
            index[r["image_path"]] = len(paths)
            paths.append(found)
    kind = original.stem
    triples = [Triple(index[r["image_path"]], r["true_caption"], s["true_caption"], s["false_caption"], kind, kind)
               for r, s in zip(rows, srows)]
    return paths, triples


# ---- scoring ---------------------------------------------------------------------------------------

def triple_scores(image_feats: Tensor, text_feats: dict[str, Tensor], triples: Sequence[Triple]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosines (s(c), s(c_p), s(c_n)) per triple, from image features [M, D] and caption -> feature [D]."""
    img = F.normalize(image_feats.double(), dim=-1)[torch.tensor([t.image for t in triples])]
    index = {text: i for i, text in enumerate(text_feats)}
    txt = F.normalize(torch.stack(list(text_feats.values())).double(), dim=-1)
    scores = []
    for attr in ("c", "c_p", "c_n"):
        rows = txt[torch.tensor([index[getattr(t, attr)] for t in triples])]
        scores.append((img * rows).sum(dim=-1).numpy())
    return scores[0], scores[1], scores[2]


def _breakdown(triples: Sequence[Triple], scores: tuple[np.ndarray, ...], attr: str) -> dict[str, dict]:
    kinds = np.array([getattr(t, attr) for t in triples])
    return {k: hard_positive_metrics(*(s[kinds == k] for s in scores)) for k in dict.fromkeys(kinds.tolist())}


def run_hard_positive_probe(cfg: TrialConfig, out: Path | None = None, replace_json: Path | None = None,
                            split: str = "test", limit: int | None = None, swapped_json: Path | None = None,
                            image_root: Path | None = None, backbone: Backbone | None = None) -> dict:
    """Triples from `cfg`'s data set (or a REPLACE file, first `limit` rows), scored by `cfg`'s backbone."""
    if replace_json is not None:
        paths, triples = load_replace_triples(replace_json, swapped_json, image_root, limit)
        source = str(replace_json)
    else:
        images = probe_images(cfg, split, limit)
        paths, triples = images.paths, synthesize_triples(images.labels, images.classnames, cfg.seed)
        source = f"{cfg.dataset}/{split}"
    if not triples:
        raise ProbeError(f"{source}: no triples (no image has a present class)")
    backbone = probe_backbone(cfg, backbone)
    image_feats = encode_images(backbone, paths, cfg.batch_size, cfg.num_workers)
    texts = sorted({c for t in triples for c in (t.c, t.c_p, t.c_n)})
    text_feats = dict(zip(texts, encode_texts(backbone, texts)))
    scores = triple_scores(image_feats, text_feats, triples)
    result = {
        "source": source, "backbone": cfg.backbone, "pretrained": cfg.pretrained,
        "n_images": len(paths), "n_triples": len(triples),
        "overall": hard_positive_metrics(*scores),
        "by_hard_positive": _breakdown(triples, scores, "hp_kind"),
        "by_hard_negative": _breakdown(triples, scores, "hn_kind"),
        "examples": [{**asdict(t), "s_c": float(a), "s_cp": float(b), "s_cn": float(c)}
                     for t, a, b, c in zip(triples[:8], *scores)],
    }
    write_json(out, result)
    return result


def format_hard_positive(result: dict) -> str:
    lines = [f"Hard positives (seed 003): {result['n_triples']} triples, {result['n_images']} images "
             f"from {result['source']}",
             f"{'':<32} {'acc':>7} {'hard-pos':>9} {'augmented':>10} {'brittle':>8} {'n':>6}"]
    groups = [("overall", result["overall"]),
              *((f"hard positive: {k}", m) for k, m in result["by_hard_positive"].items()),
              *((f"hard negative: {k}", m) for k, m in result["by_hard_negative"].items())]
    for name, m in groups:
        lines.append(f"{name:<32} {m['accuracy']:7.2f} {m['hard_positive_acc']:9.2f} {m['augmented_acc']:10.2f} "
                     f"{m['brittleness']:8.2f} {m['n']:6d}")
    return "\n".join(lines)


def run_for_trial(ctx: ProbeContext) -> dict:
    """Triples from the first `ctx.limit` test images of the trial's data set."""
    return run_hard_positive_probe(ctx.cfg, ctx.output("hard_positive.json"), limit=ctx.limit, backbone=ctx.backbone)


def flat(result: dict) -> dict[str, float]:
    return {f"probe_hp_{k}": result["overall"][k] for k in
            ("accuracy", "hard_positive_acc", "augmented_acc", "brittleness")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flags(p)
    p.add_argument("--replace-json", type=Path,
                   help="REPLACE-style JSON (image_path, true_caption, false_caption) instead of the data set")
    p.add_argument("--swapped-json", type=Path,
                   help="its hard-positive counterpart (default: ../swapped_data/<same name>)")
    p.add_argument("--image-root", type=Path, help="folder the JSON's image paths are relative to")
    p.add_argument("--out", type=Path, default=Path("runs/probe/hard_positive.json"), help="JSON output")


def command(args: argparse.Namespace) -> str:
    result = run_hard_positive_probe(config_from_args(args), args.out, args.replace_json, split=args.split,
                                     limit=args.limit, swapped_json=args.swapped_json, image_root=args.image_root)
    return format_hard_positive(result)
