"""Two runs' catalogs matched by original track id.

Every extraction numbers tracks afresh (``item_idx`` by popularity, ``sql/08_item_vocab.sql``),
so a model of one run meets another run's tracks only through their ``item_id``: a warm start
carries rows over this way (:mod:`recmodel.serving.warm_start`), and a champion is scored on a
later run's listeners this way (:mod:`recmodel.serving.gate`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recmodel.core.columns import Columns
from recmodel.core.dataset import UserItems
from recmodel.retriever.batches import PAD


def item_mapping(old_items: pa.Table, new_items: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """int64 ``(new_idx [S], old_idx [S])`` of the tracks in both catalogs, by ``item_id``.

    Raises:
        ValueError: the two tables hold ``item_id`` of different types.
    """
    old_ids, new_ids = old_items.column(Columns.ITEM), new_items.column(Columns.ITEM)
    if old_ids.type != new_ids.type:
        raise ValueError(
            f"item_id is {old_ids.type} in the old catalog and {new_ids.type} in "
            "the new one: tracks cannot be matched"
        )
    pos = pc.index_in(new_ids, value_set=old_ids)  # [N_new], null where the track is new
    found = pc.is_valid(pos)
    new_idx = new_items.column(Columns.ITEM_IDX).filter(found).to_numpy().astype(np.int64)
    old_rows = pos.filter(found).to_numpy().astype(np.int64)
    old_idx = old_items.column(Columns.ITEM_IDX).to_numpy().astype(np.int64)[old_rows]
    return new_idx, old_idx


def index_map(old_items: pa.Table, new_items: pa.Table) -> np.ndarray:
    """int64 ``[N_new + 1]``: the old ``item_idx`` of each new track, 0 where the old lacks it.

    Raises:
        ValueError: the two tables hold ``item_id`` of different types.
    """
    new_idx, old_idx = item_mapping(old_items, new_items)
    n_new = int(pc.max(new_items.column(Columns.ITEM_IDX)).as_py() or 0)
    new_to_old = np.zeros(n_new + 1, dtype=np.int64)
    new_to_old[new_idx] = old_idx
    return new_to_old


def remap_histories(histories: UserItems, new_to_old: np.ndarray) -> UserItems:
    """``histories`` in the old ``item_idx`` (rows kept), tracks the old catalog lacks dropped."""
    mapped = new_to_old[histories.items]  # [nnz]
    keep = mapped > PAD
    rows = np.repeat(np.arange(histories.n_users), histories.lengths)[keep]  # [nnz']
    indptr = np.zeros(histories.n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=histories.n_users), out=indptr[1:])
    return UserItems(indptr, mapped[keep].astype(np.int32), histories.ts[keep])
