"""The world CLIP's pre-training: one AdamW step over the dense weights of `ablate-tiny-vit` with torch's
per-tensor loop (its CPU default), `foreach` and `fused`, and the largest difference of the updated weights
from the loop's (the same update in another summation order). One JSON line per variant.

    python benchmarks/pretrain_optimizer.py [--model ablate-tiny-vit] [--reps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ablate.backbone import create_backbone


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ablate-tiny-vit")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_backbone(args.model, "none").model.train().requires_grad_(True)
    table = model.token_embedding.weight  # pre-training gives the token table to SparseAdam
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p is not table}
    grads = {n: torch.randn_like(p) for n, p in start.items()}
    reference: dict[str, torch.Tensor] = {}
    for variant in ({}, {"foreach": True}, {"fused": True}):
        params = [torch.nn.Parameter(v.clone()) for v in start.values()]
        for param, grad in zip(params, grads.values()):
            param.grad = grad
        opt = torch.optim.AdamW(params, lr=5e-4, betas=(0.9, 0.98), weight_decay=0.05, **variant)
        times = []
        for _ in range(args.reps):
            clock = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - clock)
        after = dict(zip(start, (p.detach() for p in params)))
        reference = reference or after
        diff = max((after[n] - reference[n]).abs().max().item() for n in after)
        print(json.dumps({"optimizer": "AdamW", "variant": next(iter(variant), "per-tensor loop"),
                          "params": sum(v.numel() for v in start.values()), "threads": args.threads,
                          "median_s_per_step": round(statistics.median(times), 4), "max_abs_diff": diff}))


if __name__ == "__main__":
    main()
