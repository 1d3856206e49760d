"""Standard errors of fitness figures over windows, and paired comparisons of two plans.

Every fitness is a ratio of sums over windows, ``R = Σ n_w / Σ d_w`` (see
:mod:`layerbudget.evaluators.fitness`), so its window-to-window noise is that of a ratio
estimator. With the residuals ``e_w = n_w − R·d_w`` (they sum to zero), the delta method gives

    SE(R)² = W / (W − 1) · Σ_w (e_w / Σd)²

which is the familiar ``s / √W`` (divided by the common denominator) when every window has the
same denominator. Two plans scored on the same windows are compared through the per-window
difference of their linearised terms, ``z_w = e_w^a / Σd^a − e_w^b / Σd^b``, so the part of the
noise that both plans share (a window that is hard for one is hard for the other) cancels:

    SE(R_a − R_b)² = W / (W − 1) · Σ_w z_w²

A difference *exceeds its noise* when ``|R_a − R_b| > NOISE_Z · SE`` (about 95 % two-sided).
:func:`bootstrap_interval` gives a percentile interval by resampling windows instead, for
checking the normal approximation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from layerbudget.errors import LayerbudgetError

NOISE_Z = 2.0  # a paired difference beyond this many standard errors is reported as real


@dataclass(frozen=True)
class WindowScores:
    """Per-window numerators and denominators of one plan's fitness on one window set."""

    num: np.ndarray  # [W]
    den: np.ndarray  # [W]

    def __post_init__(self) -> None:
        num, den = np.asarray(self.num, dtype=np.float64), np.asarray(self.den, dtype=np.float64)
        if num.ndim != 1 or num.shape != den.shape or len(num) == 0:
            raise LayerbudgetError(
                f"window scores need equal, non-empty 1-d numerators and denominators, got shapes "
                f"{num.shape} and {den.shape}"
            )
        object.__setattr__(self, "num", num)
        object.__setattr__(self, "den", den)

    @property
    def windows(self) -> int:
        return len(self.num)

    @property
    def value(self) -> float:
        """The fitness over all windows, ``Σ num / Σ den``."""
        total = float(self.den.sum())
        return float(self.num.sum()) / total if total > 0 else math.nan

    def influence(self) -> np.ndarray:
        """Each window's first-order contribution to ``value`` (they sum to zero)."""
        total = float(self.den.sum())
        return (self.num - self.value * self.den) / total

    @property
    def se(self) -> float:
        """Standard error of :attr:`value` over windows (NaN for one window)."""
        return _se(self.influence())


def _se(influence: np.ndarray) -> float:
    w = len(influence)
    if w < 2 or not np.all(np.isfinite(influence)):
        return math.nan
    return math.sqrt(w / (w - 1) * float(np.sum(influence**2)))


@dataclass(frozen=True)
class Difference:
    """``a − b`` of two plans on the same windows, with its paired standard error."""

    value: float
    se: float

    @property
    def z(self) -> float:
        """The difference in standard errors (±inf when it has no noise, NaN when undefined)."""
        if math.isnan(self.value) or math.isnan(self.se):
            return math.nan
        if self.se == 0:
            return 0.0 if self.value == 0 else math.copysign(math.inf, self.value)
        return self.value / self.se

    @property
    def exceeds_noise(self) -> bool:
        """``|a − b| > NOISE_Z · SE``."""
        return bool(abs(self.z) > NOISE_Z)


def _same_windows(a: WindowScores, b: WindowScores) -> None:
    if a.windows != b.windows:
        raise LayerbudgetError(f"a paired comparison needs the same windows, but got {a.windows} and {b.windows}")


def paired_difference(a: WindowScores, b: WindowScores) -> Difference:
    """``a.value − b.value`` and its standard error, paired over the windows both were scored on."""
    _same_windows(a, b)
    return Difference(a.value - b.value, _se(a.influence() - b.influence()))


def relative_difference(a: WindowScores, b: WindowScores) -> Difference:
    """``a.value / b.value − 1`` (e.g. one plan's gain over another) with its paired standard error."""
    _same_windows(a, b)
    if not b.value or not math.isfinite(b.value):
        return Difference(math.nan, math.nan)
    ratio = a.value / b.value  # first order: d(a/b) = (da − (a/b)·db) / b
    return Difference(ratio - 1.0, _se((a.influence() - ratio * b.influence()) / b.value))


def bootstrap_interval(
    scores: WindowScores, *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of :attr:`WindowScores.value` over ``resamples`` resamplings of windows."""
    if not 0 < level < 1:
        raise LayerbudgetError(f"level must be in (0, 1), but got {level}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(scores.windows, size=(resamples, scores.windows))
    values = scores.num[idx].sum(axis=1) / scores.den[idx].sum(axis=1)
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def windows_for(se_one: float, target: float) -> int:
    """Windows needed for a standard error of ``target`` when one window gives ``se_one`` (SE ∝ 1/√W)."""
    if not (se_one > 0 and target > 0):
        raise LayerbudgetError(f"need positive standard errors, but got {se_one} and {target}")
    return max(2, math.ceil((se_one / target) ** 2))
