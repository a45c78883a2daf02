"""Seconds per training epoch for every method on the tiny configs, printed as JSON lines.

All methods train the same synthetic split in one process (online features, no augmentation),
so their ratios hold on a noisy machine. `--device cuda` measures the CUDA path (autocast).

    python benchmarks/epoch_time.py [--backbones ablate-tiny-vit ablate-tiny-rn] [--epochs 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import tempfile

from bench_methods import trained_methods

from ablate.spec import TrialConfig
from ablate.trainer import run_trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["ablate-tiny-vit", "ablate-tiny-rn"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="ablate-bench-")
    for backbone in args.backbones:
        for method in trained_methods():
            cfg = TrialConfig(method=method, backbone=backbone, dataset="synthetic",
                              dataset_options={"synthetic_images": args.images},
                              epochs=args.epochs, warmup_epochs=0, batch_size=args.batch_size, augment=False,
                              num_workers=0, n_ctx=16, lr=3e-4, device=args.device, cache_dir=cache)
            metrics = run_trial(cfg, progress=False)
            # history time_s is cumulative (train + validation) per epoch
            times = [row["time_s"] for row in metrics.history]
            per_epoch = [b - a for a, b in zip([0.0, *times[:-1]], times)]
            print(json.dumps({"bench": "epoch_time", "backbone": backbone, "method": method,
                              "device": metrics.device, "train_images": metrics.split_sizes["train"],
                              "batch_size": args.batch_size, "n_ctx": 16,
                              "epoch_s": [round(t, 3) for t in per_epoch],
                              "trainable_params": metrics.trainable_params}), flush=True)


if __name__ == "__main__":
    main()
