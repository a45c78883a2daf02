"""One trial: a TrialConfig in, metrics out. The CLI and the sweep layer both call `run_trial`.

Model selection uses the validation split carved from the (partially labelled) training split;
the test split is scored only with the parameters of the best-validation epoch and of the last.
A checkpoint (trainable parameters, optimizer, best-so-far, history) is written after every
epoch; every epoch's randomness is derived from (seed, epoch), so a resumed trial repeats the
uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler
from tqdm.auto import tqdm

from .backbone import Backbone
from .data import MultiLabelDataset, check_root, load_splits
from .data.base import write_atomically
from .data.features import CachedFeatures, FeatureCache, check_features_mode, ensure_trial_caches
from .data.transforms import build_transform
from .errors import AblateError, ConfigError, TrialDiverged, worker_message
from .loss import AsymmetricLoss
from .methods import create_method
from .methods.base import FREE, LINEAR, Method
from .metrics import multilabel_metrics
from .output import check_free_space, ensure_writable_folder, exclusive_folder
from .prompts import PROMPT
from .result import TrialResult
from .runtime import backbone_from_config, resolve_device, seed_everything
from .spec import TrialConfig

CHECKPOINT = "checkpoint.pt"
# the per-epoch metric that picks the reported epoch, by `select_on`
SELECTION_METRIC = {"val": "val_map", "test": "epoch_test_map"}
Reporter = Callable[[dict, Path | None], None]
# the key of the epoch's per-step training losses in what a Reporter gets (not in the history)
STEP_LOSSES = "step_losses"
# a parameter whose norm grew this many times its initial one (or 1) is warned about: the lr is far too high
GROWTH_WARNING = 1e6


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % 2**31


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def build_optimizer(method: Method, cfg: TrialConfig) -> torch.optim.SGD:
    mult = {PROMPT: cfg.prompt_lr_mult, FREE: cfg.free_lr_mult, LINEAR: cfg.linear_lr_mult}
    linear_decay = cfg.weight_decay if cfg.linear_weight_decay is None else cfg.linear_weight_decay
    decay = {PROMPT: cfg.weight_decay, FREE: cfg.free_weight_decay, LINEAR: linear_decay}
    by_kind = method.param_groups()
    unknown = set(by_kind) - set(mult)
    if unknown:
        raise TypeError(f"{type(method).__name__} declares parameter kinds {sorted(unknown)}; the trainer gives "
                        f"learning rates to {sorted(mult)}")
    groups: list[dict[str, Any]] = [
        {"params": params, "kind": kind, "lr_mult": mult[kind], "weight_decay": decay[kind]}
        for kind, params in by_kind.items() if params]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def lr_at(epoch: int, cfg: TrialConfig) -> float:
    """Base lr of a (0-indexed) epoch: constant warm-up, then a cosine stepped per epoch that starts at
    `lr` right after warm-up. after_warmup: it reaches 0 at the end (period epochs - warmup);
    all_epochs: its period is all epochs, so it ends above 0 (the reference's T_max = max epochs)."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    span = cfg.epochs if cfg.cosine_span == "all_epochs" else cfg.epochs - cfg.warmup_epochs
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / max(span, 1)))


def set_lr(optimizer: torch.optim.Optimizer, epoch: int, cfg: TrialConfig) -> None:
    """Each group at the base lr x its kind's multiplier; in warm-up with `same_for_all`, every group at
    warmup_lr itself."""
    base = lr_at(epoch, cfg)
    alike = epoch < cfg.warmup_epochs and cfg.warmup_rule == "same_for_all"
    for group in optimizer.param_groups:
        group["lr"] = base if alike else base * group["lr_mult"]


def trainable_state(method: Method) -> dict[str, Tensor]:
    return {k: p.detach().cpu().clone() for k, p in method.named_parameters() if p.requires_grad}


def _norms(method: Method) -> dict[str, float]:
    """Norm of each trainable parameter, in float64: float32 squares overflow long before the values do."""
    return {k: p.detach().double().norm().item() for k, p in method.named_parameters() if p.requires_grad}


def _batches(loader: DataLoader):
    """The loader's batches; an ablate error from a worker process comes back as its own one line."""
    try:
        yield from loader
    except AblateError as err:
        message = worker_message(err)
        if message == str(err):  # raised here, not in a worker
            raise
        raise type(err)(message) from None


