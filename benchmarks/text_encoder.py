"""Prompt text encoder cut after the longest EOT vs the full 77 tokens: time ratio and max abs difference.

With the causal mask the EOT output depends only on the tokens up to it, so `encode_embeddings`
cuts every sequence after the longest EOT. Here the 2N prompts of a DualCoOp model (positive and
negative, class-specific contexts) go through the frozen text encoder both ways, alternating in
one process: forward only (what evaluation does once per pass) and forward + backward to the
contexts (what every training step does). The difference is taken in float32.

    python benchmarks/text_encoder.py [--backbones ablate-tiny-vit] [--datasets synthetic voc2007 coco2014]
        [--n-ctx 16] [--reps 7] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from ablate.backbone import Backbone, create_backbone
from ablate.data.classnames import class_names
from ablate.methods import TwoSided, create_method
from ablate.spec import TrialConfig


def prompts(method: TwoSided) -> tuple[list, torch.Tensor]:
    sides = [method.positive.prompts, method.negative.prompts]
    return sides, torch.cat([s.eot for s in sides])


def encode(backbone: Backbone, method: TwoSided, truncate: bool) -> torch.Tensor:
    sides, eot = prompts(method)
    return backbone.encode_embeddings(torch.cat([s() for s in sides]), eot, truncate=truncate)


def timed(backbone: Backbone, method: TwoSided, truncate: bool, backward: bool, amp: bool) -> float:
    device = next(method.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.float16) if amp else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.set_grad_enabled(backward), autocast:
        out = encode(backbone, method, truncate)
    if backward:
        out.float().sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench(backbone: Backbone, dataset: str, n_ctx: int, reps: int, amp: bool) -> dict:
    cfg = TrialConfig(method="dualcoop", dataset=dataset, n_ctx=n_ctx)
    device = next(backbone.parameters()).device
    method = create_method(cfg, backbone, class_names(dataset)).to(device)
    with torch.no_grad():
        cut, full = encode(backbone, method, True), encode(backbone, method, False)
    times: dict[tuple[bool, bool], list[float]] = {(t, b): [] for t in (True, False) for b in (False, True)}
    for rep in range(reps + 1):  # the first round warms up
        for key in times:
            elapsed = timed(backbone, method, *key, amp)
            if rep:
                times[key].append(elapsed)
    ms = {key: 1000 * statistics.median(v) for key, v in times.items()}
    _, eot = prompts(method)
    return {
        "sequences": len(eot), "tokens_truncated": int(eot.max()) + 1,
        "tokens_full": method.positive.prompts.tokens.shape[1],
        "forward_ms": {"truncated": round(ms[True, False], 3), "full": round(ms[False, False], 3)},
        "forward_speedup": round(ms[False, False] / ms[True, False], 2),
        "train_step_ms": {"truncated": round(ms[True, True], 3), "full": round(ms[False, True], 3)},
        "train_step_speedup": round(ms[False, True] / ms[True, True], 2),
        "max_abs_diff": float((cut - full).abs().max()), "max_abs_value": float(full.abs().max()),
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
                print(json.dumps({"bench": "text_encoder", "backbone": name, "dataset": dataset, "n_ctx": n_ctx,
                                  "device": args.device, "autocast": amp, "threads": args.threads,
                                  **bench(backbone, dataset, n_ctx, args.reps, amp)}), flush=True)


if __name__ == "__main__":
    main()
