"""Negative sampling from the Q table, with the exact log-probability of every draw.

The proposal over items ``1..N`` (index 0 is padding and never drawn) is

    p(j) = (1 - mix) * c_j^alpha / sum_k c_k^alpha + mix / N,    c_j = count_j + smoothing.

``alpha`` flattens popularity (1 = frequency, 0 = uniform) and the uniform share ``mix`` keeps
every item reachable, so the importance weights ``1 / p(j)`` of the logQ correction stay bounded.

Drawing is a two-branch mixture: with probability ``mix`` a uniform id, otherwise an inverse-CDF
draw (``torch.searchsorted`` over a cumulative table built once). A call costs O(n log N) and
never touches the whole catalog, unlike ``torch.multinomial`` over ``N`` weights.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)


def _smoothed_counts(counts: np.ndarray, smoothing: float) -> np.ndarray:
    """float64 ``[N]``: ``counts[1:] + smoothing``, after checking the table."""
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.shape[0] < 2:
        raise ValueError(f"counts must be 1-D of length N + 1 >= 2, got shape {counts.shape}")
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    items = counts[1:].astype(np.float64)  # counts[0] is the padding row
    if not np.all(np.isfinite(items)) or np.any(items < 0):
        raise ValueError("counts must be finite and non-negative")
    return items + smoothing


def _log_with_padding(probs: np.ndarray) -> torch.Tensor:
    """float32 ``[N + 1]``: ``log probs`` behind a ``-inf`` padding entry."""
    out = np.empty(probs.shape[0] + 1, dtype=np.float32)
    out[0] = -np.inf
    with np.errstate(divide="ignore"):  # zero-probability items are legitimately -inf
        np.log(probs, out=out[1:], casting="same_kind")  # log in float64, stored as float32
    return torch.from_numpy(out)


def frequency_log_q(counts: np.ndarray, smoothing: float) -> torch.Tensor:
    """Log of the smoothed target frequency, the logQ of in-batch negatives.

    A batch's targets are drawn from the data, so the probability of item ``j`` showing up as an
    in-batch negative is its frequency ``q_j = (count_j + s) / sum_k (count_k + s)``.

    Args:
        counts: ``[N + 1]`` item counts; ``counts[0]`` (padding) is ignored.
        smoothing: additive count smoothing ``s >= 0``.

    Returns:
        float32 ``[N + 1]`` on the CPU: ``log q_j``, ``-inf`` at 0 (and at zero-count items
        when ``smoothing`` is 0).
    """
    smoothed = _smoothed_counts(counts, smoothing)
    total = smoothed.sum()
    if total <= 0:
        raise ValueError("counts sum to zero and smoothing is 0: the frequency is undefined")
    return _log_with_padding(smoothed / total)


class NegativeSampler:
    """Draws shared negatives from a smoothed, flattened, uniform-mixed popularity proposal.

    Attributes:
        log_q: float32 ``[N + 1]``: exact log proposal probability of each item, ``-inf`` at 0.
        n_items: catalog size ``N``.
        alpha, uniform_mix, smoothing: the proposal's parameters (see the module docstring).
    """

    def __init__(self, counts: np.ndarray, alpha: float, uniform_mix: float, smoothing: float):
        """Precompute the proposal and its cumulative table (one O(N) pass).

        Args:
            counts: ``[N + 1]`` item counts; ``counts[0]`` (padding) is ignored.
            alpha: popularity exponent, ``>= 0``.
            uniform_mix: share of the mass spread uniformly, in ``[0, 1]``.
            smoothing: additive count smoothing, ``>= 0``.

        Raises:
            ValueError: on a malformed table, or when some item could never be drawn (the logQ
                correction needs ``p(j) > 0`` for every item it may score).
        """
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if not 0.0 <= uniform_mix <= 1.0:
            raise ValueError(f"uniform_mix must be in [0, 1], got {uniform_mix}")
        self.alpha, self.uniform_mix, self.smoothing = float(alpha), float(uniform_mix), smoothing
        weights = self._popularity_weights(_smoothed_counts(counts, smoothing))  # [N]
        self.n_items = int(weights.shape[0])
        total = float(weights.sum()) if uniform_mix < 1.0 else 1.0
        probs = (1.0 - uniform_mix) * weights / total + uniform_mix / self.n_items  # [N]
        if np.any(probs <= 0):
            raise ValueError(
                f"{int(np.sum(probs <= 0))} items have zero proposal probability; "
                "use smoothing > 0 or uniform_mix > 0"
            )
        self.log_q = _log_with_padding(probs)  # [N + 1]
        # float64: a float32 running sum near 1 resolves only ~6e-8, coarser than a single
        # item's mass in a catalog of millions; the draws would not follow log_q exactly.
        self._cdf = torch.from_numpy(np.cumsum(weights))  # [N], unnormalized
        logger.debug(
            "negative sampler over %d items, alpha=%s, mix=%s", self.n_items, alpha, uniform_mix
        )

    def _popularity_weights(self, smoothed: np.ndarray) -> np.ndarray:
        """float64 ``[N]``: ``c_j^alpha`` (0^0 counts as 1, so alpha=0 is exactly uniform)."""
        if self.alpha == 0.0:
            return np.ones_like(smoothed)
        weights = np.power(smoothed, self.alpha)
        if self.uniform_mix < 1.0 and weights.sum() <= 0:
            raise ValueError("counts sum to zero and smoothing is 0: no popularity to sample from")
        return weights

    @property
    def device(self) -> torch.device:
        return self.log_q.device

    def to(self, device: torch.device | str) -> NegativeSampler:
        """Move the tables to ``device`` (in place); returns ``self``."""
        self.log_q = self.log_q.to(device)
        self._cdf = self._cdf.to(device)
        return self

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` ids independently (with replacement) from the proposal.

        Args:
            n: number of draws.
            generator: the source of randomness; it must live on the sampler's device.

        Returns:
            ``(ids, log_q)``: int64 ``[n]`` ids in ``1..N`` and float32 ``[n]`` their exact
            log proposal probability, both on the sampler's device.
        """
        ids = self._draw(n, generator)  # [n]
        return ids, self.log_q[ids]

    def _draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        device = self._cdf.device
        if self.uniform_mix >= 1.0:
            return self._uniform(n, generator)
        total = self._cdf[-1]
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64) * total
        # right=True: the bucket i with cdf[i-1] <= u < cdf[i], so zero-weight items are skipped.
        popular = torch.searchsorted(self._cdf, u, right=True).clamp_(max=self.n_items - 1) + 1
        if self.uniform_mix <= 0.0:
            return popular
        branch = torch.rand(n, generator=generator, device=device) < self.uniform_mix  # [n]
        return torch.where(branch, self._uniform(n, generator), popular)

    def _uniform(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(
            1, self.n_items + 1, (n,), generator=generator, device=self._cdf.device
        )
