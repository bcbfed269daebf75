"""Loading extraction output into Dataset: exact arrays, invariants and a round trip."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recmodel.core.columns import Window
from recmodel.core.config import ExtractConfig, QConfig
from recmodel.core.dataset_io import load_dataset
from recmodel.ingest.extract import extract
from recmodel.ingest.qtable import build_q_table

P, F, V, T = Window.PRETRAIN, Window.FINETUNE, Window.VAL, Window.TEST
EMBEDDING = pa.list_(pa.float32())


def write(tmp_path, events=None, **item_overrides):
    """Three handwritten tables; ``item_overrides`` replace columns of the item table."""
    events = events or {
        "user_idx": [0, 0, 0, 1, 1],
        "item_idx": [2, 1, 2, 2, 3],
        "ts": [10, 20, 20, 5, 7],
        "window": [P, P, T, P, F],
        "session_id": [0, 0, 1, 0, 0],
    }
    items = {
        "item_idx": pa.array([3, 1, 2], pa.int32()),  # any row order; item_idx decides
        "item_id": pa.array([30, 10, 20]),
        "count": pa.array([0, 1, 2]),
        "artist_idx": pa.array([2, 1, 0], pa.int32()),
        "album_idx": pa.array([0, 3, 1], pa.int32()),
        "genre_idx": pa.array([1, 0, 2], pa.int32()),
        "tempo_bucket": pa.array([4, 0, 1], pa.int32()),
        "track_length_seconds": pa.array([None, 180.5, 200.0]),
        "embedding": pa.array([[1.0, 2.0], None, [3.0, 4.0]], EMBEDDING),
        **item_overrides,
    }
    types = {"user_idx": pa.int32(), "item_idx": pa.int32(), "ts": pa.int64(),
             "window": pa.int8(), "session_id": pa.int32()}  # fmt: skip
    pq.write_table(
        pa.table({k: pa.array(v, types[k]) for k, v in events.items()}), tmp_path / "e.parquet"
    )
    pq.write_table(pa.table(items), tmp_path / "i.parquet")
    users = {"user_idx": pa.array([0, 1], pa.int32()), "user_id": ["a", "b"]}
    pq.write_table(pa.table(users), tmp_path / "u.parquet")
    return tmp_path / "e.parquet", tmp_path / "i.parquet", tmp_path / "u.parquet"


def test_handwritten_tables_load_exactly(tmp_path):
    data = load_dataset(*write(tmp_path))
    assert (data.n_users, data.n_items) == (2, 3)
    np.testing.assert_array_equal(data.user_idx, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(data.item_idx, [2, 1, 2, 2, 3])
    np.testing.assert_array_equal(data.ts, [10, 20, 20, 5, 7])
    np.testing.assert_array_equal(data.window, [P, P, T, P, F])
    assert (data.user_idx.dtype, data.item_idx.dtype, data.ts.dtype, data.window.dtype) == (
        np.int32, np.int32, np.int64, np.int8)  # fmt: skip
    np.testing.assert_array_equal(data.item_counts, [0, 1, 2, 0])  # pretrain window only
    items = data.items
    np.testing.assert_array_equal(items.artist, [0, 1, 0, 2])
    np.testing.assert_array_equal(items.album, [0, 3, 1, 0])
    np.testing.assert_array_equal(items.genre, [0, 0, 2, 1])
    np.testing.assert_array_equal(items.tempo_bucket, [0, 0, 1, 4])
    np.testing.assert_array_equal(items.track_length, [np.nan, 180.5, 200.0, np.nan])
    np.testing.assert_array_equal(items.acoustic, [[0, 0], [0, 0], [3, 4], [1, 2]])
    np.testing.assert_array_equal(items.has_acoustic, [False, False, True, True])
    assert items.acoustic.dtype == np.float32 and items.track_length.dtype == np.float32
    assert items.cardinalities == {"artist": 3, "album": 4, "genre": 3, "tempo_bucket": 5}


def test_without_any_embedding_acoustic_has_width_zero(tmp_path):
    data = load_dataset(*write(tmp_path, embedding=pa.nulls(3, EMBEDDING)))
    assert data.items.acoustic.shape == (4, 0)
    assert not data.items.has_acoustic.any()


def test_vector_with_missing_element_counts_as_unknown(tmp_path):
    vectors = pa.array([[1.0, None], [], [3.0, float("nan")]], EMBEDDING)
    data = load_dataset(*write(tmp_path, embedding=vectors))
    assert data.items.acoustic.shape == (4, 2)
    assert not data.items.has_acoustic.any() and not data.items.acoustic.any()


@pytest.mark.parametrize(
    ("events", "items", "match"),
    [
        ({"user_idx": [1, 0], "ts": [0, 0]}, {}, "not sorted"),
        ({"user_idx": [0, 0], "ts": [5, 4]}, {}, r"not sorted .* at row 1"),
        ({"user_idx": [0, 2], "ts": [0, 0]}, {}, "user_idx outside"),
        ({"user_idx": [0, 1], "ts": [0, 0], "item_idx": [4, 1]}, {}, "item_idx outside"),
        ({}, {"embedding": pa.array([[1.0], [2.0, 3.0], None], EMBEDDING)}, "different lengths"),
        ({}, {"item_idx": pa.array([1, 2, 4], pa.int32())}, "exactly 1..3"),
    ],
)
def test_broken_tables_are_rejected(tmp_path, events, items, match):
    base = {"user_idx": [0, 1], "item_idx": [1, 2], "ts": [0, 0], "window": [P, P],
            "session_id": [0, 0]}  # fmt: skip
    with pytest.raises(ValueError, match=match):
        load_dataset(*write(tmp_path, {**base, **events} if events else None, **items))


def test_round_trip_from_extraction(tmp_path):
    rng = np.random.default_rng(0)
    n = 2_000
    events = pa.table(
        {
            "user_id": rng.integers(0, 30, n),
            "item_id": np.minimum(rng.zipf(1.3, n), 50),
            "timestamp": rng.integers(0, 30 * 86_400, n),
            "played_ratio_pct": rng.uniform(0, 100, n),
            "track_length_seconds": rng.uniform(100, 300, n),
            "is_organic": pa.array(rng.integers(0, 2, n), pa.int8()),
        }
    )
    items = pa.table(
        {
            "item_id": np.arange(1, 51),
            "artist_id": np.arange(1, 51) % 7,
            "album_id": np.arange(1, 51) % 11,
            "genre": [f"g{k % 3}" for k in range(50)],
            "tempo": rng.uniform(60, 180, 50),
            "embedding": pa.array([[float(k), 1.0, 2.0] for k in range(50)], EMBEDDING),
        }
    )
    con = duckdb.connect()
    con.register("events_arrow", events)
    con.register("items_arrow", items)
    con.execute("create view raw_events as select * from events_arrow")
    con.execute("create view raw_items as select * from items_arrow")
    cfg = ExtractConfig(
        min_window_users=1, split_by="days", test_days=5, val_days=3, finetune_days=5
    )
    result = extract(con, cfg, tmp_path)
    data = load_dataset(result.paths["events"], result.paths["items"], result.paths["users"])

    table = pq.read_table(result.paths["events"]).to_pydict()
    np.testing.assert_array_equal(data.user_idx, table["user_idx"])
    np.testing.assert_array_equal(data.item_idx, table["item_idx"])
    np.testing.assert_array_equal(data.window, table["window"])
    assert data.n_users == result.summary["n_users"] and data.n_items == result.summary["n_items"]
    item_table = pq.read_table(result.paths["items"]).to_pydict()
    ids = np.array(item_table["item_id"])[np.argsort(item_table["item_idx"])]
    np.testing.assert_array_equal(data.items.acoustic[1:, 0], ids - 1)  # item k: [k - 1, 1, 2]
    assert data.items.has_acoustic[1:].all() and not data.items.has_acoustic[0]
    q_path, _ = build_q_table(con, result.paths["events"], result.paths["items"], QConfig(),
                           tmp_path / "q.parquet")  # fmt: skip
    np.testing.assert_array_equal(data.item_counts[1:], pq.read_table(q_path)["count"])
    assert data.item_counts[0] == 0
    assert len(data.users_with_events(T)) == result.summary["n_test_users"]
