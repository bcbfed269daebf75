"""Exact top-k by dot product over the full catalog, in bounded memory.

:func:`topk_chunked` scores every user against the whole catalog in blocks of
``chunk_users x chunk_items`` so memory never grows with ``users x items``; ties go to the lower
item id, so the result equals a stable full sort (tested against one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from recmodel.core.dataset import UserItems

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
