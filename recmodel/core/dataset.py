"""In-memory data contract between extraction and the models.

Extraction (DuckDB SQL) writes Parquet tables; :func:`load_dataset` turns them into the numpy
structures below, which every model (baselines, transformer, ranker) consumes. Indices are dense:
users are ``0..n_users-1``; items are ``1..n_items`` with ``0`` reserved for padding, so an item
table indexed by ``item_idx`` has ``n_items + 1`` rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from recmodel.core.columns import Window

# The history events that one call of a request's scoring holds at once: each row is scored
# from its own events, so the working arrays (tens of bytes an event) are those of a run of rows.
QUERY_CHUNK_EVENTS = 1 << 20


def row_runs(sizes: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive row ranges ``[lo, hi)`` whose ``sizes`` sum to at most ``budget``, greedily;
    a row larger than the budget is a run alone. At least one run (``[(0, 0)]`` for no rows)."""
    ends = np.cumsum(np.asarray(sizes, dtype=np.int64))
    budget = max(int(budget), 1)
    runs, lo = [], 0
    while lo < len(ends):
        before = ends[lo - 1] if lo else 0
        hi = max(int(np.searchsorted(ends, before + budget, side="right")), lo + 1)
        runs.append((lo, hi))
        lo = hi
    return runs or [(0, 0)]


@dataclass(frozen=True)
class UserItems:
    """Per-user ordered item lists in CSR form (one row per user, time order within a row).

    Attributes:
        indptr: int64 ``[U + 1]``; row ``u`` is ``items[indptr[u]:indptr[u + 1]]``.
        items: int32 ``[nnz]`` item indices (``>= 1``).
        ts: int64 ``[nnz]`` event times in seconds, non-decreasing within a row.
    """

    indptr: np.ndarray
    items: np.ndarray
    ts: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    @property
    def lengths(self) -> np.ndarray:
        """int64 ``[U]``: number of events per user."""
        return np.diff(self.indptr)

    def row(self, user: int) -> np.ndarray:
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    def row_ts(self, user: int) -> np.ndarray:
        return self.ts[self.indptr[user] : self.indptr[user + 1]]

    def take(self, users: np.ndarray) -> UserItems:
        """Rows of ``users`` (in that order) as a new UserItems."""
        users = np.asarray(users, dtype=np.int64)
        starts = self.indptr[users]
        return self._slices(starts, self.indptr[users + 1] - starts)

    def tails(self, n: int) -> UserItems:
        """Each row's last ``n`` events (a shorter row whole), in time order."""
        ends = self.indptr[1:]
        starts = np.maximum(self.indptr[:-1], ends - n)
        return self._slices(starts, ends - starts)

    def _slices(self, starts: np.ndarray, lengths: np.ndarray) -> UserItems:
        """The events ``starts[r] .. starts[r] + lengths[r] - 1`` as row ``r`` of a new one."""
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        # Positions of every kept event, built without a Python loop over rows.
        pos = np.arange(indptr[-1], dtype=np.int64) + np.repeat(starts - indptr[:-1], lengths)
        return UserItems(indptr, self.items[pos], self.ts[pos])

    def to_csr(self, n_items: int, binary: bool = False):
        """A scipy CSR ``[U, n_items + 1]`` of play counts (or 1/0 when ``binary``)."""
        import scipy.sparse as sp

        data = np.ones(len(self.items), dtype=np.float32)
        # Copies: scipy keeps int32 index arrays as they are and sum_duplicates() sorts them in
        # place, which would scramble this history's time order.
        mat = sp.csr_matrix(
            (data, self.items.copy(), self.indptr.copy()), shape=(self.n_users, n_items + 1)
        )
        mat.sum_duplicates()
        if binary:
            mat.data[:] = 1.0
        return mat


