import duckdb
import pyarrow as pa
import pytest

from recmodel.core.tables import TableIntegrityError, duckdb_view, read_table, verify, write_table


@pytest.fixture
def table():
    return pa.table({"user_id": [3, 1, 2], "score": [0.5, 1.5, -1.0]})


def test_write_read_round_trip(tmp_path, table):
    ref = write_table(table, str(tmp_path / "run" / "t.parquet"))
    assert ref.rows == 3
    assert ref.columns == ["user_id", "score"]
    assert dict(ref.schema) == {"user_id": "int64", "score": "double"}
    assert read_table(ref).equals(table)
    assert read_table(ref, columns=["score"]).column_names == ["score"]


def test_same_content_same_hash(tmp_path, table):
    a = write_table(table, str(tmp_path / "a.parquet"))
    b = write_table(table, str(tmp_path / "b.parquet"))
    c = write_table(table.slice(1), str(tmp_path / "c.parquet"))
    assert a.sha256 == b.sha256 != c.sha256


def test_tampered_table_is_detected(tmp_path, table):
    ref = write_table(table, str(tmp_path / "t.parquet"))
    write_table(table.slice(1), ref.uri)
    with pytest.raises(TableIntegrityError, match="modified after the run wrote it"):
        verify(ref)


def test_duckdb_view(tmp_path, table):
    ref = write_table(table, str(tmp_path / "t.parquet"))
    con = duckdb.connect()
    duckdb_view(con, ref, "scores")
    assert con.execute("SELECT sum(user_id) FROM scores").fetchone()[0] == 6


def test_no_temporary_file_left_behind(tmp_path, table):
    write_table(table, str(tmp_path / "t.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]
