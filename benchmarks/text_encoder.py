"""Prompt text encoder cut after the longest EOT vs the full 77 tokens: time ratio and max abs difference.

With the causal mask the EOT output depends only on the tokens up to it, so `encode_embeddings`
cuts every sequence after the longest EOT. Here the 2N prompts of a DualCoOp model (positive and
negative, class-specific contexts) go through the frozen text encoder both ways, alternating in
one process: forward only (what evaluation does once per pass) and forward + backward to the
contexts (what every training step does). The difference is taken in float32.

A second line per dataset does the same for one shared context (`csc: false`): every class prompt
starts with the same start token + context, so `encode_shared_prefix` runs those tokens once and the
classes' own tokens attend to them, against the truncated per-class encoding (`shared_prefix_*`).

    python benchmarks/text_encoder.py [--backbones ablate-tiny-vit] [--datasets synthetic voc2007 coco2014]
        [--n-ctx 16] [--reps 7] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable

import torch

from ablate.backbone import Backbone, create_backbone
from ablate.data.classnames import class_names
from ablate.methods import create_method
from ablate.methods.two_sided import TwoSided
from ablate.spec import TrialConfig


def prompts(method: TwoSided) -> tuple[list, torch.Tensor]:
    sides = [method.positive.prompts, method.negative.prompts]
    return sides, torch.cat([s.eot for s in sides])


def encode(backbone: Backbone, method: TwoSided, truncate: bool) -> torch.Tensor:
    sides, eot = prompts(method)
    return backbone.encode_embeddings(torch.cat([s() for s in sides]), eot, truncate=truncate)


def time_ways(ways: dict[str, Callable[[], torch.Tensor]], device: torch.device, reps: int, amp: bool) -> dict:
    """Median ms of each way, forward only and forward + backward to the contexts, run in rotation
    (the first round warms up) -> {(way, backward): ms}."""

    def once(way: str, backward: bool) -> float:
        autocast = torch.autocast("cuda", dtype=torch.float16) if amp else contextlib.nullcontext()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.set_grad_enabled(backward), autocast:
            out = ways[way]()
        if backward:
            out.float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times: dict[tuple[str, bool], list[float]] = {(w, b): [] for w in ways for b in (False, True)}
    for rep in range(reps + 1):
        for key in times:
            elapsed = once(*key)
            if rep:
                times[key].append(elapsed)
    return {key: 1000 * statistics.median(v) for key, v in times.items()}


def summary(ms: dict, fast: str, slow: str) -> dict:
    return {
        "forward_ms": {w: round(ms[w, False], 3) for w in (fast, slow)},
        "forward_speedup": round(ms[slow, False] / ms[fast, False], 2),
        "train_step_ms": {w: round(ms[w, True], 3) for w in (fast, slow)},
        "train_step_speedup": round(ms[slow, True] / ms[fast, True], 2),
    }


def bench_truncation(backbone: Backbone, dataset: str, n_ctx: int, reps: int, amp: bool) -> dict:
    cfg = TrialConfig(method="dualcoop", dataset=dataset, n_ctx=n_ctx)
    device = next(backbone.parameters()).device
    method = create_method(cfg, backbone, class_names(dataset)).to(device)
    ways = {"truncated": lambda: encode(backbone, method, True), "full": lambda: encode(backbone, method, False)}
    with torch.no_grad():
        cut, full = ways["truncated"](), ways["full"]()
    _, eot = prompts(method)
    return {
        "comparison": "truncation", "sequences": len(eot), "tokens_truncated": int(eot.max()) + 1,
        "tokens_full": method.positive.prompts.tokens.shape[1],
        **summary(time_ways(ways, device, reps, amp), "truncated", "full"),
        "max_abs_diff": float((cut - full).abs().max()), "max_abs_value": float(full.abs().max()),
    }


def bench_shared_prefix(backbone: Backbone, dataset: str, n_ctx: int, reps: int, amp: bool) -> dict:
    cfg = TrialConfig(method="positivecoop", dataset=dataset, n_ctx=n_ctx, csc=False)
    device = next(backbone.parameters()).device
    side = create_method(cfg, backbone, class_names(dataset)).to(device).positive.prompts
    ways = {"shared_prefix": lambda: backbone.encode_shared_prefix(*side.shared_and_own(), side.eot),
            "per_class": lambda: backbone.encode_embeddings(side(), side.eot)}
    with torch.no_grad():
        shared, per_class = ways["shared_prefix"](), ways["per_class"]()
    return {
        "comparison": "shared_prefix", "sequences": len(side.eot), "shared_tokens": 1 + n_ctx,
        "tokens_truncated": int(side.eot.max()) + 1,
        **summary(time_ways(ways, device, reps, amp), "shared_prefix", "per_class"),
        "max_abs_diff": float((shared - per_class).abs().max()), "max_abs_value": float(per_class.abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["ablate-tiny-vit"])
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "voc2007", "coco2014"])
    parser.add_argument("--n-ctx", type=int, nargs="+", default=[16])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    amp = args.device.startswith("cuda")
    for name in args.backbones:
        backbone = create_backbone(name, "none", None, args.device)  # timing does not depend on the weights
        for dataset in args.datasets:
            for n_ctx in args.n_ctx:
                for measure in (bench_truncation, bench_shared_prefix):
                    print(json.dumps({"bench": "text_encoder", "backbone": name, "dataset": dataset, "n_ctx": n_ctx,
                                      "device": args.device, "autocast": amp, "threads": args.threads,
                                      **measure(backbone, dataset, n_ctx, args.reps, amp)}), flush=True)


if __name__ == "__main__":
    main()
