"""Input validation: each bad input fails with a message naming the file, column and problem."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recmodel.core.errors import InputError
from recmodel.ingest.checks import (
    MAX_IMPLAUSIBLE_SHARE,
    type_family,
    validate_source,
)
from recmodel.ingest.readers import SourceSpec
from recmodel.ingest.sources import register_source

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _events(tmp_path: Path, name: str = "events.parquet", **columns) -> str:
    """A three-event Parquet table; keyword arguments replace (or, as None, drop) columns."""
    table = {
        "user_id": pa.array([1, 2, 3], pa.int64()),
        "item_id": pa.array([10, 11, 10], pa.int64()),
        "timestamp": pa.array([100, 200, 300], pa.int64()),
        "played_ratio_pct": pa.array([100.0, 60.0, 10.0]),
    }
    table.update(columns)
    path = tmp_path / name
    pq.write_table(pa.table({k: v for k, v in table.items() if v is not None}), path)
    return str(path)


def _items(tmp_path: Path, **columns) -> str:
    path = tmp_path / "items.parquet"
    pq.write_table(pa.table(columns), path)
    return str(path)


def _validate(spec: SourceSpec, threshold: float = 50.0) -> list[str]:
    con = duckdb.connect()
    register_source(con, spec)
    return validate_source(con, spec, listen_threshold_pct=threshold)


def _message(spec: SourceSpec, threshold: float = 50.0) -> str:
    with pytest.raises(InputError) as info:
        _validate(spec, threshold)
    return str(info.value)


def test_clean_source_passes_without_warnings(tmp_path):
    assert _validate(SourceSpec("canonical", _events(tmp_path))) == []


# -- paths and schemas: caught at registration ------------------------------------------------


def test_missing_path(tmp_path):
    message = _message(SourceSpec("canonical", str(tmp_path / "nope.parquet")))
    assert "nope.parquet" in message and "does not exist" in message


def test_glob_matching_nothing(tmp_path):
    message = _message(SourceSpec("canonical", str(tmp_path / "*.parquet")))
    assert "*.parquet" in message and "matches no files" in message


def test_directory_without_data_files(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    message = _message(SourceSpec("canonical", str(tmp_path)))
    assert str(tmp_path) in message and "holds no .parquet/.pq/.csv/.tsv files" in message


def test_mixed_formats(tmp_path):
    _events(tmp_path)
    (tmp_path / "more.csv").write_text("user_id,item_id,timestamp\n1,2,3\n")
    message = _message(SourceSpec("canonical", str(tmp_path / "*.*")))
    assert "mixed formats ['csv', 'parquet']" in message


def test_unknown_kind_and_empty_events():
    with pytest.raises(InputError) as info:
        SourceSpec("spotify", "x")
    assert "source kind 'spotify': unknown" in str(info.value)
    message = _message(SourceSpec("canonical", ""))
    assert "SourceSpec.events: empty" in message


def test_missing_required_column_names_file_column_and_alias(tmp_path):
    path = _events(tmp_path, ts=pa.array([1, 2, 3]), timestamp=None)
    message = _message(SourceSpec("canonical", path))
    assert f"events file {path!r}" in message
    assert "required column 'timestamp' is missing" in message
    assert "rename 'ts' to 'timestamp'" in message


def test_yambda_file_without_uid(tmp_path):
    pq.write_table(pa.table({"item_id": [1], "timestamp": [5]}), tmp_path / "listens.parquet")
    message = _message(SourceSpec("yambda", str(tmp_path)))
    assert "listens.parquet" in message and "'user_id' is missing" in message


def test_float_ids_are_rejected(tmp_path):
    path = _events(tmp_path, item_id=pa.array([10.0, 11.0, 10.5]))
    message = _message(SourceSpec("canonical", path))
    assert path in message and "column 'item_id'" in message
    assert "type DOUBLE is not allowed" in message and "cast them to int64" in message


def test_boolean_timestamps_are_rejected(tmp_path):
    path = _events(tmp_path, timestamp=pa.array([True, False, True]))
    message = _message(SourceSpec("canonical", path))
    assert path in message and "column 'timestamp'" in message and "BOOLEAN" in message


def test_text_played_ratio_is_rejected(tmp_path):
    path = _events(tmp_path, played_ratio_pct=pa.array(["100", "60", "10"]))
    message = _message(SourceSpec("canonical", path))
    assert "column 'played_ratio_pct'" in message and "VARCHAR is not allowed" in message


# -- row contents: caught by validate_source -------------------------------------------------


def test_empty_table(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\n")
    message = _message(SourceSpec("canonical", str(path)))
    assert str(path) in message and "empty (0 rows)" in message


@pytest.mark.parametrize("column", ["user_id", "item_id"])
def test_null_ids(tmp_path, column):
    path = _events(tmp_path, **{column: pa.array([1, None, 3], pa.int64())})
    message = _message(SourceSpec("canonical", path))
    assert f"events file {path!r}, column {column!r}: 1 of 3 rows have no {column}" in message


def test_missing_timestamps(tmp_path):
    path = _events(tmp_path, timestamp=pa.array([100, None, 300], pa.int64()))
    message = _message(SourceSpec("canonical", path))
    assert f"{path!r}, column 'timestamp': 1 of 3 rows have no timestamp (NULL)" in message


def test_unparseable_text_timestamps(tmp_path):
    stamps = pa.array(["2024-01-01T00:00:00Z", "yesterday", "2024-01-02 10:00:00"])
    path = _events(tmp_path, timestamp=stamps)
    message = _message(SourceSpec("canonical", path))
    assert (
        f"{path!r}, column 'timestamp': 1 of 3 rows have a timestamp that does not parse" in message
    )
    assert "(e.g. 'yesterday')" in message and "ISO-8601" in message


def test_negative_timestamps(tmp_path):
    path = _events(tmp_path, timestamp=pa.array([100, -5, 300], pa.int64()))
    message = _message(SourceSpec("canonical", path))
    assert (
        f"{path!r}, column 'timestamp'" in message
        and "negative timestamp (before 1970) (e.g. '-5')" in message
    )


def test_millisecond_timestamps(tmp_path):
    millis = pa.array([1_700_000_000_000, 1_700_000_001_000, 1_700_000_002_000], pa.int64())
    message = _message(SourceSpec("canonical", _events(tmp_path, timestamp=millis)))
    assert "3 of 3 rows have a timestamp after 2100-01-01" in message
    assert "milliseconds" in message


def test_nan_played_ratio(tmp_path):
    # The Parquet min/max statistics leave NaN out; the check must still see it.
    path = _events(tmp_path, played_ratio_pct=pa.array([100.0, float("nan"), 10.0]))
    message = _message(SourceSpec("canonical", path))
    assert f"{path!r}, column 'played_ratio_pct': 1 of 3 rows have a NaN" in message
    assert "(e.g. 'nan')" in message


def test_negative_played_ratio(tmp_path):
    path = _events(tmp_path, played_ratio_pct=pa.array([100.0, -3.0, 10.0]))
    message = _message(SourceSpec("canonical", path))
    assert (
        "column 'played_ratio_pct'" in message
        and "negative played_ratio_pct (e.g. '-3.0')" in message
    )


def test_implausible_played_ratio_is_an_error_when_common(tmp_path):
    path = _events(tmp_path, played_ratio_pct=pa.array([100.0, 5000.0, 10.0]))
    message = _message(SourceSpec("canonical", path))
    assert (
        f"{path!r}, column 'played_ratio_pct': 1 of 3 rows have played_ratio_pct above 1000"
        in message
    )
    assert "not seconds or milliseconds" in message


def test_implausible_played_ratio_is_a_warning_when_rare(tmp_path):
    n = int(2 / MAX_IMPLAUSIBLE_SHARE)  # one bad row is half the tolerated share
    ratios = np.full(n, 80.0)
    ratios[0] = 5000.0
    ids = pa.array(np.arange(n, dtype=np.int64))
    path = _events(tmp_path, user_id=ids, item_id=ids, timestamp=ids, played_ratio_pct=ratios)
    (warning,) = _validate(SourceSpec("canonical", path))
    assert f"column 'played_ratio_pct': 1 of {n:,} rows are above 1000%" in warning


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_negative_or_nan_track_length(tmp_path, bad):
    path = _events(tmp_path, track_length_seconds=pa.array([180.0, 200.0, bad]))
    message = _message(SourceSpec("canonical", path))
    assert f"{path!r}, column 'track_length_seconds': 1 of 3 rows" in message
    assert f"negative or NaN track length (e.g. '{bad}')" in message


def test_is_organic_other_than_zero_or_one(tmp_path):
    path = _events(tmp_path, is_organic=pa.array([1, 0, 2], pa.int8()))
    message = _message(SourceSpec("canonical", path))
    assert f"{path!r}, column 'is_organic'" in message and "(e.g. '2')" in message


def test_nothing_reaches_the_listen_threshold(tmp_path):
    path = _events(tmp_path, played_ratio_pct=pa.array([0.9, 0.6, 0.1]))
    message = _message(SourceSpec("canonical", path))
    assert f"events file {path!r}, column 'played_ratio_pct'" in message
    assert "no event reaches the listen+ threshold of 50%" in message
    assert "fractions in [0, 1]: multiply them by 100" in message
    message = _message(SourceSpec("canonical", _events(tmp_path, "b.parquet")), threshold=100.5)
    assert "threshold of 100.5%" in message and "lower extract.listen_threshold_pct" in message


def test_rows_duckdb_cannot_convert(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("1::1193::5::978300760\nx::661::3::978302109\n")
    message = _message(SourceSpec("movielens", str(path)))
    assert "movielens source" in message and "ratings.dat" in message
    assert "DuckDB could not read the rows" in message


# -- items ---------------------------------------------------------------------------------------


def test_duplicated_item_rows(tmp_path):
    items = _items(tmp_path, item_id=pa.array([10, 11, 10], pa.int64()), genre=["a", "b", "c"])
    message = _message(SourceSpec("canonical", _events(tmp_path), items))
    assert f"items file {items!r}, column 'item_id'" in message
    assert "1 duplicated item rows (e.g. item_id 10)" in message


def test_items_without_id(tmp_path):
    items = _items(tmp_path, item_id=pa.array([10, None], pa.int64()))
    message = _message(SourceSpec("canonical", _events(tmp_path), items))
    assert f"items file {items!r}, column 'item_id': 1 of 2 rows have no item_id" in message


def test_empty_items_table(tmp_path):
    items = _items(tmp_path, item_id=pa.array([], pa.int64()))
    message = _message(SourceSpec("canonical", _events(tmp_path), items))
    assert f"items {items!r}: the table is empty (0 rows)" in message


def test_embeddings_of_different_lengths(tmp_path):
    items = _items(
        tmp_path, item_id=pa.array([10, 11], pa.int64()), embedding=[[1.0, 2.0], [1.0, 2.0, 3.0]]
    )
    message = _message(SourceSpec("canonical", _events(tmp_path), items))
    assert f"items file {items!r}, column 'embedding'" in message and "[2, 3]" in message


def test_items_of_unknown_tracks_are_a_warning(tmp_path):
    items = _items(tmp_path, item_id=pa.array([10, 11, 99, 98], pa.int64()))
    (warning,) = _validate(SourceSpec("canonical", _events(tmp_path), items))
    assert f"items file {items!r}, column 'item_id': 2 of 4 items never occur" in warning
    assert "(e.g. 98)" in warning


def test_an_items_file_matching_no_event_is_an_error(tmp_path):
    items = _items(tmp_path, item_id=pa.array([98, 99], pa.int64()))
    message = _message(SourceSpec("canonical", _events(tmp_path), items))
    assert f"items file {items!r}, column 'item_id': none of its 2 item ids" in message
    assert "items 98, events 10" in message and "point --items at the metadata" in message


@pytest.mark.parametrize("tempo", [float("nan"), float("inf"), -120.0, 0.0])
def test_a_tempo_that_is_not_a_tempo_is_an_error(tmp_path, tempo):
    items = _items(tmp_path, item_id=pa.array([10, 11], pa.int64()), tempo=[120.0, tempo])
    message = _message(SourceSpec("canonical", _events(tmp_path), items))
    assert f"items file {items!r}, column 'tempo': 1 of 2 rows have a tempo that is NaN" in message
    assert "write NULL where the tempo is unknown" in message


@pytest.mark.parametrize("value", [1e38, float("inf"), float("nan"), -2e6])
def test_an_embedding_with_huge_or_missing_values_is_an_error(tmp_path, value):
    vectors = pa.array([[0.1, 0.2], [value, 0.0]], pa.list_(pa.float32()))
    items = _items(tmp_path, item_id=pa.array([10, 11], pa.int64()), embedding=vectors)
    message = _message(SourceSpec("canonical", _events(tmp_path), items))
    assert f"items file {items!r}, column 'embedding': 1 of 2 rows have an embedding" in message


def test_null_tempo_and_embedding_are_unknown_not_errors(tmp_path):
    vectors = pa.array([[0.1, 0.2], None], pa.list_(pa.float32()))
    items = _items(
        tmp_path, item_id=pa.array([10, 11], pa.int64()), tempo=[120.0, None], embedding=vectors
    )
    assert _validate(SourceSpec("canonical", _events(tmp_path), items)) == []


def test_yambda_fixture_warns_about_catalog_items_without_events():
    (warning,) = _validate(SourceSpec("yambda", str(FIXTURES / "yambda/flat/50m")))
    assert "artist_item_mapping.parquet" in warning and "2 of 4 items never occur" in warning


# -- counts against a brute-force reference on random data ----------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bad_row_counts_match_a_reference(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 500))
    ratios = rng.uniform(0.0, 150.0, n)
    ratios[rng.choice(n, int(rng.integers(1, n // 2)), replace=False)] *= -1
    ids = pa.array(np.arange(n, dtype=np.int64))
    path = _events(tmp_path, user_id=ids, item_id=ids, timestamp=ids, played_ratio_pct=ratios)
    message = _message(SourceSpec("canonical", path))
    assert f": {int((ratios < 0).sum())} of {n} rows have a negative played_ratio_pct" in message


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unknown_item_count_matches_a_reference(tmp_path, seed):
    rng = np.random.default_rng(seed)
    event_items = rng.integers(0, 60, 200)
    catalog = rng.choice(100, int(rng.integers(61, 100)), replace=False)  # some ids >= 60
    ids = pa.array(np.arange(200, dtype=np.int64))
    events = _events(
        tmp_path, user_id=ids, item_id=event_items, timestamp=ids, played_ratio_pct=None
    )
    items = _items(tmp_path, item_id=pa.array(catalog, pa.int64()))
    unknown = sorted(set(catalog.tolist()) - set(event_items.tolist()))
    (warning,) = _validate(SourceSpec("canonical", events, items))
    expected = (
        f"{len(unknown)} of {len(catalog)} items never occur in the events (e.g. {unknown[0]})"
    )
    assert expected in warning


# -- helpers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "duckdb_type, family",
    [
        ("UINTEGER", "integer"),
        ("BIGINT", "integer"),
        ("DOUBLE", "float"),
        ("DECIMAL(18,3)", "decimal"),
        ("VARCHAR", "string"),
        ("TIMESTAMP WITH TIME ZONE", "time"),
        ("DATE", "time"),
        ("FLOAT[]", "list"),
        ("DOUBLE[128]", "list"),
        ("BLOB", "other"),
    ],
)
def test_type_family(duckdb_type, family):
    assert type_family(duckdb_type) == family
