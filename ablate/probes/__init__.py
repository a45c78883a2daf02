"""Diagnostics that explain the results: negation, presence and hard-positive probes of a backbone,
and the analysis of a trained method's learned prompts.

Each probe is a pure metric function on tensors / arrays (in its module) plus a thin runner that
calls the real encoders. This package holds what they share (errors, summary statistics, image
loading, JSON output), the CLI commands (`add_probe_commands`) and the sweep hook
(`run_probes_for_trial`). Rates and mAPs are percentages (x 100, like the trial metrics); cosines
are raw.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ablate.backbone import Backbone
from ablate.data import LabelledImages, MultiLabelDataset, build_transform, load_splits
from ablate.spec import ConfigError, TrialConfig
from ablate.runtime import backbone_from_config


class ProbeError(ConfigError):
    """A probe cannot run as asked (missing class list, no trained prompts...); the message says why."""


# ---- shared helpers -------------------------------------------------------------------------------

def describe(values: np.ndarray | Tensor | Sequence[float]) -> dict[str, float]:
    """mean, std (population, ddof=0), min, max and count; NaNs when there are no values."""
    arr = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64).ravel()
    if arr.size == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "min": float(arr.min()),
            "max": float(arr.max()), "n": int(arr.size)}


def format_stats(s: dict[str, float]) -> str:
    """'0.56 ± 0.06 (0.37, 0.67)', as on the seed-000 poster."""
    return f"{s['mean']:.3f} ± {s['std']:.3f} ({s['min']:.3f}, {s['max']:.3f})"


def _jsonable(obj: object) -> object:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic, Tensor)):
        obj = obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN
    return obj


def write_json(path: Path | None, data: dict) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(data), indent=2))


def probe_backbone(cfg: TrialConfig, backbone: Backbone | None = None) -> Backbone:
    """The given backbone (shared across probes of one trial), else the one `cfg` names."""
    if backbone is not None:
        return backbone
    return backbone_from_config(cfg)


def probe_images(cfg: TrialConfig, split: str = "test", limit: int | None = None) -> LabelledImages:
    """The first `limit` images of a split (all when None), with their labels."""
    if split not in ("test", "val"):
        raise ProbeError(f"split must be 'test' or 'val', not {split!r}")
    if limit is not None and limit < 1:
        raise ProbeError(f"limit must be at least 1, not {limit}")
    images = load_splits(cfg)[split]
    return images.subset(np.arange(min(limit, len(images)))) if limit is not None else images


def image_loader(images: LabelledImages, backbone: Backbone, cfg: TrialConfig) -> DataLoader:
    """(normalised image, labels) batches in split order, at the backbone's input size."""
    info = backbone.info
    transform = build_transform(info.image_size, info.mean, info.std, train=False, augment=False,
                                interpolation=cfg.resize)
    return DataLoader(MultiLabelDataset(images, transform), batch_size=cfg.batch_size, shuffle=False,
                      num_workers=cfg.num_workers)


class _Paths(Dataset):
    def __init__(self, paths: Sequence[Path], transform: Callable) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB"))


@torch.no_grad()
def encode_images(backbone: Backbone, paths: Sequence[Path], batch_size: int = 32, num_workers: int = 0) -> Tensor:
    """CLIP image embeddings [M, D] (the model's own pooled output, not the dense tokens)."""
    info = backbone.info
    transform = build_transform(info.image_size, info.mean, info.std, train=False, augment=False)
    device = next(backbone.parameters()).device
    loader = DataLoader(_Paths(paths, transform), batch_size=batch_size, num_workers=num_workers)
    return torch.cat([backbone.model.encode_image(x.to(device)).float().cpu() for x in loader])


@torch.no_grad()
def encode_texts(backbone: Backbone, texts: Sequence[str], chunk: int = 256) -> Tensor:
    """Text features [T, D], encoded in chunks so thousands of captions fit in memory."""
    return torch.cat([backbone.encode_text(list(texts[i : i + chunk])).float().cpu()
                      for i in range(0, len(texts), chunk)])


# ---- sweep integration ----------------------------------------------------------------------------

PROBES = ("negation", "presence", "hard_positive", "prompts")

# Flat MLflow metric -> column title of the report's diagnostics table.
PROBE_COLUMNS: dict[str, str] = {
    "probe_negation_paraphrase_cos": "cos(P, paraphrase)",
    "probe_negation_negation_cos": "cos(P, negation)",
    "probe_negation_inter_class_cos": "cos(P, other class)",
    "probe_negation_farther_pct": "negation farther %",
    "probe_presence_balanced_acc": "presence bal. acc",
    "probe_presence_delta_map": "ΔmAP (pos−neg vs pos)",
    "probe_hp_accuracy": "acc",
    "probe_hp_hard_positive_acc": "hard-pos acc",
    "probe_hp_augmented_acc": "aug. acc",
    "probe_hp_brittleness": "brittleness",
    "analysis_pos_neg_cos": "cos(learned pos, neg)",
    "analysis_cross_seed_cos": "cos(pos, pos) seeds",
    "analysis_map_correlation": "r(pos map, neg map)",
}


