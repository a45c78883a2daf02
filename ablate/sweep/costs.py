"""What each arm and each image stream of a sweep costs, and where the figures come from.

A stream pays one pass of the frozen encoder per batch it reads (every epoch's train and val batches, the
test batches once); an arm pays its own compute per training step (text encoder, head, loss, optimizer;
its evaluation work is folded in). The per-batch and per-step figures are per *shape*: the stream's
backbone, image size, batch, precision and augmentation; the arm's method, context length and class count
on that stream. Sizes of the splits come from the data (counted) or, for the official data sets whose data
is not here, from their official sizes.

Sources, best first: an earlier sweep's MLflow runs on the same device type (each arm run records its
stream and own seconds, its batches and steps, and the device's name); a calibration (`ablate plan
--calibrate`, cached per device type); else relative costs only, which order and size packs but price
nothing. No torch here: `ablate.sweep.calibrate` measures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..pack import pack_key
from ..spec import TrialConfig, ignored_fields
from .planner import Job

# (train split, test split) images of data sets whose data may not be on the planning machine
OFFICIAL_SIZES = {"coco2014": (82_783, 40_504), "voc2007": (5_011, 4_952)}
# relative per-step costs, RN101 @ 448 on CPU (benchmarks/projected_cost.py): the stream's encoder pass
# per batch, each method's own compute per step; a method not listed counts as a prompt method
RELATIVE_STREAM = 51.0
RELATIVE_OWN = {"dualcoop": 19.5, "positivecoop": 10.0, "negativecoop": 10.0, "baseline": 0.4, "zeroshot": 0.0}
RELATIVE_OTHER = 10.0
CACHE_FILE = "plan_costs.json"
RELATIVE = "no calibration: relative costs only"
# on each arm's run: the device it trained on (a GPU's name, or cpu), its shapes (what its costs are figures
# of), and the Ray trial (pack) that trained it, with its size
DEVICE_TAG, STREAM_SHAPE_TAG, ARM_SHAPE_TAG = "ablate.device_name", "ablate.stream_shape", "ablate.arm_shape"
PACK_TAG = "ablate.pack"


def trains(cfg: TrialConfig) -> bool:
    from ..methods import method_info

    return method_info(cfg.method).trains


def stream_shape(cfg: TrialConfig) -> str:
    """What a stream's per-batch cost depends on."""
    aug = cfg.augment_recipe if cfg.augment else "none"
    return (f"{cfg.backbone}:{cfg.pretrained}@{cfg.image_size} batch {cfg.batch_size} amp {cfg.amp} "
            f"augment {aug} features {cfg.features}")


def arm_shape(cfg: TrialConfig) -> str:
    """What an arm's per-step cost depends on: its method, contexts and classes, on its stream's encoder."""
    ctx = "-" if "n_ctx" in ignored_fields(cfg.method) else cfg.n_ctx
    return (f"{cfg.method} n_ctx {ctx} on {cfg.dataset} ({_classes(cfg.dataset)} classes) "
            f"{cfg.backbone}:{cfg.pretrained}@{cfg.image_size} batch {cfg.batch_size} amp {cfg.amp}")


def _classes(dataset: str) -> int:
    from ..data.classnames import class_names

    if dataset not in _CLASSES:
        _CLASSES[dataset] = len(class_names(dataset))
    return _CLASSES[dataset]


_CLASSES: dict[str, int] = {}


@dataclass(frozen=True)
class Sizes:
    train: int
    val: int
    test: int
    source: str


def split_sizes(cfg: TrialConfig) -> Sizes:
    """Images per split, counted from the data, else the official sizes (val held out of train as
    `val_fraction` says), else a ConfigError naming the data set."""
    key = json.dumps(pack_key(cfg), sort_keys=True)  # the stream decides which images, whatever the arm
    if key not in _SIZES:
        _SIZES[key] = _count(cfg)
    return _SIZES[key]


_SIZES: dict[str, Sizes] = {}


