"""Retrieval candidates of the ranker's requests.

A request is a user at its request time: its first event in the finetune window (one request
per user). Its candidates are the retriever's top-K plus the most popular tracks, deduplicated,
stored flat in CSR form with the retriever's score and rank of each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recmodel.core.columns import Window
from recmodel.core.dataset import QUERY_CHUNK_EVENTS, Dataset, UserItems, row_runs


@dataclass(frozen=True)
class Candidates:
    """Candidate lists of requests in CSR form (one request per user).

    Attributes:
        indptr: int64 ``[R + 1]``; request ``r`` owns rows ``indptr[r]:indptr[r + 1]``.
        users: int64 ``[R]`` user of each request.
        request_ts: int64 ``[R]`` request time in seconds.
        items: int32 ``[N]`` candidate item indices.
        retriever_score: float32 ``[N]`` retriever logit (NaN for popular-only candidates).
        retriever_rank: int32 ``[N]`` 0-based retriever rank (K for popular-only candidates).
    """

    indptr: np.ndarray
    users: np.ndarray
    request_ts: np.ndarray
    items: np.ndarray
    retriever_score: np.ndarray
    retriever_rank: np.ndarray

    @property
    def n_requests(self) -> int:
        return len(self.users)

    @property
    def n_rows(self) -> int:
        return len(self.items)

    @property
    def row_request(self) -> np.ndarray:
        """int64 ``[N]``: the request of each row."""
        return np.repeat(np.arange(self.n_requests), np.diff(self.indptr))

    @property
    def row_users(self) -> np.ndarray:
        """int64 ``[N]``: the user of each row."""
        return self.users[self.row_request]


def concat_candidates(parts: list[Candidates]) -> Candidates:
    """The requests of ``parts`` one after the other, as one :class:`Candidates`."""
    if not parts:
        return Candidates(
            np.zeros(1, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.int32),
            np.zeros(0, np.float32),
            np.zeros(0, np.int32),
        )
    sizes = np.concatenate([np.diff(p.indptr) for p in parts])
    indptr = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=indptr[1:])
    return Candidates(
        indptr,
        *(
            np.concatenate([getattr(p, name) for p in parts])
            for name in ("users", "request_ts", "items", "retriever_score", "retriever_rank")
        ),
    )


def pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """int64 keys ``user * (n_items + 1) + item``, unique per (user, item) pair."""
    return np.asarray(users, dtype=np.int64) * (n_items + 1) + np.asarray(items, dtype=np.int64)


def own_tracks(
    history: UserItems,
    users: np.ndarray,
    request_ts: np.ndarray,
    n: int,
    tau_days: float,
    max_events: int = QUERY_CHUNK_EVENTS,
) -> np.ndarray:
    """int64 ``[R, n]``: each request's own tracks by time-decayed plays (0 = none left).

    A track of the user's whole history (not only its last ``max_len`` plays) scores
    ``sum over its plays of exp(-age / tau)``, ``age`` counted back from the request; ties go
    to the most recent play. This is the re-listening candidate source of the ranker. Requests
    are scored in runs of at most ``max_events`` history events (a longer history alone).
    """
    out = np.zeros((len(users), n), dtype=np.int64)
    if n == 0 or len(users) == 0:
        return out
    users, request_ts = np.asarray(users, np.int64), np.asarray(request_ts, np.int64)
    for lo, hi in row_runs(history.lengths[users], max_events):
        out[lo:hi] = _own_tracks(history.take(users[lo:hi]), request_ts[lo:hi], n, tau_days)
    return out


def _own_tracks(rows_of: UserItems, request_ts: np.ndarray, n: int, tau_days: float) -> np.ndarray:
    """:func:`own_tracks` of the requests whose histories are the rows of ``rows_of``."""
    out = np.zeros((rows_of.n_users, n), dtype=np.int64)
    row = np.repeat(np.arange(rows_of.n_users), rows_of.lengths)  # [E]
    age = request_ts[row] - rows_of.ts
    weight = np.exp(-age / (tau_days * 86_400.0))
    keys = pair_keys(row, rows_of.items, int(rows_of.items.max(initial=0)))
    uniq, inverse = np.unique(keys, return_inverse=True)
    score = np.bincount(inverse, weights=weight, minlength=len(uniq))
    last = np.zeros(len(uniq), dtype=np.int64)
    np.maximum.at(last, inverse, np.arange(len(keys)))
    base = int(rows_of.items.max(initial=0)) + 1
    pair_row, item = uniq // base, uniq % base
    order = np.lexsort((-last, -score, pair_row))  # per row: score, then the latest play
    pair_row, item = pair_row[order], item[order]
    starts = np.searchsorted(pair_row, np.arange(rows_of.n_users))
    col = np.arange(len(pair_row)) - starts[pair_row]
    keep = col < n
    out[pair_row[keep], col[keep]] = item[keep]
    return out


def candidates_from_topk(
    users: np.ndarray,
    request_ts: np.ndarray,
    topk_ids: np.ndarray,
    topk_scores: np.ndarray,
    popular: np.ndarray,
    own: np.ndarray | None = None,
) -> Candidates:
    """Merge each request's retriever top-K, its own tracks and the popular tracks, once each.

    Args:
        users: int ``[R]`` user of each request.
        request_ts: int ``[R]`` request times.
        topk_ids: int ``[R, K]`` retriever top-K in rank order (ids ``<= 0`` are padding).
        topk_scores: float ``[R, K]`` their logits.
        popular: int ``[P]`` popular item ids, most popular first.
        own: int ``[R, O]`` the user's own tracks (:func:`own_tracks`; 0 = padding) or None.

    Returns:
        Candidates: per request, its retrieved items in rank order, then its own tracks the
        retriever missed, then the popular items it does not already hold. Candidates the
        retriever did not return have no retriever score (NaN) and rank K.
    """
    n_req, k = topk_ids.shape
    popular = np.asarray(popular, dtype=np.int64)
    own = np.zeros((n_req, 0), dtype=np.int64) if own is None else np.asarray(own, np.int64)
    extra = np.concatenate([own, np.broadcast_to(popular, (n_req, len(popular)))], axis=1)
    ids = np.concatenate([topk_ids, extra], axis=1)
    scores = np.concatenate([topk_scores, np.full(extra.shape, np.nan)], axis=1)
    ranks = np.broadcast_to(np.minimum(np.arange(ids.shape[1]), k), ids.shape)  # [R, K + P]
    keep = ids > 0  # [R, K + P]
    n_items = int(ids.max(initial=0))
    row_users = np.repeat(np.arange(n_req), ids.shape[1]).reshape(ids.shape)
    keys = pair_keys(row_users, ids, n_items)  # [R, K + O + P]
    keep &= first_occurrence(keys)  # a track retrieved and owned (or popular) appears once
    indptr = np.zeros(n_req + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    return Candidates(
        indptr=indptr,
        users=np.asarray(users, dtype=np.int64),
        request_ts=np.asarray(request_ts, dtype=np.int64),
        items=ids[keep].astype(np.int32),
        retriever_score=scores[keep].astype(np.float32),
        retriever_rank=ranks[keep].astype(np.int32),
    )


def first_occurrence(keys: np.ndarray) -> np.ndarray:
    """bool, the shape of ``keys``: True at the first occurrence of each key in row-major order."""
    flat = keys.reshape(-1)
    _, first = np.unique(flat, return_index=True)
    out = np.zeros(flat.shape, dtype=bool)
    out[first] = True
    return out.reshape(keys.shape)


def relabel_candidates(
    base: Candidates,
    users: np.ndarray,
    request_ts: np.ndarray,
    items: np.ndarray,
    n_items: int,
    n_retrieved: int,
) -> Candidates:
    """Candidates ``items [R, K]`` of requests ``(users, request_ts)``, scored as ``base`` did.

    ``base`` holds one request per user. The ranker was trained on the pretrained retriever's
    score and rank; to re-rank another retriever's top-K with the same ranker, each new
    candidate takes its score and rank from ``base`` when ``base`` retrieved it, else NaN and
    rank ``n_retrieved`` (exactly what a popular-only candidate looked like in training).
    """
    n_req, k = items.shape
    keep = items > 0  # [R, K]
    users = np.asarray(users, dtype=np.int64)
    row_users = np.repeat(users, k).reshape(n_req, k)
    retrieved = np.flatnonzero(base.retriever_rank < n_retrieved)  # rows of base
    base_keys = pair_keys(base.row_users[retrieved], base.items[retrieved], n_items)
    order = np.argsort(base_keys)
    src, found = _lookup(base_keys[order], pair_keys(row_users[keep], items[keep], n_items))
    rows = retrieved[order[src[found]]]  # base row of each found candidate
    score = np.full(len(found), np.nan, dtype=np.float32)
    score[found] = base.retriever_score[rows]
    rank = np.full(len(found), n_retrieved, dtype=np.int32)
    rank[found] = base.retriever_rank[rows]
    indptr = np.zeros(n_req + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    return Candidates(
        indptr,
        users,
        np.asarray(request_ts, dtype=np.int64),
        items[keep].astype(np.int32),
        score,
        rank,
    )


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``keys`` in ``sorted_keys`` (0 where absent) and whether each was found."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return pos, sorted_keys[pos] == keys


def popular_items(item_counts: np.ndarray, n: int) -> np.ndarray:
    """int64 ``[min(n, N)]``: the most played items (ties by lower id), padding excluded."""
    counts = np.asarray(item_counts)[1:]
    order = np.lexsort((np.arange(len(counts)), -counts))  # by count desc, then id asc
    return (order[:n] + 1).astype(np.int64)


def padded(indptr: np.ndarray, values: np.ndarray, fill: float | int, width: int = 0) -> np.ndarray:
    """Rows of a CSR vector as a right-padded ``[R, max(width, longest row)]`` matrix."""
    lengths = np.diff(indptr)
    cols = max(int(lengths.max(initial=0)), width)
    out = np.full((len(lengths), cols), fill, dtype=np.result_type(values, np.asarray(fill)))
    col = np.arange(len(values)) - np.repeat(indptr[:-1], lengths)  # [N] position in its row
    out[np.repeat(np.arange(len(lengths)), lengths), col] = values
    return out


def order_within_requests(indptr: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """int64 ``[N]``: row order that sorts each request's rows by descending score.

    Ties keep the original row order; NaN scores go last within their request.
    """
    request = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    key = np.where(np.isnan(scores), np.inf, -np.asarray(scores, dtype=np.float64))
    return np.lexsort((np.arange(len(scores)), key, request))


def finetune_requests(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """``(users int64 [R], request_ts int64 [R])``: the requests of the finetune window."""
    users = dataset.users_with_events(Window.FINETUNE, min_history=1)
    return users, dataset.request_ts(Window.FINETUNE)[users]


def candidate_labels(cands: Candidates, targets: UserItems, n_items: int) -> np.ndarray:
    """bool ``[N]``: the user played the candidate at or after the request (``targets`` rows)."""
    t = targets.take(cands.users)  # row r = targets of request r
    request = np.repeat(np.arange(cands.n_requests), t.lengths)
    after = t.ts >= cands.request_ts[request]
    positives = pair_keys(request[after], t.items[after], n_items)
    return np.isin(pair_keys(cands.row_request, cands.items, n_items), positives)
