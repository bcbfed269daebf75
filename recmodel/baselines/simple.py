"""Count-based baselines: global popularity and each listener's own most replayed tracks."""

from __future__ import annotations

import numpy as np

from recmodel.baselines.base import (
    Recommender,
    empty_table,
    history_pairs,
    pair_keys,
    top_k_per_row,
)
from recmodel.core.dataset import Dataset, UserItems


class Popularity(Recommender):
    """The most played tracks of the training window, the same list for everyone.

    Scores are the training play counts; ties go to the lower item index.
    """

    name = "popularity"

    def _fit(self, dataset: Dataset, train: UserItems) -> None:
        """Nothing beyond the counts the base class keeps."""

    def _fill_scores(self) -> np.ndarray:
        return self.item_counts.astype(np.float32)

    def _candidates(
        self, query: UserItems, k: int, filter_seen: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        # Every slot is left to the popularity fill of the base class.
        return empty_table(query.n_users, k)


class UserPopular(Recommender):
    """Each listener's own most replayed tracks, then the globally popular ones.

    Repeat listening dominates music consumption, so "play your favourites again" is the first
    baseline to beat. The ranking is by play count in the query history (descending), ties by
    the most recent play first; the score is the play count. With ``filter_seen`` nothing of
    the history is left, so the model reduces to popularity over unheard tracks.
    """

    name = "user_popular"

    def _fit(self, dataset: Dataset, train: UserItems) -> None:
        """Nothing to learn: favourites come from the query history at recommend time."""

    def _candidates(
        self, query: UserItems, k: int, filter_seen: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        if filter_seen:
            return empty_table(query.n_users, k)
        rows, items, counts, last_pos = replay_counts(query, self.n_items)
        return top_k_per_row(rows, items, counts.astype(np.float32), last_pos, query.n_users, k)


def replay_counts(
    query: UserItems, n_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Plays and recency of every distinct ``(row, item)`` pair of ``query``.

    Returns:
        rows, items, counts, last_pos: int64 ``[P]``; ``last_pos`` is the position of the pair's
        latest play in the flat event array, which orders plays of one row by time (rows are
        time-ordered, so position also breaks ties between equal timestamps).
    """
    rows, items = history_pairs(query)
    keys = pair_keys(rows, items, n_items)
    # On the reversed array the first occurrence of a key is its latest play.
    uniq, first_rev, counts = np.unique(keys[::-1], return_index=True, return_counts=True)
    last_pos = len(keys) - 1 - first_rev
    return uniq // (n_items + 1), uniq % (n_items + 1), counts.astype(np.int64), last_pos