def _count(cfg: TrialConfig) -> Sizes:
    from ..data.splits import load_splits

    readable = cfg.data_root is None or Path(cfg.data_root).exists()
    if readable:
        try:
            splits = load_splits(cfg)
            return Sizes(len(splits["train"]), len(splits["val"]), len(splits["test"]), "counted from the data")
        except Exception as err:  # not readable here: the official sizes may still do
            why = f"{type(err).__name__}: {err}"
    else:
        why = f"{cfg.data_root} is not on this machine"
    if cfg.dataset in OFFICIAL_SIZES:
        train, test = OFFICIAL_SIZES[cfg.dataset]
        val = min(max(1, round(cfg.val_fraction * train)), train - 1) if cfg.val_fraction else 0
        return Sizes(train - val, val, test, "official split sizes")
    raise ConfigError(f"cannot count the images of {cfg.dataset} to plan the sweep ({why}); plan where its "
                      "data_root is readable")


def batches(cfg: TrialConfig, sizes: Sizes) -> tuple[int, int]:
    """(training steps of the arm, batches its stream reads): every epoch's train and val batches, the
    test batches once; an arm that trains nothing reads val and test once."""
    b = cfg.batch_size
    train, val, test = (math.ceil(n / b) for n in (sizes.train, sizes.val, sizes.test))
    if not trains(cfg):
        return 0, val + test
    return cfg.epochs * train, cfg.epochs * (train + val) + test


@dataclass
class CostTable:
    """Per-batch stream and per-step own costs by shape, in `unit` ("s" or "relative"), measured on
    `device`; `overhead` is what every Ray trial pays besides (loading, building, logging), per pack."""

    source: str
    device: str
    unit: str = "s"
    stream: dict[str, float] = field(default_factory=dict)
    own: dict[str, float] = field(default_factory=dict)
    overhead: float = 0.0

    @property
    def priced(self) -> bool:
        return self.unit == "s"

    def missing(self, arms: Sequence[TrialConfig]) -> list[str]:
        """Shapes of `arms` this table has no figure for."""
        shapes = {stream_shape(c) for c in arms if stream_shape(c) not in self.stream}
        shapes |= {arm_shape(c) for c in arms if trains(c) and arm_shape(c) not in self.own}
        return sorted(shapes)

    def jobs(self, arms: Sequence[TrialConfig]) -> tuple[list[Job], dict[str, float]]:
        """The planner's view of `arms`: each one's stream and own cost, and each stream's cost (its
        batches, plus a Ray trial's overhead)."""
        jobs, streams = [], {}
        for cfg in arms:
            key = json.dumps(pack_key(cfg), sort_keys=True)
            steps, reads = batches(cfg, split_sizes(cfg))
            own = steps * self._own(cfg) if trains(cfg) else 0.0
            jobs.append(Job(key, own))
            streams[key] = reads * self._stream(cfg) + self.overhead
        return jobs, streams

    def _stream(self, cfg: TrialConfig) -> float:
        return RELATIVE_STREAM if not self.priced else self.stream[stream_shape(cfg)]

    def _own(self, cfg: TrialConfig) -> float:
        if not self.priced:
            return RELATIVE_OWN.get(cfg.method, RELATIVE_OTHER)
        return self.own[arm_shape(cfg)]

    def to_json(self) -> dict:
        return {"source": self.source, "device": self.device, "unit": self.unit, "stream": self.stream,
                "own": self.own, "overhead": self.overhead}


def relative() -> CostTable:
    return CostTable(RELATIVE, "any", unit="relative")


def cache_path(cache_dir: Path) -> Path:
    return Path(cache_dir).expanduser() / CACHE_FILE


