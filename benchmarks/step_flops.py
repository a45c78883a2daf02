"""Counted FLOPs of one training step, online vs cached, at any model scale (no GPU needed).

The cached path removes the frozen image encoder (paid per image) and keeps the prompt text encoder's
forward + backward over the class prompts (paid per step), the head and the loss. Counting both with
torch's FlopCounterMode on a real step gives the ceiling of the cached-vs-online epoch ratio for a
backbone, image size, class count and batch size, without running the full-size model's training:
ratio = (cached step + batch x image encoder) / cached step. Wall-clock ratios are lower where a step
has fixed overheads (kernel launches, Python), higher where image decoding and augmentation cost time.

    python benchmarks/step_flops.py [--backbone RN101] [--image-size 448] [--dataset coco2014]
        [--methods dualcoop positivecoop negativecoop dualembed baseline] [--batch-sizes 32 128 256]
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_methods import prompted_methods, trained_methods
from torch.utils.flop_counter import FlopCounterMode

from ablate.backbone import Backbone, create_backbone
from ablate.data.classnames import class_names
from ablate.loss import AsymmetricLoss
from ablate.methods import create_method
from ablate.spec import TrialConfig


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def cached_step_flops(backbone: Backbone, cfg: TrialConfig, dense: torch.Tensor) -> tuple[int, int]:
    """(text encoder forward + backward per step, head + loss forward + backward per image)."""
    method = create_method(cfg, backbone, class_names(cfg.dataset))
    loss_fn = AsymmetricLoss(cfg.loss)
    targets = torch.randint(0, 2, (dense.shape[0], method.n_classes)).float()

    def text() -> None:
        embeddings = method.class_embeddings()
        if embeddings is not None and any(e.requires_grad for e in embeddings):
            sum(e.sum() for e in embeddings).backward()

    embeddings = method.class_embeddings()  # the head's inputs, counted above as the text encoder's
    if embeddings is not None:
        embeddings = tuple(e.detach().requires_grad_(e.requires_grad) for e in embeddings)

    def head() -> None:
        loss_fn(method(dense, embeddings), targets).backward()

    return counted(text), counted(head) // dense.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="RN101")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--dataset", default="coco2014")
    parser.add_argument("--n-ctx", type=int, default=16)
    parser.add_argument("--methods", nargs="+", default=trained_methods())
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 256])
    args = parser.parse_args()
    backbone = create_backbone(args.backbone, "none", args.image_size)  # FLOPs do not depend on the weights
    images = torch.randn(1, 3, args.image_size, args.image_size)
    out: list[torch.Tensor] = []
    image_flops = counted(lambda: out.append(backbone.dense_features(images)))
    dense = out[0].repeat(4, 1, 1)
    for method in args.methods:
        for csc in ((True, False) if method in prompted_methods() else (True,)):
            cfg = TrialConfig(method=method, dataset=args.dataset, backbone=args.backbone, n_ctx=args.n_ctx, csc=csc)
            text, head = cached_step_flops(backbone, cfg, dense)
            ratios = {str(b): round((text + b * (head + image_flops)) / (text + b * head), 2)
                      for b in args.batch_sizes}
            print(json.dumps({
                "bench": "step_flops", "backbone": args.backbone, "image_size": args.image_size,
                "dataset": args.dataset, "classes": len(class_names(args.dataset)), "method": method,
                "csc": csc if method in prompted_methods() else None,
                "n_ctx": args.n_ctx, "image_encoder_gflop_per_image": round(image_flops / 1e9, 2),
                "text_encoder_gflop_per_step": round(text / 1e9, 2), "head_gflop_per_image": round(head / 1e9, 3),
                "online_over_cached_by_batch": ratios,
            }), flush=True)


if __name__ == "__main__":
    main()
