import pickle

import duckdb
import pyarrow as pa
import pytest

from recmodel.core.files import load_object, read_json, write_json, write_object
from recmodel.core.tables import (
    TableIntegrityError,
    TableRef,
    duckdb_view,
    is_table_ref,
    local_path,
    read_table,
    resolve,
    verify,
    write_table,
)

BUILTIN = (dict, list, str, int, float, bool, type(None))


@pytest.fixture
def table():
    return pa.table({"user_id": [3, 1, 2], "score": [0.5, 1.5, -1.0]})


def _only_builtins(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _only_builtins(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_only_builtins(v) for v in value)
    return isinstance(value, BUILTIN)


def test_write_read_round_trip(tmp_path, table):
    ref = write_table(table, str(tmp_path / "run" / "t.parquet"))
    assert ref["rows"] == 3 and ref["format"] == "parquet"
    assert ref["columns"] == {"user_id": "int64", "score": "double"}
    assert read_table(ref).equals(table)
    assert read_table(ref, columns=["score"]).column_names == ["score"]


def test_a_reference_is_plain_builtin_types(tmp_path, table):
    ref = write_table(table, str(tmp_path / "t.parquet"))
    assert _only_builtins(ref) and is_table_ref(ref)
    assert set(ref) == {"uri", "format", "rows", "columns", "sha256", "nbytes"}
    assert pickle.loads(pickle.dumps(ref)) == ref


def test_references_of_past_runs_still_read(tmp_path, table):
    """Runs written before plain references hold TableRef objects."""
    old = TableRef.of(write_table(table, str(tmp_path / "t.parquet")))
    assert isinstance(old, TableRef) and old.columns == ["user_id", "score"]
    assert old.to_dict() == write_table(table, str(tmp_path / "t.parquet"))
    assert read_table(old).equals(table) and local_path(old) == old.uri
    assert is_table_ref(old) and resolve(old).equals(table)
    verify(old)


def test_same_content_same_hash(tmp_path, table):
    a = write_table(table, str(tmp_path / "a.parquet"))
    b = write_table(table, str(tmp_path / "b.parquet"))
    c = write_table(table.slice(1), str(tmp_path / "c.parquet"))
    assert a["sha256"] == b["sha256"] != c["sha256"]


def test_tampered_table_is_detected(tmp_path, table):
    ref = write_table(table, str(tmp_path / "t.parquet"))
    write_table(table.slice(1), ref["uri"])
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


def test_json_documents_round_trip_without_nan(tmp_path):
    value = [{"file": "sql/a.sql", "params": {"x": float("nan"), "k": (1, 2)}, "rows": 3}]
    ref = write_json(value, str(tmp_path / "q.json"), files=["sql/a.sql"])
    assert ref["format"] == "json" and ref["files"] == ["sql/a.sql"] and _only_builtins(ref)
    assert read_json(ref) == [{"file": "sql/a.sql", "params": {"x": None, "k": [1, 2]}, "rows": 3}]
    assert resolve(ref) == read_json(ref)
    (tmp_path / "q.json").write_text("[]")
    with pytest.raises(TableIntegrityError):
        read_json(ref)


def test_objects_are_stored_as_files_with_a_plain_reference(tmp_path):
    model = {"weights": [1.0, 2.0]}
    ref = write_object(model, str(tmp_path / "m.pkl"))
    assert ref["format"] == "pickle" and ref["type"] == "builtins.dict" and _only_builtins(ref)
    assert load_object(ref) == model
    assert load_object(model) is model  # a past run's object is passed through
    assert load_object(None) is None


def test_weights_are_stored_as_a_file_and_load_back(tmp_path):
    from recmodel.core.files import load_checkpoint, write_checkpoint

    ref = write_checkpoint(b"\x00weights", {"d_model": 8, "dims": (1, 2)}, str(tmp_path / "w"))
    assert ref["format"] == "safetensors" and ref["model_config"] == {"d_model": 8, "dims": [1, 2]}
    assert _only_builtins(ref) and not any(isinstance(v, bytes) for v in ref.values())
    loaded = {"safetensors": b"\x00weights", "model_config": {"d_model": 8, "dims": [1, 2]}}
    assert load_checkpoint(ref) == loaded == resolve(ref)
    assert load_checkpoint(loaded) is loaded  # a past run's artifact held the bytes
