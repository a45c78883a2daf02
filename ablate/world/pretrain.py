"""Contrastive pre-training of a tiny open_clip model on the synthetic world's captions.

Both towers start from random weights and learn from (image, caption) pairs with CLIP's InfoNCE
loss. With `captions="presence"` the text tower never sees a negation (like web-scale CLIP);
with `captions="negation"` it does (seed 002's recipe), so the two checkpoints answer whether a
negation prior in pre-training helps learned negative prompts.

The result is a plain open_clip state dict (`torch.load(weights_only=True)`-safe) that
`create_backbone(model, pretrained=path)` loads, plus `<checkpoint>.json`: the config, the world's
hash, the loss curve and zero-shot mAP before and after. Where a recipe's checkpoint is cached, and
the step that builds it, are ablate.world.checkpoints.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..backbone import Backbone, create_backbone
from ..data.base import DataError
from ..data.transforms import build_transform
from ..errors import ConfigError
from ..files import file_sha256, write_atomically
from ..metrics import multilabel_metrics
from ..progress import progress_bar
from .captions import STYLES
from .dataset import (
    load_captions,
    load_world,
    world_hash,
)
from .recipe import PretrainConfig, alias_of

ZERO_SHOT_PROMPT = "a photo of a {}."
RECIPE_VERSION = 3  # bump when the training code changes what a config produces: cached checkpoints are redone
TIMED_STEPS = 4  # steps timed (after the first, which warms up) to say how long the whole build takes here
_BETAS = (0.9, 0.98)  # CLIP's: a shorter second-moment memory keeps large-batch contrastive training stable


# ---- evaluation ---------------------------------------------------------------------------------


def _load_images(paths: list[Path], backbone: Backbone) -> Tensor:
    """All images of a split as one normalised tensor, preprocessed exactly as the trainer does."""
    info = backbone.info
    transform = build_transform(info.image_size, info.mean, info.std, train=False, augment=False)
    out = []
    for p in paths:
        with Image.open(p) as img:
            out.append(transform(img.convert("RGB")))
    return torch.stack(out)


@torch.no_grad()
def _zero_shot(backbone: Backbone, images: Tensor, labels: np.ndarray, classnames: list[str],
               batch: int = 256) -> float:
    """mAP of the cosine between each image's global feature and the hand prompt of each class."""
    model, was_training = backbone.model, backbone.model.training
    model.eval()
    text = F.normalize(backbone.encode_text([ZERO_SHOT_PROMPT.format(c) for c in classnames]), dim=-1)
    feats = torch.cat([F.normalize(model.encode_image(x), dim=-1) for x in images.split(batch)])
    model.train(was_training)
    scores = ((feats @ text.T + 1) / 2).numpy()  # cosine -> [0, 1]; mAP only looks at the ranking
    return multilabel_metrics(scores, labels)["mAP"]


def zero_shot_map(backbone: Backbone, world_root: Path, split: str = "test") -> float:
    """Zero-shot mAP (x100) of `backbone` on a world split with prompts "a photo of a {class}."."""
    data = load_world(world_root, split)
    return _zero_shot(backbone, _load_images(data.paths, backbone), data.labels, data.classnames)


# ---- training -----------------------------------------------------------------------------------


def _tokens(backbone: Backbone, captions: dict[str, list[str]], paths: list[Path]) -> Tensor:
    """[images, variants, L] token ids, cut after the longest caption's EOT (exact: causal mask)."""
    per_image = [captions[p.name] for p in paths]
    n_var = min(len(c) for c in per_image)
    flat = backbone.tokenizer([c for caps in per_image for c in caps[:n_var]])
    length = int(flat.argmax(dim=-1).max()) + 1
    return flat[:, :length].reshape(len(paths), n_var, length)


def _optimizers(model: nn.Module, table: nn.Embedding, cfg: PretrainConfig) -> list[torch.optim.Optimizer]:
    """AdamW for the dense weights; SparseAdam for the token table (49k rows), of which a batch
    touches a few dozen rows (a dense update of it would cost more than the forward pass)."""
    table.sparse = True
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p is table.weight:
            continue
        (no_decay if p.ndim < 2 or "embedding" in name or name == "logit_scale" else decay).append(p)
    # fused: one kernel for every tensor, the same update as the per-tensor loop torch picks on CPU, which
    # took ~20x longer (benchmarks/pretrain_optimizer.py)
    dense = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=_BETAS, fused=True)
    return [dense, torch.optim.SparseAdam([table.weight], lr=cfg.lr, betas=_BETAS)]


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine to zero."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def _train(backbone: Backbone, images: Tensor, tokens: Tensor, cfg: PretrainConfig, val: tuple,
           progress: bool) -> tuple[list[float], list[float]]:
    """Train both towers in place -> (mean loss per epoch, val zero-shot mAP per epoch)."""
    model = backbone.model.train().requires_grad_(True)  # the Backbone wrapper froze it
    table = backbone.text.token_embedding
    assert isinstance(table, nn.Embedding)  # open_clip's text towers embed tokens with one
    optimizers = _optimizers(model, table, cfg)
    steps_per_epoch = len(images) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: _lr_factor(s, total, cfg.warmup_steps))
                  for o in optimizers]
    loss_fn = open_clip.ClipLoss()
    gen = torch.Generator().manual_seed(cfg.seed)
    losses, val_maps = [], []
    bar = progress_bar(total=total, desc=f"pretrain {cfg.captions}", disable=not progress, leave=False)
    clock = _StepClock(total, cfg, progress)
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(images), generator=gen)
        epoch_loss = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            variant = torch.randint(tokens.shape[1], (len(idx),), generator=gen)
            tok = tokens[idx, variant]
            # the Backbone's EOT-truncated text path, with gradients: same output as encode_text
            text = backbone.encode_embeddings(table(tok), tok.argmax(dim=-1))
            loss = loss_fn(F.normalize(model.encode_image(images[idx]), dim=-1), F.normalize(text, dim=-1),
                           model.logit_scale.exp())
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o, s in zip(optimizers, schedulers):
                o.step()
                s.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))  # as CLIP: temperature at most 100
            epoch_loss += loss.item()
            clock.tick()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        losses.append(epoch_loss / steps_per_epoch)
        val_maps.append(_zero_shot(backbone, *val))
        if progress:
            tqdm.write(f"pretrain {cfg.captions}: epoch {len(losses)}/{cfg.epochs}  loss {losses[-1]:.4f}  "
                       f"val zero-shot mAP {val_maps[-1]:.2f}", file=sys.stderr)
    bar.close()
    table.sparse = False
    model.eval().requires_grad_(False)
    return losses, val_maps


