"""Larger batches on cached features: training time and test mAP against the spec's own batch size.

With cached features the image encoder is gone from the step; what is left is dominated by the prompt
text encoder, which runs over the 2N (or N) class prompts once per step however many images the batch
holds. So an epoch's cost falls almost in proportion to the batch size, and a cached epoch's lead over an
online one grows with it (`cache_speed.py --batch-size`). Whether the larger batch is free depends on the
optimisation, which is what this measures: each method trained at each batch size on the spec's base
config (one arm: the given method and label ratio), the learning rate scaled from the spec's batch size
by the chosen rule (free embeddings and linear heads follow, being multiples of it), same epochs.
Prints one JSON line per run: train time, seconds per epoch, test mAP at the best-validation epoch.

    python benchmarks/batch_scaling.py [--spec tune_specs/quickstart.yaml] [--methods dualcoop positivecoop ...]
        [--batch-sizes 32 128 256] [--lr-scaling sqrt|linear|none] [--label-ratio 0.5] [--epochs N]
        [--seed 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_methods import prompted_methods

from ablate.sweep.spec import arm_config, load_sweep_spec
from ablate.trainer import run_trial
from ablate.world.checkpoints import build_for

SCALING = {"none": lambda ratio: 1.0, "sqrt": lambda ratio: ratio**0.5, "linear": lambda ratio: ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=Path("tune_specs/quickstart.yaml"))
    parser.add_argument("--methods", nargs="+", default=prompted_methods())
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 256])
    parser.add_argument("--lr-scaling", choices=sorted(SCALING), default="sqrt")
    parser.add_argument("--label-ratio", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=None, help="default: the spec's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_sweep_spec(args.spec)
    for method in args.methods:
        base = arm_config(spec, {"method": method, "label_ratio": args.label_ratio, "seed": args.seed})
        if base.features != "cached":
            raise SystemExit(f"{args.spec}: base.features is '{base.features}'; this compares cached-feature runs")
        base = base.model_copy(update={"epochs": args.epochs or base.epochs, "num_workers": 0})
        build_for([base])  # the spec's world CLIP, built once before the timings (loading only finds it)
        reference_s = None
        for batch in args.batch_sizes:
            factor = SCALING[args.lr_scaling](batch / base.batch_size)
            cfg = base.model_copy(update={"batch_size": batch, "lr": base.lr * factor})
            metrics = run_trial(cfg, progress=False)
            per_epoch = metrics.train_time_s / max(metrics.epochs, 1)
            reference_s = reference_s or per_epoch
            print(json.dumps({
                "bench": "batch_scaling", "spec": str(args.spec), "method": method, "label_ratio": args.label_ratio,
                "seed": args.seed, "batch_size": batch, "lr": round(cfg.lr, 6), "lr_scaling": args.lr_scaling,
                "epochs": metrics.epochs, "train_time_s": round(metrics.train_time_s, 2),
                "epoch_s": round(per_epoch, 3), "epoch_speedup_vs_first": round(reference_s / per_epoch, 2),
                "test_map": round(metrics.test_map, 2), "last_test_map": round(metrics.last_test_map, 2),
                "best_epoch": metrics.best_epoch, "threads": torch.get_num_threads(),
            }), flush=True)


if __name__ == "__main__":
    main()
