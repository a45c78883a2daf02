"""Analysis of a trained method's class embeddings (seed 001): are the learned negative features
about absence, or a copy of the positive ones?

- cosine between the learned positive and negative class features, per class, with the cosine
  between positive features of different classes for scale;
- cosine between the positive features of the same class learned with different seeds;
- similarity maps (seed 001, figure 1): cosine of every dense image location with the positive and
  the negative feature of a class present in the image, side by side as PNG; their Pearson
  correlation over locations is the number behind "negative prompts activate the same regions".
"""

from __future__ import annotations

import math
import re
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Run
from PIL import Image
from torch import Tensor

from ablate.backbone import Backbone
from ablate.errors import ProbeError, TrackingError
from ablate.methods import method_info
from ablate.methods.base import Method
from ablate.methods.two_sided import PromptSide, TwoSided
from ablate.spec import STORED, TrialConfig
from ablate.tracking import TrialRun, children_filter, connect_existing, resolve_tracking_uri, retried
from ablate.trainer import TRAINED, load_trained
from ablate.world.checkpoints import build_for

from .common import describe, format_stats, image_loader, probe_images, write_json
from .trial import ProbeContext, flat_metrics

# ---- metrics ---------------------------------------------------------------------------------------

def _pairwise_upper(x: Tensor) -> Tensor:
    """Cosines between distinct rows of [N, D], each unordered pair once."""
    rows, cols = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    return (x @ x.t())[rows, cols]


def learned_prompt_similarity(positive: Tensor, negative: Tensor) -> dict:
    """Positive and negative class features [N, D] -> per-class cosine and the inter-class scale."""
    p, n = F.normalize(positive.double(), dim=-1), F.normalize(negative.double(), dim=-1)
    cos = (p * n).sum(dim=-1)
    return {"cosine": describe(cos), "per_class": cos.tolist(), "inter_class_positive": describe(_pairwise_upper(p))}


def cross_seed_similarity(positives: Sequence[Tensor]) -> dict:
    """Positive features [N, D] of the same classes from S >= 2 seeds -> same-class cosine over seed pairs."""
    if len(positives) < 2:
        raise ValueError("need the positive features of at least two seeds")
    feats = F.normalize(torch.stack([p.double() for p in positives]), dim=-1)  # [S, N, D]
    a, b = torch.triu_indices(len(positives), len(positives), offset=1)
    cos = (feats[a] * feats[b]).sum(dim=-1)  # [pairs, N]
    return {"n_seeds": len(positives), "cosine": describe(cos), "per_class": cos.mean(dim=0).tolist()}


def similarity_maps(dense: Tensor, positive: Tensor, negative: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Dense features [1 + h*w, D] of one image (token 0 global) -> cosine maps [h, w] per side."""
    tokens = F.normalize(dense[1:].double(), dim=-1)
    side = math.isqrt(tokens.shape[0])
    if side * side != tokens.shape[0]:
        raise ValueError(f"{tokens.shape[0]} locations do not form a square grid")
    maps = tokens @ F.normalize(torch.stack([positive, negative]).double(), dim=-1).t()  # [hw, 2]
    return maps[:, 0].reshape(side, side).numpy(), maps[:, 1].reshape(side, side).numpy()


def map_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r over locations; NaN when a map is constant."""
    a, b = np.ravel(a), np.ravel(b)
    if a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


# ---- figures ---------------------------------------------------------------------------------------

def plot_similarity_map(image: np.ndarray, pos_map: np.ndarray, neg_map: np.ndarray, title: str, path: Path) -> None:
    """Image | positive map | negative map (maps over the image, one colour scale for both)."""
    h, w = image.shape[:2]
    lo, hi = min(pos_map.min(), neg_map.min()), max(pos_map.max(), neg_map.max())
    fig = Figure(figsize=(10, 3.6), layout="constrained")  # no pyplot: no global figure state to leak
    axes = fig.subplots(1, 3)
    axes[0].imshow(image)
    axes[0].set_title("image")
    for ax, m, name in ((axes[1], pos_map, "positive"), (axes[2], neg_map, "negative")):
        ax.imshow(image)
        shown = ax.imshow(m, extent=(0, w, h, 0), alpha=0.6, cmap="jet", vmin=lo, vmax=hi, interpolation="bilinear")
        ax.set_title(f"{name} similarity")
    for ax in axes:
        ax.axis("off")
    fig.colorbar(shown, ax=axes[1:], shrink=0.8, label="cosine")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-") or "class"


@torch.no_grad()
def draw_similarity_maps(cfg: TrialConfig, backbone: Backbone, method: Method, classnames: list[str],
                         out_dir: Path, n_images: int, split: str = "test") -> list[dict]:
    """Maps for the first `n_images` images with a present class, each for its best-scored present class."""
    images = probe_images(cfg, split)
    keep = np.flatnonzero((images.labels == 1).any(axis=1))[:n_images]
    images = images.subset(keep)
    embeddings = method.class_embeddings()
    device = embeddings[0].device
    results, k = [], 0
    for x, target in image_loader(images, backbone, cfg):
        dense = backbone.dense_features(x.to(device))
        scores = method(dense, embeddings)[:, 1].float().cpu().masked_fill(target != 1, -math.inf)
        for b, c in enumerate(scores.argmax(dim=1).tolist()):
            pos_map, neg_map = similarity_maps(dense[b].float().cpu(), embeddings[0][c].float().cpu(),
                                               embeddings[1][c].float().cpu())
            r = map_correlation(pos_map, neg_map)
            with Image.open(images.paths[k]) as img:
                size = backbone.info.image_size
                picture = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)) / 255.0
            png = f"simmap_{k}_{_slug(classnames[c])}.png"
            plot_similarity_map(picture, pos_map, neg_map, f"{classnames[c]} — {cfg.method}, r = {r:.2f}",
                                out_dir / png)
            results.append({"image": str(images.paths[k]), "class": classnames[c], "png": png, "correlation": r,
                            "positive_mean": float(pos_map.mean()), "negative_mean": float(neg_map.mean())})
            k += 1
    return results