class _StepClock:
    """Times the first steps of pre-training and says once, before the rest, what is being built, about how
    long it takes on this machine and that it is built once (the first run's longest step)."""

    def __init__(self, total: int, cfg: PretrainConfig, enabled: bool) -> None:
        self.total, self.cfg, self.enabled = total, cfg, enabled
        self.steps, self.start = 0, 0.0

    def tick(self) -> None:
        self.steps += 1
        if not self.enabled or self.steps > TIMED_STEPS + 1:
            return
        if self.steps == 1:  # the first step warms up (allocations, kernels): not a typical step
            self.start = time.perf_counter()
        elif self.steps == TIMED_STEPS + 1:
            per_step = (time.perf_counter() - self.start) / TIMED_STEPS
            print(estimate_line(self.cfg, self.total, per_step), file=sys.stderr, flush=True)


def estimate_line(cfg: PretrainConfig, total: int, per_step: float) -> str:
    """One line: what pre-training builds, roughly how long here (from timed steps), and that it happens once."""
    minutes = total * per_step / 60
    took = f"about {minutes:.0f} min" if minutes >= 1.5 else f"about {total * per_step:.0f} s"
    return (f"pre-training the world's CLIP ({cfg.model} on {cfg.captions} captions, {total} steps): {took} on "
            f"this machine ({per_step:.2f} s a step over its first steps); built once, then cached for every "
            "later run")


def manifest_path(checkpoint: Path) -> Path:
    return Path(checkpoint).with_suffix(".json")


def pretrain(world_root: Path, out: Path, cfg: PretrainConfig, progress: bool = True) -> dict:
    """Pre-train `cfg.model` on the world at `world_root`; write checkpoint `out` + manifest; return it."""
    if cfg.captions not in STYLES:
        raise ConfigError(f"captions must be one of {STYLES}, got {cfg.captions!r}")
    with torch.random.fork_rng(devices=[]):  # a trial that triggers pre-training keeps its own random stream
        return _pretrain(Path(world_root), Path(out).expanduser().absolute(), cfg, progress)


def _pretrain(world_root: Path, out: Path, cfg: PretrainConfig, progress: bool) -> dict:
    start = time.time()
    corpus, val, test = (load_world(world_root, s) for s in ("pretrain", "val", "test"))
    if len(corpus.paths) < cfg.batch_size:
        raise DataError(f"the world at {world_root} has {len(corpus.paths)} pre-training images, fewer than one "
                        f"batch ({cfg.batch_size}); lower --batch-size or build it with a larger --n-pretrain")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # the random init
    backbone = create_backbone(cfg.model, "none")
    images = _load_images(corpus.paths, backbone)
    tokens = _tokens(backbone, load_captions(world_root, "pretrain", cfg.captions), corpus.paths)
    val_data = (_load_images(val.paths, backbone), val.labels, val.classnames)
    test_data = (_load_images(test.paths, backbone), test.labels, test.classnames)
    random_map = _zero_shot(backbone, *test_data)

    losses, val_maps = _train(backbone, images, tokens, cfg, val_data, progress)
    write_atomically(out, lambda p: torch.save(backbone.model.state_dict(), p))
    # scored through the public loading path, so the file itself is what is measured
    loaded = create_backbone(cfg.model, str(out))
    manifest = {
        "config": asdict(cfg),
        "alias": alias_of(cfg),
        "world": {"root": str(Path(world_root).absolute()), "hash": world_hash(world_root)},
        "checkpoint": out.name,
        "sha256": file_sha256(out),  # verified on every use: a truncated or replaced file is rebuilt
        "pretrain_images": len(images),
        "loss_curve": losses,
        "val_zero_shot_map": val_maps,
        "test_zero_shot_map": {"random": random_map, "pretrained": _zero_shot(loaded, *test_data)},
        "seconds": round(time.time() - start, 1),
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__},
    }
    write_atomically(manifest_path(out), lambda p: p.write_text(json.dumps(manifest, indent=1)))
    return manifest
