"""Batch top-k for every active listener: a retriever's recommendations as a long table.

The same ranking as :meth:`recmodel.retriever.model.Retriever.recommend` (the repeat bonus
included), for all users a block at a time, streamed to Parquet when the table does not fit in
memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recmodel.core.columns import Columns
from recmodel.core.dataset import UserItems
from recmodel.retriever.batches import PAD
from recmodel.retriever.model import Retriever

log = logging.getLogger(__name__)

BLOCK_USERS = 65_536  # users per block of batch top-k: bounds the [U, D] and [U, k] buffers
TOPK_SCHEMA = pa.schema(
    [
        (Columns.USER_IDX, pa.int32()),
        (Columns.ITEM_IDX, pa.int32()),
        (Columns.RANK, pa.int32()),
        (Columns.SCORE, pa.float32()),
    ]
)


def active_users(histories: UserItems) -> np.ndarray:
    """int64 users with at least one event in ``histories``."""
    return np.flatnonzero(histories.lengths > 0).astype(np.int64)


def iter_batch_topk(
    model: Retriever,
    histories: UserItems,
    users: np.ndarray | None = None,
    k: int = 100,
    *,
    filter_seen: bool = False,
    block_users: int = BLOCK_USERS,
    chunk_items: int = 65_536,
) -> Iterator[pa.Table]:
    """Top-``k`` tables (:data:`TOPK_SCHEMA`) for ``users``, ``block_users`` at a time.

    Args:
        model: the retriever; it ranks with :meth:`Retriever.recommend` (repeat bonus included).
        histories: per-user history (the query of each user is its last ``max_len`` items).
        users: int64 user indices; default every user with a history.
        k: items per user; slots no item can fill (``k`` above the eligible catalog) are dropped.
        filter_seen: never return a track from the user's history.
        block_users: users ranked per block (memory is ``O(block_users * (D + k))``).
        chunk_items: catalog chunk of the top-k scan.
    """
    users = active_users(histories) if users is None else np.asarray(users, dtype=np.int64)
    for start in range(0, len(users), block_users):
        block = users[start : start + block_users]
        exclude = histories.take(block) if filter_seen else None
        ids, scores = model.recommend(
            histories, block, k, exclude=exclude, chunk_items=chunk_items
        )  # [b, k] each
        yield topk_table(block, ids, scores)


def topk_table(users: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> pa.Table:
    """Long table of ``ids [U, k]`` ranked best first; empty slots (id < 1) are dropped."""
    k = ids.shape[1]
    keep = ids.reshape(-1) > PAD  # [U*k]
    return pa.table(
        {
            Columns.USER_IDX: np.repeat(users, k)[keep].astype(np.int32),
            Columns.ITEM_IDX: ids.reshape(-1)[keep].astype(np.int32),
            Columns.RANK: np.tile(np.arange(1, k + 1, dtype=np.int32), len(users))[keep],
            Columns.SCORE: scores.reshape(-1)[keep].astype(np.float32),
        },
        schema=TOPK_SCHEMA,
    )


def batch_topk(
    model: Retriever,
    histories: UserItems,
    users: np.ndarray | None = None,
    k: int = 100,
    **options: Any,
) -> pa.Table:
    """Top-``k`` candidates of every active user as one table (:data:`TOPK_SCHEMA`).

    Takes the options of :func:`iter_batch_topk`; use :func:`write_batch_topk` when the table
    does not fit in memory.
    """
    blocks = list(iter_batch_topk(model, histories, users, k, **options))
    return pa.concat_tables(blocks) if blocks else TOPK_SCHEMA.empty_table()


def write_batch_topk(
    model: Retriever,
    histories: UserItems,
    path: str | Path,
    users: np.ndarray | None = None,
    k: int = 100,
    **options: Any,
) -> int:
    """Stream :func:`iter_batch_topk` into one Parquet file; returns the number of rows."""
    rows = 0
    with pq.ParquetWriter(str(path), TOPK_SCHEMA) as writer:
        for table in iter_batch_topk(model, histories, users, k, **options):
            writer.write_table(table)
            rows += table.num_rows
    log.info("wrote %d top-%d rows to %s", rows, k, path)
    return rows
