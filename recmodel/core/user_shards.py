"""The extracted events left on disk and read one user shard at a time.

``events.parquet`` is sorted by ``(user_idx, ts)``, so a range of users is a contiguous run of
rows and of row groups: :meth:`UserShards.shard` reads only the row groups whose ``user_idx``
statistics meet its range, and only the columns a :class:`Dataset` needs. A process that trains
on (or scores) one shard after another holds one shard's events, never the whole log.

:func:`open_user_shards` makes one streaming pass over four narrow columns (``user_idx``,
``item_idx``, ``window``, ``ts``) to count, per user, the events each model reads, and per item the
popularity of the pretrain window; it keeps those users- and items-sized arrays only. The
shard bounds split the users so that every shard holds about the same number of events.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recmodel.core.columns import Columns, Window
from recmodel.core.dataset import Dataset, ItemFeatures, UserItems
from recmodel.core.dataset_io import EVENT_COLUMNS, check_events, event_arrays, item_features

log = logging.getLogger(__name__)

SCAN_ROWS = 1 << 20  # rows per batch of the counting pass


@dataclass(frozen=True)
class UserShards:
    """Contiguous user ranges of an events file (``bounds[s] <= user_idx < bounds[s + 1]``).

    Attributes:
        path: the events Parquet file, sorted by ``(user_idx, ts)``.
        bounds: int64 ``[S + 1]`` user bounds, ``0`` first and ``n_users`` last.
        n_users, n_items: sizes of the dense index spaces.
        items: metadata of the ``n_items`` tracks.
        item_counts: int64 ``[N + 1]`` listen+ counts in the pretrain window (as
            :attr:`Dataset.item_counts`).
        window_counts: int64 ``[U, 4]`` each user's events in each window
            (:class:`recmodel.core.columns.Window` codes).
        last_ts: int64 ``[4]`` the last event time of each window (-1 where it is empty).
    """

    path: Path
    bounds: np.ndarray
    n_users: int
    n_items: int
    items: ItemFeatures
    item_counts: np.ndarray
    window_counts: np.ndarray
    last_ts: np.ndarray

    @property
    def n_shards(self) -> int:
        return len(self.bounds) - 1

    @property
    def n_events(self) -> int:
        return int(self.window_counts.sum())

    def lengths_before(self, window: int) -> np.ndarray:
        """int64 ``[U]``: each user's events in windows ``< window`` (a query's length)."""
        return self.window_counts[:, :window].sum(axis=1)

    def lengths_in(self, window: int) -> np.ndarray:
        """int64 ``[U]``: each user's events in ``window``."""
        return self.window_counts[:, window].copy()

    @property
    def train_lengths(self) -> np.ndarray:
        """int64 ``[U]``: what :meth:`Dataset.train` holds per user."""
        return self.lengths_before(Window.FINETUNE)

    def users_with_events(self, window: int, min_history: int = 1) -> np.ndarray:
        """:meth:`Dataset.users_with_events` from the counts."""
        has = (self.lengths_in(window) > 0) & (self.lengths_before(window) >= min_history)
        return np.flatnonzero(has).astype(np.int64)

    def end_before(self, window: int) -> int:
        """:meth:`Dataset.end_before` from the counts."""
        return int(self.last_ts[:window].max(initial=-1)) + 1

    def sum_by_shard(self, values: np.ndarray) -> np.ndarray:
        """int64 ``[S]``: the sum of per-user ``values`` ``[U]`` over each shard's users."""
        cumulative = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
        return np.diff(cumulative[self.bounds])

    def users(self, shard: int) -> tuple[int, int]:
        """``(first, end)``: shard ``shard`` holds users ``first .. end - 1``."""
        return int(self.bounds[shard]), int(self.bounds[shard + 1])

    def parts(self) -> Iterator[tuple[Dataset, int]]:
        """``(shard, first_user)`` for every shard in turn (one in memory at a time): users
        ``0..n_users - 1`` in order, user ``u`` of a shard being the run's ``first_user + u``."""
        for shard in range(self.n_shards):
            yield self.shard(shard), int(self.bounds[shard])

    def parts_of(self, users: np.ndarray) -> Iterator[tuple[Dataset, np.ndarray]]:
        """Each shard holding some of ``users`` (ascending), read in turn, with those users
        numbered within it (one shard's events in memory at a time)."""
        users = np.asarray(users, dtype=np.int64)
        for shard in range(self.n_shards):
            first, end = self.users(shard)
            mine = users[(users >= first) & (users < end)] - first
            if len(mine):
                yield self.shard(shard), mine

    def shard(self, shard: int) -> Dataset:
        """Events of shard ``shard`` as a :class:`Dataset` of its users, numbered from 0.

        User ``u`` of the result is user ``first + u`` of the file (:meth:`users`); items,
        item counts and windows are the file's.
        """
        first, end = self.users(shard)
        table = pq.read_table(
            self.path,
            columns=list(EVENT_COLUMNS),
            filters=[(Columns.USER_IDX, ">=", first), (Columns.USER_IDX, "<", end)],
        )
        user_idx, item_idx, ts, window = event_arrays(table)
        user_idx = (user_idx - first).astype(np.int32)
        source = f"{self.path} (users {first}..{end - 1})"
        check_events(user_idx, item_idx, ts, window, end - first, self.n_items, source)
        return Dataset(
            user_idx=user_idx,
            item_idx=item_idx,
            ts=ts,
            window=window,
            n_users=end - first,
            n_items=self.n_items,
            items=self.items,
            item_counts=self.item_counts,
        )


