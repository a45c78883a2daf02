"""`ablate plan --calibrate`: a few real steps of each distinct stream and arm shape of a spec on this
machine's device, for the cost model (ablate/sweep/costs.py); cached per device type.

The stream: batches of the data set's real training loader (decode, augmentation, worker processes)
through the frozen encoder, when its data is readable here; else random images through the encoder
only. An arm: its method's real training step (forward, loss, backward, optimizer) on features of the
stream's shape. Weights are random (timing does not depend on their values; nothing is downloaded).
On CPU, the encoder runs on a smaller batch (`batch`), scaled to the spec's batch linearly (it is per
image); an arm's step runs at the spec's batch (its text encoder's cost does not grow with the batch).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch

from ..arm import build_optimizer
from ..backbone import Backbone, create_backbone
from ..data.classnames import class_names
from ..factory import resolve_device
from ..loss import AsymmetricLoss
from ..methods import create_method
from ..pack import stream_config
from ..spec import TrialConfig
from ..stream import Stream, batches
from .costs import CostTable, arm_shape, stream_shape, trains
from .trial import device_name

CPU_BATCH = 4  # images a calibration step on CPU (scaled to the spec's batch)


def _timed(fn: Callable[[], object], steps: int, cuda: bool) -> float:
    """Median seconds of `fn` over `steps` calls after one warm-up call."""
    times = []
    for k in range(steps + 1):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        if k:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def calibrate(arms: Sequence[TrialConfig], threads: int, steps: int = 3, batch: int | None = None,
              progress: bool = True) -> CostTable:
    """Per-batch stream and per-step own seconds of every shape among `arms`, on the device they ask for."""
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(0)
    device = resolve_device(arms[0].device)
    name = device_name(str(device))
    table = CostTable("", name)
    notes = []
    for cfg in {stream_shape(c): c for c in arms}.values():
        b = min(cfg.batch_size, batch or (cfg.batch_size if device.type == "cuda" else CPU_BATCH))
        start = time.perf_counter()
        backbone = create_backbone(cfg.backbone, "none", cfg.image_size, device)
        built = time.perf_counter() - start
        per_batch, how, ready = _stream_batch(cfg, backbone, device, b, steps)
        # what every Ray trial of this stream pays once besides: building its encoder and reading its splits
        table.overhead = max(table.overhead, built + ready)
        table.stream[stream_shape(cfg)] = per_batch * cfg.batch_size / b
        notes.append(how)
        for arm in {arm_shape(c): c for c in arms if trains(c) and stream_shape(c) == stream_shape(cfg)}.values():
            table.own[arm_shape(arm)] = _own_step(arm, backbone, device, arm.batch_size, steps)
            if progress:
                print(f"calibrated {arm_shape(arm)}: {table.own[arm_shape(arm)]:.4g} s a step", file=sys.stderr)
    scaled = any(min(c.batch_size, batch or CPU_BATCH) < c.batch_size for c in arms) and device.type != "cuda"
    how = "; ".join(sorted(set(notes)))
    table.source = (f"calibration on {name}, {threads} thread(s): {steps} step(s) a shape ({how})"
                    + ("; the encoder on CPU on a smaller batch, scaled to the spec's linearly" if scaled else ""))
    return table


def _stream_batch(cfg: TrialConfig, backbone: Backbone, device: torch.device, b: int,
                  steps: int) -> tuple[float, str, float]:
    """Seconds per batch of `b` images of the stream, how it was measured, and the seconds it took to read
    the splits and start the stream."""
    cuda = device.type == "cuda"
    shared = stream_config(cfg).model_copy(update={"batch_size": b})
    if cfg.features == "online":
        try:
            from ..data.splits import load_splits

            start = time.perf_counter()
            stream = Stream(shared, load_splits(shared), backbone, progress=False)
            ready = time.perf_counter() - start
            loader = iter(batches(stream.loader("train", True, 0)))
            if len(stream.images["train"]) >= b * (steps + 1):
                return (_timed(lambda: stream.dense(next(loader)[0]), steps, cuda), "the data set's loader and encoder",
                        ready)
        except Exception as err:  # no data here: the encoder alone
            print(f"calibrate: the stream of {cfg.dataset} on random images ({type(err).__name__}: {err})",
                  file=sys.stderr)
    images = torch.randn(b, 3, backbone.info.image_size, backbone.info.image_size, device=device)
    amp = cfg.amp and cuda
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
        return _timed(lambda: backbone.dense_features(images), steps, cuda), "the encoder on random images", 0.0


def _own_step(cfg: TrialConfig, backbone: Backbone, device: torch.device, b: int, steps: int) -> float:
    """Seconds of one training step of `cfg`'s method on `b` images' features (as Arm.step runs it)."""
    cuda = device.type == "cuda"
    with torch.no_grad():
        probe = backbone.dense_features(torch.randn(1, 3, backbone.info.image_size, backbone.info.image_size,
                                                    device=device))
    dense = torch.randn(b, *probe.shape[1:], device=device)
    method = create_method(cfg, backbone, class_names(cfg.dataset)).to(device)
    loss_fn = AsymmetricLoss(cfg.loss, cfg.gamma_neg, cfg.gamma_pos, cfg.clip, cfg.eps, cfg.reduction, cfg.loss_weight)
    optimizer = build_optimizer(method, cfg)
    targets = (torch.rand(b, method.n_classes, device=device) < 0.3).float()
    amp = cfg.amp and cuda

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            logits = method(dense)
        loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _timed(step, steps, cuda)
