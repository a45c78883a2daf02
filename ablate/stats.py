"""Intervals for differences between arms whose units are few and noisy (pre-trained checkpoints):
pure functions of plain numbers, so they are tested on constructed values with a known answer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """mean(b) - mean(a) with a two-sided confidence interval (nan bounds when it cannot be computed)."""

    diff: float
    low: float
    high: float
    level: float
    df: float
    n_a: int
    n_b: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0  # false for nan bounds: not shown to differ

    def text(self, digits: int = 1) -> str:
        if math.isnan(self.low):
            return f"{self.diff:+.{digits}f} (no interval: n = {self.n_a}, {self.n_b})"
        return f"{self.diff:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """Welch's t interval for mean(b) - mean(a) from two independent samples (unequal variances,
    Welch-Satterthwaite degrees of freedom). With fewer than two values on a side there is no
    variance to estimate and the bounds are nan; with no spread at all the interval is the point."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(y.mean() - x.mean()) if len(x) and len(y) else math.nan
    if len(x) < 2 or len(y) < 2:
        return Interval(diff, math.nan, math.nan, level, math.nan, len(x), len(y))
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(diff, diff, diff, level, len(x) + len(y) - 2, len(x), len(y))
    df = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return Interval(diff, diff - half, diff + half, level, float(df), len(x), len(y))


def pooled_sd(groups: Sequence[Sequence[float]]) -> float:
    """Square root of the mean within-group variance over groups with at least two values (nan if none):
    the spread of a unit around its own group's mean, e.g. training seeds within one checkpoint."""
    variances = [np.var(g, ddof=1) for g in groups if len(g) > 1]
    return float(np.sqrt(np.mean(variances))) if variances else math.nan


@dataclass(frozen=True)
class MeanInterval:
    """A mean with its two-sided Student-t confidence interval (nan bounds when it cannot be computed)."""

    mean: float
    low: float
    high: float
    level: float
    n: int

    @property
    def exists(self) -> bool:
        return not math.isnan(self.low)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def contains(self, value: float) -> bool:
        return self.exists and self.low <= value <= self.high

    def overlaps(self, other: MeanInterval) -> bool:
        """True unless both intervals exist and are disjoint: without an interval nothing is separated."""
        return not (self.exists and other.exists) or (self.low <= other.high and other.low <= self.high)

    def text(self, digits: int = 2) -> str:
        if not self.exists:
            return f"{self.mean:.{digits}f} (n={self.n}, no interval)"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f} (n={self.n})"


def mean_interval(values: Sequence[float], level: float = 0.95) -> MeanInterval:
    """The t interval of a mean over independent units (seeds): mean ± t(level, n-1) · sd / √n. With one
    value there is no spread to estimate and the bounds are nan; with no spread the interval is the point."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean()) if len(x) else math.nan
    if len(x) < 2:
        return MeanInterval(mean, math.nan, math.nan, level, len(x))
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return MeanInterval(mean, mean - half, mean + half, level, len(x))


def prediction_interval(values: Sequence[float], level: float = 0.95) -> MeanInterval:
    """Where one more independent run (a published number, say) falls with probability `level`, if it comes
    from the same distribution as `values`: mean ± t(level, n-1) · sd · √(1 + 1/n). Wider than the mean's
    interval by √(n + 1): the new run has its own noise. nan bounds with fewer than two values."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean()) if len(x) else math.nan
    if len(x) < 2:
        return MeanInterval(mean, math.nan, math.nan, level, len(x))
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * float(x.std(ddof=1)) * math.sqrt(1 + 1 / len(x))
    return MeanInterval(mean, mean - half, mean + half, level, len(x))
