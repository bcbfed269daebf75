"""Full-catalog retrieval evaluation (DESIGN.md §3): chunked top-k and ranking metrics.

:func:`topk_chunked` scores every user against the whole catalog in blocks of
``chunk_users x chunk_items`` so memory never grows with ``users x items``; :func:`evaluate`
turns the resulting id matrix into per-user Recall/NDCG/HitRate/popularity and their means.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recmodel.data import UserItems

logger = logging.getLogger(__name__)

MASK = float("-inf")  # score of a slot that must never be returned (excluded item, no item)
EMPTY = -1  # item id of a result slot that no eligible item could fill (k > eligible items)


@torch.inference_mode()
def topk_chunked(
    user_vecs: torch.Tensor,
    item_vecs: torch.Tensor,
    k: int,
    *,
    chunk_items: int = 65_536,
    chunk_users: int = 1_024,
    exclude: UserItems | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items by dot product over the full catalog in bounded memory.

    Scores are computed on ``user_vecs.device`` in the promoted dtype of both inputs and ranked
    in float32. Ties are broken by the lower item id, so the result is deterministic and equals
    a stable full sort. Slots that no eligible item can fill (``k`` larger than the catalog
    minus the excluded items) hold item id :data:`EMPTY` with score ``-inf``.

    Args:
        user_vecs: ``[U, D]`` query vectors.
        item_vecs: ``[N + 1, D]`` item vectors on the same device; row 0 is padding and is never
            scored or returned.
        k: number of items per user.
        chunk_items: items scored at once.
        chunk_users: users scored at once.
        exclude: optional per-user items (row ``u`` belongs to ``user_vecs[u]``) that are never
            returned: the seen-item filter.

    Returns:
        ``(item_ids, scores)``: int64 ``[U, k]`` and float32 ``[U, k]``, each row sorted by
        descending score, then ascending item id.

    Memory is ``O(chunk_users * (chunk_items + k))`` on top of the inputs and outputs.
    """
    _check_topk_inputs(user_vecs, item_vecs, k, chunk_items, chunk_users, exclude)
    dtype = torch.promote_types(user_vecs.dtype, item_vecs.dtype)
    n_users = user_vecs.shape[0]
    out_ids = np.empty((n_users, k), dtype=np.int64)
    out_scores = np.empty((n_users, k), dtype=np.float32)
    logger.debug("top-%d over %d items for %d users", k, item_vecs.shape[0] - 1, n_users)
    for u0 in range(0, n_users, chunk_users):
        u1 = min(u0 + chunk_users, n_users)
        excluded = None if exclude is None else _Excluded.of_rows(exclude, u0, u1)
        scores, ids = _topk_user_block(
            user_vecs[u0:u1].to(dtype), item_vecs, k, chunk_items, excluded
        )
        out_ids[u0:u1] = ids.cpu().numpy()
        out_scores[u0:u1] = scores.cpu().numpy()
    return out_ids, out_scores


def _check_topk_inputs(
    user_vecs: torch.Tensor,
    item_vecs: torch.Tensor,
    k: int,
    chunk_items: int,
    chunk_users: int,
    exclude: UserItems | None,
) -> None:
    if user_vecs.ndim != 2 or item_vecs.ndim != 2 or user_vecs.shape[1] != item_vecs.shape[1]:
        raise ValueError(
            f"expected user_vecs [U, D] and item_vecs [N + 1, D], got {tuple(user_vecs.shape)} "
            f"and {tuple(item_vecs.shape)}"
        )
    if user_vecs.device != item_vecs.device:
        raise ValueError(f"user_vecs on {user_vecs.device} but item_vecs on {item_vecs.device}")
    if min(k, chunk_items, chunk_users) < 1 or item_vecs.shape[0] < 1:
        raise ValueError("k, chunk_items, chunk_users and item_vecs rows must all be >= 1")
    # A NaN score has no place in an order: catch it at the source, not in the top-k.
    if not (_all_finite(user_vecs, chunk_items) and _all_finite(item_vecs, chunk_items)):
        raise ValueError("user_vecs and item_vecs must be finite (found NaN or inf)")
    if exclude is not None:
        n_items = item_vecs.shape[0] - 1
        if exclude.n_users != user_vecs.shape[0]:
            raise ValueError(f"exclude has {exclude.n_users} rows for {user_vecs.shape[0]} users")
        if len(exclude.items) and (exclude.items.min() < 1 or exclude.items.max() > n_items):
            raise ValueError(f"exclude holds item ids outside 1..{n_items}")


def _all_finite(vecs: torch.Tensor, rows: int) -> bool:
    """Whether every value is finite, checked ``rows`` rows at a time (bounded memory)."""
    return all(bool(torch.isfinite(vecs[i : i + rows]).all()) for i in range(0, len(vecs), rows))


@dataclass(frozen=True)
class _Excluded:
    """Excluded (row, item) pairs of one user block, sorted by item so a chunk is one slice."""

    rows: np.ndarray  # int64 [E] row within the user block
    items: np.ndarray  # int64 [E] item id, ascending

    @classmethod
    def of_rows(cls, exclude: UserItems, u0: int, u1: int) -> _Excluded:
        lengths = exclude.lengths[u0:u1]
        items = exclude.items[exclude.indptr[u0] : exclude.indptr[u1]].astype(np.int64)
        rows = np.repeat(np.arange(u1 - u0, dtype=np.int64), lengths)
        order = np.argsort(items, kind="stable")
        return cls(rows[order], items[order])

    def mask(self, scores: torch.Tensor, i0: int, i1: int) -> None:
        """Set ``scores[row, item - i0]`` to MASK for the pairs with ``i0 <= item < i1``."""
        lo, hi = np.searchsorted(self.items, [i0, i1])
        if hi > lo:
            rows = torch.from_numpy(self.rows[lo:hi]).to(scores.device)
            cols = torch.from_numpy(self.items[lo:hi] - i0).to(scores.device)
            scores[rows, cols] = MASK


