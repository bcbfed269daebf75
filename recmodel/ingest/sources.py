"""Source adapters: every supported input becomes the same two DuckDB views.

After :func:`register_source` the connection has

* ``raw_events(user_id, item_id, timestamp BIGINT, played_ratio_pct DOUBLE,
  track_length_seconds DOUBLE, is_organic TINYINT)`` and
* ``raw_items(item_id, artist_id, album_id, genre VARCHAR, tempo DOUBLE, embedding FLOAT[])``,
  with zero rows when the source has no item metadata,

plus ``raw_events_source`` / ``raw_items_source``: the same rows with the file each came from
(and the raw timestamp text), which :mod:`recmodel.ingest.checks` uses to name an offending file.
All are views: DuckDB reads the files lazily and out-of-core, and a remote URI (``s3://``,
``https://``) takes the same code path as a local file (DuckDB's httpfs must be loadable).

Types: integer ids become BIGINT and text ids stay VARCHAR; when events and items disagree,
both item_id columns become VARCHAR so that they join. artist_id/album_id follow the same rule
(a missing one is a NULL BIGINT). ``timestamp`` becomes unix seconds: integers as they are,
floats floored, TIMESTAMP/DATE through ``epoch``, text as ISO-8601 (an explicit offset is
honoured, none means UTC). A missing optional column is a typed NULL; a NULL
``played_ratio_pct`` means "no play-share signal" and counts as listen+.

Kinds:

* ``canonical``: Parquet, CSV or TSV files (by extension) named as in DESIGN.md §2; a
  directory means every such file below it. The acoustic vector is a list column
  ``embedding`` or numeric columns ``embedding_0, embedding_1, ...`` (or ``acoustic_<i>``).
* ``yambda``: a directory with ``listens.parquet`` (else ``multi_event.parquet``, whose
  ``listen`` rows are used), flat or sequential (one row of lists per user), or one of those
  files; ``uid`` is the user. Timestamps are already seconds from the dataset start, quantized
  to 5 s (the official benchmark cuts a day as 86 400 timestamp units), so they are not
  rescaled. The mappings and ``embeddings.parquet`` are looked up in ``SourceSpec.items`` if
  set, else in the events directory and its two parents (the Hugging Face layout keeps them
  above ``flat/50m``); remote sources need ``items``. A track with several artists or albums
  keeps the smallest id; ``normalized_embed`` is preferred over ``embed``.
* ``lastfm1k``: ``userid-timestamp-artid-artname-traid-traname.tsv`` (no header), or the
  directory holding it. A track without a MusicBrainz id is keyed ``artist<TAB>track`` (a tab
  never occurs inside a TSV field, so keys cannot collide); rows naming no track are dropped.
  artist_id is the artist's MusicBrainz id, or its name when it has none.
* ``movielens``: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) or a RecBole
  ``.inter`` file (or the directory holding one); ``movies.dat`` or the ``.item`` file beside
  it (or ``SourceSpec.items``) gives the first genre. Every rating is a positive interaction
  (the usual sequential protocol on MovieLens), so ``played_ratio_pct`` is NULL.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import duckdb

from recmodel.core.columns import Columns as C
from recmodel.core.errors import input_error
from recmodel.ingest.checks import (
    EVENT_TYPES,
    ITEM_TYPES,
    NUMBERS,
    check_types,
    require_columns,
    type_family,
)
from recmodel.ingest.formats import ADAPTERS
from recmodel.ingest.readers import (
    RAW_TIMESTAMP,
    SOURCE_FILE,
    SourceSpec,
    Table,
    check_headers,
    describe,
    literal,
    names_sql,
    quote,
)

logger = logging.getLogger(__name__)

EVENT_COLUMNS = (C.USER, C.ITEM, C.TIMESTAMP, C.PLAYED_RATIO, C.TRACK_LENGTH, C.IS_ORGANIC)
ITEM_COLUMNS = (C.ITEM, C.ARTIST, C.ALBUM, C.GENRE, C.TEMPO, C.EMBEDDING)
_VECTOR_COLUMN = re.compile(r"^(?:embedding|acoustic)_(\d+)$")
# Text timestamps ending in Z or +hh:mm carry their own zone; the others are read as UTC.
_HAS_OFFSET = r"\d{2}:\d{2}(:\d{2}(\.\d+)?)?\s*([zZ]|[+-]\d{2}(:?\d{2})?)$"


def register_source(con: duckdb.DuckDBPyConnection, spec: SourceSpec) -> dict[str, Any]:
    """Create the ``raw_events`` and ``raw_items`` views over ``spec`` on ``con``.

    Only schemas are read (``DESCRIBE`` and Parquet footers); the rows stay in the files.

    Returns:
        A small description: kind, resolved files, format and source columns of each table,
        and ``rows_in_files`` (events rows per Parquet footers; None for text or remote files).

    Raises:
        InputError: a path matches nothing, or a column is missing or has an unusable type.
    """
    if not spec.events:
        raise input_error("SourceSpec.events", "empty", "set it to a file, glob or directory")
    events, items = ADAPTERS[spec.kind](con, spec)
    event_cols = _columns(con, events, C.REQUIRED_EVENTS, EVENT_TYPES)
    item_cols = _columns(con, items, (C.ITEM,), ITEM_TYPES) if items else {}
    as_text = bool(item_cols) and _id_type(event_cols[C.ITEM]) != _id_type(item_cols[C.ITEM])
    if as_text:
        logger.warning(
            "item_id is %s in the events but %s in the items: both read as VARCHAR",
            event_cols[C.ITEM],
            item_cols[C.ITEM],
        )
    _create_view(con, "raw_events", EVENT_COLUMNS, _events_sql(events, event_cols, as_text))
    if items:
        _create_view(con, "raw_items", ITEM_COLUMNS, _items_sql(items, item_cols, as_text))
    else:
        empty = ", ".join(f"CAST(NULL AS {t}) AS {c}" for c, t in _empty_items(event_cols))
        con.execute(f"CREATE OR REPLACE VIEW raw_items AS SELECT {empty} WHERE false")
        con.execute("DROP VIEW IF EXISTS raw_items_source")
    summary = {
        "kind": spec.kind,
        "events": _summary(events, event_cols),
        "items": _summary(items, item_cols) if items else None,
        "rows_in_files": _rows_in_files(con, events),
    }
    n_items = len(items.files) if items else 0
    logger.info(
        "registered %s source: %d events file(s), %d items file(s), %s rows in files",
        spec.kind,
        len(events.files),
        n_items,
        summary["rows_in_files"],
    )
    return summary


def _create_view(con, name: str, columns: tuple[str, ...], source_sql: str) -> None:
    con.execute(f"CREATE OR REPLACE VIEW {name}_source AS {source_sql}")
    con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT {names_sql(columns)} FROM {name}_source")


def _empty_items(event_cols: dict[str, str]) -> list[tuple[str, str]]:
    types = (_id_type(event_cols[C.ITEM]), "BIGINT", "BIGINT", "VARCHAR", "DOUBLE", "FLOAT[]")
    return list(zip(ITEM_COLUMNS, types, strict=True))


def _summary(table: Table, columns: dict[str, str]) -> dict[str, Any]:
    columns = {c: t for c, t in columns.items() if c != SOURCE_FILE}
    return {"files": list(table.files), "format": table.fmt, "columns": columns}


def _rows_in_files(con: duckdb.DuckDBPyConnection, table: Table) -> int | None:
    if table.fmt != "parquet" or any("://" in f for f in table.files):
        return None
    query = "SELECT sum(num_rows)::BIGINT FROM parquet_file_metadata($files)"
    return con.execute(query, {"files": list(table.files)}).fetchall()[0][0]


def _columns(con, table: Table, required: tuple[str, ...], rules: dict) -> dict[str, str]:
    if table.fmt in ("parquet", "csv", "tsv") and table.query.startswith("SELECT * FROM read_"):
        check_headers(con, table, tuple(rules))  # plain files only, not a layout's query
    columns = describe(con, table.query, table.where)
    require_columns(columns, required, table.where)
    check_types(columns, rules, table.where)
    return columns


# -- projections onto the canonical types -----------------------------------------------------


def _id_type(duckdb_type: str) -> str:
    return "BIGINT" if type_family(duckdb_type) == "integer" else "VARCHAR"


def _id_sql(name: str, columns: dict[str, str], as_text: bool = False) -> str:
    sql_type = "VARCHAR" if as_text else _id_type(columns.get(name, "BIGINT"))
    return _cast_sql(name, columns, sql_type)


def _cast_sql(name: str, columns: dict[str, str], sql_type: str) -> str:
    return f"CAST({quote(name) if name in columns else 'NULL'} AS {sql_type}) AS {quote(name)}"


def _timestamp_sql(duckdb_type: str) -> str:
    """Unix seconds (BIGINT) from any accepted timestamp type; NULL where text does not parse."""
    ts, family = quote(C.TIMESTAMP), type_family(duckdb_type)
    if family == "integer":
        return f"CAST({ts} AS BIGINT)"
    if family in ("float", "decimal"):
        return f"TRY_CAST(floor({ts}) AS BIGINT)"
    if family == "time":
        return f"CAST(floor(epoch({ts})) AS BIGINT)"
    # Text: digits are seconds, else ISO-8601 (zoned if it names an offset, else UTC). Each
    # branch takes its own epoch: a CASE over both types would convert through the session zone.
    zoned, naive = (f"epoch(TRY_CAST({ts} AS {t}))" for t in ("TIMESTAMPTZ", "TIMESTAMP"))
    parsed = f"CASE WHEN regexp_matches({ts}, {literal(_HAS_OFFSET)}) THEN {zoned} ELSE {naive} END"
    return f"COALESCE(TRY_CAST({ts} AS BIGINT), TRY_CAST(floor({parsed}) AS BIGINT))"


def _events_sql(table: Table, columns: dict[str, str], items_as_text: bool) -> str:
    select = [
        _id_sql(C.USER, columns),
        _id_sql(C.ITEM, columns, items_as_text),
        f"{_timestamp_sql(columns[C.TIMESTAMP])} AS {quote(C.TIMESTAMP)}",
        _cast_sql(C.PLAYED_RATIO, columns, "DOUBLE"),
        _cast_sql(C.TRACK_LENGTH, columns, "DOUBLE"),
        _cast_sql(C.IS_ORGANIC, columns, "TINYINT"),
        SOURCE_FILE,
        f"CAST({quote(C.TIMESTAMP)} AS VARCHAR) AS {RAW_TIMESTAMP}",
    ]
    return f"SELECT {', '.join(select)} FROM ({table.query})"


def _items_sql(table: Table, columns: dict[str, str], as_text: bool) -> str:
    select = [
        _id_sql(C.ITEM, columns, as_text),
        _id_sql(C.ARTIST, columns),
        _id_sql(C.ALBUM, columns),
        _cast_sql(C.GENRE, columns, "VARCHAR"),
        _cast_sql(C.TEMPO, columns, "DOUBLE"),
        f"{_embedding_sql(columns, table.where)} AS {quote(C.EMBEDDING)}",
        SOURCE_FILE,
    ]
    return f"SELECT {', '.join(select)} FROM ({table.query})"


def _embedding_sql(columns: dict[str, str], where: str) -> str:
    """FLOAT[] from a list column, or packed from numeric columns ``embedding_<i>``."""
    if C.EMBEDDING in columns:
        return f"CAST({quote(C.EMBEDDING)} AS FLOAT[])"
    parts = sorted((int(m[1]), c) for c in columns if (m := _VECTOR_COLUMN.match(c)))
    for _, name in parts:
        if type_family(columns[name]) not in NUMBERS:
            problem = f"type {columns[name]} is not a number"
            raise input_error(
                f"{where}, column {name!r}", problem, "write acoustic features as numbers"
            )
    if not parts:
        return "CAST(NULL AS FLOAT[])"
    values = names_sql([name for _, name in parts])
    return (
        f"CASE WHEN {quote(parts[0][1])} IS NULL THEN NULL ELSE list_value({values})::FLOAT[] END"
    )
