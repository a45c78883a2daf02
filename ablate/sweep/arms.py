"""A spec's arms: grid combinations, with trials that differ only in fields their method ignores merged.
No Ray: this also serves `--dry-run` and the report."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..roles import Role
from ..spec import FIELD_ROLES, ConfigError, TrialConfig, canonical, ignored_fields
from ..tracking.names import run_name
from .spec import SweepSpec, arm_config, owns_axis


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


def spread_ranks(n: int) -> list[int]:
    """The position each of n ordered values takes when the ends come first and then the midpoints of the
    widest gaps (0.1 … 0.9: 0.1, 0.9, 0.5, 0.3, 0.7, …), so any prefix covers the range evenly."""
    order: list[int] = [] if n == 0 else ([0] if n == 1 else [0, n - 1])
    gaps = [(0, n - 1)] if n > 2 else []
    while gaps:
        lo, hi = gaps.pop(0)
        mid = (lo + hi) // 2
        if lo < mid < hi:
            order.append(mid)
            gaps += [(lo, mid), (mid, hi)]
    return [order.index(i) for i in range(n)]


def balanced(keys: list[str], index: tuple[int, ...], sizes: list[int]) -> tuple[int, ...]:
    """Sort key of a grid combination (its value index per axis), the axes nested as their fields' Roles
    say: within each seed (and data set), every method at one label ratio before the next ratio, ratios in
    spread order, so a sweep stopped part-way has comparable cells (all methods, same ratio and seed)
    across the range."""
    roles = [FIELD_ROLES.get(k, Role()) for k in keys]
    ranks = [spread_ranks(n) if role.spread else None for role, n in zip(roles, sizes)]
    nested = sorted(range(len(keys)), key=lambda i: roles[i].nesting)  # stable: the grid's order within a level
    return tuple(ranks[i][index[i]] if ranks[i] is not None else index[i] for i in nested)  # type: ignore[index]


def expand(spec: SweepSpec) -> list[Arm]:
    """The spec's arms in `balanced` order (merged arms keep their first combination's place)."""
    keys = list(spec.grid)
    arms: dict[str, Arm] = {}
    searched = spec.optuna or spec.asha
    sizes = [len(spec.grid[k]) for k in keys]
    combos = sorted(itertools.product(*(range(n) for n in sizes)), key=lambda i: balanced(keys, i, sizes))
    for index in combos:
        combo = {k: spec.grid[k][i] for k, i in zip(keys, index)}
        cfg = _absolute_paths(canonical(arm_config(spec, combo)))
        if searched and "val_map" in _metrics(spec) and cfg.val_fraction == 0:
            raise ConfigError(f"arm {combo}: {'optuna' if spec.optuna else 'asha'}.metric val_map needs a validation "
                              "split, but val_fraction is 0; hold one out (val_fraction > 0) or drop the search")
        ignored = ignored_fields(cfg.method)
        overrides = {k: v for k, v in combo.items() if k not in ignored and owns_axis(k, cfg.method, cfg.dataset)}
        search = {k: v for k, v in (spec.optuna.space.items() if spec.optuna else []) if k not in ignored}
        arms.setdefault(json.dumps(cfg.model_dump(mode="json"), sort_keys=True), Arm(overrides, cfg, search))
    return list(arms.values())


def _metrics(spec: SweepSpec) -> list[str]:
    return [m for m, _ in spec.optuna.objectives] if spec.optuna else [spec.asha.metric] if spec.asha else []


def _absolute_paths(cfg: TrialConfig) -> TrialConfig:
    """Trials run in other working directories: pin relative paths to the launching one."""
    root = Path(cfg.data_root).expanduser().absolute() if cfg.data_root else None
    return cfg.model_copy(update={"cache_dir": cfg.resolved_cache_dir().expanduser().absolute(), "data_root": root})


def samples_per_arm(spec: SweepSpec, arm: Arm) -> int:
    """Ray trials of an arm: each Optuna sample once per seed of `optuna.seeds`."""
    return spec.optuna.num_samples * spec.optuna.seed_count if spec.optuna and arm.search else 1


def grid_size(spec: SweepSpec) -> int:
    """Trials the spec asks for at most (the grid's product times Optuna's samples and seeds), without
    expanding it: arms that differ only in fields their method ignores are one, so the real count can be
    smaller."""
    per_arm = spec.optuna.num_samples * spec.optuna.seed_count if spec.optuna else 1
    return math.prod(len(v) for v in spec.grid.values()) * per_arm


def resolve_spec_path(path: str | Path) -> Path:
    """As given (relative to the working directory), else relative to the installed project."""
    candidates = [Path(path).expanduser()]
    if not candidates[0].is_absolute():
        candidates.append(Path(__file__).resolve().parents[2] / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"spec file not found; tried {', '.join(str(c) for c in candidates)}")