# ---- runners ---------------------------------------------------------------------------------------

def _side_kinds(method: Method) -> dict[str, str]:
    if isinstance(method, TwoSided):
        return {side: "prompt" if isinstance(getattr(method, side), PromptSide) else "free"
                for side in ("positive", "negative")}
    return {"positive": "hand prompt", "negative": "hand prompt"}


def _read_trained(path: Path) -> dict:
    """The trained.pt's content, read as tensors and plain data only; ProbeError for anything else (a file
    that is missing, damaged, not ablate's, or a pickle carrying code, which is refused, never run)."""
    if not path.is_file():
        raise ProbeError(f"--trained {path}: no such file")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol before refusing
            warnings.simplefilter("ignore", UserWarning)
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError (code or unknown types), damaged zip, truncated file...
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ProbeError(f"--trained {path} is not a trained.pt that ablate wrote; only tensors and plain data are "
                         f"read, never code ({type(err).__name__}: {reason})") from None
    if not isinstance(saved, dict) or not {"config", "classnames", "state"} <= saved.keys():
        raise ProbeError(f"--trained {path} is not a trained.pt that ablate wrote (no config, classnames and state)")
    return saved


def _trained(path: Path, device: str) -> tuple[TrialConfig, Backbone, Method, list[str]]:
    saved = _read_trained(path)
    cfg, backbone, method = load_trained(path, device)
    if method.class_embeddings() is None:
        raise ProbeError(f"{path}: {cfg.method} has no class embeddings to analyse (it is vision-only)")
    return cfg, backbone, method, saved["classnames"]


def analyze_trained(trained_pt: Path, out_dir: Path | None, n_images: int = 4, others: Sequence[Path] = (),
                    split: str = "test", device: str = "cpu") -> dict:
    """Similarities of one trained.pt (plus the same trial at other seeds: `others`); maps and JSON to `out_dir`.
    The world CLIPs they were trained on are built first where this machine lacks them (a command's step)."""
    saved = [_read_trained(Path(p))["config"] for p in (trained_pt, *others)]
    build_for(TrialConfig.model_validate(config, context=STORED) for config in saved)
    cfg, backbone, method, classnames = _trained(Path(trained_pt), device)
    with torch.no_grad():
        pos, neg = (e.float().cpu() for e in method.class_embeddings())
    result = {"trained": str(trained_pt), "method": cfg.method, "dataset": cfg.dataset, "backbone": cfg.backbone,
              "pretrained": cfg.pretrained, "seed": cfg.seed, "sides": _side_kinds(method), "classnames": classnames,
              "pos_vs_neg": learned_prompt_similarity(pos, neg)}
    if others:
        positives = [pos]
        for other in others:
            o_cfg, _, o_method, o_names = _trained(Path(other), device)
            if (o_cfg.method, o_names) != (cfg.method, classnames):
                raise ProbeError(f"{other} is not the same method on the same classes as {trained_pt}")
            with torch.no_grad():
                positives.append(o_method.class_embeddings()[0].float().cpu())
        result["cross_seed"] = cross_seed_similarity(positives)
    maps = draw_similarity_maps(cfg, backbone, method, classnames, Path(out_dir), n_images, split) \
        if out_dir is not None and n_images > 0 else []
    result["maps"] = maps
    result["map_correlation"] = float(np.nanmean([m["correlation"] for m in maps])) \
        if any(math.isfinite(m["correlation"]) for m in maps) else math.nan
    if out_dir is not None:
        write_json(Path(out_dir) / "analysis.json", result)
    return result


