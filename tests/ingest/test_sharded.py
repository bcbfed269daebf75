"""Sharded extraction equals the single-node extraction, row for row, for 1, 2, 3 and 8 shards."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recmodel.core.errors import InputError
from recmodel.core.presets import load_preset, with_overrides
from recmodel.ingest.extract import OUTPUTS, extract
from recmodel.ingest.readers import SourceSpec
from recmodel.ingest.sharded import (
    ROUNDS,
    extract_sharded,
    merge_by_user,
    shard_dir,
    stored_tables,
    table_path,
)
from recmodel.ingest.sources import register_source
from recmodel.synthetic.generator import generate
from tests.ingest.test_extract import config, connect, random_log

FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures"
SHARDS = (1, 2, 3, 8)
SMALL = {"n_users": 120, "n_tracks": 500, "n_artists": 50}
# Logs of the shapes the pipeline meets (recmodel.synthetic.shapes), as the generator writes them.
SHAPES = {
    "simulated": {},
    "bursts_artist_ids_only": {
        "days": 25.0, "bursts": 5, "burst_gap_days": 50.0, "item_fields": ("artist_id",),
    },
    "ratings_without_relistening": {"relisten": False, "play_signal": False},
    "short_lived_users": {"user_span_days": 3.0},
}  # fmt: skip


def source(spec: SourceSpec):
    def open_connection() -> duckdb.DuckDBPyConnection:
        con = duckdb.connect()
        register_source(con, spec)
        return con

    return open_connection


def assert_same(one, sharded, n_shards: int) -> None:
    """Every output row for row (and column types), and the summary, are the single node's."""
    for name in OUTPUTS:
        expected, got = pq.read_table(one.paths[name]), pq.read_table(sharded.paths[name])
        assert got.column_names == expected.column_names, name
        assert [f.type for f in got.schema] == [f.type for f in expected.schema], name
        assert got.cast(expected.schema).equals(expected), f"{name} differs on {n_shards} shards"
    ignored = ("duckdb_settings", "shards")
    assert {k: v for k, v in sharded.summary.items() if k not in ignored} == {
        k: v for k, v in one.summary.items() if k not in ignored
    }
    assert sharded.summary["shards"] == n_shards


def check_shards(open_connection, cfg, tmp_path) -> None:
    """Extract on one node, then on 1, 2, 3 and 8 shards: the same tables, or the same error."""
    try:
        one = extract(open_connection(), cfg, tmp_path / "one")
    except InputError as error:  # a log too small to extract: the shards must say the same
        for n_shards in SHARDS:
            out = tmp_path / f"out-{n_shards}"
            with pytest.raises(InputError) as sharded:
                extract_sharded(open_connection, cfg, out, n_shards, tmp_path / f"work-{n_shards}")
            assert str(sharded.value) == str(error)
            assert not list(out.glob("*.parquet"))
        return
    for n_shards in SHARDS:
        work = tmp_path / f"work-{n_shards}"
        sharded = extract_sharded(
            open_connection, cfg, tmp_path / f"out-{n_shards}", n_shards, work
        )
        assert_same(one, sharded, n_shards)
        assert_users_partitioned(work, n_shards)


def assert_users_partitioned(work, n_shards: int) -> None:
    """Each user's sessions live in exactly one shard: no shard saw another's users."""
    con = duckdb.connect()
    seen = [
        {row[0] for row in con.execute(f"SELECT DISTINCT user_id FROM '{path}'").fetchall()}
        for path in (table_path(shard_dir(work, k), "sessions") for k in range(n_shards))
    ]
    assert sum(map(len, seen)) == len(set().union(*seen))
    if n_shards > 1 and len(set().union(*seen)) >= 20:
        assert sum(bool(users) for users in seen) > 1  # the hash spreads them


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_generated_logs_of_real_shapes(tmp_path, shape):
    cfg = with_overrides(load_preset("default"), {"synthetic": {**SMALL, **SHAPES[shape]}})
    paths = generate(cfg.synthetic, tmp_path / "log")
    spec = SourceSpec("canonical", str(paths.events), str(paths.items))
    extract_cfg = with_overrides(cfg, {"extract": {"min_window_users": 0}}).extract
    check_shards(source(spec), extract_cfg, tmp_path)


def test_events_without_an_items_file(tmp_path):
    cfg = with_overrides(load_preset("default"), {"synthetic": SMALL})
    paths = generate(cfg.synthetic, tmp_path / "log")
    spec = SourceSpec("canonical", str(paths.events))
    extract_cfg = with_overrides(cfg, {"extract": {"min_window_users": 0}}).extract
    check_shards(source(spec), extract_cfg, tmp_path)


