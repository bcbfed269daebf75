"""Count-based baselines: popularity, and each listener's own tracks by plays or by recency."""

from __future__ import annotations

import numpy as np

from recmodel.baselines.base import (
    Recommender,
    empty_table,
    history_pairs,
    pair_keys,
    top_k_per_row,
)
from recmodel.baselines.plays import SECONDS_PER_DAY, Plays
from recmodel.core.dataset import UserItems


class Popularity(Recommender):
    """The most played tracks of the training window, the same list for everyone.

    Scores are the training play counts; ties go to the lower item index.
    """

    name = "popularity"

    def _fit(self, plays: Plays) -> None:
        """Nothing beyond the counts the base class keeps."""

    def _fill_scores(self) -> np.ndarray:
        return self.item_counts.astype(np.float32)

    def _candidates(
        self, query: UserItems, k: int, filter_seen: bool, now: int
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

    def _fit(self, plays: Plays) -> None:
        """Nothing to learn: favourites come from the query history at recommend time."""

    def _candidates(
        self, query: UserItems, k: int, filter_seen: bool, now: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if filter_seen:
            return empty_table(query.n_users, k)
        rows, items, counts, last_pos = replay_counts(query, self.n_items)
        return top_k_per_row(rows, items, counts.astype(np.float32), last_pos, query.n_users, k)


class UserRecent(Recommender):
    """Each listener's own tracks by time-decayed plays, then recently popular tracks.

    A track the user played scores ``sum over its plays of exp(-age / tau)``, with ``age`` the
    time from the play to the request (``now``: by default the end of the histories); ties go
    to the most recent play. ``tau_days`` is tuned on the validation window. Rows are completed
    with the tracks most played in the recent weeks of the training events (plays decayed with
    a half-life of :data:`POPULARITY_HALF_LIFE_DAYS`). With ``filter_seen`` nothing of the
    history is left, so the model reduces to recent popularity over unheard tracks.

    Args:
        tau_days: decay time of a play's weight.
    """

    name = "user_recent"

    def __init__(self, tau_days: float = 7.0):
        super().__init__()
        if tau_days <= 0:
            raise ValueError(f"user_recent tau_days must be > 0, got {tau_days}")
        self.tau_days = tau_days
        self._recent = np.zeros(1, dtype=np.float32)  # [N + 1] decayed popularity

    def _fit(self, plays: Plays) -> None:
        self._recent = plays.recent.astype(np.float32)
        items = np.arange(1, self.n_items + 1, dtype=np.int64)
        self.popular = items[np.lexsort((items, -self._recent[1:]))]

    def _fill_scores(self) -> np.ndarray:
        return np.zeros_like(self._recent)  # below every decayed play count (all > 0)

    def _candidates(
        self, query: UserItems, k: int, filter_seen: bool, now: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if filter_seen:
            return empty_table(query.n_users, k)
        rows, items = history_pairs(query)
        weights = np.exp(-(now - query.ts) / (self.tau_days * SECONDS_PER_DAY))
        keys = pair_keys(rows, items, self.n_items)
        uniq, inverse = np.unique(keys, return_inverse=True)
        scores = np.bincount(inverse, weights=weights, minlength=len(uniq))
        last = np.zeros(len(uniq), dtype=np.int64)
        np.maximum.at(last, inverse, np.arange(len(keys)))  # latest play: the tie-break
        n = self.n_items + 1
        return top_k_per_row(uniq // n, uniq % n, scores.astype(np.float32), last, query.n_users, k)


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
