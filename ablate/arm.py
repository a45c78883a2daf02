"""One arm of a pack: a method on the shared stream's features with its own labels, loss, optimizer,
learning-rate schedule, checkpoint and record (history, selected epoch, time)."""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor
from tqdm.auto import tqdm

from .errors import ConfigError, TrialDiverged
from .features import cache_root as feature_cache_root
from .files import write_atomically
from .loss import AsymmetricLoss
from .methods import METHODS, create_method, method_info
from .methods.base import FREE, LINEAR, Method
from .prompts import PROMPT
from .result import TrialResult
from .spec import STORED, TrialConfig
from .stream import Stream

# the per-epoch metric that picks the reported epoch, by `select_on`
SELECTION_METRIC = {"val": "val_map", "test": "epoch_test_map"}
# a parameter whose norm grew this many times its initial one (or 1) is warned about: the lr is far too high
GROWTH_WARNING = 1e6


def build_optimizer(method: Method, cfg: TrialConfig) -> torch.optim.SGD:
    """SGD with one group per parameter kind: the built-in kinds' multipliers and decays are TrialConfig
    fields; a kind the method registers names fields of its own options."""
    mult = {PROMPT: cfg.prompt_lr_mult, FREE: cfg.free_lr_mult, LINEAR: cfg.linear_lr_mult}
    decay = {PROMPT: cfg.weight_decay, FREE: cfg.free_weight_decay, LINEAR: linear_weight_decay(cfg)}
    for kind, spec in (method_info(cfg.method).kinds.items() if cfg.method in METHODS else ()):
        mult[kind], decay[kind] = cfg.options[spec.lr_mult], cfg.options[spec.weight_decay]
    by_kind = method.param_groups()
    unknown = set(by_kind) - set(mult)
    if unknown:
        raise TypeError(f"{type(method).__name__} declares parameter kinds {sorted(unknown)}; the trainer gives "
                        f"learning rates to {sorted(mult)}")
    groups: list[dict[str, Any]] = [
        {"params": params, "kind": kind, "lr_mult": mult[kind], "weight_decay": decay[kind]}
        for kind, params in by_kind.items() if params]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def resolved_config(cfg: TrialConfig, stream: Stream, data_root: Path) -> TrialConfig:
    """The config as the trainer runs it on `stream`: each field whose value depends on a default, the
    machine or the weights holds what applied (`auto` device -> the device, `amp` and `grad_scaler` false
    off CUDA, γ− the loss variant's, the baseline's decay, the model's image size and activation, the
    data, cache and feature-cache folders). What a run records as its params and its rerunnable config."""
    info = stream.backbone.info
    return cfg.model_copy(update={
        "device": str(stream.device), "amp": stream.amp, "grad_scaler": stream.amp and cfg.grad_scaler,
        "gamma_neg": cfg.resolved_gamma_neg, "linear_weight_decay": linear_weight_decay(cfg),
        "image_size": info.image_size, "quick_gelu": info.quick_gelu, "data_root": Path(data_root),
        "cache_dir": cfg.resolved_cache_dir(), "feature_cache_dir": feature_cache_root(cfg)})


def linear_weight_decay(cfg: TrialConfig) -> float:
    return cfg.weight_decay if cfg.linear_weight_decay is None else cfg.linear_weight_decay


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


