"""Standard errors over windows and paired comparisons, against cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.uncertainty import (
    NOISE_Z,
    Difference,
    WindowScores,
    bootstrap_interval,
    paired_difference,
    relative_difference,
    windows_for,
)


def test_equal_denominators_give_the_standard_error_of_the_mean() -> None:
    num = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    s = WindowScores(num, np.full(5, 2.0))
    assert s.value == pytest.approx(num.mean() / 2.0)
    # s / sqrt(W) of the per-window ratios n_w / 2
    assert s.se == pytest.approx(np.std(num / 2.0, ddof=1) / math.sqrt(5))


def test_hand_computed_ratio_standard_error() -> None:
    # R = (1 + 3) / (1 + 1) ... with unequal denominators: n = [1, 4], d = [1, 3]: R = 5 / 4
    s = WindowScores(np.array([1.0, 4.0]), np.array([1.0, 3.0]))
    e = np.array([1.0 - 1.25 * 1.0, 4.0 - 1.25 * 3.0]) / 4.0  # residuals over the denominator sum
    assert s.value == 1.25
    assert s.se == pytest.approx(math.sqrt(2 / 1 * float(np.sum(e**2))))


def test_se_shrinks_like_one_over_root_windows_and_matches_the_bootstrap() -> None:
    rng = np.random.default_rng(0)
    den = rng.uniform(50, 150, size=4000)
    num = den * rng.gamma(4.0, 0.08, size=4000)
    small, large = WindowScores(num[:250], den[:250]), WindowScores(num, den)
    assert large.se == pytest.approx(small.se / 4, rel=0.2)  # 16x the windows, a quarter of the error
    lo, hi = bootstrap_interval(small, resamples=4000)
    assert (hi - lo) / (2 * 1.96) == pytest.approx(small.se, rel=0.1)
    assert lo < small.value < hi


def test_one_window_has_no_standard_error_and_empty_sets_are_refused() -> None:
    assert math.isnan(WindowScores(np.array([1.0]), np.array([2.0])).se)
    with pytest.raises(LayerbudgetError, match="non-empty"):
        WindowScores(np.array([]), np.array([]))
    with pytest.raises(LayerbudgetError, match="equal"):
        WindowScores(np.array([1.0, 2.0]), np.array([1.0]))


def test_paired_difference_cancels_what_both_plans_share() -> None:
    rng = np.random.default_rng(1)
    hard = rng.gamma(2.0, 1.0, size=64)  # some windows are hard for every plan
    den = np.ones(64)
    a = WindowScores(hard, den)
    b = WindowScores(hard * 0.95 + rng.normal(0, 0.002, size=64), den)
    d = paired_difference(b, a)
    assert d.value == pytest.approx(b.value - a.value)
    # equal denominators: the standard error of the mean per-window difference
    assert d.se == pytest.approx(np.std(b.num - a.num, ddof=1) / 8)
    # far below what the unpaired errors suggest, so a 5 % gain is called real
    assert d.se < 0.3 * math.hypot(a.se, b.se)
    assert d.exceeds_noise and d.z < -NOISE_Z


def test_identical_plans_and_noise_level_differences() -> None:
    s = WindowScores(np.array([1.0, 2.0, 3.0]), np.ones(3))
    same = paired_difference(s, s)
    assert same.value == 0 and same.se == 0 and same.z == 0 and not same.exceeds_noise
    assert not Difference(0.01, 0.006).exceeds_noise and Difference(-0.013, 0.006).exceeds_noise
    with pytest.raises(LayerbudgetError, match="same windows"):
        paired_difference(s, WindowScores(np.ones(2), np.ones(2)))


def test_relative_difference_matches_a_direct_delta_method() -> None:
    rng = np.random.default_rng(2)
    den = rng.uniform(1, 2, size=200)
    a = WindowScores(den * rng.uniform(0.2, 0.4, size=200), den)
    b = WindowScores(a.num * rng.uniform(0.85, 1.0, size=200), den)
    r = relative_difference(b, a)
    assert r.value == pytest.approx(b.value / a.value - 1)
    # bootstrap of the ratio of ratios over windows
    idx = np.random.default_rng(3).integers(200, size=(4000, 200))
    boot = (b.num[idx].sum(1) / den[idx].sum(1)) / (a.num[idx].sum(1) / den[idx].sum(1)) - 1
    assert r.se == pytest.approx(float(np.std(boot)), rel=0.1)


def test_windows_for_a_target_error() -> None:
    assert windows_for(0.3, 0.03) == 100  # (0.3 / 0.03)^2
    assert windows_for(0.3, 0.031) == 94
    with pytest.raises(LayerbudgetError):
        windows_for(0.0, 0.1)
