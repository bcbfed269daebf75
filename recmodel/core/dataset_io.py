"""Load the Parquet tables written by extraction into the in-memory :class:`Dataset`.

The events table is read column by column into numpy (no pandas), checked against the
invariants every model relies on (dense indices in range, sorted by ``(user_idx, ts)``), and the
item table is scattered into arrays indexed by ``item_idx`` with row 0 as padding.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recmodel.core.columns import Columns, Window
from recmodel.core.dataset import Dataset, ItemFeatures

log = logging.getLogger(__name__)

EVENT_COLUMNS = (Columns.USER_IDX, Columns.ITEM_IDX, Columns.TS, Columns.WINDOW)
CODE_COLUMNS = {  # ItemFeatures field -> items column; dense codes, 0 = unknown
    "artist": Columns.ARTIST_IDX,
    "album": Columns.ALBUM_IDX,
    "genre": Columns.GENRE_IDX,
    "tempo_bucket": Columns.TEMPO_BUCKET,
}


def load_dataset(events_path: Path, items_path: Path, users_path: Path) -> Dataset:
    """Read ``events``, ``items`` and ``users`` Parquet files into a :class:`Dataset`.

    Raises:
        ValueError: an index is out of range, the item table is not exactly ``1..N``, or the
            events are not sorted by ``(user_idx, ts)``.
    """
    n_users = pq.read_metadata(users_path).num_rows
    items = pq.read_table(items_path)
    features = item_features(items, source=str(items_path))
    events = pq.read_table(events_path, columns=list(EVENT_COLUMNS))
    user_idx, item_idx, ts, window = event_arrays(events)
    check_events(user_idx, item_idx, ts, window, n_users, features.n_items, str(events_path))
    pretrain = item_idx[window == Window.PRETRAIN]
    item_counts = np.bincount(pretrain, minlength=features.n_items + 1).astype(np.int64)
    log.info("loaded %d events, %d users, %d items", len(ts), n_users, features.n_items)
    return Dataset(
        user_idx=user_idx,
        item_idx=item_idx,
        ts=ts,
        window=window,
        n_users=n_users,
        n_items=features.n_items,
        items=features,
        item_counts=item_counts,
    )


def item_features(items: pa.Table, source: str = "items") -> ItemFeatures:
    """Scatter the item table into ``[N + 1]`` arrays indexed by ``item_idx`` (row 0 padding)."""
    idx = _numpy(items, Columns.ITEM_IDX, np.int64)  # [N]
    n_items = len(idx)
    if not np.array_equal(np.sort(idx), np.arange(1, n_items + 1)):
        raise ValueError(f"{source}: {Columns.ITEM_IDX} must be exactly 1..{n_items}")
    codes = {}
    for field, column in CODE_COLUMNS.items():
        codes[field] = np.zeros(n_items + 1, dtype=np.int64)
        codes[field][idx] = _numpy(items, column, np.int64)
    track_length = np.full(n_items + 1, np.nan, dtype=np.float32)
    # Nulls become NaN in the float conversion: unknown lengths stay NaN.
    track_length[idx] = items.column(Columns.TRACK_LENGTH).to_numpy().astype(np.float32)
    acoustic, has_acoustic = _acoustic(items.column(Columns.EMBEDDING), idx, source)
    return ItemFeatures(
        **codes, acoustic=acoustic, has_acoustic=has_acoustic, track_length=track_length
    )


def _acoustic(
    column: pa.ChunkedArray, idx: np.ndarray, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``[N + 1, A]`` vectors and bool ``[N + 1]`` presence from a list column.

    A NULL or empty list, or a vector with a NULL/NaN element, counts as unknown (zeros).
    """
    lists = column.combine_chunks()
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy()  # [N]
    rows = np.flatnonzero(lengths > 0)  # rows with a vector, in table order
    dims = np.unique(lengths[rows])
    if len(dims) > 1:
        raise ValueError(
            f"{source}: {Columns.EMBEDDING} vectors have different lengths "
            f"{dims[:5].tolist()}; every vector must have the same dimension"
        )
    dim = int(dims[0]) if len(dims) else 0
    # Flattening skips NULL lists, so the values line up with `rows`.
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.float32)
    vectors = flat.reshape(len(rows), dim)  # [R, A]
    finite = np.isfinite(vectors).all(axis=1)
    acoustic = np.zeros((len(idx) + 1, dim), dtype=np.float32)
    has_acoustic = np.zeros(len(idx) + 1, dtype=bool)
    acoustic[idx[rows[finite]]] = vectors[finite]
    has_acoustic[idx[rows[finite]]] = True
    return acoustic, has_acoustic


def event_arrays(events: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """int32 ``user_idx``, int32 ``item_idx``, int64 ``ts`` and int8 ``window`` ``[E]``."""
    return (
        _numpy(events, Columns.USER_IDX, np.int32),
        _numpy(events, Columns.ITEM_IDX, np.int32),
        _numpy(events, Columns.TS, np.int64),
        _numpy(events, Columns.WINDOW, np.int8),
    )


def _numpy(table: pa.Table, column: str, dtype: type) -> np.ndarray:
    array = table.column(column)
    if array.null_count:
        raise ValueError(f"column {column} has {array.null_count} NULL values")
    return array.to_numpy().astype(dtype, copy=False)


def check_events(
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    ts: np.ndarray,
    window: np.ndarray,
    n_users: int,
    n_items: int,
    source: str,
) -> None:
    """The invariants :class:`Dataset` assumes, checked in O(E) without a Python loop."""
    if len(user_idx) and not (user_idx.min() >= 0 and user_idx.max() < n_users):
        raise ValueError(f"{source}: {Columns.USER_IDX} outside 0..{n_users - 1}")
    if len(item_idx) and not (item_idx.min() >= 1 and item_idx.max() <= n_items):
        raise ValueError(f"{source}: {Columns.ITEM_IDX} outside 1..{n_items}")
    if not np.isin(window, list(Window.NAMES)).all():
        raise ValueError(f"{source}: {Columns.WINDOW} holds codes outside {sorted(Window.NAMES)}")
    next_user = np.diff(user_idx.astype(np.int64))
    in_order = (next_user > 0) | ((next_user == 0) & (np.diff(ts) >= 0))
    if not in_order.all():
        first = int(np.flatnonzero(~in_order)[0])
        raise ValueError(
            f"{source}: events are not sorted by ({Columns.USER_IDX}, "
            f"{Columns.TS}) at row {first + 1}"
        )
