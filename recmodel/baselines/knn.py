"""Item-to-item collaborative filtering (implicit's cosine / BM25 nearest neighbours)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recmodel.baselines.base import (
    Recommender,
    implicit_scope,
    pair_keys,
    play_matrix,
    top_k_per_row,
)
from recmodel.core.dataset import Dataset, UserItems

WEIGHTINGS = ("cosine", "bm25", "tfidf")
USER_CHUNK = 4_096  # query users scored per sparse product (bounds its memory)


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
    """

    name = "itemknn"

    def __init__(self, neighbours: int = 100, weighting: str = "bm25", num_threads: int = 0):
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"itemknn weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if neighbours < 1:
            raise ValueError(f"itemknn neighbours must be >= 1, got {neighbours}")
        self.neighbours = neighbours
        self.weighting = weighting
        self.num_threads = num_threads
        self.similarity = sp.csr_matrix((1, 1), dtype=np.float32)  # [N + 1, N + 1] after fit

    @property
    def model_size(self) -> int:
        return int(self.similarity.nnz)

    def _fit(self, dataset: Dataset, train: UserItems) -> None:
        from implicit.nearest_neighbours import (
            BM25Recommender,
            CosineRecommender,
            TFIDFRecommender,
        )

        plays = play_matrix(train, self.n_items)  # [U, N + 1]; column 0 (padding) stays empty
        kind = {"bm25": BM25Recommender, "tfidf": TFIDFRecommender, "cosine": CosineRecommender}
        model = kind[self.weighting](K=self.neighbours, num_threads=self.num_threads)
        with implicit_scope():
            model.fit(plays, show_progress=False)
        # Row i holds the neighbours of track i: a liked track i votes for each of them.
        self.similarity = model.similarity.tocsr().astype(np.float32)

    def _candidates(
        self, query: UserItems, k: int, filter_seen: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        plays = play_matrix(query, self.n_items)  # [U, N + 1]
        parts = [
            self._score_chunk(plays[lo : lo + USER_CHUNK], k, filter_seen)
            for lo in range(0, max(query.n_users, 1), USER_CHUNK)
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
