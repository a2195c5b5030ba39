"""``benchmarks/stats.py``: the paired two-way bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest


def test_bootstrap_interval_resamples_seeds_and_cases_and_keeps_pairs():
    """Hand-made scores: a constant difference has a zero-width interval however much the cases vary
    (pairs stay paired); seed-to-seed and case-to-case variation each widen it; bad shapes are refused."""
    from benchmarks import stats
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, (3, 20))  # cases differ a lot
    est, lo, hi = stats.bootstrap_interval(base + 0.1, base, statistic=lambda a, b: np.nanmean(a - b, axis=(-2, -1)))
    assert (est, lo, hi) == pytest.approx((0.1, 0.1, 0.1))
    assert stats.bootstrap_interval(np.full((3, 5), 0.4)) == pytest.approx((0.4, 0.4, 0.4))
    seeds_only = np.repeat(np.array([[0.0], [1.0]]), 4, axis=1)  # the two seeds differ, cases do not
    est, lo, hi = stats.bootstrap_interval(seeds_only)
    assert est == pytest.approx(0.5) and lo == pytest.approx(0.0) and hi == pytest.approx(1.0)
    cases_only = np.array([[0.0, 1.0]])  # one seed: only cases are drawn
    est, lo, hi = stats.bootstrap_interval(cases_only)
    assert est == pytest.approx(0.5) and lo == pytest.approx(0.0) and hi == pytest.approx(1.0)
    wide = stats.bootstrap_interval(base)
    assert wide[1] < wide[0] < wide[2]
    with pytest.raises(ValueError, match="shape"):
        stats.bootstrap_interval(np.zeros((2, 3)), np.zeros((2, 4)))