def _download_trained(client: MlflowClient, run_id: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(retried(client.download_artifacts, run_id, TRAINED, str(dst)))
    except TrackingError:  # the server stayed down: not the same as a run without the artifact
        raise
    except Exception as err:  # the artifact stores raise several types; all mean "not there"
        raise ProbeError(f"run {run_id} has no {TRAINED} artifact (sweeps log one per trial); "
                         f"or analyse a local file with --trained: {err}") from None


def _seed_siblings(client: MlflowClient, run: Run) -> list[Run]:
    """Finished runs of the same sweep whose parameters differ from `run`'s only in the seed."""
    parent = run.data.tags.get("mlflow.parentRunId")
    if not parent:
        return []
    mine = {k: v for k, v in run.data.params.items() if k != "seed"}
    runs = retried(client.search_runs, [run.info.experiment_id], filter_string=children_filter(parent),
                              max_results=10000)
    return [r for r in runs if r.info.run_id != run.info.run_id and r.info.status == "FINISHED"
            and r.data.params.get("seed") != run.data.params.get("seed")
            and {k: v for k, v in r.data.params.items() if k != "seed"} == mine]


def analyze_run(run_id: str, tracking_uri: str | None, out_dir: Path, n_images: int = 4, log: bool = True) -> dict:
    """`analyze_trained` on a trial run's trained.pt (and its seed siblings'); logged back to the run."""
    uri = resolve_tracking_uri(tracking_uri)
    client = connect_existing(uri)
    try:
        run = retried(client.get_run, run_id)
    except TrackingError:  # the server stayed down
        raise
    except Exception:  # MlflowException for unknown ids, with store-specific messages
        raise ProbeError(f"no MLflow run {run_id} at {uri}") from None
    siblings = _seed_siblings(client, run)
    with tempfile.TemporaryDirectory(prefix="ablate-analyze-") as tmp:
        trained = _download_trained(client, run_id, Path(tmp) / run_id)
        others = [_download_trained(client, r.info.run_id, Path(tmp) / r.info.run_id) for r in siblings]
        result = analyze_trained(trained, out_dir, n_images, others)
    result.update(run_id=run_id, trained=f"runs:/{run_id}/{trained.name}",
                  seed_runs=[r.info.run_id for r in siblings])
    write_json(Path(out_dir) / "analysis.json", result)
    if log:
        TrialRun(client, run_id, resumed=True).log_metrics(flat_metrics("prompts", result))
        retried(client.log_artifacts, run_id, str(out_dir), "analysis")
    return result


def format_analysis(result: dict) -> str:
    sides = result["sides"]
    lines = [f"{result['method']} on {result['dataset']} (positive: {sides['positive']}, negative: "
             f"{sides['negative']}), {len(result['classnames'])} classes",
             f"{'':<40} mean ± std (min, max)",
             f"{'cos(positive, negative), same class':<40} {format_stats(result['pos_vs_neg']['cosine'])}",
             f"{'cos(positive, positive), other classes':<40} "
             f"{format_stats(result['pos_vs_neg']['inter_class_positive'])}"]
    if result.get("cross_seed"):
        lines.append(f"{'cos(positive, positive), other seeds':<40} {format_stats(result['cross_seed']['cosine'])}"
                     f"  ({result['cross_seed']['n_seeds']} seeds)")
    if result["maps"]:
        lines.append(f"similarity maps: {len(result['maps'])} PNGs; mean r(positive map, negative map) = "
                     f"{result['map_correlation']:.3f}")
    return "\n".join(lines)


def run_for_trial(ctx: ProbeContext) -> dict | None:
    """`analyze_trained` on the trial's trained.pt, with `ctx.n_maps` maps; None for the vision-only
    baseline and any other method without class embeddings to analyse."""
    if not method_info(ctx.cfg.method).embeds_classes:
        return None
    assert ctx.trained is not None  # registered needs_trained: run_probes_for_trial passes the trained.pt
    return analyze_trained(ctx.trained, ctx.output("analysis"), n_images=ctx.n_maps)


def flat(result: dict) -> dict[str, float]:
    return {"analysis_pos_neg_cos": result["pos_vs_neg"]["cosine"]["mean"],
            "analysis_map_correlation": result["map_correlation"],
            "analysis_cross_seed_cos": result.get("cross_seed", {}).get("cosine", {}).get("mean", math.nan)}
