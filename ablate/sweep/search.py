"""What an Optuna arm searches with: the sampler (single- or multi-objective, averaged over seeds), the
ASHA scheduler, and the storage both keep for --resume.

- Seed-averaged search (`optuna.seeds`): each sampled configuration runs once per seed, each seed its own Ray
  trial (and MLflow run, tagged with the sample); the sampler is told the mean over the seeds once all have
  finished (their values and standard error are kept as the Optuna trial's user attributes).
- Multi-objective (`optuna.metric: [val_map, device_hours]`): Optuna's TPE in its multi-objective form.
- The Optuna study lives in storage beside the sweep's state (a sqlite file; `optuna.storage` for an RDB
  on a cluster), one study per arm named by the sweep's run: a resumed sweep continues it with every
  finished trial in it.
- ASHA (`SampleASHA`) compares rungs on the mean over a sample's seeds and writes its rung records beside
  the state, so a resume stops or continues trials as the uninterrupted sweep would have.

This module imports Ray: the driver imports it when it builds a Tuner.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from ..secret_uri import SecretURI, reveal
from .resume import RUNGS_PREFIX, STUDY_FILE
from .spec import SweepSpec
from .trial import SAMPLE_KEY


def study_storage_url(spec: SweepSpec, state_dir: Path) -> str:
    """Where the arms' Optuna studies live: `optuna.storage`, else a sqlite file beside the sweep's state."""
    assert spec.optuna is not None
    return spec.optuna.storage or f"sqlite:///{(state_dir / STUDY_FILE).absolute()}"


def study_name(parent_run_id: str, arm_slug: str) -> str:
    """One study per arm and sweep launch: a resume finds it, a new sweep of the same name does not."""
    return f"{parent_run_id}:{arm_slug}"[:500]


def searcher(spec: SweepSpec, storage_url: str, name: str, arm: str):
    """The arm's search algorithm: OptunaSearch (its objectives, seeded TPE, persistent study) behind
    SampleSearch, which runs each sample once per seed and hides the metric from Tune's per-epoch check
    (end-of-trial objectives such as device_hours are only in the last result)."""
    from ray.tune.search.optuna import OptunaSearch

    assert spec.optuna is not None
    metrics = [m for m, _ in spec.optuna.objectives]
    modes = [m for _, m in spec.optuna.objectives]
    storage = MaskedRDBStorage(reveal(storage_url))
    inner = OptunaSearch(metric=metrics if len(metrics) > 1 else metrics[0],
                         mode=modes if len(modes) > 1 else modes[0],
                         seed=spec.optuna.seed, storage=storage, study_name=name)
    return SampleSearch(inner, list(spec.optuna.seeds or []), metrics, arm)


class MaskedRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, pickled (Ray's tuner.pkl, Tune's searcher state) with its URL masked; restored
    in the driver, which knows the real URL again (ablate.secret_uri)."""

    def __getstate__(self) -> dict[Any, Any]:
        return {**super().__getstate__(), "url": SecretURI(self.url)}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__({**state, "url": reveal(state["url"])})


