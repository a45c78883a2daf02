"""Training epoch time with cached vs online dense features, and the validation mAP of both, as JSON lines.

For each backbone and method, one trial per mode is built from the same config (augmentation off,
same seed), then their epochs alternate in one process (online epoch 1, cached epoch 1, online
epoch 2, ...), so the ratio holds on a noisy machine. Epoch time is `train_epoch` only (the
training pass; validation is timed separately). The one-time cache build is reported apart.
A third trial, online with augmentation (RandAugment + Cutout: the reference recipe, which the
cached path cannot apply), is timed in the same rotation: `speedup_vs_reference_recipe`. A fourth,
cached with float32 storage, shows where an online/cached mAP gap comes from: float16 rounding
(~2e-4 relative) that training amplifies, not different features (`cached_f32_val_map`).
The text encoder's cost is per step, the image encoder's per image: `--batch-size` moves the ratio.

    python benchmarks/cache_speed.py [--backbones ablate-tiny-vit ablate-tiny-rn] [--methods dualcoop ...]
        [--epochs 3] [--images 240] [--image-size N] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_methods import default_lr, trained_methods

from ablate.spec import TrialConfig
from ablate.trainer import Trial


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def compare(cfg: TrialConfig) -> dict:
    online = Trial(cfg, progress=False)
    t0 = time.perf_counter()
    cached = Trial(cfg.model_copy(update={"features": "cached"}), progress=False)  # builds the caches
    build_s = time.perf_counter() - t0
    reference = Trial(cfg.model_copy(update={"augment": True}), progress=False)
    cached32 = Trial(cfg.model_copy(update={"features": "cached", "cache_dtype": "float32"}), progress=False)
    trials = {"online": online, "cached": cached, "reference": reference, "cached32": cached32}
    epochs: dict[str, list[float]] = {mode: [] for mode in trials}
    for epoch in range(cfg.epochs):
        for mode, trial in trials.items():
            epochs[mode].append(timed(lambda t=trial, e=epoch: t.train_epoch(e), trial.device))
    scored = ("online", "cached", "cached32")  # the reference's weights differ (augmentation): not compared
    val = {mode: {} for mode in scored}
    val_s = {mode: timed(lambda m=mode: val[m].update(trials[m].evaluate("val")), trials[mode].device)
             for mode in scored}
    online_s, cached_s = statistics.median(epochs["online"]), statistics.median(epochs["cached"])
    cache_bytes = sum(c.data_path.stat().st_size for c in {id(c): c for c in cached.caches.values()}.values())
    return {
        "online_epoch_s": round(online_s, 4), "cached_epoch_s": round(cached_s, 4),
        "epoch_speedup": round(online_s / cached_s, 1),
        "reference_epoch_s": round(statistics.median(epochs["reference"]), 4),
        "speedup_vs_reference_recipe": round(statistics.median(epochs["reference"]) / cached_s, 1),
        "online_val_pass_s": round(val_s["online"], 4), "cached_val_pass_s": round(val_s["cached"], 4),
        "online_val_map": round(val["online"]["mAP"], 2), "cached_val_map": round(val["cached"]["mAP"], 2),
        "val_map_diff": round(abs(val["online"]["mAP"] - val["cached"]["mAP"]), 3),
        "cached_f32_val_map": round(val["cached32"]["mAP"], 2),
        "val_map_diff_f32": round(abs(val["online"]["mAP"] - val["cached32"]["mAP"]), 3),
        "epochs_timed": cfg.epochs, "cache_build_s": round(build_s, 2), "cache_mb": round(cache_bytes / 2**20, 2),
        "train_images": len(online.splits["train"]), "val_images": len(online.splits["val"]),
        "image_size": online.backbone.info.image_size, "device": str(online.device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["ablate-tiny-vit", "ablate-tiny-rn"])
    parser.add_argument("--methods", nargs="+", default=trained_methods(), choices=trained_methods())
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-ctx", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's own")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = Path(tempfile.mkdtemp(prefix="ablate-bench-"))
    for backbone in args.backbones:
        for method in args.methods:
            cfg = TrialConfig(method=method, backbone=backbone, dataset="synthetic",
                              dataset_options={"synthetic_images": args.images},
                              epochs=args.epochs, warmup_epochs=0, batch_size=args.batch_size, n_ctx=args.n_ctx,
                              lr=default_lr(method), image_size=args.image_size, augment=False, num_workers=0,
                              device=args.device, cache_dir=cache)
            print(json.dumps({"bench": "cache_speed", "backbone": backbone, "method": method,
                              "batch_size": args.batch_size, "n_ctx": args.n_ctx, "threads": torch.get_num_threads(),
                              **compare(cfg)}), flush=True)


if __name__ == "__main__":
    main()
