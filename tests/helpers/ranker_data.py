"""Tiny datasets with all four windows, and a stand-in retriever, for the ranker/finetune tests."""

from __future__ import annotations

import numpy as np

from recmodel.core.columns import Window
from recmodel.core.dataset import Dataset, ItemFeatures

DAY = 86_400
# Window bounds in seconds: pretrain [0, 20d), finetune [20d, 27d), val [27d, 30d), test [30d, 33d).
BOUNDS = (0, 20 * DAY, 27 * DAY, 30 * DAY, 33 * DAY)
N_ARTISTS = 5


def toy_items(n_items: int, seed: int = 0) -> ItemFeatures:
    """Metadata with every kind of unknown: artist ``1 + i % 5``, a few unknown codes/vectors."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n_items + 1)
    artist = np.where(ids > 0, 1 + ids % N_ARTISTS, 0)
    artist[7::11] = 0  # unknown artist
    genre = np.where(ids > 0, 1 + ids % 3, 0)
    genre[5::9] = 0
    tempo = np.where(ids > 0, 1 + ids % 4, 0)
    tempo[3::8] = 0
    has_acoustic = ids > 0
    has_acoustic[4::10] = False
    acoustic = rng.normal(size=(n_items + 1, 4)).astype(np.float32)
    acoustic[~has_acoustic] = 0.0
    length = np.where(ids > 0, 120.0 + ids, np.nan).astype(np.float32)
    length[6::13] = np.nan
    return ItemFeatures(
        artist=artist.astype(np.int64),
        album=np.zeros(n_items + 1, dtype=np.int64),
        genre=genre.astype(np.int64),
        tempo_bucket=tempo.astype(np.int64),
        acoustic=acoustic,
        has_acoustic=has_acoustic,
        track_length=length,
    )


def dataset_from_events(events: np.ndarray, n_users: int, items: ItemFeatures) -> Dataset:
    """A Dataset from int64 rows ``(user, item, ts, window)`` in any order."""
    events = np.asarray(events, dtype=np.int64).reshape(-1, 4)
    events = events[np.lexsort((events[:, 2], events[:, 0]))]
    pretrain = events[:, 3] == Window.PRETRAIN
    counts = np.bincount(events[pretrain, 1], minlength=items.n_items + 1)
    return Dataset(
        user_idx=events[:, 0].astype(np.int32),
        item_idx=events[:, 1].astype(np.int32),
        ts=events[:, 2],
        window=events[:, 3].astype(np.int8),
        n_users=n_users,
        n_items=items.n_items,
        items=items,
        item_counts=counts.astype(np.int64),
    )


def toy_dataset(
    n_users: int = 80, n_items: int = 30, seed: int = 0, per_window=(30, 10, 5, 5)
) -> Dataset:
    """Users who mostly (70%) play one favourite artist, with Poisson-many plays per window."""
    rng = np.random.default_rng(seed)
    items = toy_items(n_items, seed)
    favourite = 1 + rng.integers(0, N_ARTISTS, n_users)
    rows = []
    for u in range(n_users):
        own = np.flatnonzero(items.artist == favourite[u])
        for window, mean in enumerate(per_window):
            n = max(int(rng.poisson(mean)), 1)
            fav = rng.random(n) < 0.7
            picked = np.where(fav, rng.choice(own, n), rng.integers(1, n_items + 1, n))
            # Distinct times: "the last k plays" is then one well-defined set.
            ts = BOUNDS[window] + rng.choice(BOUNDS[window + 1] - BOUNDS[window], n, replace=False)
            rows.append(np.stack([np.full(n, u), picked, ts, np.full(n, window)], axis=1))
    return dataset_from_events(np.concatenate(rows), n_users, items)


class FakeRetriever:
    """Scores items by a fixed random user x item table: recommendations ignore the history."""

    def __init__(self, n_users: int, n_items: int, seed: int = 0):
        self.table = np.random.default_rng(seed).normal(size=(n_users, n_items + 1))
        self.table[:, 0] = -np.inf  # padding is never recommended

    def recommend(self, histories, users, k, exclude=None):
        scores = self.table[np.asarray(users)]
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return ids, np.take_along_axis(scores, ids, axis=1).astype(np.float32)
