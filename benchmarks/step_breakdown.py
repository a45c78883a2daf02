"""Where a training step's time goes, per method, as JSON lines (milliseconds, median over steps).

Each method trains on cached features (what a `features: cached` trial does) and every part of the
step is timed on its own: reading the batch, the text encoder (class embeddings from the prompts),
the head (aggregation or linear layer), the loss, the backward pass (through head and text encoder)
and the optimizer. The image encoder's cost per batch, which the online path adds to every step,
is measured on the same batches for comparison. All methods run in one process.

    python benchmarks/step_breakdown.py [--backbone ablate-tiny-vit] [--steps 20] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from bench_methods import trained_methods

from ablate.spec import TrialConfig
from ablate.trainer import Trial

PARTS = ("data", "text_encoder", "head", "loss", "backward", "optimizer")


class Clock:
    """Wall time of consecutive parts of a step; synchronises CUDA so each part owns its kernels."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.times: dict[str, list[float]] = defaultdict(list)
        self.last = 0.0

    def start(self) -> None:
        self._sync()
        self.last = time.perf_counter()

    def lap(self, part: str) -> None:
        self._sync()
        now = time.perf_counter()
        self.times[part].append(now - self.last)
        self.last = now

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def medians_ms(self, parts: tuple[str, ...]) -> dict[str, float]:
        return {p: round(1000 * statistics.median(self.times[p]), 3) for p in parts}


def batches(trial: Trial, steps: int):
    epoch = 0
    while True:
        for batch in trial.loader("train", train=True, epoch=epoch):
            yield batch
            steps -= 1
            if steps == 0:
                return
        epoch += 1


def breakdown(trial: Trial, steps: int, warmup: int = 2) -> dict[str, float]:
    clock, method = Clock(trial.device), trial.method
    method.train()
    data = batches(trial, steps + warmup)
    for i in range(steps + warmup):
        if i == warmup:
            clock.times.clear()
        clock.start()
        inputs, targets = next(data)
        dense, targets = trial.dense(inputs), trial.arm.targets("train", targets)  # batches carry row indices
        clock.lap("data")
        with trial.autocast():
            embeddings = method.class_embeddings()
            clock.lap("text_encoder")
            logits = method.head(dense, embeddings)
            clock.lap("head")
        loss = trial.loss_fn(logits.float(), targets)
        clock.lap("loss")
        trial.optimizer.zero_grad(set_to_none=True)
        trial.scaler.scale(loss).backward()
        clock.lap("backward")
        trial.scaler.step(trial.optimizer)
        trial.scaler.update()
        clock.lap("optimizer")
    return clock.medians_ms(PARTS)


def image_encoder_ms(trial: Trial, steps: int) -> float:
    """The online path's extra cost per batch: the frozen encoder on the batch's images (decoding excluded)."""
    clock = Clock(trial.device)
    for i, (images, _) in enumerate(batches(trial, steps + 1)):
        images = images.to(trial.device)
        clock.start()
        with trial.autocast():
            trial.backbone.dense_features(images)
        clock.lap("image_encoder" if i else "warmup")
    return clock.medians_ms(("image_encoder",))["image_encoder"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ablate-tiny-vit")
    parser.add_argument("--methods", nargs="+", default=trained_methods(), choices=trained_methods())
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-ctx", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = Path(tempfile.mkdtemp(prefix="ablate-bench-"))
    common = dict(backbone=args.backbone, dataset="synthetic", dataset_options={"synthetic_images": args.images},
                  epochs=1,
                  batch_size=args.batch_size, n_ctx=args.n_ctx, augment=False, num_workers=0, device=args.device,
                  cache_dir=cache)
    online = Trial(TrialConfig(method="baseline", **common), progress=False)
    encoder = image_encoder_ms(online, args.steps)
    for method in args.methods:
        trial = Trial(TrialConfig(method=method, features="cached", **common), progress=False)
        parts = breakdown(trial, args.steps)
        total = sum(parts.values())
        print(json.dumps({
            "bench": "step_breakdown", "backbone": args.backbone, "method": method, "device": str(trial.device),
            "batch_size": args.batch_size, "n_ctx": args.n_ctx, "classes": len(trial.classnames),
            "threads": torch.get_num_threads(), "cached_step_ms": round(total, 3),
            **{f"{p}_ms": v for p, v in parts.items()},
            "share_pct": {p: round(100 * v / total, 1) for p, v in parts.items()},
            "online_adds_image_encoder_ms": encoder,
        }), flush=True)


if __name__ == "__main__":
    main()
