"""Training: one arm, or a pack of arms sharing one image stream. The CLI (`run_trial`) and the sweep
layer (`run_pack`) both come through here; a trial is a pack of one.

Per step the pack loads and augments a batch once and runs the frozen image encoder once, then each
arm in turn does its forward, loss, backward and optimizer step (its graph freed before the next), so
memory is the shared features plus one arm's graph. Evaluation shares the image pass the same way.
Every arm is initialised from the same random state and every epoch's randomness comes from (seed,
epoch), so an arm trained in a pack produces what it produces alone, and a resumed pack repeats the
uninterrupted one.

Model selection uses the validation split carved from the (partially labelled) training split; the
test split is scored only with the parameters of the best-validation epoch and of the last. Each arm
writes a checkpoint (trainable parameters, optimizer, best-so-far, history) after every epoch.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .arm import SELECTION_METRIC, Arm, lr_at, resolved_config, trainable_state
from .backbone import Backbone
from .data import check_root, load_splits
from .errors import ConfigError, TrialDiverged
from .factory import backbone_from_config, resolve_device, seed_everything
from .features import check_features_mode
from .files import check_free_space, ensure_writable_folder, exclusive_folder, write_atomically
from .methods import create_method
from .methods.base import Method
from .metrics import multilabel_metrics
from .pack import pack_key, stream_config
from .progress import progress_bar
from .result import TrialResult
from .spec import STORED, TrialConfig
from .stream import Stream, batches, epoch_seed

CHECKPOINT = "checkpoint.pt"
TRAINED = "trained.pt"
# one arm's epoch row and the folder holding its checkpoint (the CLI's and a trial-of-one's reporter)
Reporter = Callable[[dict, Path | None], None]
# a pack's epoch: each arm's row (None: the arm did not train this epoch) and the pack's checkpoint folder;
# it returns the arms it could not record (index -> error), which then stop
PackReporter = Callable[[list[dict | None], Path | None], "Mapping[int, Exception] | None"]
# the key of the epoch's per-step training losses in what a reporter gets (not in the history)
STEP_LOSSES = "step_losses"


# one scoring job of an evaluation pass: an arm, with the parameters it is scored with (None: its current)
Job = tuple[Arm, dict[str, Tensor] | None]


class Pack:
    """Arms sharing one image stream: `run()` trains them together, selects each on val and scores test.

    Arms must have equal pack keys (ablate/pack.py); a pack of one is a plain trial. With `strict`, an arm's
    error raises (a plain trial); otherwise any error in one arm's own work (its step, scoring, checkpoint,
    record or logging) stops that arm alone, its error kept in `arm.error`, and the others go on. An
    error in the shared stream (loading, augmentation, the frozen encoder) stops them all."""

    def __init__(self, cfgs: Sequence[TrialConfig], checkpoints: Sequence[Path | None] | None = None,
                 progress: bool = True, strict: bool = True) -> None:
        if not cfgs:
            raise ValueError("a pack needs at least one arm")
        keys = [pack_key(c) for c in cfgs]
        if any(k != keys[0] for k in keys):
            differ = sorted(f for f in keys[0] if any(k[f] != keys[0][f] for k in keys))
            raise ConfigError(f"arms of one pack must share their image stream; they differ in {', '.join(differ)}")
        self.progress, self.strict = progress, strict
        shared = stream_config(cfgs[0])
        for cfg in cfgs:
            check_features_mode(cfg)
        root = check_root(shared)  # fail on a bad data root before loading any model
        backbone = backbone_from_config(shared, resolve_device(shared.device))
        splits = [load_splits(cfg) for cfg in cfgs]
        for cfg, arm_splits in zip(cfgs[1:], splits[1:]):
            for name, images in arm_splits.items():  # the key says so; the tables must agree
                if images.paths != splits[0][name].paths:
                    raise ConfigError(f"arm {cfg.method} (label ratio {cfg.label_ratio}) reads other {name} images "
                                      "than its pack's first arm; the pack key misses a field that selects images")
        self.stream = Stream(shared, splits[0], backbone, progress)
        # every arm starts from the random state a trial of its own would have at this point
        rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        self.arms: list[Arm] = []
        for i, (cfg, arm_splits) in enumerate(zip(cfgs, splits)):
            torch.set_rng_state(rng[0])
            np.random.set_state(rng[1])
            random.setstate(rng[2])
            checkpoint = checkpoints[i] if checkpoints is not None else None
            start = time.perf_counter()
            self.arms.append(Arm(cfg, self.stream, arm_splits, checkpoint))
            self.arms[-1].resolved = resolved_config(cfg, self.stream, root)
            self.arms[-1].own_s += time.perf_counter() - start

    @property
    def cfg(self) -> TrialConfig:
        return self.stream.cfg

    def _fail(self, arm: Arm, err: Exception) -> None:
        if self.strict:
            raise err
        arm.error = err
        tqdm.write(f"arm {arm.cfg.method} (label ratio {arm.cfg.label_ratio}) stopped: {type(err).__name__}: {err}",
                   file=sys.stderr)

    @contextlib.contextmanager
    def isolate(self, arm: Arm) -> Iterator[None]:
        """The block is `arm`'s own work: an error in it stops that arm (raises, when strict) and the block's
        caller goes on with the others; check `arm.error` after it."""
        try:
            yield
        except Exception as err:
            if self.strict:
                raise
            self._fail(arm, err)

    # ---- passes -------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> list[Arm]:
        """One epoch of every arm that trains in it; returns them. Times: the stream's (loading,
        augmentation, encoder) counts for every arm, each arm's own compute for that arm."""
        arms = [a for a in self.arms if a.trains(epoch)]
        seed_everything(epoch_seed(self.cfg.seed, epoch))  # augmentation randomness, resumable
        for arm in arms:
            with self.isolate(arm):
                arm.begin_epoch(epoch)
        loader = self.stream.loader("train", True, epoch)
        # an iterator, not the loader: tqdm.auto opens one of its own, which starts another set of
        # workers and draws another shuffle from the epoch's generator
        bar = progress_bar(batches(loader), total=len(loader), desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                   disable=not self.progress, leave=False)
        shared, own = 0.0, dict.fromkeys(map(id, arms), 0.0)
        clock = time.perf_counter()
        for inputs, idx in bar:
            dense = self.stream.dense(inputs)
            shared += time.perf_counter() - clock
            for arm in arms:
                if arm.error is not None:
                    continue
                start = time.perf_counter()
                with self.isolate(arm):
                    arm.step(dense, idx, epoch)
                own[id(arm)] += time.perf_counter() - start
            del dense
            clock = time.perf_counter()
            if len(arms) == 1 and arms[0].step_losses:
                bar.set_postfix(loss=f"{arms[0].epoch_loss():.4f}")
        for arm in arms:
            arm.elapsed += shared + own[id(arm)]
            arm.shared_s += shared
            arm.own_s += own[id(arm)]
        return [a for a in arms if a.error is None]

    @torch.no_grad()
    def evaluate(self, split: str, jobs: Sequence[Job]) -> list[dict | None]:
        """Metrics of each job on `split` in one pass over its images (None for a job whose arm failed, in
        this pass or before: its scores were not finite, or scoring raised). The pass's seconds are left in
        `eval_shared` (the stream) and `eval_own` (per arm), and each arm's are added to its `own_s`."""
        for arm, _ in jobs:
            arm.method.eval()
        self.eval_shared, self.eval_own = 0.0, dict.fromkeys((id(a) for a, _ in jobs), 0.0)
        embeddings: list[Any] = []
        for arm, state in jobs:  # once per pass, not per batch
            start = time.perf_counter()
            embeddings.append(None)
            with self.isolate(arm), arm.parameters_of(state), self.stream.autocast():
                embeddings[-1] = arm.method.class_embeddings()
            self.eval_own[id(arm)] += time.perf_counter() - start
        scores: list[list[Tensor]] = [[] for _ in jobs]
        rows: list[Tensor] = []
        clock = time.perf_counter()
        for inputs, idx in batches(self.stream.loader(split, train=False)):
            dense = self.stream.dense(inputs)
            self.eval_shared += time.perf_counter() - clock
            for j, (arm, state) in enumerate(jobs):
                if arm.error is not None:
                    continue
                start = time.perf_counter()
                with self.isolate(arm), arm.parameters_of(state), self.stream.autocast():
                    logits = arm.method(dense, embeddings[j])
                    scores[j].append(logits.float().softmax(dim=1)[:, 1].cpu())
                self.eval_own[id(arm)] += time.perf_counter() - start
            rows.append(idx)
            clock = time.perf_counter()
        order = torch.cat(rows).numpy() if rows else np.zeros(0, dtype=np.int64)
        results: list[dict | None] = []
        for (arm, _), arm_scores in zip(jobs, scores):
            start = time.perf_counter()
            results.append(None)
            with self.isolate(arm):
                if arm.error is not None:
                    continue
                probs = torch.cat(arm_scores)
                if not torch.isfinite(probs).all():  # finite but huge parameters overflow the logits
                    raise TrialDiverged(f"{split} scores are not finite (lr {arm.cfg.lr:g}): the trained "
                                        "parameters have blown up; lower lr")
                targets = arm.splits[split].labels[order].astype(np.float32)
                results[-1] = multilabel_metrics(probs.numpy(), targets, cf1=arm.cfg.cf1)
            self.eval_own[id(arm)] += time.perf_counter() - start
        for arm in {id(a): a for a, _ in jobs}.values():  # all of an arm's own work, whatever the pass
            arm.own_s += self.eval_own[id(arm)]
        return results

    def epoch_rows(self, epoch: int, arms: list[Arm]) -> dict[int, dict]:
        """What each arm's epoch reports: loss, lr, val mAP (when there is a validation split) and, when the
        test split selects the epoch (the reference's protocol), that epoch's test mAP under its own name."""
        rows = {id(a): {"epoch": epoch + 1, "loss": a.epoch_loss(), "lr": lr_at(epoch, a.cfg)} for a in arms}
        if len(self.stream.images["val"]):
            for arm, metrics in zip(arms, self.evaluate("val", [(a, None) for a in arms])):
                if metrics is not None:
                    rows[id(arm)]["val_map"] = metrics["mAP"]
                arm.elapsed += self.eval_shared + self.eval_own[id(arm)]
                arm.shared_s += self.eval_shared
        on_test = [a for a in arms if a.cfg.select_on == "test" and a.error is None]
        if on_test:  # selecting on test is protocol, not cost: not timed
            for arm, metrics in zip(on_test, self.evaluate("test", [(a, None) for a in on_test])):
                if metrics is not None:
                    rows[id(arm)]["epoch_test_map"] = metrics["mAP"]
        for arm in arms:
            rows[id(arm)]["time_s"] = arm.elapsed
        return {i: rows[id(a)] for i, a in enumerate(self.arms) if a in arms and a.error is None}

    # ---- the pack -----------------------------------------------------------------------------
    def run(self, report: PackReporter | None = None, checkpoint_root: Path | None = None) -> list[TrialResult | None]:
        """Train every arm, then score test; one result per arm (None for an arm that diverged: its error is
        `arm.error`). `report` gets each epoch's rows once every arm's checkpoint of it is written."""
        for arm in self.arms:
            with self.isolate(arm):
                arm.resume()
        epochs = max(a.epochs for a in self.arms)
        for epoch in range(min((a.start for a in self.arms if a.epochs), default=epochs), epochs):
            arms = self.train_epoch(epoch)
            for arm in arms:
                with self.isolate(arm):
                    arm.check_parameters(epoch)
            rows = self.epoch_rows(epoch, [a for a in arms if a.error is None])
            for i, row in list(rows.items()):
                with self.isolate(self.arms[i]):
                    self._record(self.arms[i], epoch, row)
                if self.arms[i].error is not None:
                    del rows[i]
            if report is not None:  # the step losses go to the reporter only, not into the history
                failed = report([{**rows[i], STEP_LOSSES: self.arms[i].step_losses} if i in rows else None
                                 for i in range(len(self.arms))], checkpoint_root)
                for i, err in (failed or {}).items():
                    self._fail(self.arms[i], err)
        return self.finish()

    def _record(self, arm: Arm, epoch: int, row: dict) -> None:
        """The epoch in the arm's history (and best so far), on the console, and in its checkpoint."""
        arm.record_epoch(epoch, row)
        if self.progress:
            tqdm.write(f"epoch {epoch + 1}/{arm.epochs}  loss {row['loss']:.4f}  {arm.cfg.select_on} mAP "
                       f"{row[SELECTION_METRIC[arm.cfg.select_on]]:.2f}  best {arm.best['map']:.2f} @ "
                       f"{arm.best['epoch']}", file=sys.stderr)
        arm.save_checkpoint(epoch)

    def finish(self) -> list[TrialResult | None]:
        """Test scores of every arm still standing, at its selected epoch and at its last, in one pass."""
        arms = [a for a in self.arms if a.error is None]
        jobs: list[Job] = []
        for arm in arms:
            last_state = trainable_state(arm.method)
            selected = arm.method.trainable and arm.best["epoch"] > 0
            arm.selected_state = arm.best["state"] if selected else last_state
            jobs.append((arm, None))
            if selected:
                jobs.append((arm, arm.best["state"]))
        scored = dict(zip(range(len(jobs)), self.evaluate("test", jobs)))
        untrained = [a for a in arms if not a.history and len(a.splits["val"]) and a.error is None]
        val_now = dict(zip(map(id, untrained), self.evaluate("val", [(a, None) for a in untrained])))
        results: dict[int, TrialResult] = {}
        j = 0
        for arm in arms:
            last, j = scored[j], j + 1
            test = last
            if arm.method.trainable and arm.best["epoch"] > 0:
                test, j = scored[j], j + 1
            val = val_now.get(id(arm))
            if arm.error is None and last is not None and test is not None:
                with self.isolate(arm):
                    results[id(arm)] = arm.result(test, last, val["mAP"] if val else None)
        return [results.get(id(a)) if a.error is None else None for a in self.arms]