class SampleSearch(Searcher):
    """Each configuration the inner searcher samples, once per seed (no seeds: once, as it is); the inner
    searcher is told the mean over the seeds of each metric when the last seed completes."""

    def __init__(self, inner, seeds: list[int], metrics: list[str], arm: str) -> None:
        super().__init__(metric=None, mode=None)
        self.inner, self.seeds, self.metrics, self.arm = inner, seeds, metrics, arm
        self.samples = 0
        self.queue: list[tuple[str, dict, int | None]] = []  # (sample, config, seed) still to hand out
        self.sample_of: dict[str, str] = {}  # Ray trial id -> sample
        self.seed_of: dict[str, int] = {}  # Ray trial id -> its place in `seeds`
        self.results: dict[str, dict[str, dict | None]] = {}  # sample -> trial id -> last result (None: error)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        if not self.queue:
            sample = f"{self.arm}#{self.samples}"  # unique in the sweep: the MLflow tag groups runs by it
            config = self.inner.suggest(sample)
            if not isinstance(config, dict):  # None (wait) or Searcher.FINISHED
                return config
            self.samples += 1
            seeds: list[int | None] = [*self.seeds] or [None]
            self.queue = [(sample, config, s) for s in seeds]
            self.results[sample] = {}
        sample, config, seed = self.queue.pop(0)
        self.sample_of[trial_id] = sample
        self.seed_of[trial_id] = self.seeds.index(seed) if seed is not None else 0
        return {**config, SAMPLE_KEY: sample, **({"seed": seed} if seed is not None else {})}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not self.seeds:  # one trial per sample: its intermediate values are the sample's
            self.inner.on_trial_result(self.sample_of.get(trial_id, trial_id), result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        sample = self.sample_of.get(trial_id)
        if sample is None or sample not in self.results:
            return
        done = self.results[sample]
        done[trial_id] = None if error or not result else result
        if len(done) < max(len(self.seeds), 1):
            return
        del self.results[sample]
        ordered = sorted(done.items(), key=lambda kv: self.seed_of.get(kv[0], 0))  # in the order of `seeds`
        finished = [r for _, r in ordered if r is not None]
        if len(finished) < len(done) or any(m not in r for r in finished for m in self.metrics):
            self.inner.on_trial_complete(sample, None, error=True)
            return
        values = {m: [float(r[m]) for r in finished] for m in self.metrics}
        summary = {m: float(np.mean(v)) for m, v in values.items()}
        self._keep(sample, values)
        self.inner.on_trial_complete(sample, summary)

    def _keep(self, sample: str, values: dict[str, list[float]]) -> None:
        """The seeds' values and the standard error of their mean, beside the value the sampler gets."""
        if not self.seeds:
            return
        trial = self.inner._ot_trials.get(sample)
        if trial is None:
            return
        trial.set_user_attr("seeds", self.seeds)
        for metric, v in values.items():
            trial.set_user_attr(f"{metric}_per_seed", v)
            trial.set_user_attr(f"{metric}_sem", float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1
                                else float("nan"))

    def save(self, checkpoint_path: str) -> None:
        import cloudpickle

        with open(checkpoint_path, "wb") as f:
            cloudpickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        import cloudpickle

        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(cloudpickle.load(f))


def rungs_path(state_dir: Path, name: str) -> Path:
    """The ASHA rung records of one Tuner (an arm's study name), beside the sweep's state."""
    return state_dir / f"{RUNGS_PREFIX}{zlib.crc32(name.encode()):08x}.json"


def scheduler(spec: SweepSpec, max_t: int, path: Path, seeds: int):
    """ASHA on the mean over a sample's seeds, its rung records kept in `path`."""
    assert spec.asha is not None
    return SampleASHA(spec.asha.metric, spec.asha.mode, max_t, spec.asha.grace_period,
                         spec.asha.reduction_factor, seeds, str(path))


class SampleASHA(FIFOScheduler):
    """Asynchronous successive halving, as Ray's ASHAScheduler decides (a trial continues past a rung when
    its value is within the top 1/reduction_factor of the values recorded there; the first arrivals
    continue), with two differences: a rung value is the mean over the sample's seeds, decided when the
    last seed reaches the rung (earlier seeds go on meanwhile; a stopped sample stops all its seeds), and
    the records are written to a JSON file after every change and read back on the first result after a
    restore (Ray does not keep a scheduler's state across Tuner.restore)."""

    def __init__(self, metric: str, mode: str, max_t: int, grace: int, factor: float, seeds: int,
                 path: str) -> None:
        super().__init__()
        self.objective, self.sign, self.seeds, self.path = metric, 1.0 if mode == "max" else -1.0, seeds, path
        self.milestones: list[int] = []
        t = float(grace)
        while t < max_t:
            self.milestones.append(int(t))
            t *= factor
        self.factor = factor
        self.state: dict[str, Any] | None = None  # read from `path` on first use

    def _load(self) -> dict[str, Any]:
        if self.state is None:
            self.state = json.loads(Path(self.path).read_text()) if os.path.exists(self.path) else {
                "rungs": {str(m): [] for m in self.milestones}, "pending": {}, "stopped": [], "seen": []}
        return self.state

    def _save(self) -> None:
        tmp = f"{self.path}.tmp"
        Path(tmp).write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.path)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # its own metric and mode: the spec's asha section

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        state = self._load()
        sample = str(trial.config.get(SAMPLE_KEY, trial.trial_id))
        if sample in state["stopped"]:
            return TrialScheduler.STOP
        epoch = int(result.get("epoch", 0))
        if self.objective not in result or str(epoch) not in state["rungs"]:
            return TrialScheduler.CONTINUE
        pending = state["pending"].setdefault(f"{sample}@{epoch}", {})
        pending[trial.trial_id] = float(result[self.objective])
        decision = TrialScheduler.CONTINUE
        if len(pending) >= self.seeds:
            value = self.sign * float(np.mean(list(pending.values())))
            recorded = state["rungs"][str(epoch)]
            if recorded and value < float(np.nanpercentile(recorded, (1 - 1 / self.factor) * 100)):
                state["stopped"].append(sample)
                decision = TrialScheduler.STOP
            recorded.append(value)
            del state["pending"][f"{sample}@{epoch}"]
        self._save()
        return decision

    @property
    def records(self) -> dict[str, Any]:
        return self._load()

