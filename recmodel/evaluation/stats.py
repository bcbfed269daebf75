"""Bootstrap confidence intervals over users for the report's metrics.

Users are the resampling unit: each per-user metric array is one sample of the user population.
Resampling is vectorized in blocks of whole bootstrap replicates so memory stays bounded for any
number of users, and each index costs exactly one 64-bit draw, so the replicates do not depend
on the block size.
"""

from __future__ import annotations

import numpy as np

BLOCK_ELEMENTS = 1 << 22  # resampled values held at once (about 32 MiB per float64 buffer)


def bootstrap_ci(
    values: np.ndarray,
    *,
    n_samples: int = 1_000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of ``values`` with a percentile-bootstrap ``1 - alpha`` interval.

    Args:
        values: float ``[M]`` one value per user (no NaN).
        n_samples: bootstrap replicates.
        alpha: the interval covers ``1 - alpha``.
        seed: seed of the resampling.

    Returns:
        ``(mean, lo, hi)``: the sample mean and the ``alpha / 2`` and ``1 - alpha / 2``
        quantiles of the replicate means.
    """
    values = _check_sample(values, "values")
    _check_params(n_samples, alpha)
    means = _bootstrap_means(values, n_samples, seed)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(values.mean()), float(lo), float(hi)


def paired_bootstrap_diff(
    a: np.ndarray,
    b: np.ndarray,
    *,
    n_samples: int = 1_000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float | bool]:
    """Paired bootstrap of ``mean(a - b)``: two models scored on the same users.

    Both arrays are resampled with the same user indices, which is resampling ``a - b``.

    Args:
        a, b: float ``[M]`` per-user values of two models, aligned by user.
        n_samples: bootstrap replicates.
        alpha: the interval covers ``1 - alpha``; the test has level ``alpha``.
        seed: seed of the resampling.

    Returns:
        ``{"mean_diff", "lo", "hi", "significant", "p_value"}``: the observed mean difference,
        its percentile interval, whether that interval excludes 0, and the two-sided bootstrap
        p-value ``2 * min(P*(d <= 0), P*(d >= 0))`` (with the usual +1 so it is never 0,
        capped at 1).
    """
    a, b = _check_sample(a, "a"), _check_sample(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must be aligned by user, got {a.shape} and {b.shape}")
    _check_params(n_samples, alpha)
    diff = a - b  # [M]
    means = _bootstrap_means(diff, n_samples, seed)  # [n_samples]
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    n_tail = min(int((means <= 0).sum()), int((means >= 0).sum()))
    p_value = min(1.0, 2 * (n_tail + 1) / (n_samples + 1))
    return {
        "mean_diff": float(diff.mean()),
        "lo": float(lo),
        "hi": float(hi),
        "significant": bool(lo > 0 or hi < 0),
        "p_value": float(p_value),
    }


def _bootstrap_means(values: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
    """float64 ``[n_samples]``: means of ``n_samples`` resamples (with replacement) of values."""
    rng = np.random.default_rng(seed)
    n = len(values)
    block = max(1, BLOCK_ELEMENTS // n)  # replicates per block
    means = np.empty(n_samples)
    for start in range(0, n_samples, block):
        stop = min(start + block, n_samples)
        # floor(U * n) is uniform on 0..n-1 up to a bias of n / 2**53; one draw per index
        # keeps the random stream identical whatever the block size.
        idx = (rng.random((stop - start, n)) * n).astype(np.int64)  # [b, n]
        np.minimum(idx, n - 1, out=idx)  # float rounding must never reach n
        means[start:stop] = values[idx].mean(axis=1)
    return means


def _check_sample(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-d array, got shape {values.shape}")
    if np.isnan(values).any():
        raise ValueError(f"{name} holds NaN; drop users without a value first")
    return values


def _check_params(n_samples: int, alpha: float) -> None:
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