def _topk_user_block(
    users: torch.Tensor,
    item_vecs: torch.Tensor,
    k: int,
    chunk_items: int,
    excluded: _Excluded | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-k of one user block ``[cu, D]`` over all item chunks.

    The running set starts as k EMPTY fillers scored MASK. A masked item ties with them and
    loses on id (EMPTY is the lowest), so it can never be returned.
    """
    n_rows, device = users.shape[0], users.device
    best_scores = torch.full((n_rows, k), MASK, dtype=torch.float32, device=device)
    best_ids = torch.full((n_rows, k), EMPTY, dtype=torch.int64, device=device)
    n_items = item_vecs.shape[0] - 1
    # One score buffer for every chunk: a fresh block per chunk would be page-faulted in again
    # each time (large CPU allocations are mmap'ed) and briefly live twice.
    buffer = torch.empty(n_rows * min(chunk_items, n_items), dtype=users.dtype, device=device)
    for i0 in range(1, n_items + 1, chunk_items):  # row 0 is padding: never scored
        i1 = min(i0 + chunk_items, n_items + 1)
        out = buffer[: n_rows * (i1 - i0)].view(n_rows, i1 - i0)  # contiguous [cu, c]
        scores = torch.mm(users, item_vecs[i0:i1].to(users.dtype).T, out=out).float()
        if excluded is not None:
            excluded.mask(scores, i0, i1)
        chunk_scores, chunk_pos = _exact_topk(scores, k)
        best_scores, best_ids = _merge(best_scores, best_ids, chunk_scores, chunk_pos + i0, k)
    return best_scores, best_ids


def _exact_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``min(k, c)`` best columns of ``scores [cu, c]``, ties at the cut to lower columns.

    Returns ``(values, columns)``, each ``[cu, min(k, c)]``, values descending.
    """
    n_rows, n_cols = scores.shape
    if n_cols <= k:
        return scores, torch.arange(n_cols, device=scores.device).expand(n_rows, n_cols)
    # torch.topk keeps an arbitrary member of a tie: one extra value shows whether a tie
    # straddles the cut. Those rows (rare for learned vectors, all of them for constant scores
    # such as popularity) are repaired. Ties among masked slots need no repair: none of them
    # can outrank the EMPTY fillers in _merge.
    values, cols = scores.topk(k + 1, dim=1)  # [cu, k + 1], descending
    split = (values[:, k] == values[:, k - 1]) & (values[:, k - 1] > MASK)
    values, cols = values[:, :k], cols[:, :k]
    n_split = int(split.sum())
    if 2 * n_split >= n_rows:  # repairing a row that needs none is harmless, copying costs
        return _lowest_tied(scores, values, cols)
    if n_split:
        rows = split.nonzero().squeeze(1)
        values[rows], cols[rows] = _lowest_tied(scores[rows], values[rows], cols[rows])
    return values, cols


def _lowest_tied(
    scores: torch.Tensor, values: torch.Tensor, cols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Redo a top-k ``(values, cols) [r, k]`` of ``scores [r, c]`` whose cut splits a tie.

    The values above the k-th are right (topk is exact on values); the slots holding the k-th
    value go to the lowest columns that have it. A stable sort would do the same at many
    times the cost.
    """
    k, n_cols = values.shape[1], scores.shape[1]
    threshold = values[:, k - 1 :]  # [r, 1] the k-th value
    n_above = (values > threshold).sum(dim=1, keepdim=True)  # [r, 1], leading slots kept
    # Tied columns get keys c..1 (lowest column = largest key), the others 0.
    keys = torch.arange(n_cols, 0, -1, dtype=torch.int32, device=scores.device)
    keys = torch.where(scores == threshold, keys, 0)  # [r, c]
    lowest = keys.topk(k, dim=1).indices  # [r, k], tied columns in ascending order first
    slot = torch.arange(k, device=scores.device)  # [k]
    from_ties = slot >= n_above  # [r, k]
    tied_cols = lowest.gather(1, (slot - n_above).clamp(min=0))
    return torch.where(from_ties, threshold, values), torch.where(from_ties, tied_cols, cols)


def _merge(
    scores_a: torch.Tensor, ids_a: torch.Tensor, scores_b: torch.Tensor, ids_b: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of two candidate sets ``[cu, *]``, ordered by (score desc, item id asc)."""
    scores, ids = torch.cat([scores_a, scores_b], dim=1), torch.cat([ids_a, ids_b], dim=1)
    # Order by id, then stable-sort by score: equal scores keep ascending ids.
    by_id = ids.argsort(dim=1, stable=True)
    scores, ids = scores.gather(1, by_id), ids.gather(1, by_id)
    by_score = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, by_score), ids.gather(1, by_score)


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
            belongs to ``targets`` row ``u``. Ids ``<= 0`` (:data:`EMPTY`) are empty slots:
            never a hit, not counted in coverage or popularity.
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
