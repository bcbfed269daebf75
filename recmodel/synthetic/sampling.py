"""Vectorized sampling primitives shared by the synthetic generator's modules."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def zipf_weights(n: int, exponent: float) -> np.ndarray:
    """float64 ``[n]``: ``rank^-exponent`` for ranks 1..n, normalized to sum 1."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return w / w.sum()


def sample_rows(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw per row: ``cum`` ``[n, C]`` cumulative rows, ``u`` ``[n]`` -> ``[n]``."""
    return np.minimum((cum < u[:, None] * cum[:, -1:]).sum(axis=1), cum.shape[1] - 1)


def dirichlet_rows(alpha: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """float64 ``[n, C]`` rows drawn from Dirichlet(alpha); zero alphas give zero weight.

    With tiny alphas every gamma draw of a row can underflow to 0; such a row falls back to
    the mean ``alpha / alpha.sum()`` so that it stays a distribution over allowed entries.
    """
    g = rng.gamma(np.broadcast_to(np.maximum(alpha, 1e-12), (n, len(alpha))))
    g[:, alpha <= 0] = 0.0
    total = g.sum(axis=1, keepdims=True)
    mean = np.maximum(alpha, 0.0) / np.maximum(alpha, 0.0).sum()
    return np.where(total > 0, g / np.where(total > 0, total, 1.0), mean)


@dataclass(frozen=True)
class GroupSampler:
    """Draws a member of a group with probability proportional to the member's weight.

    Attributes:
        order: int32 ``[M]`` members sorted by group.
        cum: float64 ``[M + 1]`` cumulative weights along ``order``, starting at 0.
        start, end: int64 ``[G]`` the slice of ``order`` that holds each group.
    """

    order: np.ndarray
    cum: np.ndarray
    start: np.ndarray
    end: np.ndarray

    @classmethod
    def build(cls, group: np.ndarray, weight: np.ndarray, n_groups: int) -> GroupSampler:
        order = np.argsort(group, kind="stable").astype(np.int32)
        cum = np.concatenate([[0.0], np.cumsum(weight[order], dtype=np.float64)])
        bounds = np.searchsorted(group[order], np.arange(n_groups + 1))
        return cls(order, cum, bounds[:-1].astype(np.int64), bounds[1:].astype(np.int64))

    def nonempty(self) -> np.ndarray:
        """bool ``[G]``: groups that have at least one member."""
        return self.end > self.start

    def sample(self, groups: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One member per entry of ``groups`` (all non-empty), from uniforms ``u`` in [0, 1)."""
        lo, hi = self.cum[self.start[groups]], self.cum[self.end[groups]]
        pos = np.searchsorted(self.cum, lo + u * (hi - lo), side="right") - 1
        # Float rounding can land on a neighbouring group's edge; clamp into the group.
        return self.order[np.clip(pos, self.start[groups], self.end[groups] - 1)]
