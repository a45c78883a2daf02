"""K arms trained as one pack (one image stream) vs the same K arms one after another, printed as JSON lines.

A real-size frozen encoder with random weights (speed does not depend on them) at its real resolution,
the reference augmentation (random-colour Cutout + RandAugment) on online features, decoding in one
worker process: what the paper specs run. Two kinds of arms: text-free (baseline / dualembed at
several label ratios) and a mix of the three prompt methods (dualcoop, positivecoop, negativecoop).
Each arm is first trained alone, then the first K arms as a pack, for each K.

Per K and kind it prints: wall and CPU-time (user + sys of this process and its loader workers) of the
K arms alone, summed, and of the pack, and their ratios; the ratio the arms' own per-step figures
predict (from the alone runs: stream time s_i and own compute o_i, predicted = sum(s_i + o_i) /
(mean(s) + sum(o_i))); and per arm, the pack's estimate of what the arm costs alone (train_time_s:
the stream's time + its own compute; wall: the pack's wall less the other arms' own compute) against
the arm alone, and the same estimate in CPU seconds (a busy machine stretches wall times unevenly).

    python benchmarks/pack_speed.py [--backbone RN50] [--image-size 224] [--images 128] [--epochs 2]
        [--ks 1 4 8] [--threads 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

from ablate.spec import TrialConfig
from ablate.trainer import run_pack

KINDS = {
    "text_free": [("baseline", {"lr": 2e-2}), ("dualembed", {"lr": 2e-2})],
    "prompt_mix": [("dualcoop", {}), ("positivecoop", {"prompt_offset": "normal"}), ("negativecoop", {})],
}
RATIOS = (0.1, 0.3, 0.5, 0.7, 0.9, 0.2, 0.4, 0.6)


def arms(kind: str, k: int, base: dict) -> list[TrialConfig]:
    """k arms of one stream: the kind's methods in turn, each at its own label ratio."""
    methods = KINDS[kind]
    return [TrialConfig(**base, method=methods[i % len(methods)][0], label_ratio=RATIOS[i % len(RATIOS)],
                        **methods[i % len(methods)][1]) for i in range(k)]


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed_pack(cfgs: list[TrialConfig], folder: Path) -> dict:
    """Train `cfgs` as one pack; wall and CPU seconds, and per arm its stream and own seconds."""
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    pack, results = run_pack(cfgs, folder)
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    assert all(r is not None for r in results), [str(a.error) for a in pack.arms]
    own = [a.own_s for a in pack.arms]  # all of each arm's own work, as the sweep's cost estimate counts it
    return {"wall_s": wall, "cpu_s": cpu, "stream_s": [a.shared_s for a in pack.arms],
            "own_train_s": [a.elapsed - a.shared_s for a in pack.arms], "own_s": own,
            "train_time_s": [r.train_time_s for r in results if r is not None],
            "alone_wall_estimate_s": [wall - (sum(own) - o) for o in own]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="RN50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=128, help="train images of the generated set")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="ablate-pack-speed-"))
    base = dict(dataset="synthetic", dataset_options={"synthetic_images": args.images}, backbone=args.backbone,
                pretrained="none",
                image_size=args.image_size, epochs=args.epochs, warmup_epochs=1, batch_size=args.batch_size,
                augment=True, augment_recipe="reference", resize="bilinear", num_workers=1, n_ctx=16,
                device=args.device, cache_dir=str(scratch / "cache"))
    # validates the flags, generates the data set and loads the code paths once before anything is timed
    run_pack(arms(next(iter(args.kinds)), 1, {**base, "epochs": 1}), scratch / "warm-up")
    for kind in args.kinds:
        largest = arms(kind, max(args.ks), base)
        alone = [timed_pack([cfg], scratch / f"{kind}-alone-{i}") for i, cfg in enumerate(largest)]
        for k in args.ks:
            packed = timed_pack(largest[:k], scratch / f"{kind}-pack-{k}")
            solo = alone[:k]
            wall, cpu = sum(a["wall_s"] for a in solo), sum(a["cpu_s"] for a in solo)
            streams, owns = [a["stream_s"][0] for a in solo], [a["own_train_s"][0] for a in solo]
            predicted = sum(s + o for s, o in zip(streams, owns)) / (sum(streams) / k + sum(owns))
            print(json.dumps({
                "bench": "pack_speed", "kind": kind, "k": k, "methods": [c.method for c in largest[:k]],
                "backbone": args.backbone, "image_size": args.image_size, "train_images": args.images,
                "epochs": args.epochs, "device": args.device, "threads": args.threads, "cpus": os.cpu_count(),
                "alone_wall_s": round(wall, 1), "pack_wall_s": round(packed["wall_s"], 1),
                "wall_ratio": round(wall / packed["wall_s"], 2),
                "alone_cpu_s": round(cpu, 1), "pack_cpu_s": round(packed["cpu_s"], 1),
                "cpu_ratio": round(cpu / packed["cpu_s"], 2),
                "predicted_ratio": round(predicted, 2),
                "measured_over_predicted": round(wall / packed["wall_s"] / predicted, 2),
                "per_arm_train_time_estimate_over_alone": [
                    round(e / a["train_time_s"][0], 3) for e, a in zip(packed["train_time_s"], solo)],
                "per_arm_wall_estimate_over_alone": [
                    round(e / a["wall_s"], 3) for e, a in zip(packed["alone_wall_estimate_s"], solo)],
                # the same estimate in CPU seconds (robust to a busy machine): the pack's CPU time less the
                # other arms' share of it (their own wall time's share of the pack's wall time)
                "per_arm_cpu_estimate_over_alone": [
                    round((packed["cpu_s"] * (1 - (sum(packed["own_s"]) - o) / packed["wall_s"])) / a["cpu_s"], 3)
                    for o, a in zip(packed["own_s"], solo)],
            }), flush=True)


if __name__ == "__main__":
    main()