def open_user_shards(
    events_path: Path,
    items_path: Path,
    users_path: Path,
    shard_events: int,
    min_shards: int = 1,
) -> UserShards:
    """Count the events of ``events_path`` and cut its users into shards.

    Args:
        events_path, items_path, users_path: the tables extraction wrote.
        shard_events: about this many events per shard at most (0 = one shard).
        min_shards: at least this many shards (one per data-parallel rank), as long as there
            are users to fill them.

    Raises:
        ValueError: an index is out of range (the full checks run as each shard is read).
    """
    n_users = pq.read_metadata(users_path).num_rows
    features = item_features(pq.read_table(items_path), source=str(items_path))
    window_counts, item_counts, last_ts = _count_events(
        Path(events_path), n_users, features.n_items
    )
    user_events = window_counts.sum(axis=1)
    n_events = int(user_events.sum())
    wanted = max(min_shards, -(-n_events // shard_events) if shard_events > 0 else 1)
    wanted = -(-wanted // min_shards) * min_shards  # ranks get equal numbers of shards
    bounds = shard_bounds(user_events, wanted)
    shards = UserShards(
        Path(events_path),
        bounds,
        n_users,
        features.n_items,
        features,
        item_counts,
        window_counts,
        last_ts,
    )
    log.info(
        "%d events of %d users in %d user shards (at most %d events each)",
        n_events,
        n_users,
        shards.n_shards,
        int(shards.sum_by_shard(user_events).max(initial=0)),
    )
    return shards


def shard_bounds(user_events: np.ndarray, n_shards: int) -> np.ndarray:
    """int64 ``[S + 1]`` user bounds that cut ``user_events`` into ``S <= n_shards`` contiguous
    ranges of near-equal event totals; every range holds at least one user."""
    n_users = len(user_events)
    n_shards = max(1, min(n_shards, n_users))
    ends = np.cumsum(user_events, dtype=np.int64)  # [U] events up to and including each user
    total = int(ends[-1]) if n_users else 0
    targets = np.arange(1, n_shards, dtype=np.int64) * total // n_shards  # [S - 1]
    cuts = np.searchsorted(ends, targets, side="left") + 1  # first user after each target
    return np.unique(np.concatenate([[0], np.clip(cuts, 1, n_users), [n_users]])).astype(np.int64)


def _count_events(path: Path, n_users: int, n_items: int) -> tuple[np.ndarray, ...]:
    """int64 ``[U, 4]`` events per user and window, ``[N + 1]`` pretrain item counts and
    ``[4]`` the last event time of each window."""
    n_windows = len(Window.NAMES)
    window_counts = np.zeros(n_users * n_windows, dtype=np.int64)
    item_counts = np.zeros(n_items + 1, dtype=np.int64)
    last_ts = np.full(n_windows, -1, dtype=np.int64)
    columns = [Columns.USER_IDX, Columns.ITEM_IDX, Columns.WINDOW, Columns.TS]
    for batch in pq.ParquetFile(path).iter_batches(batch_size=SCAN_ROWS, columns=columns):
        if batch.num_rows == 0:
            continue
        user, item, window, ts = (_checked(batch, c, path) for c in columns)
        if user.min() < 0 or user.max() >= n_users:
            raise ValueError(f"{path}: {Columns.USER_IDX} outside 0..{n_users - 1}")
        if item.min() < 1 or item.max() > n_items:
            raise ValueError(f"{path}: {Columns.ITEM_IDX} outside 1..{n_items}")
        if window.min() < 0 or window.max() >= n_windows:
            raise ValueError(f"{path}: {Columns.WINDOW} holds codes outside 0..{n_windows - 1}")
        cell = user.astype(np.int64) * n_windows + window
        window_counts += np.bincount(cell, minlength=len(window_counts))
        item_counts += np.bincount(item[window == Window.PRETRAIN], minlength=n_items + 1)
        np.maximum.at(last_ts, window, ts)
    return window_counts.reshape(n_users, n_windows), item_counts, last_ts


def _checked(batch, column: str, path: Path) -> np.ndarray:
    array = batch.column(column)
    if array.null_count:
        raise ValueError(f"{path}: column {column} has {array.null_count} NULL values")
    return array.to_numpy(zero_copy_only=False)


def take_rows(
    source: UserShards | Dataset, users: np.ndarray, before: int, within: int
) -> tuple[UserItems, UserItems]:
    """The rows of ``users`` (ascending) read shard by shard (or from the dataset in memory):
    their events in windows ``< before`` and those in window ``within``, each as a
    :class:`UserItems` whose row ``i`` belongs to ``users[i]``."""
    histories, targets = [], []
    for part, mine in source.parts_of(users):
        histories.append(part.history(before).take(mine))
        targets.append(part.events_in(within).take(mine))
    return concat_rows(histories), concat_rows(targets)


def concat_rows(parts: list[UserItems]) -> UserItems:
    """The rows of ``parts`` one after the other, as one :class:`UserItems`."""
    if not parts:
        return UserItems(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64))
    lengths = np.concatenate([p.lengths for p in parts])
    indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    items = np.concatenate([p.items for p in parts])
    return UserItems(indptr, items, np.concatenate([p.ts for p in parts]))