class Trial:
    """One arm alone (a pack of one): what `ablate train`, benchmarks and tests hold, with the arm's and
    the stream's parts under their names."""

    def __init__(self, cfg: TrialConfig, out_dir: Path | None = None, progress: bool = True,
                 checkpoint_dir: Path | None = None) -> None:
        folder = checkpoint_dir or out_dir
        self.pack = Pack([cfg], [Path(folder) / CHECKPOINT if folder else None], progress)
        self.arm, self.stream, self.cfg = self.pack.arms[0], self.pack.stream, cfg
        self.method, self.loss_fn, self.optimizer = self.arm.method, self.arm.loss_fn, self.arm.optimizer
        self.scaler, self.classnames, self.splits = self.arm.scaler, self.arm.classnames, self.arm.splits
        self.backbone, self.device, self.caches = self.stream.backbone, self.stream.device, self.stream.caches
        self.loader, self.dense, self.autocast = self.stream.loader, self.stream.dense, self.stream.autocast

    def train_epoch(self, epoch: int) -> float:
        """One epoch; its mean training loss."""
        self.pack.train_epoch(epoch)
        return self.arm.epoch_loss()

    def evaluate(self, split: str) -> dict:
        metrics = self.pack.evaluate(split, [(self.arm, None)])[0]
        assert metrics is not None, "a trial of its own raises when its scores are not finite"
        return metrics

    def run(self, report: Reporter | None = None) -> TrialResult:
        folder = self.arm.checkpoint.parent if self.arm.checkpoint is not None else None

        def each(rows: list[dict | None], _: Path | None) -> None:
            if report is not None and rows[0] is not None:
                report(rows[0], folder)

        result = self.pack.run(each)[0]
        assert result is not None, "a trial of its own raises when it diverges"
        return result


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
    trial = Trial(cfg, out_dir, progress, checkpoint_dir)
    with exclusive_folder(Path(out_dir)) if out_dir is not None else contextlib.nullcontext():
        trained_folder = Path(trained_path).parent if trained_path else None
        check_space(trial.arm.state_bytes(), out_dir, checkpoint_dir, trained_folder)
        result = trial.run(report)
        if out_dir is not None:
            write_atomically(Path(out_dir) / "metrics.json", result.write)
            trained_path = trained_path or Path(out_dir) / TRAINED
        if trained_path is not None:
            trial.arm.save_trained(Path(trained_path))
    return result


