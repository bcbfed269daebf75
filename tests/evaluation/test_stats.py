"""Bootstrap intervals against known answers and against a one-replicate-at-a-time loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recmodel.evaluation import stats
from recmodel.evaluation.stats import bootstrap_ci, paired_bootstrap_diff


def _reference_means(values: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
    """One replicate at a time, with the documented index draw floor(U * n)."""
    rng = np.random.default_rng(seed)
    n = len(values)
    return np.array([values[(rng.random(n) * n).astype(np.int64)].mean() for _ in range(n_samples)])


def test_bootstrap_ci_equals_replicate_loop():
    values = np.random.default_rng(1).exponential(size=300)
    means = _reference_means(values, 400, seed=5)
    lo, hi = np.quantile(means, [0.05, 0.95])
    got = bootstrap_ci(values, n_samples=400, alpha=0.1, seed=5)
    assert got == pytest.approx((values.mean(), lo, hi), rel=1e-12)


def test_blocks_do_not_change_the_replicates(monkeypatch):
    values = np.random.default_rng(2).normal(size=1000)
    whole = bootstrap_ci(values, n_samples=50, seed=3)
    monkeypatch.setattr(stats, "BLOCK_ELEMENTS", 3000)  # 3 replicates per block, last one short
    assert bootstrap_ci(values, n_samples=50, seed=3) == whole


def test_bernoulli_interval_matches_normal_approximation():
    p, n = 0.3, 20_000
    values = (np.random.default_rng(0).random(n) < p).astype(np.float64)
    mean, lo, hi = bootstrap_ci(values, n_samples=2_000, seed=0)
    half_width = 1.96 * math.sqrt(mean * (1 - mean) / n)  # about 0.0064
    assert mean == values.mean()
    assert lo == pytest.approx(mean - half_width, abs=0.15 * half_width)
    assert hi == pytest.approx(mean + half_width, abs=0.15 * half_width)


def test_interval_coverage_is_close_to_nominal():
    """Over many samples of a known population the 90% interval holds the true mean ~90%."""
    rng = np.random.default_rng(4)
    trials = 200
    covered = sum(
        lo <= 0.5 <= hi
        for lo, hi in (
            bootstrap_ci(rng.random(200), n_samples=400, alpha=0.1, seed=t)[1:]
            for t in range(trials)
        )
    )
    # Binomial(200, 0.9) has sd ~4.2: this band is about 3.5 sd wide on each side.
    assert 165 <= covered <= 195


def test_constant_values_give_a_zero_width_interval():
    assert bootstrap_ci(np.full(50, 0.25)) == (0.25, 0.25, 0.25)


def test_seed_fixes_the_result():
    values = np.random.default_rng(5).normal(size=100)
    assert bootstrap_ci(values, seed=9) == bootstrap_ci(values, seed=9)
    assert bootstrap_ci(values, seed=9) != bootstrap_ci(values, seed=10)
    a, b = values, np.random.default_rng(6).normal(size=100)
    assert paired_bootstrap_diff(a, b, seed=9) == paired_bootstrap_diff(a, b, seed=9)


def test_paired_diff_of_identical_arrays_is_zero_and_not_significant():
    a = np.random.default_rng(7).random(300)
    got = paired_bootstrap_diff(a, a.copy())
    assert got == {"mean_diff": 0.0, "lo": 0.0, "hi": 0.0, "significant": False, "p_value": 1.0}


def test_clear_shift_is_significant():
    rng = np.random.default_rng(8)
    b = rng.random(500)
    a = b + 0.05 + rng.normal(scale=0.1, size=500)  # paired: the shift is 0.05 +- 0.0045
    got = paired_bootstrap_diff(a, b, n_samples=1_000)
    assert got["significant"] and 0.0 < got["lo"] < got["mean_diff"] < got["hi"]
    assert got["p_value"] == pytest.approx(2 / 1_001)  # no replicate at or below 0
    flipped = paired_bootstrap_diff(b, a, n_samples=1_000)
    assert flipped["significant"] and flipped["hi"] < 0
    assert flipped["mean_diff"] == pytest.approx(-got["mean_diff"])


def test_paired_p_value_equals_replicate_loop():
    rng = np.random.default_rng(9)
    a, b = rng.normal(0.02, 1, size=400), rng.normal(0, 1, size=400)
    means = _reference_means(a - b, 600, seed=2)
    tail = min((means <= 0).sum(), (means >= 0).sum())
    lo, hi = np.quantile(means, [0.025, 0.975])
    got = paired_bootstrap_diff(a, b, n_samples=600, seed=2)
    assert got["p_value"] == pytest.approx(min(1.0, 2 * (tail + 1) / 601), rel=1e-12)
    assert (got["lo"], got["hi"]) == pytest.approx((lo, hi), rel=1e-12)
    assert got["significant"] == (lo > 0 or hi < 0)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci(np.array([]))
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(np.ones(3), alpha=1.0)
    with pytest.raises(ValueError, match="aligned"):
        paired_bootstrap_diff(np.ones(3), np.ones(4))
