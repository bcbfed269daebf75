"""Ranker score tables in and out: a production ranker's file, and original ids for publishing.

``--ranker-scores PATH`` replaces the built-in ranker with a production ranker's table of the
``ranker_scores`` shape: ``user_id``, ``item_id``, ``request_ts`` (int64 unix seconds or a
TIMESTAMP) and ``score`` (a number), as Parquet or CSV. It is validated like any input:
:func:`check_ranker_scores_file` checks the schema and the values before anything is trained,
and :func:`load_ranker_scores` maps the ids to the extracted dense indices. Every problem raises
:class:`recmodel.ingest.checks.InputError` naming the file, the column and the fix.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from recmodel.core.columns import Columns as C
from recmodel.core.errors import InputError
from recmodel.core.sql import SqlRunner, connect
from recmodel.ingest.checks import IDS, NUMBERS, check_types, require_columns, type_family

logger = logging.getLogger(__name__)

IMPORT_SQL = "ranker/02_import_scores.sql"
REQUIRED = (C.USER, C.ITEM, C.REQUEST_TS, C.SCORE)
TYPES = {
    C.USER: (IDS, "int64 or string ids"),
    C.ITEM: (IDS, "int64 or string ids"),
    C.REQUEST_TS: (frozenset({"integer", "time"}), "int64 unix seconds or a TIMESTAMP"),
    C.SCORE: (NUMBERS, "a number"),
}
# Row checks: (column, SQL predicate of a bad row, what is wrong, how to fix it).
ROW_CHECKS = (
    (C.USER, "user_id is null", "are NULL", "drop rows without a user"),
    (C.ITEM, "item_id is null", "are NULL", "drop rows without a track"),
    (C.REQUEST_TS, "request_ts is null", "are NULL", "write the time each request was scored"),
    (C.SCORE, "score is null", "are NULL", "drop unscored candidates"),
    # Compared as text: DuckDB 2.0 folds isnan()/isinf() of a Parquet column to false from the
    # file's min/max statistics, which leave NaN out.
    (
        C.SCORE,
        "lower(score::double::varchar) in ('nan', '-nan', 'inf', '-inf')",
        "are NaN or infinite",
        "write finite scores",
    ),
)
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv", ".txt": "csv"}


def _read(con: duckdb.DuckDBPyConnection, path: str | Path) -> duckdb.DuckDBPyRelation:
    path = str(path)
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(
            f"ranker scores {path!r}: unknown file type; expected Parquet "
            f"(.parquet) or CSV (.csv). Fix: rename or convert the file."
        )
    try:
        return con.read_parquet(path) if fmt == "parquet" else con.read_csv(path)
    except duckdb.Error as exc:
        raise InputError(f"ranker scores {path!r}: cannot be read as {fmt}: {exc}") from exc


def _columns(rel: duckdb.DuckDBPyRelation) -> dict[str, str]:
    return dict(zip(rel.columns, (str(t) for t in rel.types), strict=True))


def check_ranker_scores_file(path: str | Path) -> dict[str, Any]:
    """Validate a production ranker's score file (schema and values), without id mapping.

    Returns:
        ``{"path", "rows", "columns"}`` for the run's input checks.

    Raises:
        InputError: a missing or mistyped column, NULL / non-finite values or duplicate
            (user, item, request) rows; the message names the file and the column.
    """
    with connect() as con:
        rel = _read(con, path)
        columns = _columns(rel)
        where = f"ranker scores {str(path)!r}"
        require_columns(columns, REQUIRED, where)
        check_types(columns, TYPES, where)
        rel.create_view("ranker_scores_source")
        n_rows = con.execute("select count(*) from ranker_scores_source").fetchone()[0]
        for column, predicate, problem, fix in ROW_CHECKS:
            n_bad = con.execute(
                f"select count(*) from ranker_scores_source where {predicate}"
            ).fetchone()[0]
            if n_bad:
                raise InputError(
                    f"{where}, column {column!r}: {n_bad} of {n_rows} values {problem}. Fix: {fix}."
                )
        n_distinct = con.execute(
            "select count(*) from (select distinct user_id, item_id, "
            "request_ts from ranker_scores_source)"
        ).fetchone()[0]
        if n_distinct != n_rows:
            raise InputError(
                f"{where}, columns 'user_id', 'item_id', 'request_ts': "
                f"{n_rows - n_distinct} duplicate rows. Fix: keep one score per "
                "(user, item, request)."
            )
    return {"path": str(path), "rows": int(n_rows), "columns": columns}


def load_ranker_scores(
    path: str | Path, users_table: pa.Table, items_table: pa.Table, runner: SqlRunner | None = None
) -> pa.Table:
    """Read a production ranker's scores and map them to dense ids.

    Args:
        path: a Parquet or CSV file with ``user_id, item_id, request_ts, score``.
        users_table: the extracted users (``user_idx``, ``user_id``).
        items_table: the extracted items (``item_idx``, ``item_id``, ...).
        runner: runs and records the import SQL (a new connection when None).

    Returns:
        ``user_idx int64, item_idx int32, request_ts int64, score float64``, sorted by
        ``(user_idx, request_ts, item_idx)``.

    Raises:
        InputError: everything :func:`check_ranker_scores_file` raises, and ids that are not in
            the extracted vocabularies.
    """
    check_ranker_scores_file(path)
    where = f"ranker scores {str(path)!r}"
    runner = SqlRunner(connect()) if runner is None else runner
    con = runner.con
    users = con.from_arrow(users_table.select([C.USER_IDX, C.USER]))
    items = con.from_arrow(items_table.select([C.ITEM_IDX, C.ITEM]))
    users.create_view("ranker_user_vocab")
    items.create_view("ranker_item_vocab")
    _normalized(con, _read(con, path), _columns(users)[C.USER], _columns(items)[C.ITEM])
    rows = runner.run(IMPORT_SQL, fetch="arrow")
    for column, idx in ((C.USER, C.USER_IDX), (C.ITEM, C.ITEM_IDX)):
        unknown = rows.filter(rows[idx].is_null())
        if unknown.num_rows:
            example = unknown[f"{column}_text"][0].as_py()  # as written in the file
            raise InputError(
                f"{where}, column {column!r}: {unknown.num_rows} of {rows.num_rows} "
                f"rows have an id that is not in the extracted data (e.g. "
                f"{example!r}). Fix: score only users and tracks of this dataset "
                "(after extraction's filters), or drop those rows."
            )
    out = rows.select([C.USER_IDX, C.ITEM_IDX, C.REQUEST_TS, C.SCORE])
    logger.info("imported %d ranker scores from %s", out.num_rows, path)
    return out.sort_by(
        [(C.USER_IDX, "ascending"), (C.REQUEST_TS, "ascending"), (C.ITEM_IDX, "ascending")]
    )


def _normalized(con, rel: duckdb.DuckDBPyRelation, user_type: str, item_type: str) -> None:
    """Register ``ranker_scores_input``: ids in the vocabularies' types (and as written, as
    text, for messages: an id of another type casts to NULL), times in seconds."""
    columns = _columns(rel)
    rel.create_view("ranker_scores_raw")
    ts = (
        "epoch(request_ts)::bigint"
        if type_family(columns[C.REQUEST_TS]) == "time"
        else "request_ts::bigint"
    )
    # Types come from DESCRIBE and the family checks above, never from the data.
    con.execute(f"""create or replace view ranker_scores_input as select
        try_cast(user_id as {user_type}) as user_id, try_cast(item_id as {item_type}) as item_id,
        user_id::varchar as user_id_text, item_id::varchar as item_id_text,
        {ts} as request_ts, score::double as score from ranker_scores_raw""")


def with_original_ids(scores: pa.Table, users_table: pa.Table, items_table: pa.Table) -> pa.Table:
    """``scores`` (dense ids) with ``user_id`` and ``item_id`` in front, for publishing."""
    user_ids = _lookup(users_table, C.USER_IDX, C.USER, scores[C.USER_IDX])
    item_ids = _lookup(items_table, C.ITEM_IDX, C.ITEM, scores[C.ITEM_IDX])
    return scores.add_column(0, C.USER, user_ids).add_column(1, C.ITEM, item_ids)


def _lookup(vocab: pa.Table, idx_col: str, id_col: str, idx: pa.ChunkedArray) -> pa.Array:
    keys = vocab[idx_col].to_numpy().astype(np.int64)
    position = np.full(int(keys.max(initial=-1)) + 1, -1, dtype=np.int64)
    position[keys] = np.arange(len(keys))
    wanted = idx.to_numpy().astype(np.int64)
    if wanted.size and (wanted.max() >= len(position) or (position[wanted] < 0).any()):
        raise KeyError(f"{idx_col} values missing from the vocabulary table")
    return vocab[id_col].take(pa.array(position[wanted]))
