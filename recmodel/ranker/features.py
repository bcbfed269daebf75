"""Features of the ranker's retrieval candidates (:mod:`recmodel.ranker.candidates`).

A request's history is every event before the finetune window, all strictly before the request.
Relational features are computed by DuckDB (``sql/ranker/01_candidate_features.sql``) over Arrow
tables registered on a connection; the acoustic similarity is a vector operation and is computed
with numpy. Columns, in :data:`FEATURES` order:

| feature | meaning | NaN when |
|---|---|---|
| ``retriever_score`` | the pretrained retriever's logit of the candidate | popular-only |
| ``retriever_rank`` | 0-based rank in the retriever's top-K (K: popular-only) | never |
| ``item_count`` | listen+ count of the track in the pretrain window | never |
| ``item_count_recent`` | listen+ count in the last 7 days of every user's history | never |
| ``user_history_len`` | number of events in the user's history | never |
| ``user_item_count`` | the user's earlier plays of the track (repeat count) | never |
| ``secs_since_item`` | seconds from the user's last play of the track | never played |
| ``user_artist_count`` | the user's plays of the track's artist | artist unknown |
| ``user_artist_share`` | ``user_artist_count / user_history_len`` | artist unknown |
| ``secs_since_artist`` | seconds from the user's last play of the artist | never played |
| ``user_genre_count`` | the user's plays of the track's genre | genre unknown |
| ``user_genre_share`` | ``user_genre_count / user_history_len`` | genre unknown |
| ``tempo_dist`` | ``abs(tempo bucket - mean bucket of the recent plays)`` | either unknown |
| ``track_length`` | track length in seconds | length unknown |
| ``user_item_decay_{1,7,30}d`` | the user's plays of the track, each weighing ``exp(-age/tau)`` | never |
| ``user_artist_decay_7d`` | the user's plays of the track's artist, decayed over 7 days | artist unknown |
| ``user_item_decay_rank`` | rank (1 = first) by ``user_item_decay_7d`` among the request's candidates the user played | never played |
| ``acoustic_cos`` | cosine of the acoustic vector and the recent plays' mean | either unknown |

Times are counted back from the request time.
"Recent plays" are the user's last :data:`RECENT_LISTENS` history events (those with a known
tempo or acoustic vector, respectively).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from recmodel.core.dataset import ItemFeatures, UserItems
from recmodel.core.sql import SqlRunner, connect
from recmodel.ranker.candidates import Candidates

logger = logging.getLogger(__name__)

FEATURES_SQL = "ranker/01_candidate_features.sql"
RECENT_LISTENS = 50  # last plays that form a user's recent tempo / acoustic profile
RECENT_POPULARITY_SECONDS = 7 * 86_400  # "recent" item popularity: last 7 days of the history
ACOUSTIC_CHUNK = 1 << 20  # candidate rows per block of the cosine computation (bounds memory)

SQL_FEATURES = (
    "retriever_score",
    "retriever_rank",
    "item_count",
    "item_count_recent",
    "user_history_len",
    "user_item_count",
    "secs_since_item",
    "user_artist_count",
    "user_artist_share",
    "secs_since_artist",
    "user_genre_count",
    "user_genre_share",
    "tempo_dist",
    "track_length",
    "user_item_decay_1d",
    "user_item_decay_7d",
    "user_item_decay_30d",
    "user_artist_decay_7d",
    "user_item_decay_rank",
)
FEATURES = (*SQL_FEATURES, "acoustic_cos")


def candidate_features(
    cands: Candidates,
    history: UserItems,
    items: ItemFeatures,
    item_counts: np.ndarray,
    runner: SqlRunner | None = None,
    recent_counts: np.ndarray | None = None,
) -> np.ndarray:
    """float32 ``[N, F]`` features of every candidate row, columns in :data:`FEATURES` order.

    Args:
        cands: the candidates.
        history: every user's events before its request (all of them strictly earlier).
        items: item metadata.
        item_counts: int ``[n_items + 1]`` pretrain listen+ counts.
        runner: runs the feature SQL and records it (a new connection with the default
            limits when None).
        recent_counts: int ``[n_items + 1]`` the tracks' plays in the last days of every
            user's history (:func:`recent_item_counts`); counted from ``history`` when None,
            which then holds every user (a user shard passes the run's counts).
    """
    runner = SqlRunner(connect()) if runner is None else runner
    if recent_counts is None:
        recent_counts = recent_item_counts(history, items.n_items)
    counts = (item_counts, recent_counts)
    relational = _sql_features(cands, history, items, counts, runner)  # [N, F - 1]
    acoustic = acoustic_similarity(cands, history, items)  # [N]
    return np.concatenate([relational, acoustic[:, None]], axis=1).astype(np.float32)


def recent_item_counts(history: UserItems, n_items: int, end: int | None = None) -> np.ndarray:
    """int64 ``[n_items + 1]``: plays of each track in ``history`` in the
    :data:`RECENT_POPULARITY_SECONDS` before ``end`` (default: the history's last play + 1 s).

    Over user shards, each shard's counts with the run's ``end`` add up to the run's."""
    if end is None:
        end = int(history.ts.max(initial=0)) + 1
    recent = history.items[history.ts >= end - RECENT_POPULARITY_SECONDS]
    return np.bincount(recent, minlength=n_items + 1).astype(np.int64)


def run_recent_counts(source: Any, before: int) -> np.ndarray:
    """:func:`recent_item_counts` of every user's events in windows ``< before``, read part by
    part (``source``: a :class:`recmodel.core.dataset.Dataset` or the run's user shards)."""
    end = source.end_before(before)
    total = np.zeros(source.n_items + 1, dtype=np.int64)
    for part, _ in source.parts():
        total += recent_item_counts(part.history(before), source.n_items, end)
    return total


def _sql_features(cands, history, items, counts, runner: SqlRunner) -> np.ndarray:
    params = {"recent_listens": RECENT_LISTENS}
    tables = _input_tables(cands, history, items, counts)
    for name, table in tables.items():
        runner.con.register(name, table)
    try:
        out = runner.run(FEATURES_SQL, params, fetch="numpy")
    finally:
        for name in tables:
            runner.con.unregister(name)
    if len(out["row_id"]) != cands.n_rows:
        raise RuntimeError(
            f"{FEATURES_SQL} returned {len(out['row_id'])} rows for "
            f"{cands.n_rows} candidates (an item index outside the item table?)"
        )
    return np.stack([np.ma.filled(out[name], np.nan) for name in SQL_FEATURES], axis=1)


def _input_tables(cands, history, items, counts) -> dict[str, pa.Table]:
    item_counts, recent_counts = counts
    hist_users = np.repeat(np.arange(history.n_users), history.lengths)
    return {
        "ranker_candidates": pa.table(
            {
                "row_id": np.arange(cands.n_rows, dtype=np.int64),
                "user_idx": cands.row_users,
                "item_idx": cands.items.astype(np.int64),
                "request_ts": cands.request_ts[cands.row_request],
                "retriever_score": cands.retriever_score,
                "retriever_rank": cands.retriever_rank,
            }
        ),
        "ranker_history": pa.table(
            {
                "user_idx": hist_users.astype(np.int64),
                "item_idx": history.items.astype(np.int64),
                "ts": history.ts.astype(np.int64),
            }
        ),
        "ranker_items": pa.table(
            {
                "item_idx": np.arange(items.n_items + 1, dtype=np.int64),
                "artist_idx": items.artist.astype(np.int64),
                "genre_idx": items.genre.astype(np.int64),
                "tempo_bucket": items.tempo_bucket.astype(np.int64),
                "track_length": items.track_length.astype(np.float64),
                "item_count": np.asarray(item_counts, dtype=np.int64),
                "item_count_recent": np.asarray(recent_counts, dtype=np.int64),
            }
        ),
    }


def recent_acoustic_profile(history: UserItems, items: ItemFeatures) -> np.ndarray:
    """float64 ``[U, A]``: mean acoustic vector of each user's recent plays (NaN if none)."""
    lengths = history.lengths
    users = np.repeat(np.arange(history.n_users), lengths)  # [nnz]
    from_end = np.repeat(history.indptr[1:], lengths) - np.arange(len(history.items))  # 1 = last
    use = (from_end <= RECENT_LISTENS) & items.has_acoustic[history.items]  # [nnz]
    n = np.bincount(users[use], minlength=history.n_users).astype(np.float64)  # [U]
    vectors = items.acoustic[history.items[use]].astype(np.float64)  # [nnz', A]
    total = np.stack(
        [
            np.bincount(users[use], weights=vectors[:, a], minlength=history.n_users)
            for a in range(items.acoustic.shape[1])
        ],
        axis=1,
    )  # [U, A]
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / n[:, None]


def acoustic_similarity(cands: Candidates, history: UserItems, items: ItemFeatures) -> np.ndarray:
    """float64 ``[N]``: cosine of each candidate's acoustic vector and its user's profile."""
    out = np.full(cands.n_rows, np.nan)
    if items.acoustic.ndim != 2 or items.acoustic.shape[1] == 0:
        return out
    profile = recent_acoustic_profile(history, items)  # [U, A]
    row_users = cands.row_users
    for start in range(0, cands.n_rows, ACOUSTIC_CHUNK):
        sl = slice(start, start + ACOUSTIC_CHUNK)
        user_vec = profile[row_users[sl]]  # [n, A]
        item_vec = items.acoustic[cands.items[sl]].astype(np.float64)  # [n, A]
        norms = np.linalg.norm(user_vec, axis=1) * np.linalg.norm(item_vec, axis=1)  # [n]
        known = items.has_acoustic[cands.items[sl]] & (norms > 0)  # NaN norms compare False
        cos = np.einsum("na,na->n", user_vec, item_vec) / np.where(known, norms, 1.0)
        out[sl] = np.where(known, cos, np.nan)
    return out