@pytest.mark.parametrize(
    ("seed", "protocol"),
    [(0, "temporal"), (1, "temporal"), (2, "leave_last_out"), (3, "leave_last_out")],
)
def test_random_logs_with_ties_duplicates_and_missing_ids(tmp_path, seed, protocol):
    """The extraction tests' random logs: string or integer ids, ties, repeats, nulls."""
    as_string = seed % 2 == 1
    log = random_log(seed, as_string)
    cfg = config(protocol=protocol, drop_consecutive_repeats=seed in (1, 2), gap_minutes=20.0)
    id_type = pa.string() if as_string else None
    check_shards(lambda: connect(log, id_type=id_type), cfg, tmp_path)


@pytest.mark.parametrize(
    ("kind", "events", "items"),
    [
        ("yambda", "yambda/flat/50m", "yambda"),
        ("lastfm1k", "lastfm1k", None),
        ("movielens", "movielens/ratings.dat", None),
        ("canonical", "canonical/events.csv", "canonical/items.csv"),
    ],
)
def test_real_layout_fixtures(tmp_path, kind, events, items):
    spec = SourceSpec(
        kind, str(FIXTURES_DIR / events), str(FIXTURES_DIR / items) if items else None
    )
    check_shards(source(spec), config(), tmp_path)


def test_a_cut_time_and_rolling_window_reach_every_shard(tmp_path):
    log = random_log(4, as_string=False)
    cfg = config(protocol="temporal", cut_time="1970-01-25T00:00:00", history_days=20.0)
    check_shards(lambda: connect(log), cfg, tmp_path)


@pytest.mark.parametrize(
    "settings", [{"min_user_events": 10_000}, {"min_item_events": 10_000}], ids=str
)
def test_nothing_left_is_the_same_input_error_and_writes_nothing(tmp_path, settings):
    log = random_log(0, as_string=False)
    cfg = config(**settings)
    with pytest.raises(InputError):
        extract(connect(log), cfg, tmp_path / "probe")
    check_shards(lambda: connect(log), cfg, tmp_path)


def test_only_what_a_later_file_reads_is_stored():
    shards, merges = stored_tables("temporal")
    assert shards == {
        0: ["clean_events_counts", "raw_events_counts", "sessions", "sessions_counts"],
        1: ["split_events", "split_events_counts"],
        2: ["filtered_events", "filtered_events_counts", "kept_users"],
        3: [],
    }
    assert merges == {
        0: ["split_bounds"],
        1: ["kept_items"],
        2: ["item_vocab", "user_vocab"],
        3: [],
    }
    assert stored_tables("leave_last_out") == (shards, merges)  # split times: for the summary
    assert len(ROUNDS) == 4


def test_shard_count_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        extract_sharded(lambda: connect([]), config(), tmp_path, 0, tmp_path)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("batch_rows", [1, 3, 64, 10_000])
def test_merge_by_user_equals_a_full_stable_sort(tmp_path, seed, batch_rows):
    """Random user-sorted shards (users in one shard each, some empty, some long) against
    a plain stable sort of their concatenation."""
    rng = np.random.default_rng(seed)
    n_shards, n_users = int(rng.integers(1, 6)), int(rng.integers(0, 40))
    shard_of = rng.integers(0, n_shards, n_users)
    files, pieces = [], []
    for k in range(n_shards):
        users = np.flatnonzero(shard_of == k)
        counts = rng.choice([1, 2, 5, 70], len(users))
        user = np.repeat(users, counts).astype(np.int32)
        table = pa.table({"user_idx": user, "row": rng.permutation(len(user)).astype(np.int64)})
        files.append(tmp_path / f"{k}.parquet")
        pq.write_table(table, files[-1])
        pieces.append(table)
    out = tmp_path / "out.parquet"
    written = merge_by_user(files, out, batch_rows=batch_rows)
    everything = pa.concat_tables(pieces)
    expected = sorted(
        zip(everything["user_idx"].to_pylist(), range(everything.num_rows), strict=True)
    )
    expected_rows = [everything["row"][i].as_py() for _, i in expected]
    got = pq.read_table(out)
    assert written == got.num_rows == everything.num_rows
    assert got["user_idx"].to_pylist() == [u for u, _ in expected]
    assert got["row"].to_pylist() == expected_rows