class Arm:
    """One arm of a pack: its labels, method, loss and optimizer, and its record (history, best epoch,
    time). `error` holds what stopped it (a TrialDiverged, or any error in its own work); the pack goes on
    without it."""

    def __init__(self, cfg: TrialConfig, stream: Stream, splits: dict, checkpoint: Path | None) -> None:
        self.cfg, self.stream, self.splits, self.checkpoint = cfg, stream, splits, checkpoint
        self.resolved = cfg  # the config as run (resolved_config), set by the pack that knows the data root
        self.classnames: list[str] = splits["train"].classnames
        self.method = create_method(cfg, stream.backbone, self.classnames).to(stream.device)
        self.loss_fn = AsymmetricLoss(
            cfg.loss, cfg.gamma_neg, cfg.gamma_pos, cfg.clip, cfg.eps, cfg.reduction, cfg.loss_weight
        )
        self.optimizer = build_optimizer(self.method, cfg) if self.method.trainable else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=stream.amp and cfg.grad_scaler)
        self.initial_norms = _norms(self.method)  # the seeded initialisation, also when resuming
        self.warned: set[str] = set()
        self.history: list[dict] = []
        self.best: dict = {"map": -math.inf, "epoch": -1, "val_map": None, "state": trainable_state(self.method)}
        self.start, self.elapsed, self.shared_s = 0, 0.0, 0.0
        # all of this arm's own work in this process (building, steps, scoring, metrics, probes): what the
        # pack's wall time holds for it beyond the shared stream
        self.own_s = 0.0
        self.error: Exception | None = None
        self.step_losses: list[float] = []
        self.selected_state: dict[str, Tensor] = {}

    @property
    def epochs(self) -> int:
        return self.cfg.epochs if self.method.trainable else 0

    def trains(self, epoch: int) -> bool:
        return self.error is None and self.start <= epoch < self.epochs

    def targets(self, split: str, idx: Tensor) -> Tensor:
        """This arm's labels (1/0/-1) of the batch's rows."""
        rows = self.splits[split].labels[idx.numpy()].astype(np.float32)
        return torch.from_numpy(rows).to(self.stream.device, non_blocking=True)

    def begin_epoch(self, epoch: int) -> None:
        assert self.optimizer is not None, "only a method that trains runs epochs"
        set_lr(self.optimizer, epoch, self.cfg)
        self.method.train()
        self.step_losses = []  # the epoch's per-step training loss, reported with its row

    def step(self, dense: Tensor, idx: Tensor, epoch: int) -> None:
        """Forward, loss, backward and optimizer step on the shared features; the graph is freed on return."""
        assert self.optimizer is not None
        targets = self.targets("train", idx)
        with self.stream.autocast():
            logits = self.method(dense)
        loss = self.loss_fn(logits.float(), targets)
        if not torch.isfinite(loss):
            raise TrialDiverged(f"loss became {loss.item()} at epoch {epoch + 1}, step {len(self.step_losses) + 1} "
                                f"(lr {lr_at(epoch, self.cfg):g}); lower lr or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step_losses.append(loss.item())

    def epoch_loss(self) -> float:
        return sum(self.step_losses) / max(len(self.step_losses), 1)

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

    @contextlib.contextmanager
    def parameters_of(self, state: dict[str, Tensor] | None) -> Iterator[None]:
        """The block runs with `state` loaded (None: the current parameters), which are restored after."""
        if state is None:
            yield
            return
        current = trainable_state(self.method)
        self.method.load_state_dict(state, strict=False)
        try:
            yield
        finally:
            self.method.load_state_dict(current, strict=False)

    # ---- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int) -> None:
        if self.checkpoint is None:
            return
        assert self.optimizer is not None
        state = {"config": self.cfg.model_dump(mode="json"), "epoch": epoch, "elapsed": self.elapsed,
                 "shared_s": self.shared_s, "trainable": trainable_state(self.method),
                 "optimizer": self.optimizer.state_dict(), "best": self.best, "history": self.history}
        # atomic: a crash mid-write never leaves a half checkpoint
        write_atomically(self.checkpoint, lambda tmp: torch.save(state, tmp))

    def resume(self) -> None:
        """Continue from this arm's checkpoint, if it has one."""
        path = self.checkpoint
        if path is None or not path.exists() or not self.method.trainable:
            return
        assert self.optimizer is not None
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved, now = state.get("config") or {}, self.cfg.model_dump(mode="json")
        if saved != now:  # a checkpoint of an older release: its config as this one writes it
            with contextlib.suppress(ValidationError):
                saved = TrialConfig.model_validate(saved, context=STORED).model_dump(mode="json")
        if saved != now:
            changed = ", ".join(sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k)))
            raise ConfigError(f"output folder {path.parent} holds a checkpoint of a different configuration "
                              f"(changed: {changed}); use another --out, or delete {path} to start over")
        self.method.load_state_dict(state["trainable"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.history, self.best, self.elapsed = state["history"], state["best"], state["elapsed"]
        self.start, self.shared_s = state["epoch"] + 1, state.get("shared_s", 0.0)

    def state_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.method.parameters() if p.requires_grad)

    def save_trained(self, path: Path) -> None:
        """The selected (best-validation) trainable parameters with what is needed to rebuild the method."""
        saved = {"config": self.cfg.model_dump(mode="json"), "classnames": self.classnames,
                 "state": self.selected_state}
        write_atomically(path, lambda tmp: torch.save(saved, tmp))  # never a half-written file

    # ---- the record ---------------------------------------------------------------------------
    def record_epoch(self, epoch: int, row: dict) -> None:
        self.history.append(row)
        score = row[SELECTION_METRIC[self.cfg.select_on]]
        if score > self.best["map"]:
            self.best = {"map": score, "epoch": epoch + 1, "val_map": row.get("val_map"),
                         "state": trainable_state(self.method)}

    def result(self, test: dict, last_test: dict, val_now: float | None) -> TrialResult:
        history, best, info = self.history, self.best, self.stream.backbone.info
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
            train_time_s=self.elapsed,
            shared_time_s=self.shared_s,
            epochs=len(history),
            history=history,
            split_sizes={k: len(v) for k, v in self.splits.items()},
            split_digests={k: v.digest() for k, v in self.splits.items() if len(v)},
            split_labels={k: [int((v.labels >= 0).sum()), int(v.labels.size)] for k, v in self.splits.items()},
            dropped_empty_images={k: self.splits[k].dropped_empty for k in ("train", "test")},
            device=str(self.stream.device),
            backbone={"name": info.name, "pretrained": info.pretrained, "weights": info.weights,
                      "image_size": info.image_size, "embed_dim": info.embed_dim, "tower": info.tower,
                      "quick_gelu": info.quick_gelu},
            config=self.resolved.model_dump(mode="json"),
        )