class Trial:
    """Holds what one trial needs; `run()` trains, selects on val and scores test."""

    def __init__(self, cfg: TrialConfig, out_dir: Path | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir) if out_dir else None
        self.progress = progress
        self.device = resolve_device(cfg.device)
        self.amp = cfg.amp and self.device.type == "cuda"
        check_features_mode(cfg)
        check_root(cfg)  # fail on a bad data root before loading any model
        self.backbone: Backbone = backbone_from_config(cfg, self.device)
        self.splits = load_splits(cfg)
        # cached mode: features read from disk (built here only if missing); the image encoder never runs
        self.caches: dict[str, FeatureCache] | None = None
        if cfg.features == "cached":
            self.caches = ensure_trial_caches(cfg, self.backbone, self.splits, progress=progress)
        self.classnames = self.splits["train"].classnames
        self.method = create_method(cfg, self.backbone, self.classnames).to(self.device)
        self.loss_fn = AsymmetricLoss(
            cfg.loss, cfg.gamma_neg, cfg.gamma_pos, cfg.clip, cfg.eps, cfg.reduction, cfg.loss_weight
        )
        self.optimizer = build_optimizer(self.method, cfg) if self.method.trainable else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and cfg.grad_scaler)
        self.initial_norms = _norms(self.method)  # the seeded initialisation, also when resuming
        self.warned: set[str] = set()

    # ---- data ---------------------------------------------------------------------------------
    def loader(self, split: str, train: bool, epoch: int = 0) -> DataLoader:
        """Batches of (images or cached features, labels); both modes draw the same order from the seed."""
        generator = torch.Generator().manual_seed(_epoch_seed(self.cfg.seed, epoch))
        dataset: Dataset
        batch_size: int | None
        shuffle: bool | None = None  # DataLoader's defaults where a mode leaves one out
        sampler: Sampler | None = None
        if self.caches is None:
            info = self.backbone.info
            transform = build_transform(info.image_size, info.mean, info.std, train=train, augment=self.cfg.augment,
                                        recipe=self.cfg.augment_recipe, interpolation=self.cfg.resize)
            dataset = MultiLabelDataset(self.splits[split], transform)
            batch_size, shuffle = self.cfg.batch_size, train
        else:
            dataset = CachedFeatures(self.caches[split], self.splits[split])
            # the sampler the online loader builds from (shuffle, generator), read a whole batch at a time
            order = RandomSampler(dataset, generator=generator) if train else SequentialSampler(dataset)
            batch_size, sampler = None, BatchSampler(order, self.cfg.batch_size, drop_last=False)
        workers = self.cfg.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=False,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            generator=generator,
            worker_init_fn=_worker_init if workers else None,
            persistent_workers=False,
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def dense(self, inputs: Tensor) -> Tensor:
        """Dense features [B, L, D] of a batch: cached rows as read, or the frozen encoder on images."""
        inputs = inputs.to(self.device, non_blocking=True)
        if self.caches is None:
            return self.backbone.dense_features(inputs)
        return inputs if self.amp else inputs.float()  # float16 on disk; autocast takes it as is

    # ---- steps --------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> float:
        assert self.optimizer is not None, "only a method that trains runs epochs"
        seed_everything(_epoch_seed(self.cfg.seed, epoch))  # augmentation randomness, resumable
        set_lr(self.optimizer, epoch, self.cfg)
        self.method.train()
        total, batches = 0.0, 0
        self.step_losses: list[float] = []  # the epoch's per-step training loss, reported with its row
        loader = self.loader("train", True, epoch)
        # an iterator, not the loader: tqdm.auto opens one of its own, which starts another set of
        # workers and draws another shuffle from the epoch's generator
        bar = tqdm(_batches(loader), total=len(loader), desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                   disable=not self.progress, leave=False)
        for step, (inputs, targets) in enumerate(bar):
            targets = targets.to(self.device, non_blocking=True)
            with self.autocast():
                logits = self.method(self.dense(inputs))
            loss = self.loss_fn(logits.float(), targets)
            if not torch.isfinite(loss):
                raise TrialDiverged(f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                                    f"(lr {lr_at(epoch, self.cfg):g}); lower lr or check the data")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step_losses.append(loss.item())
            total, batches = total + self.step_losses[-1], batches + 1
            bar.set_postfix(loss=f"{total / batches:.4f}")
        return total / max(batches, 1)

    @torch.no_grad()
    def evaluate(self, split: str) -> dict:
        self.method.eval()
        with self.autocast():
            embeddings = self.method.class_embeddings()  # once per pass, not per batch
        scores, targets = [], []
        for inputs, target in _batches(self.loader(split, train=False)):
            with self.autocast():
                logits = self.method(self.dense(inputs), embeddings)
            scores.append(logits.float().softmax(dim=1)[:, 1].cpu())
            targets.append(target)
        probs = torch.cat(scores)
        if not torch.isfinite(probs).all():  # finite but huge parameters overflow the logits
            raise TrialDiverged(f"{split} scores are not finite (lr {self.cfg.lr:g}): the trained parameters "
                                "have blown up; lower lr")
        return multilabel_metrics(probs.numpy(), torch.cat(targets).numpy(), cf1=self.cfg.cf1)

    # ---- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, path: Path, state: dict) -> None:
        # atomic: a crash mid-write never leaves a half checkpoint
        write_atomically(path, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self, path: Path) -> dict:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved, now = state.get("config") or {}, self.cfg.model_dump(mode="json")
        if saved != now:
            changed = ", ".join(sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k)))
            raise ConfigError(f"output folder {path.parent} holds a checkpoint of a different configuration "
                              f"(changed: {changed}); use another --out, or delete {path} to start over")
        self.method.load_state_dict(state["trainable"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        return state

    def check_parameters(self, epoch: int) -> None:
        """TrialDiverged once a trainable parameter is not finite (it would be selected, saved and scored);
        a warning, once per parameter, when its norm grew over GROWTH_WARNING x its initial one."""
        lr = lr_at(epoch, self.cfg)
        for name, norm in _norms(self.method).items():
            if not math.isfinite(norm):
                raise TrialDiverged(f"parameter {name} is no longer finite after epoch {epoch + 1} (lr {lr:g}); "
                                    "lower lr")
            start = max(self.initial_norms[name], 1.0)
            if norm > GROWTH_WARNING * start and name not in self.warned:
                self.warned.add(name)
                tqdm.write(f"warning: parameter {name} grew from norm {self.initial_norms[name]:.3g} to {norm:.3g} "
                           f"by epoch {epoch + 1} (lr {lr:g}); the learning rate is probably far too high",
                           file=sys.stderr)

    def check_space(self, *folders: Path | None) -> None:
        """Each folder this trial writes into exists, is writable and has room for its checkpoints."""
        state_bytes = sum(p.numel() * p.element_size() for p in self.method.parameters() if p.requires_grad)
        for folder in {Path(f) for f in folders if f is not None}:
            check_free_space(ensure_writable_folder(folder), state_bytes)

    # ---- the trial ----------------------------------------------------------------------------
    def epoch_row(self, epoch: int, loss: float) -> dict:
        """What an epoch reports: loss, lr, val mAP (when there is a validation split) and, when the test
        split selects the epoch (the reference's protocol), that epoch's test mAP under its own name."""
        row = {"epoch": epoch + 1, "loss": loss, "lr": lr_at(epoch, self.cfg)}
        if len(self.splits["val"]):
            row["val_map"] = self.evaluate("val")["mAP"]
        return row

    def run(self, checkpoint_dir: Path | None = None, report: Reporter | None = None) -> TrialResult:
        cfg = self.cfg
        ckpt_dir = checkpoint_dir or self.out_dir
        ckpt = Path(ckpt_dir) / CHECKPOINT if ckpt_dir else None
        history: list[dict] = []
        best = {"map": -math.inf, "epoch": -1, "val_map": None, "state": trainable_state(self.method)}
        start, elapsed = 0, 0.0
        if ckpt is not None and ckpt.exists() and self.method.trainable:
            state = self.load_checkpoint(ckpt)
            history, best, start, elapsed = state["history"], state["best"], state["epoch"] + 1, state["elapsed"]
        epochs = cfg.epochs if self.method.trainable else 0
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            loss = self.train_epoch(epoch)
            self.check_parameters(epoch)
            row = self.epoch_row(epoch, loss)
            elapsed += time.perf_counter() - t0  # training + validation; selecting on test is protocol, not cost
            if cfg.select_on == "test":
                row["epoch_test_map"] = self.evaluate("test")["mAP"]
            row["time_s"] = elapsed
            history.append(row)
            score = row[SELECTION_METRIC[cfg.select_on]]
            if score > best["map"]:
                best = {"map": score, "epoch": epoch + 1, "val_map": row.get("val_map"),
                        "state": trainable_state(self.method)}
            if self.progress:
                tqdm.write(f"epoch {epoch + 1}/{epochs}  loss {row['loss']:.4f}  {cfg.select_on} mAP {score:.2f}  "
                           f"best {best['map']:.2f} @ {best['epoch']}", file=sys.stderr)
            if ckpt is not None:
                self.save_checkpoint(ckpt, {
                    "config": cfg.model_dump(mode="json"), "epoch": epoch, "elapsed": elapsed,
                    "trainable": trainable_state(self.method), "optimizer": self.optimizer.state_dict(),
                    "best": best, "history": history,
                })
            if report is not None:  # the step losses go to the reporter only, not into the history
                report({**row, STEP_LOSSES: self.step_losses}, ckpt.parent if ckpt is not None else None)
        return self.finish(history, best, elapsed)

    def finish(self, history: list[dict], best: dict, elapsed: float) -> TrialResult:
        last_state = trainable_state(self.method)
        selected = self.method.trainable and best["epoch"] > 0
        self.selected_state = best["state"] if selected else last_state
        last_test = self.evaluate("test")
        if selected:
            self.method.load_state_dict(best["state"], strict=False)
            test = self.evaluate("test")
            self.method.load_state_dict(last_state, strict=False)
        else:
            test = last_test
        val_now = self.evaluate("val")["mAP"] if not history and len(self.splits["val"]) else None
        info = self.backbone.info
        return TrialResult(
            method=self.cfg.method,
            dataset=self.cfg.dataset,
            label_ratio=self.cfg.label_ratio,
            trainable_params=self.method.trainable_params(),
            selected_on=self.cfg.select_on,
            best_val_map=best["val_map"] if history else val_now,
            best_epoch=best["epoch"] if history else 0,
            test_map=test["mAP"],
            last_test_map=last_test["mAP"],
            last_val_map=history[-1].get("val_map") if history else val_now,
            test_metrics={k: v for k, v in test.items() if k != "per_class_ap"},
            per_class_ap=dict(zip(self.classnames, test["per_class_ap"])),
            train_time_s=elapsed,
            epochs=len(history),
            history=history,
            split_sizes={k: len(v) for k, v in self.splits.items()},
            split_digests={k: v.digest() for k, v in self.splits.items() if len(v)},
            split_labels={k: [int((v.labels >= 0).sum()), int(v.labels.size)] for k, v in self.splits.items()},
            dropped_empty_images={k: self.splits[k].dropped_empty for k in ("train", "test")},
            device=str(self.device),
            backbone={"name": info.name, "pretrained": info.pretrained, "weights": info.weights,
                      "image_size": info.image_size, "embed_dim": info.embed_dim, "tower": info.tower,
                      "quick_gelu": info.quick_gelu},
            config=self.cfg.model_dump(mode="json"),
        )

    def save_trained(self, path: Path) -> None:
        """The selected (best-validation) trainable parameters with what is needed to rebuild the method."""
        saved = {"config": self.cfg.model_dump(mode="json"), "classnames": self.classnames,
                 "state": self.selected_state}
        write_atomically(path, lambda tmp: torch.save(saved, tmp))  # never a half-written file


TRAINED = "trained.pt"


def run_trial(
    cfg: TrialConfig,
    out_dir: Path | None = None,
    *,
    checkpoint_dir: Path | None = None,
    report: Reporter | None = None,
    progress: bool = True,
    trained_path: Path | None = None,
) -> TrialResult:
    """Train and evaluate one trial; writes `metrics.json`, `trained.pt` (and checkpoints) into `out_dir`,
    which this process holds alone until it returns. The trial is built first, so a bad config or data
    root fails without creating `out_dir`; nothing is written there before the lock is held."""
    trial = Trial(cfg, out_dir, progress)
    with exclusive_folder(Path(out_dir)) if out_dir is not None else contextlib.nullcontext():
        trial.check_space(out_dir, checkpoint_dir, Path(trained_path).parent if trained_path else None)
        result = trial.run(checkpoint_dir, report)
        if out_dir is not None:
            write_atomically(Path(out_dir) / "metrics.json", result.write)
            trained_path = trained_path or Path(out_dir) / TRAINED
        if trained_path is not None:
            trial.save_trained(Path(trained_path))
    return result


def load_trained(path: Path, device: str | torch.device = "cpu") -> tuple[TrialConfig, Backbone, Method]:
    """Rebuild a trained method (and its frozen backbone) from a `trained.pt` file."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    cfg = TrialConfig.model_validate(saved["config"])
    backbone = backbone_from_config(cfg, device)
    method = create_method(cfg, backbone, saved["classnames"]).to(device)
    method.load_state_dict(saved["state"], strict=False)
    return cfg, backbone, method.eval()