def flat_metrics(probe: str, result: dict) -> dict[str, float]:
    """The headline numbers of one probe's result as MLflow metric name -> value (undefined ones left out)."""
    if probe == "negation":
        flat = {"probe_negation_paraphrase_cos": result["paraphrase"]["mean"],
                "probe_negation_negation_cos": result["negation"]["mean"],
                "probe_negation_inter_class_cos": result["inter_class"]["mean"],
                "probe_negation_farther_pct": result["negation_farther_pct"],
                "probe_negation_gap_over_spread": result["gap_over_spread"]}
    elif probe == "presence":
        flat = {f"probe_presence_{k}": result[k] for k in
                ("balanced_acc", "present_recall", "absent_recall", "map_positive", "map_contrast", "delta_map")}
    elif probe == "hard_positive":
        flat = {f"probe_hp_{k}": result["overall"][k] for k in
                ("accuracy", "hard_positive_acc", "augmented_acc", "brittleness")}
    elif probe == "prompts":
        flat = {"analysis_pos_neg_cos": result["pos_vs_neg"]["cosine"]["mean"],
                "analysis_map_correlation": result["map_correlation"],
                "analysis_cross_seed_cos": result.get("cross_seed", {}).get("cosine", {}).get("mean", math.nan)}
    else:
        raise ProbeError(f"unknown probe {probe!r}; choose from {', '.join(PROBES)}")
    return {k: float(v) for k, v in flat.items() if math.isfinite(v)}


def run_probes_for_trial(cfg: TrialConfig, names: Iterable[str], trained: Path | None = None,
                         out_dir: Path | None = None, limit: int | None = None, n_maps: int = 2,
                         backbone: Backbone | None = None) -> dict[str, float]:
    """Run the named probes for one trial -> flat metrics to log into the trial's MLflow run.

    negation / presence / hard_positive probe the trial's backbone on its data set (they do not
    depend on the trained method); `prompts` analyses the trained method saved at `trained`
    (skipped for the baseline, which has no class embeddings), with `n_maps` similarity maps.
    `limit` caps the images of the image-grounded probes. JSON (and PNG) outputs go to `out_dir`
    when given, to be logged as artifacts.
    """
    from .analyze import analyze_trained
    from .hard_positive import run_hard_positive_probe
    from .negation import run_negation_probe
    from .presence import run_presence_probe

    names = [n.replace("-", "_") for n in names]
    unknown = sorted(set(names) - set(PROBES))
    if unknown:
        raise ProbeError(f"unknown probe(s) {', '.join(unknown)}; choose from {', '.join(PROBES)}")
    out = Path(out_dir) if out_dir else None
    shared = probe_backbone(cfg, backbone) if set(names) - {"prompts"} else None
    flat: dict[str, float] = {}
    for name in names:
        target = out / f"{name}.json" if out else None
        if name == "negation":
            result = run_negation_probe(cfg.backbone, cfg.pretrained, cfg.dataset, target, backbone=shared)
        elif name == "presence":
            result = run_presence_probe(cfg, target, limit=limit, backbone=shared)
        elif name == "hard_positive":
            result = run_hard_positive_probe(cfg, target, limit=limit, backbone=shared)
        else:
            if trained is None:
                raise ProbeError("the 'prompts' probe needs the trial's trained.pt")
            if cfg.method == "baseline":
                continue
            result = analyze_trained(trained, out / "analysis" if out else None, n_images=n_maps)
        flat.update(flat_metrics(name, result))
    return flat


