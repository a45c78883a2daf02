"""A spec's arms: grid combinations, with trials that differ only in fields their method ignores merged.
No Ray: this also serves `--dry-run` and the report."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..spec import ConfigError, SweepSpec, TrialConfig, arm_config, canonical, ignored_fields
from ..tracking.names import run_name


@dataclass
class Arm:
    overrides: dict[str, Any]  # the grid values that matter for this arm's method
    config: TrialConfig  # canonical base + overrides
    search: dict[str, Any] = field(default_factory=dict)  # Optuna fields that this method reads

    @property
    def slug(self) -> str:
        return "-".join(f"{k}={v}" for k, v in self.overrides.items()) or "base"

    def name(self, spec: SweepSpec) -> str:
        """The MLflow run name: the values of the grid axes that vary in the sweep and that this arm's
        method reads, labelled (`dualcoop · 50% · ctx16 · s0`); the method alone when none vary."""
        varying = {k: v for k, v in self.overrides.items() if len(spec.grid.get(k, [])) > 1}
        return run_name(varying) or self.config.method


def expand(spec: SweepSpec) -> list[Arm]:
    keys = list(spec.grid)
    arms: dict[str, Arm] = {}
    searched = spec.optuna or spec.asha
    for values in itertools.product(*(spec.grid[k] for k in keys)) if keys else [()]:
        combo = dict(zip(keys, values))
        cfg = _absolute_paths(canonical(arm_config(spec, combo)))
        if searched and searched.metric == "val_map" and cfg.val_fraction == 0:
            raise ConfigError(f"arm {combo}: {'optuna' if spec.optuna else 'asha'}.metric val_map needs a validation "
                              "split, but val_fraction is 0; hold one out (val_fraction > 0) or drop the search")
        ignored = ignored_fields(cfg.method)
        overrides = {k: v for k, v in combo.items() if k not in ignored}
        search = {k: v for k, v in (spec.optuna.space.items() if spec.optuna else []) if k not in ignored}
        arms.setdefault(json.dumps(cfg.model_dump(mode="json"), sort_keys=True), Arm(overrides, cfg, search))
    return list(arms.values())


def _absolute_paths(cfg: TrialConfig) -> TrialConfig:
    """Trials run in other working directories: pin relative paths to the launching one."""
    root = Path(cfg.data_root).expanduser().absolute() if cfg.data_root else None
    return cfg.model_copy(update={"cache_dir": cfg.resolved_cache_dir().expanduser().absolute(), "data_root": root})


def samples_per_arm(spec: SweepSpec, arm: Arm) -> int:
    return spec.optuna.num_samples if spec.optuna and arm.search else 1


def grid_size(spec: SweepSpec) -> int:
    """Trials the spec asks for at most (the grid's product times Optuna's samples), without expanding it:
    arms that differ only in fields their method ignores are one, so the real count can be smaller."""
    return math.prod(len(v) for v in spec.grid.values()) * (spec.optuna.num_samples if spec.optuna else 1)


def describe(spec: SweepSpec) -> dict:
    arms = expand(spec)
    rows = [{"arm": a.slug, "trials": samples_per_arm(spec, a), "search": sorted(a.search)} for a in arms]
    return {"name": spec.name, "arms": len(arms), "trials": sum(r["trials"] for r in rows), "arm_list": rows}


def resolve_spec_path(path: str | Path) -> Path:
    """As given (relative to the working directory), else relative to the installed project."""
    candidates = [Path(path).expanduser()]
    if not candidates[0].is_absolute():
        candidates.append(Path(__file__).resolve().parents[2] / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"spec file not found; tried {', '.join(str(c) for c in candidates)}")
