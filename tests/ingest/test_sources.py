"""Source adapters: every kind yields the contract views with exact rows and exact types."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recmodel.core.errors import InputError
from recmodel.ingest.readers import SourceSpec, resolve_files
from recmodel.ingest.sources import register_source

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EVENTS_INT_IDS = [
    ("user_id", "BIGINT"),
    ("item_id", "BIGINT"),
    ("timestamp", "BIGINT"),
    ("played_ratio_pct", "DOUBLE"),
    ("track_length_seconds", "DOUBLE"),
    ("is_organic", "TINYINT"),
]
ITEMS_INT_IDS = [
    ("item_id", "BIGINT"),
    ("artist_id", "BIGINT"),
    ("album_id", "BIGINT"),
    ("genre", "VARCHAR"),
    ("tempo", "DOUBLE"),
    ("embedding", "FLOAT[]"),
]


def _register(spec: SourceSpec) -> tuple[duckdb.DuckDBPyConnection, dict]:
    con = duckdb.connect()
    return con, register_source(con, spec)


def _rows(con: duckdb.DuckDBPyConnection, view: str) -> list[tuple]:
    return con.execute(f"SELECT * FROM {view} ORDER BY ALL").fetchall()


def _schema(con: duckdb.DuckDBPyConnection, view: str) -> list[tuple[str, str]]:
    return [(name, kind) for name, kind, *_ in con.execute(f"DESCRIBE {view}").fetchall()]


def _with_types(schema: list[tuple[str, str]], **types: str) -> list[tuple[str, str]]:
    return [(name, types.get(name, kind)) for name, kind in schema]


# -- canonical ---------------------------------------------------------------------------------


def test_canonical_csv_fixture_exact_rows():
    spec = SourceSpec(
        "canonical", str(FIXTURES / "canonical/events.csv"), str(FIXTURES / "canonical/items.csv")
    )
    con, _ = _register(spec)
    assert _schema(con, "raw_events") == _with_types(EVENTS_INT_IDS, user_id="VARCHAR")
    # ISO text: 'Z' and '+01:00' are honoured, a time without an offset is UTC.
    assert _rows(con, "raw_events") == [
        ("u1", 10, 1_704_067_200, 100.0, 180.0, 1),
        ("u1", 11, 1_704_063_800, 35.5, 240.0, 0),
        ("u2", 10, 1_704_067_300, None, 180.0, 1),
    ]
    assert _schema(con, "raw_items") == ITEMS_INT_IDS
    # embedding_0/embedding_1 are packed into one vector; a row without them has none.
    assert _rows(con, "raw_items") == [
        (10, 100, 1000, "rock", 120.5, [0.5, -1.0]),
        (11, 101, None, "jazz", None, [0.25, 2.0]),
        (12, None, None, None, None, None),
    ]


def test_canonical_parquet_directory_unions_files_and_unifies_item_ids(tmp_path):
    (tmp_path / "events" / "day=2").mkdir(parents=True)
    utc = dt.UTC
    first = pa.table(
        {
            "user_id": ["a", "b"],
            "item_id": ["x1", "x2"],
            "timestamp": pa.array(
                [dt.datetime(2024, 1, 1, tzinfo=utc)] * 2, pa.timestamp("us", utc)
            ),
            "played_ratio_pct": [80.0, 20.0],
            "is_organic": [True, False],
        }
    )
    second = pa.table(
        {
            "user_id": ["a"],
            "item_id": ["7"],
            "timestamp": pa.array([dt.datetime(2024, 1, 2, tzinfo=utc)], pa.timestamp("us", utc)),
            "played_ratio_pct": pa.array([None], pa.float64()),
            "is_organic": [True],
        }
    )
    pq.write_table(first, tmp_path / "events" / "part-0.parquet")
    pq.write_table(second, tmp_path / "events" / "day=2" / "part-1.parquet")
    (tmp_path / "events" / "_SUCCESS").write_text("")
    items = pa.table({"item_id": pa.array([7], pa.int64()), "embedding": [[1.0, 2.0]]})
    pq.write_table(items, tmp_path / "items.parquet")
    spec = SourceSpec("canonical", str(tmp_path / "events"), str(tmp_path / "items.parquet"))
    con, summary = _register(spec)
    # BIGINT item ids in the items and text ids in the events: both become VARCHAR.
    assert _schema(con, "raw_events") == _with_types(
        EVENTS_INT_IDS, user_id="VARCHAR", item_id="VARCHAR"
    )
    assert _rows(con, "raw_events") == [
        ("a", "7", 1_704_153_600, None, None, 1),
        ("a", "x1", 1_704_067_200, 80.0, None, 1),
        ("b", "x2", 1_704_067_200, 20.0, None, 0),
    ]
    assert _schema(con, "raw_items") == _with_types(ITEMS_INT_IDS, item_id="VARCHAR")
    assert _rows(con, "raw_items") == [("7", None, None, None, None, [1.0, 2.0])]
    assert summary["rows_in_files"] == 3
    assert [Path(f).name for f in summary["events"]["files"]] == [
        "part-1.parquet",
        "part-0.parquet",
    ]


def test_files_read_together_must_name_the_same_columns(tmp_path):
    """A file without played_ratio_pct among files with it would turn its skips into listens."""
    (tmp_path / "events").mkdir()
    full = pa.table({"user_id": [1], "item_id": [2], "timestamp": [3], "played_ratio_pct": [10.0]})
    pq.write_table(full, tmp_path / "events" / "a.parquet")
    pq.write_table(full.drop(["played_ratio_pct"]), tmp_path / "events" / "b.parquet")
    with pytest.raises(InputError) as info:
        _register(SourceSpec("canonical", str(tmp_path / "events")))
    message = str(info.value)
    assert "b.parquet': lacks column 'played_ratio_pct', which" in message
    assert "a.parquet' has" in message and "write the same columns in every file" in message


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_column_named_twice_is_an_error(tmp_path, fmt):
    path = tmp_path / f"events.{fmt}"
    if fmt == "csv":
        path.write_text("user_id,item_id,timestamp,item_id\n1,2,3,4\n")
    else:
        columns = [pa.array([1]), pa.array([2]), pa.array([3]), pa.array([4])]
        names = ["user_id", "item_id", "timestamp", "item_id"]
        pq.write_table(pa.Table.from_arrays(columns, names=names), path)
    with pytest.raises(
        InputError, match=r"events.(csv|parquet)': names column\(s\) \['item_id'\] more than once"
    ):
        _register(SourceSpec("canonical", str(path)))


def test_an_existing_file_with_glob_characters_is_read_as_a_file(tmp_path):
    path = tmp_path / "events[1].parquet"
    pq.write_table(pa.table({"user_id": [1], "item_id": [2], "timestamp": [3]}), path)
    assert resolve_files(str(path), "events") == [str(path)]
    with pytest.raises(InputError, match="matches no files"):
        resolve_files(str(tmp_path / "nothing[1].parquet"), "events")


TIMESTAMP_VARIANTS = ["int64", "float64", "timestamp_us", "timestamp_tz", "iso_offset", "iso_naive"]


def _timestamp_column(kind: str, seconds: np.ndarray, rng: np.random.Generator) -> pa.Array:
    """The same instants in one of the accepted encodings (reference: plain Python datetime)."""
    utc = dt.UTC
    moments = [dt.datetime.fromtimestamp(int(s), tz=utc) for s in seconds]
    if kind == "int64":
        return pa.array(seconds, pa.int64())
    if kind == "float64":
        return pa.array(seconds + rng.uniform(0.0, 0.999, len(seconds)))
    if kind == "timestamp_us":
        return pa.array([m.replace(tzinfo=None) for m in moments], pa.timestamp("us"))
    if kind == "timestamp_tz":
        return pa.array(moments, pa.timestamp("us", "Europe/Moscow"))
    if kind == "iso_naive":
        return pa.array([m.strftime("%Y-%m-%dT%H:%M:%S") for m in moments])
    offsets = rng.integers(-12 * 4, 14 * 4, len(seconds)) * 15  # minutes, quarter-hour zones
    zones = [dt.timezone(dt.timedelta(minutes=int(o))) for o in offsets]
    return pa.array([m.astimezone(z).isoformat() for m, z in zip(moments, zones, strict=True)])


@pytest.mark.parametrize("kind", TIMESTAMP_VARIANTS)
def test_timestamp_encodings_convert_to_the_same_unix_seconds(tmp_path, kind):
    rng = np.random.default_rng(7)
    seconds = np.sort(rng.integers(0, 4_000_000_000, 300))
    table = pa.table(
        {
            "user_id": np.arange(300, dtype=np.int64),
            "item_id": np.zeros(300, dtype=np.int64),
            "timestamp": _timestamp_column(kind, seconds, rng),
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    con, _ = _register(SourceSpec("canonical", str(tmp_path / "events.parquet")))
    got = con.execute("SELECT timestamp FROM raw_events ORDER BY user_id").fetchall()
    assert [t for (t,) in got] == seconds.tolist()


def test_views_read_the_files_lazily(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\n1,2,3\n")
    con, _ = _register(SourceSpec("canonical", str(path)))
    path.write_text("user_id,item_id,timestamp\n1,2,3\n4,5,6\n")
    assert _rows(con, "raw_events") == [(1, 2, 3, None, None, None), (4, 5, 6, None, None, None)]
    views = {name for (name,) in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    assert {"raw_events", "raw_items", "raw_events_source"} <= views
    assert con.execute("SELECT count(*) FROM duckdb_tables()").fetchall() == [(0,)]


def test_without_items_raw_items_is_empty_and_typed(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\n1,t9,3\n")
    con, summary = _register(
        SourceSpec("canonical", str(path), str(FIXTURES / "canonical/items.csv"))
    )
    assert con.execute("SELECT count(*) FROM raw_items_source").fetchall() == [(3,)]
    register_source(con, SourceSpec("canonical", str(path)))  # re-registering drops the items
    assert _schema(con, "raw_items") == _with_types(ITEMS_INT_IDS, item_id="VARCHAR")
    assert _rows(con, "raw_items") == []
    with pytest.raises(duckdb.CatalogException):
        con.execute("SELECT * FROM raw_items_source").fetchall()
    assert summary["rows_in_files"] is None  # text files have no cheap row count


# -- yambda ------------------------------------------------------------------------------------

YAMBDA_EVENTS = [
    (100, 953587, 39600, 20.0, 200.0, 1),
    (100, 8326270, 39420, 100.0, 170.0, 0),  # timestamps stay seconds (5-second quantized)
    (200, 8326270, 40000, 140.0, 170.0, 1),
]
YAMBDA_ITEMS = [
    (2, None, None, None, None, [1.0, 0.0]),
    (953587, 1, 7, None, None, [pytest.approx(0.6), pytest.approx(0.8)]),  # normalized_embed
    (1491131, None, 1, None, None, None),
    (8326270, 2, None, None, None, None),  # two artists: the smaller id is kept
]


@pytest.mark.parametrize(
    "events",
    [
        "flat/50m",
        "flat/50m/listens.parquet",
        "flat/50m/multi_event.parquet",  # the like event in it is left out
        "sequential/50m",
    ],
)
def test_yambda_layouts_give_the_same_exact_rows(events):
    con, summary = _register(SourceSpec("yambda", str(FIXTURES / "yambda" / events)))
    assert _schema(con, "raw_events") == EVENTS_INT_IDS
    assert _rows(con, "raw_events") == YAMBDA_EVENTS
    assert _schema(con, "raw_items") == ITEMS_INT_IDS
    assert _rows(con, "raw_items") == YAMBDA_ITEMS
    assert summary["events"]["columns"]["user_id"] == "UINTEGER"


def test_yambda_items_directory_can_be_given(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "listens.parquet").write_bytes(
        (FIXTURES / "yambda/flat/50m/listens.parquet").read_bytes()
    )
    spec = SourceSpec("yambda", str(flat), items=str(FIXTURES / "yambda"))
    con, summary = _register(spec)
    assert _rows(con, "raw_items") == YAMBDA_ITEMS
    assert len(summary["items"]["files"]) == 3
    con, summary = _register(SourceSpec("yambda", str(flat)))  # nothing to find above tmp_path
    assert summary["items"] is None and _rows(con, "raw_items") == []


# -- Last.fm-1K and MovieLens ----------------------------------------------------------------


def test_lastfm1k_fixture_exact_rows():
    con, _ = _register(SourceSpec("lastfm1k", str(FIXTURES / "lastfm1k")))
    assert _schema(con, "raw_events") == _with_types(
        EVENTS_INT_IDS, user_id="VARCHAR", item_id="VARCHAR"
    )
    fuego, sakamoto = (
        'Deep Dish\tFuego "Bravo" (Original Mix)',
        "坂本龍一\tComposition 0919 (Live_2009_4_15)",
    )
    mc2 = "f7c1f8f8-b935-45ed-8fc8-7def69d92a10"
    assert _rows(con, "raw_events") == [  # the row that names no track is dropped
        ("user_000001", fuego, 1_241_478_537, None, None, None),
        ("user_000001", mc2, 1_241_445_124, None, None, None),
        ("user_000001", sakamoto, 1_241_445_250, None, None, None),
        ("user_000002", "Unknown Artist\tSome Song", 1_241_517_600, None, None, None),
    ]
    assert _rows(con, "raw_items") == [
        (fuego, "f1b1cf71-bd35-4e99-8624-24a6e15f133a", None, None, None, None),
        ("Unknown Artist\tSome Song", "Unknown Artist", None, None, None, None),
        (mc2, "a7f7df4a-77d8-4f12-8acd-5c60c93f4de8", None, None, None, None),
        (sakamoto, "a7f7df4a-77d8-4f12-8acd-5c60c93f4de8", None, None, None, None),
    ]


MOVIELENS_EVENTS = [  # every rating is a positive: no played ratio
    (1, 661, 978_302_109, None, None, None),
    (1, 1193, 978_300_760, None, None, None),
    (2, 1193, 978_298_413, None, None, None),
]


@pytest.mark.parametrize(
    "events, items",
    [
        ("ratings.dat", [(661, "Animation"), (1193, "Drama"), (2000, "Comedy")]),
        ("recbole/ml-tiny.inter", [(661, "Animation"), (1193, "Drama")]),
        ("recbole", [(661, "Animation"), (1193, "Drama")]),
    ],
)
def test_movielens_formats_give_the_same_exact_rows(events, items):
    con, _ = _register(SourceSpec("movielens", str(FIXTURES / "movielens" / events)))
    assert _schema(con, "raw_events") == EVENTS_INT_IDS
    assert _rows(con, "raw_events") == MOVIELENS_EVENTS
    assert con.execute("SELECT item_id, genre FROM raw_items ORDER BY 1").fetchall() == items


# -- file resolution ---------------------------------------------------------------------------


def test_resolve_files_expands_globs_and_directories(tmp_path):
    for name in ("b.csv", "a.csv", "sub/c.csv", ".a.csv.crc", "_SUCCESS", "notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x\n")
    names = [str(Path(f).relative_to(tmp_path)) for f in resolve_files(str(tmp_path), "events")]
    assert names == ["a.csv", "b.csv", "sub/c.csv"]
    assert resolve_files(str(tmp_path / "*.csv"), "events") == [
        str(tmp_path / "a.csv"),
        str(tmp_path / "b.csv"),
    ]
    assert resolve_files("s3://bucket/listens/*.parquet", "events") == [
        "s3://bucket/listens/*.parquet"
    ]