@dataclass(frozen=True)
class ItemFeatures:
    """Item metadata indexed by ``item_idx`` (row 0 is padding; 0 means unknown everywhere).

    Attributes:
        artist, album, genre, tempo_bucket: int64 ``[N + 1]`` dense codes, 0 = unknown.
        acoustic: float32 ``[N + 1, A]`` acoustic vectors (zeros where unknown; ``A`` may be 0).
        has_acoustic: bool ``[N + 1]``.
        track_length: float32 ``[N + 1]`` seconds (NaN where unknown).
    """

    artist: np.ndarray
    album: np.ndarray
    genre: np.ndarray
    tempo_bucket: np.ndarray
    acoustic: np.ndarray
    has_acoustic: np.ndarray
    track_length: np.ndarray

    @property
    def n_items(self) -> int:
        return len(self.artist) - 1

    @property
    def cardinalities(self) -> dict[str, int]:
        """Embedding-table sizes (max code + 1, at least 1) per categorical feature."""
        return {
            name: int(getattr(self, name).max(initial=0)) + 1
            for name in ("artist", "album", "genre", "tempo_bucket")
        }


@dataclass(frozen=True)
class Dataset:
    """Every listen+ event after extraction, sorted by ``(user_idx, ts)``.

    Attributes:
        user_idx, item_idx: int32 ``[E]``.
        ts: int64 ``[E]`` seconds.
        window: int8 ``[E]``, a :class:`recmodel.core.columns.Window` code.
        n_users, n_items: sizes of the dense index spaces.
        items: metadata of the ``n_items`` tracks.
        item_counts: int64 ``[N + 1]`` listen+ counts in the pretrain window (popularity).
    """

    user_idx: np.ndarray
    item_idx: np.ndarray
    ts: np.ndarray
    window: np.ndarray
    n_users: int
    n_items: int
    items: ItemFeatures
    item_counts: np.ndarray

    def _select(self, mask: np.ndarray) -> UserItems:
        users = self.user_idx[mask]
        counts = np.bincount(users, minlength=self.n_users)
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        # Events are already sorted by (user, ts), so a mask keeps that order.
        return UserItems(indptr, self.item_idx[mask].astype(np.int32), self.ts[mask])

    def history(self, before: int) -> UserItems:
        """Each user's events in windows ``< before``: the query of a request in ``before``."""
        return self._select(self.window < before)

    def events_in(self, window: int) -> UserItems:
        """Each user's events inside ``window`` (the targets of that window)."""
        return self._select(self.window == window)

    def train(self) -> UserItems:
        """The events every model is fit on (the pretrain window)."""
        return self.history(Window.FINETUNE)

    def users_with_events(self, window: int, min_history: int = 1) -> np.ndarray:
        """int64 users with at least one event in ``window`` and ``min_history`` before it."""
        in_window = np.bincount(self.user_idx[self.window == window], minlength=self.n_users)
        before = np.bincount(self.user_idx[self.window < window], minlength=self.n_users)
        return np.flatnonzero((in_window > 0) & (before >= min_history)).astype(np.int64)

    def end_before(self, window: int) -> int:
        """One second after the last event in windows ``< window`` (0 when there is none): the
        request time of the queries of ``window``."""
        return int(self.ts[self.window < window].max(initial=-1)) + 1

    def parts(self) -> Iterator[tuple[Dataset, int]]:
        """``(part, first_user)``: the events as parts that hold users ``0..n_users - 1`` in
        order, user ``u`` of a part being the run's ``first_user + u``; here one part, the
        dataset itself (:meth:`recmodel.core.user_shards.UserShards.parts` reads shards)."""
        yield self, 0

    def parts_of(self, users: np.ndarray) -> Iterator[tuple[Dataset, np.ndarray]]:
        """``(part, rows)`` for ``users`` (ascending): here the dataset and ``users``
        themselves (:meth:`recmodel.core.user_shards.UserShards.parts_of`)."""
        yield self, np.asarray(users, dtype=np.int64)

    def request_ts(self, window: int) -> np.ndarray:
        """int64 ``[U]``: each user's first event time in ``window`` (-1 where none)."""
        out = np.full(self.n_users, -1, dtype=np.int64)
        mask = self.window == window
        users, ts = self.user_idx[mask], self.ts[mask]
        # Sorted by (user, ts): the first occurrence of a user is its earliest event.
        first = np.unique(users, return_index=True)[1]
        out[users[first]] = ts[first]
        return out