def probe_markdown(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table of diagnostics: row label -> flat metrics (columns that no row has are left out)."""
    columns = [k for k in PROBE_COLUMNS if any(k in m for m in rows.values())]
    lines = ["| | " + " | ".join(PROBE_COLUMNS[k] for k in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for label, metrics in rows.items():
        cells = [f"{metrics[k]:.3f}" if k in metrics and math.isfinite(metrics[k]) else "-" for k in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---- command line ---------------------------------------------------------------------------------

# flag -> TrialConfig field, for the image-grounded probes
PROBE_FLAGS: dict[str, tuple[str, type]] = {
    "--dataset": ("dataset", str),
    "--data-root": ("data_root", str),
    "--backbone": ("backbone", str),
    "--pretrained": ("pretrained", str),
    "--image-size": ("image_size", int),
    "--cache-dir": ("cache_dir", str),
    "--device": ("device", str),
    "--batch-size": ("batch_size", int),
    "--num-workers": ("num_workers", int),
}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    for flag, (field, typ) in PROBE_FLAGS.items():
        p.add_argument(flag, dest=field, type=typ, default=None, help=TrialConfig.model_fields[field].description)
    p.add_argument("--split", choices=("test", "val"), default="test", help="images to probe")
    p.add_argument("--limit", type=int, default=None, help="probe only the first N images of the split")


def config_from_args(args: argparse.Namespace) -> TrialConfig:
    from pydantic import ValidationError

    from ablate.spec import format_validation_error

    overrides = {f: getattr(args, f) for f, _ in PROBE_FLAGS.values() if getattr(args, f) is not None}
    try:
        return TrialConfig(**overrides)
    except ValidationError as err:
        raise ProbeError(format_validation_error(err, "command-line flags")) from None


def add_probe_commands(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add `probe {negation,presence,hard-positive}` and `analyze`; returns {command: handler}."""
    probe = sub.add_parser("probe", help="negation / presence / hard-positive probes of a backbone",
                           description="Diagnostics of a frozen backbone: each prints a table and writes JSON.")
    kinds = probe.add_subparsers(dest="probe_command", required=True)

    neg = kinds.add_parser("negation", help="text only: cosine of a prompt to its paraphrases and negations")
    neg.add_argument("--backbone", default=TrialConfig.model_fields["backbone"].default)
    neg.add_argument("--pretrained", default="none", help="open_clip tag, local checkpoint or 'none'")
    neg.add_argument("--classes", required=True,
                     help="built-in data set (coco2014, voc2007, nuswide, synthetic, world) or a file, one class per line")
    neg.add_argument("--device", default="auto")
    neg.add_argument("--out", type=Path, default=Path("runs/probe/negation.json"), help="JSON output")

    pres = kinds.add_parser("presence", help="zero-shot presence vs absence: balanced accuracy and ΔmAP")
    _add_config_flags(pres)
    pres.add_argument("--out", type=Path, default=Path("runs/probe/presence.json"), help="JSON output")

    hp = kinds.add_parser("hard-positive", help="seed-003 metrics on triples from multi-label ground truth")
    _add_config_flags(hp)
    hp.add_argument("--replace-json", type=Path,
                    help="REPLACE-style JSON (image_path, true_caption, false_caption) instead of the data set")
    hp.add_argument("--swapped-json", type=Path,
                    help="its hard-positive counterpart (default: ../swapped_data/<same name>)")
    hp.add_argument("--image-root", type=Path, help="folder the JSON's image paths are relative to")
    hp.add_argument("--out", type=Path, default=Path("runs/probe/hard_positive.json"), help="JSON output")

    ana = sub.add_parser("analyze", help="learned-prompt similarities and similarity maps of a trained method",
                         description="Cosine between learned positive and negative class features (and across "
                                     "seeds), plus positive/negative similarity maps as PNG; logged to the run.")
    src = ana.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="MLflow run id of a trial (its trained.pt artifact is analysed)")
    src.add_argument("--trained", type=Path, help="a local trained.pt instead of a run")
    ana.add_argument("--tracking-uri", help="MLflow URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    ana.add_argument("--out", type=Path, default=None, help="output folder (default: runs/analyze/<run or file>)")
    ana.add_argument("--images", type=int, default=4, help="test images to draw similarity maps for")
    ana.add_argument("--no-log", action="store_true", help="do not log the outputs to the MLflow run")
    return {"probe": _cmd_probe, "analyze": _cmd_analyze}


def _cmd_probe(args: argparse.Namespace) -> int:
    if args.probe_command == "negation":
        from .negation import format_negation, run_negation_probe

        result = run_negation_probe(args.backbone, args.pretrained, args.classes, args.out, device=args.device)
        print(format_negation(result))
    elif args.probe_command == "presence":
        from .presence import format_presence, run_presence_probe

        result = run_presence_probe(config_from_args(args), args.out, split=args.split, limit=args.limit)
        print(format_presence(result))
    else:
        from .hard_positive import format_hard_positive, run_hard_positive_probe

        result = run_hard_positive_probe(config_from_args(args), args.out, args.replace_json, split=args.split,
                                         limit=args.limit, swapped_json=args.swapped_json,
                                         image_root=args.image_root)
        print(format_hard_positive(result))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze_run, analyze_trained, format_analysis

    if args.run:
        out = args.out or Path("runs/analyze") / args.run
        result = analyze_run(args.run, args.tracking_uri, out, n_images=args.images, log=not args.no_log)
    else:
        out = args.out or Path("runs/analyze") / args.trained.stem
        result = analyze_trained(args.trained, out, n_images=args.images)
    print(format_analysis(result))
    print(f"wrote {out}", file=sys.stderr)
    return 0