def cached(cache_dir: Path, device: str) -> CostTable | None:
    """The calibration cached for `device`, or None."""
    path = cache_path(cache_dir)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    names = [name for name in data if same_device(device, name)] if isinstance(data, dict) else []
    entry = data[names[0]] if names else None
    if not isinstance(entry, dict):
        return None
    return CostTable(f"calibration on {names[0]} ({path})", names[0], "s", dict(entry.get("stream", {})),
                     dict(entry.get("own", {})), float(entry.get("overhead", 0.0)))


def store(cache_dir: Path, table: CostTable) -> None:
    """Add `table`'s figures to the calibration cached for its device (shapes measured again replace)."""
    path = cache_path(cache_dir)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    old = data.get(table.device) or {}
    data[table.device] = {"stream": {**old.get("stream", {}), **table.stream},
                          "own": {**old.get("own", {}), **table.own},
                          "overhead": table.overhead or old.get("overhead", 0.0)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def choose(arms: Sequence[TrialConfig], candidates: Sequence[CostTable | None]) -> tuple[CostTable, list[str]]:
    """The first candidate that prices every shape of `arms`, else relative costs; and one line per
    candidate passed over, saying why."""
    passed: list[str] = []
    for table in candidates:
        if table is None:
            continue
        gaps = table.missing(arms)
        if not gaps:
            return table, passed
        passed.append(f"{table.source}: no figure for {len(gaps)} shape(s), e.g. {gaps[0]}")
    return relative(), passed


def same_device(wanted: str, recorded: str) -> bool:
    """`recorded` (torch's name, e.g. `NVIDIA A10G`) is a device of type `wanted` (`A10G`, `cpu`)."""
    return recorded == wanted if wanted == "cpu" or recorded == "cpu" else wanted.lower() in recorded.lower()


def from_runs(tracking_uri: str, experiment: str, device: str) -> CostTable | None:
    """Per-shape costs from an earlier sweep's finished arm runs on `device`: medians of stream seconds per
    batch and own seconds per step, and of what each Ray trial took besides; None when there is no such
    run (or no such store or experiment)."""
    import statistics

    from ..tracking import redact_uri
    from ..tracking.store import connect_existing, probe_store, retried

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return None  # opening it would create it
    try:
        probe_store(tracking_uri)  # a server that is not there is said in seconds, not after MLflow's retries
        client = connect_existing(tracking_uri)
        found = retried(client.get_experiment_by_name, experiment)
    except Exception:  # no store here: the next source
        return None
    if found is None:
        return None
    runs = [r for r in retried(client.search_runs, [found.experiment_id], "metrics.own_time_s >= 0 and "
                                                  "attributes.status = 'FINISHED'", max_results=50_000)
            if same_device(device, r.data.tags.get(DEVICE_TAG, ""))]
    if not runs:
        return None
    stream: dict[str, list[float]] = {}
    own: dict[str, list[float]] = {}
    trials: dict[str, tuple[float, float, float]] = {}  # Ray trial -> (wall, stream, summed own)
    for run in runs:
        m, tags = run.data.metrics, run.data.tags
        if m.get("stream_batches"):
            stream.setdefault(tags[STREAM_SHAPE_TAG], []).append(m["stream_time_s"] / m["stream_batches"])
        if m.get("train_steps"):
            own.setdefault(tags[ARM_SHAPE_TAG], []).append(m["own_time_s"] / m["train_steps"])
        trial = f"{tags.get('mlflow.parentRunId')}/{tags[PACK_TAG]}" if PACK_TAG in tags else run.info.run_id
        wall, shared, summed = trials.get(trial, (m.get("trial_wall_time_s", 0.0), 0.0, 0.0))
        trials[trial] = (wall, max(shared, m["stream_time_s"]), summed + m["own_time_s"])
    overhead = statistics.median(max(0.0, w - s - o) for w, s, o in trials.values())
    return CostTable(f"{len(runs)} arm run(s) of experiment {experiment} on {device} ({redact_uri(tracking_uri)})",
                     device, "s", {k: statistics.median(v) for k, v in stream.items()},
                     {k: statistics.median(v) for k, v in own.items()}, overhead)
