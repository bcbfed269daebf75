"""The one DuckDB connection helper and the SQL runner that records every query."""

import pyarrow as pa
import pytest

from recmodel.core.sql import SQL_DIR, SqlRunner, bound_params, connect, setting


def test_connect_applies_the_limits(tmp_path):
    con = connect("300MB", 1, tmp_path / "spill")
    assert setting(con, "threads") == 1
    assert setting(con, "memory_limit").replace(" ", "") in ("286.1MiB", "300.0MB", "300MB")
    assert setting(con, "temp_directory") == str(tmp_path / "spill")
    assert (tmp_path / "spill").is_dir()


def test_bound_params_takes_exactly_the_referenced_names():
    sql = "select $a as x -- $b is only in a comment\n, $c as y"
    assert bound_params(sql, {"a": 1, "b": 2, "c": 3, "d": 4}) == {"a": 1, "c": 3}
    with pytest.raises(KeyError, match="c"):
        bound_params(sql, {"a": 1})


def scores_input(users: list[int], items: list[int], scores: list[float]) -> pa.Table:
    """The view ``ranker_scores_input`` as the import registers it: ids cast and as text."""
    return pa.table(
        {
            "user_id": users,
            "item_id": items,
            "user_id_text": [str(u) for u in users],
            "item_id_text": [str(i) for i in items],
            "request_ts": list(range(10, 10 + len(users))),
            "score": scores,
        }
    )


def test_runner_records_every_file_it_runs():
    con = connect()
    con.register("ranker_scores_input", scores_input([1, 2], [5, 6], [0.5, 0.1]))
    con.register("ranker_user_vocab", pa.table({"user_idx": [0], "user_id": [1]}))
    con.register("ranker_item_vocab", pa.table({"item_idx": [3], "item_id": [5]}))
    runner = SqlRunner(con)
    rows = runner.run("ranker/02_import_scores.sql", {"unused": 1}, fetch="arrow")
    assert rows.num_rows == 2
    assert sorted(rows["item_idx"].to_pylist(), key=lambda v: v is None) == [3, None]
    assert runner.last["file"] == "sql/ranker/02_import_scores.sql"
    assert runner.last["sql"] == (SQL_DIR / "ranker/02_import_scores.sql").read_text()
    assert runner.last["params"] == {} and runner.last["rows"] == 2
    numpy = runner.run("ranker/02_import_scores.sql", fetch="numpy")
    assert len(numpy["user_idx"]) == 2 and runner.last["rows"] == 2
    assert len(runner.records) == 2


def test_runners_can_share_one_record_list():
    records: list[dict] = []
    for _ in range(2):
        con = connect()
        for name, table in {
            "ranker_scores_input": scores_input([1], [5], [0.0]),
            "ranker_user_vocab": pa.table({"user_idx": [0], "user_id": [1]}),
            "ranker_item_vocab": pa.table({"item_idx": [1], "item_id": [5]}),
        }.items():
            con.register(name, table)
        SqlRunner(con, records).run("ranker/02_import_scores.sql")
    assert [r["rows"] for r in records] == [1, 1]


def test_runner_rejects_an_unknown_fetch_mode():
    with pytest.raises(ValueError, match="fetch"):
        SqlRunner(connect()).run("ranker/02_import_scores.sql", fetch="pandas")
