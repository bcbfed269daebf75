"""Full-catalog retrieval metrics (DESIGN.md §3): Recall/NDCG/HitRate/Coverage/popularity.

:func:`evaluate` turns a matrix of recommended ids (from :func:`recmodel.evaluation.topk.topk_chunked` or
any model) into per-user Recall/NDCG/HitRate/popularity and their means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recmodel.core.dataset import UserItems


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one model on one set of users.

    Attributes:
        users: int64 ``[M]`` rows of the input that had at least one target.
        per_user: ``"recall@k"``, ``"ndcg@k"``, ``"hitrate@k"``, ``"pop_pct@k"`` for each k,
            float64 ``[M]`` aligned with ``users``.
        summary: the mean of each per-user metric, ``"coverage@k"`` for each k, and
            ``"n_users"`` (= M).
    """

    users: np.ndarray
    per_user: dict[str, np.ndarray]
    summary: dict[str, float]


def evaluate(
    rec_items: np.ndarray,
    targets: UserItems,
    *,
    ks: Sequence[int] = (10, 50, 100),
    item_counts: np.ndarray,
    n_items: int,
) -> EvalResult:
    """Ranking metrics of top-k recommendations against each user's target set.

    Args:
        rec_items: int ``[U, K]`` recommended item ids, best first, ``K >= max(ks)``; row ``u``
            belongs to ``targets`` row ``u``. Ids ``<= 0`` (:data:`recmodel.evaluation.topk.EMPTY`) are
            empty slots: never a hit, not counted in coverage or popularity.
        targets: each user's target items (duplicates collapse to a set).
        ks: cut-offs.
        item_counts: int ``[n_items + 1]`` popularity counts indexed by item id (0 = padding).
        n_items: catalog size.

    Returns:
        :class:`EvalResult` over the users with at least one target. ``pop_pct@k`` of a user
        with no recommended item is NaN and is left out of its mean.
    """
    ks = _check_eval_inputs(rec_items, targets, ks, item_counts, n_items)
    recs = rec_items[:, : max(ks)].astype(np.int64)  # [U, K]
    n_targets, hits = _hit_matrix(recs, targets, n_items)
    users = np.flatnonzero(n_targets > 0).astype(np.int64)
    recs, hits, n_targets = recs[users], hits[users], n_targets[users]
    rec_pct = popularity_percentile(item_counts, n_items)[np.maximum(recs, 0)]  # [M, K]
    per_user: dict[str, np.ndarray] = {}
    summary: dict[str, float] = {}
    for k in ks:
        metrics = _ranking_metrics(hits[:, :k], n_targets, k)
        metrics[f"pop_pct@{k}"] = _mean_over_valid(rec_pct[:, :k], recs[:, :k] > 0)
        per_user.update(metrics)
        summary.update({name: _mean(values) for name, values in metrics.items()})
        summary[f"coverage@{k}"] = _coverage(recs[:, :k], n_items)
    summary["n_users"] = float(len(users))
    return EvalResult(users=users, per_user=per_user, summary=summary)


def popularity_percentile(item_counts: np.ndarray, n_items: int) -> np.ndarray:
    """float64 ``[n_items + 1]``: share (in %) of the other items that are strictly less popular.

    0 = no item is less popular, 100 = the single most popular item; tied items share a value.
    Index 0 (padding) is NaN.
    """
    counts = np.asarray(item_counts[1:])
    n_less = np.searchsorted(np.sort(counts), counts, side="left")  # [N]
    pct = np.full(n_items + 1, np.nan)
    pct[1:] = 100.0 * n_less / max(n_items - 1, 1)
    return pct


def _check_eval_inputs(
    rec_items: np.ndarray,
    targets: UserItems,
    ks: Sequence[int],
    item_counts: np.ndarray,
    n_items: int,
) -> tuple[int, ...]:
    """Raise ValueError on inputs :func:`evaluate` cannot score; return ``ks`` as ints."""
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive, got {ks}")
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    if rec_items.ndim != 2 or not np.issubdtype(rec_items.dtype, np.integer):
        raise ValueError(f"rec_items must be an integer [U, K] array, got {rec_items.dtype}")
    if rec_items.shape[0] != targets.n_users or rec_items.shape[1] < max(ks):
        raise ValueError(
            f"rec_items {rec_items.shape} needs {targets.n_users} rows and >= {max(ks)} columns"
        )
    if np.shape(item_counts) != (n_items + 1,):
        raise ValueError(f"item_counts must be [n_items + 1] = [{n_items + 1}]")
    if rec_items.size and rec_items.max() > n_items:
        raise ValueError(f"rec_items holds item ids above n_items={n_items}")
    if len(targets.items) and (targets.items.min() < 1 or targets.items.max() > n_items):
        raise ValueError(f"targets hold item ids outside 1..{n_items}")
    _check_no_repeats(rec_items[:, : max(ks)])
    return ks


def _check_no_repeats(recs: np.ndarray) -> None:
    """A repeated item would count as two hits; it means a bug upstream."""
    ordered = np.sort(recs, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] > 0)
    if repeated.any():
        row, col = np.argwhere(repeated)[0]
        raise ValueError(f"rec_items row {row} repeats item {ordered[row, col]}")


def _hit_matrix(
    recs: np.ndarray, targets: UserItems, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct target counts int64 ``[U]`` and hits bool ``[U, K]`` (recs[u, j] in T_u)."""
    n_users = recs.shape[0]
    stride = n_items + 1  # key = user * stride + item is unique per (user, item) pair
    rows = np.repeat(np.arange(n_users, dtype=np.int64), targets.lengths)
    keys = np.sort(rows * stride + targets.items)
    # Sorted and deduplicated by hand: np.unique and np.isin are several times slower here.
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    keys = keys[first]  # [T], duplicates collapse
    n_targets = np.bincount(keys // stride, minlength=n_users)
    if not len(keys):
        return n_targets, np.zeros(recs.shape, dtype=bool)
    rec_keys = np.arange(n_users, dtype=np.int64)[:, None] * stride + recs  # [U, K]
    found = keys[np.minimum(np.searchsorted(keys, rec_keys), len(keys) - 1)] == rec_keys
    # An empty slot (id <= 0) would alias the previous user's last items: mask it out.
    return n_targets, found & (recs > 0)


def _ranking_metrics(hits: np.ndarray, n_targets: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Recall, NDCG and HitRate at ``k`` from hits bool ``[M, k]`` and ``|T|`` int ``[M]``."""
    n_relevant = np.minimum(n_targets, k)  # the best a list of k can do
    n_hits = hits.sum(axis=1)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))  # [k], rank 1 -> 1 / log2(2)
    ideal_dcg = np.cumsum(discounts)[n_relevant - 1]
    return {
        f"recall@{k}": n_hits / n_relevant,
        f"ndcg@{k}": (hits @ discounts) / ideal_dcg,
        f"hitrate@{k}": (n_hits > 0).astype(np.float64),
    }


def _mean_over_valid(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Row means of ``values [M, k]`` over ``valid`` cells; NaN for a row with none."""
    counts = valid.sum(axis=1)
    sums = np.where(valid, values, 0.0).sum(axis=1)
    return np.divide(sums, counts, out=np.full(len(counts), np.nan), where=counts > 0)


def _coverage(recs: np.ndarray, n_items: int) -> float:
    seen = np.zeros(n_items + 1, dtype=bool)
    seen[recs[recs > 0]] = True
    return float(seen.sum()) / n_items


def _mean(values: np.ndarray) -> float:
    """Mean ignoring NaN; NaN when nothing is left (no evaluated user)."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")
