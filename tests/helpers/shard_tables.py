"""Random datasets written as the tables extraction writes, with small row groups, so that
reading by user shard has row groups to skip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recmodel.core.columns import Columns, Window
from recmodel.core.dataset import Dataset
from tests.helpers.ranker_data import dataset_from_events
from tests.helpers.retriever_data import item_features

TABLES = ("events", "items", "users")


def random_dataset(seed: int, n_users: int = 40, n_items: int = 30, longest: int = 90) -> Dataset:
    """Users with 0..``longest`` plays each, every window in time order, some users inactive."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, longest, size=n_users)
    lengths[rng.random(n_users) < 0.1] = 0  # users with no event left
    user_idx = np.repeat(np.arange(n_users, dtype=np.int32), lengths)
    item_idx = rng.integers(1, n_items + 1, size=len(user_idx)).astype(np.int32)
    ts = np.concatenate([np.sort(rng.integers(0, 10**7, size=n)) for n in lengths]).astype(np.int64)
    # Each user's plays go through the windows in time order, with random cut points.
    window = np.concatenate(
        [np.sort(rng.choice(list(Window.NAMES), size=n, p=[0.6, 0.2, 0.1, 0.1])) for n in lengths]
    ).astype(np.int8)
    events = np.column_stack([user_idx, item_idx, ts, window])
    return dataset_from_events(events, n_users, item_features(n_items, seed=seed))


def write_tables(dataset: Dataset, directory: Path, row_group_size: int = 50) -> dict[str, Path]:
    """``events``, ``items`` and ``users`` Parquet files of ``dataset`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.parquet" for name in TABLES}
    events = pa.table(
        {
            Columns.USER_IDX: pa.array(dataset.user_idx, pa.int32()),
            Columns.ITEM_IDX: pa.array(dataset.item_idx, pa.int32()),
            Columns.TS: pa.array(dataset.ts, pa.int64()),
            Columns.WINDOW: pa.array(dataset.window, pa.int8()),
        }
    )
    pq.write_table(events, paths["events"], row_group_size=row_group_size)
    features = dataset.items
    idx = np.arange(1, dataset.n_items + 1)
    vectors = [row.tolist() if has else None for row, has in
               zip(features.acoustic[idx], features.has_acoustic[idx], strict=True)]  # fmt: skip
    items = pa.table(
        {
            Columns.ITEM_IDX: pa.array(idx, pa.int64()),
            Columns.ITEM: pa.array([f"t{i}" for i in idx]),
            Columns.ARTIST_IDX: pa.array(features.artist[idx]),
            Columns.ALBUM_IDX: pa.array(features.album[idx]),
            Columns.GENRE_IDX: pa.array(features.genre[idx]),
            Columns.TEMPO_BUCKET: pa.array(features.tempo_bucket[idx]),
            Columns.TRACK_LENGTH: pa.array(features.track_length[idx]),
            Columns.EMBEDDING: pa.array(vectors, pa.list_(pa.float32())),
        }
    )
    pq.write_table(items, paths["items"])
    users = pa.table(
        {
            Columns.USER_IDX: pa.array(np.arange(dataset.n_users), pa.int64()),
            Columns.USER: pa.array([f"u{u}" for u in range(dataset.n_users)]),
        }
    )
    pq.write_table(users, paths["users"])
    return paths
