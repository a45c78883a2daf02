"""A trial's probes: the context they run in, running the registered ones by name, flattening their
results to MLflow metrics and tabulating them for the report. Nothing here names a probe; each one's
declaration says what to do. Imports no torch (the probes' own modules do, when they run)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from ablate.errors import ProbeError
from ablate.registry import resolve

from .registry import PROBES, probe_columns, probe_names

if TYPE_CHECKING:
    from ablate.backbone import Backbone
    from ablate.spec import TrialConfig


@dataclass
class ProbeContext:
    """One trial as its probes see it. One context serves all probes of a trial, so the backbone is
    built once, and only if a probe asks for it (the learned-prompt analysis rebuilds its own)."""

    cfg: TrialConfig
    trained: Path | None = None  # the trial's trained.pt
    out_dir: Path | None = None  # JSON / PNG outputs, logged as the trial's artifacts; None: write nothing
    limit: int | None = None  # images per image-grounded probe (None: the whole split)
    n_maps: int = 2  # similarity maps the learned-prompt analysis draws
    given_backbone: Backbone | None = None  # the caller's, when it has the trial's backbone already

    @cached_property
    def backbone(self) -> Backbone:
        """The trial's frozen backbone, shared by the probes of this context."""
        from .common import probe_backbone

        return probe_backbone(self.cfg, self.given_backbone)

    def output(self, name: str) -> Path | None:
        """`out_dir / name`, or None when nothing is to be written."""
        return self.out_dir / name if self.out_dir is not None else None


def flat_metrics(probe: str, result: dict) -> dict[str, float]:
    """The headline numbers of one probe's result as MLflow metric name -> value (undefined ones left out)."""
    flat = resolve(PROBES.get(probe).flat)(result)
    return {k: float(v) for k, v in flat.items() if math.isfinite(v)}


def run_probes_for_trial(cfg: TrialConfig, names: Iterable[str], trained: Path | None = None,
                         out_dir: Path | None = None, limit: int | None = None, n_maps: int = 2,
                         backbone: Backbone | None = None) -> dict[str, float]:
    """Run the named probes for one trial -> flat metrics to log into the trial's MLflow run.

    Probes of the backbone share one (`backbone`, else the one `cfg` names, loaded on first use);
    probes that read the trained method need `trained` and skip trials they do not apply to (the
    learned-prompt analysis skips the vision-only baseline). `limit` caps the images of the
    image-grounded probes, `n_maps` the similarity maps. JSON (and PNG) outputs go to `out_dir`
    when given, to be logged as artifacts. Names may be spelt with '-' for '_'.
    """
    names = [n if n in PROBES else n.replace("-", "_") for n in names]
    unknown = sorted(set(names) - set(probe_names()))
    if unknown:
        raise ProbeError(f"unknown probe(s) {', '.join(unknown)}; choose from {', '.join(probe_names())}")
    ctx = ProbeContext(cfg, trained, Path(out_dir) if out_dir else None, limit, n_maps, backbone)
    flat: dict[str, float] = {}
    for name in names:
        info = PROBES.get(name)
        if info.needs_trained and trained is None:
            raise ProbeError(f"the '{name}' probe needs the trial's trained.pt")
        result = resolve(info.run)(ctx)
        if result is not None:
            flat.update(flat_metrics(name, result))
    return flat


def probe_markdown(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table of diagnostics: row label -> flat metrics (columns that no row has are left out)."""
    titles = probe_columns()
    columns = [k for k in titles if any(k in m for m in rows.values())]
    lines = ["| | " + " | ".join(titles[k] for k in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for label, metrics in rows.items():
        cells = [f"{metrics[k]:.3f}" if k in metrics and math.isfinite(metrics[k]) else "-" for k in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
