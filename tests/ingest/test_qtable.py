"""The Q table: exact smoothing on a handmade count table, and a numpy reference."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recmodel.core.columns import Window
from recmodel.core.config import QConfig
from recmodel.ingest.qtable import build_q_table


def write_inputs(tmp_path, item_idx: list[int], window: list[int], n_items: int):
    """Events (only the columns Q reads matter) and an item table of ``n_items`` items."""
    n = len(item_idx)
    events = pa.table(
        {
            "user_idx": pa.array(np.zeros(n), pa.int32()),
            "item_idx": pa.array(item_idx, pa.int32()),
            "ts": pa.array(np.arange(n), pa.int64()),
            "window": pa.array(window, pa.int8()),
            "session_id": pa.array(np.zeros(n), pa.int32()),
        }
    )
    items = pa.table(
        {
            "item_idx": pa.array(np.arange(1, n_items + 1), pa.int32()),
            "item_id": pa.array([f"track-{k}" for k in range(1, n_items + 1)]),
        }
    )
    pq.write_table(events, tmp_path / "events.parquet")
    pq.write_table(items, tmp_path / "items.parquet")
    return tmp_path / "events.parquet", tmp_path / "items.parquet"


def run(tmp_path, item_idx, window, n_items, smoothing):
    events, items = write_inputs(tmp_path, item_idx, window, n_items)
    path, summary = build_q_table(
        duckdb.connect(), events, items, QConfig(smoothing=smoothing), tmp_path / "q.parquet"
    )
    return pq.read_table(path).to_pydict(), summary


P, F, T = Window.PRETRAIN, Window.FINETUNE, Window.TEST


@pytest.mark.parametrize(
    ("smoothing", "expected"),
    [(1.0, [4 / 7, 2 / 7, 1 / 7]), (0.5, [3.5 / 5.5, 1.5 / 5.5, 0.5 / 5.5])],
)
def test_exact_smoothed_q_on_handmade_counts(tmp_path, smoothing, expected):
    # Pretrain counts 3, 1, 0; the finetune and test events must not count.
    table, summary = run(
        tmp_path, [1, 1, 1, 1, 1, 2, 3], [P, P, P, F, F, P, T], n_items=3, smoothing=smoothing
    )
    assert table["item_idx"] == [1, 2, 3]
    assert table["item_id"] == ["track-1", "track-2", "track-3"]
    assert table["count"] == [3, 1, 0]
    assert table["q"] == pytest.approx(expected, rel=1e-12)
    assert table["log_q"] == pytest.approx([math.log(q) for q in expected], rel=1e-12)
    assert math.fsum(table["q"]) == pytest.approx(1.0, abs=1e-15)
    assert summary["n_items"] == 3 and summary["total_count"] == 4
    assert summary["entropy"] == pytest.approx(-sum(q * math.log(q) for q in expected))
    assert summary["top1pct_mass"] == pytest.approx(expected[0])  # ceil(1% of 3) = 1 item
    assert (summary["min_q"], summary["max_q"]) == pytest.approx((expected[2], expected[0]))


def test_summary_records_the_query(tmp_path):
    _, summary = run(tmp_path, [1, 2], [P, P], n_items=2, smoothing=1.0)
    (query,) = summary["queries"]
    assert query["file"] == "sql/16_q_table.sql"
    assert query["params"]["smoothing"] == 1.0
    assert query["params"]["window_pretrain"] == P
    assert query["rows"] == 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_reference(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n_items, n_events = 500, 5_000
    item_idx = np.minimum(rng.zipf(1.2, n_events), n_items)  # many items never drawn
    window = rng.choice(list(Window.NAMES), n_events, p=[0.7, 0.1, 0.1, 0.1])
    smoothing = float(rng.uniform(0.1, 2.0))
    table, summary = run(tmp_path, item_idx, window, n_items, smoothing)

    counts = np.bincount(item_idx[window == P], minlength=n_items + 1)[1:]
    q = (counts + smoothing) / (counts.sum() + smoothing * n_items)
    np.testing.assert_array_equal(table["count"], counts)
    np.testing.assert_allclose(table["q"], q, rtol=1e-12)
    np.testing.assert_allclose(table["log_q"], np.log(q), rtol=1e-12)
    assert min(table["q"]) > 0
    assert math.fsum(table["q"]) == pytest.approx(1.0, abs=1e-12)
    top = np.sort(q)[::-1][: math.ceil(0.01 * n_items)].sum()
    assert summary["top1pct_mass"] == pytest.approx(top, rel=1e-12)
    assert summary["entropy"] == pytest.approx(-(q * np.log(q)).sum(), rel=1e-12)


def test_empty_catalog_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        run(tmp_path, [], [], n_items=0, smoothing=1.0)
