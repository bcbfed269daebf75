"""Item-to-item collaborative filtering (implicit's cosine / BM25 nearest neighbours)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recmodel.baselines.base import (
    Recommender,
    implicit_scope,
    pair_keys,
    top_k_per_row,
)
from recmodel.baselines.plays import Plays, play_matrix
from recmodel.core.dataset import UserItems, row_runs

WEIGHTINGS = ("cosine", "bm25", "tfidf")
# A chunk of users is scored by one sparse product; its entries (an index pair and a score,
# then int64 copies while the top-k is taken: about 32 B each) are bounded by this budget.
CHUNK_BYTES = 2**30
ENTRY_BYTES = 32


def fit_bytes(n_items: int, n_pairs: int, neighbours: int, threads: int) -> int:
    """Memory item-kNN's fit needs: the similarity's entries (a float32 value and an int32
    column each, twice while it is converted to CSR), the play matrix and its transpose
    (12 B a pair each) and implicit's dense accumulator of the catalogue per thread."""
    similarity = 2 * (n_items + 1) * min(neighbours, n_items) * 8
    return similarity + 2 * 12 * n_pairs + 8 * (n_items + 1) * max(threads, 1)


def user_chunks(
    plays: sp.csr_matrix, neighbours: int, budget_bytes: int = CHUNK_BYTES
) -> list[tuple[int, int]]:
    """Consecutive user ranges ``[lo, hi)`` whose product ``plays[lo:hi] @ sim`` has at most
    ``budget_bytes`` of entries: a user with ``h`` distinct tracks gets at most
    ``min(N + 1, h * neighbours)`` scores. A user whose bound alone exceeds it is a chunk."""
    bound = np.minimum(plays.shape[1], np.diff(plays.indptr).astype(np.int64) * neighbours)
    return row_runs(bound, budget_bytes // ENTRY_BYTES)


class ItemKNN(Recommender):
    """Item-kNN: a user's score for track ``j`` is ``sum_i plays(u, i) * sim(i, j)``.

    The similarity keeps the ``neighbours`` most similar tracks of each track, computed by
    implicit from the user x track play counts of the training window. Scoring is the sparse
    product ``plays [U, N+1] @ sim [N+1, N+1]`` over the query history, which is what implicit's
    ``recommend(..., recalculate_user=True)`` computes one user at a time; here it runs in
    chunks of users, so users and plays after the training window are handled.

    Args:
        neighbours: similar tracks kept per track (implicit's ``K``).
        weighting: ``"cosine"``, ``"bm25"`` or ``"tfidf"`` weighting of the play counts.
        num_threads: implicit's threads for the similarity (0 = every core).
        chunk_bytes: memory budget of one chunk's sparse product (:func:`user_chunks`).
    """

    name = "itemknn"

    def __init__(
        self,
        neighbours: int = 100,
        weighting: str = "bm25",
        num_threads: int = 0,
        chunk_bytes: int = CHUNK_BYTES,
    ):
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"itemknn weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if neighbours < 1:
            raise ValueError(f"itemknn neighbours must be >= 1, got {neighbours}")
        self.neighbours = neighbours
        self.weighting = weighting
        self.num_threads = num_threads
        self.chunk_bytes = chunk_bytes
        self.similarity = sp.csr_matrix((1, 1), dtype=np.float32)  # [N + 1, N + 1] after fit

    @property
    def model_size(self) -> int:
        return int(self.similarity.nnz)

    def _fit(self, plays: Plays) -> None:
        from implicit.nearest_neighbours import (
            BM25Recommender,
            CosineRecommender,
            TFIDFRecommender,
        )

        kind = {"bm25": BM25Recommender, "tfidf": TFIDFRecommender, "cosine": CosineRecommender}
        model = kind[self.weighting](K=self.neighbours, num_threads=self.num_threads)
        with implicit_scope():
            model.fit(plays.matrix, show_progress=False)  # [U, N + 1]; column 0 stays empty
        # Row i holds the neighbours of track i: a liked track i votes for each of them.
        self.similarity = model.similarity.tocsr().astype(np.float32)

    def _candidates(
        self, query: UserItems, k: int, filter_seen: bool, now: int
    ) -> tuple[np.ndarray, np.ndarray]:
        plays = play_matrix(query, self.n_items)  # [U, N + 1]
        parts = [
            self._score_chunk(plays[lo:hi], k, filter_seen)
            for lo, hi in user_chunks(plays, self.neighbours, self.chunk_bytes)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _score_chunk(
        self, plays: sp.csr_matrix, k: int, filter_seen: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of one chunk of users ``plays [C, N + 1]`` -> ``[C, k]`` items and scores."""
        scores = (plays @ self.similarity).tocoo()  # [C, N + 1], only items with a vote
        rows, items, values = scores.row.astype(np.int64), scores.col.astype(np.int64), scores.data
        keep = items > 0  # padding never has a neighbour; guard anyway
        if filter_seen:
            seen = plays.tocoo()
            keep &= ~np.isin(
                pair_keys(rows, items, self.n_items), pair_keys(seen.row, seen.col, self.n_items)
            )
        rows, items, values = rows[keep], items[keep], values[keep]
        # Equal scores go to the lower item index.
        return top_k_per_row(rows, items, values, -items, plays.shape[0], k)