def run_pack(cfgs: Sequence[TrialConfig], workdir: Path, *, report: PackReporter | None = None,
             progress: bool = False, strict: bool = False,
             folders: Sequence[Path] | None = None, on_ready: Callable[[Pack], None] | None = None
             ) -> tuple[Pack, list[TrialResult | None]]:
    """Train a pack of arms in `workdir`, each arm's checkpoint in its folder (`folders`; default one per
    arm, `arm_folder`: a pack of one keeps the plain trial's layout), its selected parameters saved as
    `<folder>/trained/trained.pt`. An arm that fails gets None, its error in `pack.arms[i].error`, and the
    others go on (`strict`: it raises).
    `on_ready` sees the pack once it is built (each arm's resolved config known), before any training."""
    folders = folders or [arm_folder(workdir, i, len(cfgs)) for i in range(len(cfgs))]
    pack = Pack(cfgs, [Path(f) / CHECKPOINT for f in folders], progress, strict=strict)
    if on_ready is not None:
        on_ready(pack)
    check_space(sum(a.state_bytes() for a in pack.arms), workdir)
    results = pack.run(report, workdir)
    for folder, arm, result in zip(folders, pack.arms, results):
        if result is not None:
            with pack.isolate(arm):
                arm.save_trained(Path(folder) / "trained" / TRAINED)
    return pack, [r if a.error is None else None for a, r in zip(pack.arms, results)]


def arm_folder(workdir: Path, index: int, arms: int) -> Path:
    return Path(workdir) if arms == 1 else Path(workdir) / f"arm-{index}"


def trained_path(workdir: Path, index: int, arms: int) -> Path:
    return arm_folder(workdir, index, arms) / "trained" / TRAINED  # as run_pack saves it


def check_space(state_bytes: int, *folders: Path | None) -> None:
    """Each folder a trial writes into exists, is writable and has room for its checkpoints."""
    for folder in {Path(f) for f in folders if f is not None}:
        check_free_space(ensure_writable_folder(folder), state_bytes)


def load_trained(path: Path, device: str | torch.device = "cpu") -> tuple[TrialConfig, Backbone, Method]:
    """Rebuild a trained method (and its frozen backbone) from a `trained.pt` file."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    cfg = TrialConfig.model_validate(saved["config"], context=STORED)
    backbone = backbone_from_config(cfg, device)
    method = create_method(cfg, backbone, saved["classnames"]).to(device)
    method.load_state_dict(saved["state"], strict=False)
    return cfg, backbone, method.eval()
