"""Source adapters: every supported input becomes the same two DuckDB views.

After :func:`register_source` the connection has

* ``raw_events(user_id, item_id, timestamp BIGINT, played_ratio_pct DOUBLE,
  track_length_seconds DOUBLE, is_organic TINYINT)`` and
* ``raw_items(item_id, artist_id, album_id, genre VARCHAR, tempo DOUBLE, embedding FLOAT[])``,
  with zero rows when the source has no item metadata,

plus ``raw_events_source`` / ``raw_items_source``: the same rows with the file each came from
(and the raw timestamp text), which :mod:`recmodel.validate` uses to name an offending file.
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

import glob
import logging
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import duckdb

from recmodel.columns import Columns as C
from recmodel.validate import (
    EVENT_TYPES,
    ITEM_TYPES,
    NUMBERS,
    RAW_TIMESTAMP,
    SOURCE_FILE,
    InputError,
    check_types,
    input_error,
    require_columns,
    type_family,
    validate_source,
)

__all__ = ["InputError", "SourceSpec", "register_source", "resolve_files", "validate_source"]

logger = logging.getLogger(__name__)

KINDS = ("canonical", "yambda", "lastfm1k", "movielens")
EVENT_COLUMNS = (C.USER, C.ITEM, C.TIMESTAMP, C.PLAYED_RATIO, C.TRACK_LENGTH, C.IS_ORGANIC)
ITEM_COLUMNS = (C.ITEM, C.ARTIST, C.ALBUM, C.GENRE, C.TEMPO, C.EMBEDDING)
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv"}
_VECTOR_COLUMN = re.compile(r"^(?:embedding|acoustic)_(\d+)$")
# Text timestamps ending in Z or +hh:mm carry their own zone; the others are read as UTC.
_HAS_OFFSET = r"\d{2}:\d{2}(:\d{2}(\.\d+)?)?\s*([zZ]|[+-]\d{2}(:?\d{2})?)$"


@dataclass(frozen=True)
class SourceSpec:
    """Where the input is and how it is laid out (the module docstring describes each kind)."""

    kind: str = "canonical"  # "canonical" | "yambda" | "lastfm1k" | "movielens"
    events: str = ""  # file, glob or directory (yambda: the directory holding listens.parquet)
    items: str | None = None  # optional item table; yambda/movielens: overrides the lookup

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise input_error(f"source kind {self.kind!r}", "unknown", f"use one of {KINDS}")


@dataclass(frozen=True)
class _Table:
    """One input table as a query whose columns carry canonical names and source types."""

    query: str  # SELECT ... that also yields the __source_file column
    where: str  # how messages name it, e.g. "events file '/data/a.parquet'"
    files: tuple[str, ...]
    fmt: str  # "parquet", "csv" or "tsv"


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
    from recmodel.source_formats import ADAPTERS  # the formats build on this module's helpers

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
    con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT {_names(columns)} FROM {name}_source")


def _empty_items(event_cols: dict[str, str]) -> list[tuple[str, str]]:
    types = (_id_type(event_cols[C.ITEM]), "BIGINT", "BIGINT", "VARCHAR", "DOUBLE", "FLOAT[]")
    return list(zip(ITEM_COLUMNS, types, strict=True))


def _summary(table: _Table, columns: dict[str, str]) -> dict[str, Any]:
    columns = {c: t for c, t in columns.items() if c != SOURCE_FILE}
    return {"files": list(table.files), "format": table.fmt, "columns": columns}


def _rows_in_files(con: duckdb.DuckDBPyConnection, table: _Table) -> int | None:
    if table.fmt != "parquet" or any("://" in f for f in table.files):
        return None
    query = "SELECT sum(num_rows)::BIGINT FROM parquet_file_metadata($files)"
    return con.execute(query, {"files": list(table.files)}).fetchall()[0][0]


# -- files -----------------------------------------------------------------------------------


def resolve_files(path: str, role: str, suffixes: tuple[str, ...] = tuple(_FORMATS)) -> list[str]:
    """Expand a file, glob or directory (recursive) into sorted files; URIs pass through.

    Raises:
        InputError: the path does not exist, the glob matches nothing, or the directory holds
            no file with one of ``suffixes`` (hidden ``.``/``_`` files are skipped).
    """
    if "://" in path:
        return [path]
    if any(ch in path for ch in "*?["):
        files = sorted(f for f in glob.glob(path, recursive=True) if Path(f).is_file())
        if not files:
            raise input_error(f"{role} glob {path!r}", "matches no files", "check the pattern")
        return files
    if Path(path).is_file():
        return [path]
    if not Path(path).is_dir():
        problem = f"does not exist (working directory {Path.cwd()})"
        raise input_error(f"{role} path {path!r}", problem, "check the path")
    found = (f for f in Path(path).rglob("*") if f.is_file() and f.name[0] not in "._")
    files = sorted(str(f) for f in found if _suffix(str(f)) in suffixes)
    if not files:
        problem = f"holds no {'/'.join(suffixes)} files"
        raise input_error(f"{role} directory {path!r}", problem, "point at the data files")
    return files


def _suffix(path: str) -> str:
    return PurePosixPath(path.lower().removesuffix(".gz").removesuffix(".zst")).suffix


def _file_table(path: str, role: str, **options: Any) -> _Table:
    files = resolve_files(path, role)
    formats = sorted({_FORMATS.get(_suffix(f), f) for f in files})
    if len(formats) > 1 or formats[0] not in _FORMATS.values():
        problem = f"has files of unknown or mixed formats {formats}"
        raise input_error(f"{role} {path!r}", problem, "use .parquet, .csv or .tsv files only")
    where = f"{role} file {files[0]!r}" if len(files) == 1 else f"{role} {path!r}"
    return _Table(
        f"SELECT * FROM {_reader(files, formats[0], **options)}", where, (*files,), formats[0]
    )


def _reader(files: list[str] | tuple[str, ...], fmt: str, **options: Any) -> str:
    """The DuckDB table function that scans ``files``, tagging each row with its file."""
    # A view's text cannot hold bound parameters, so paths are written as escaped literals.
    if fmt == "tsv":
        options = {"delim": "\t", **options}
    args = [f"[{', '.join(_literal(f) for f in files)}]", f"filename={_literal(SOURCE_FILE)}"]
    args += [f"{key}={_literal(value)}" for key, value in options.items()]
    return f"{'read_parquet' if fmt == 'parquet' else 'read_csv'}({', '.join(args)})"


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return "'" + str(value).replace("'", "''") + "'"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _names(columns: tuple[str, ...] | list[str]) -> str:
    return ", ".join(_q(c) for c in columns)


def _describe(con: duckdb.DuckDBPyConnection, query: str, where: str) -> dict[str, str]:
    try:
        return {row[0]: row[1] for row in con.execute(f"DESCRIBE {query}").fetchall()}
    except duckdb.Error as exc:
        problem = f"DuckDB cannot read its schema: {exc}"
        raise input_error(where, problem, "check that the file is valid for its extension") from exc


def _columns(con, table: _Table, required: tuple[str, ...], rules: dict) -> dict[str, str]:
    columns = _describe(con, table.query, table.where)
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
    return f"CAST({_q(name) if name in columns else 'NULL'} AS {sql_type}) AS {_q(name)}"


def _timestamp_sql(duckdb_type: str) -> str:
    """Unix seconds (BIGINT) from any accepted timestamp type; NULL where text does not parse."""
    ts, family = _q(C.TIMESTAMP), type_family(duckdb_type)
    if family == "integer":
        return f"CAST({ts} AS BIGINT)"
    if family in ("float", "decimal"):
        return f"TRY_CAST(floor({ts}) AS BIGINT)"
    if family == "time":
        return f"CAST(floor(epoch({ts})) AS BIGINT)"
    # Text: digits are seconds, else ISO-8601 (zoned if it names an offset, else UTC). Each
    # branch takes its own epoch: a CASE over both types would convert through the session zone.
    zoned, naive = (f"epoch(TRY_CAST({ts} AS {t}))" for t in ("TIMESTAMPTZ", "TIMESTAMP"))
    parsed = (
        f"CASE WHEN regexp_matches({ts}, {_literal(_HAS_OFFSET)}) THEN {zoned} ELSE {naive} END"
    )
    return f"COALESCE(TRY_CAST({ts} AS BIGINT), TRY_CAST(floor({parsed}) AS BIGINT))"


def _events_sql(table: _Table, columns: dict[str, str], items_as_text: bool) -> str:
    select = [
        _id_sql(C.USER, columns),
        _id_sql(C.ITEM, columns, items_as_text),
        f"{_timestamp_sql(columns[C.TIMESTAMP])} AS {_q(C.TIMESTAMP)}",
        _cast_sql(C.PLAYED_RATIO, columns, "DOUBLE"),
        _cast_sql(C.TRACK_LENGTH, columns, "DOUBLE"),
        _cast_sql(C.IS_ORGANIC, columns, "TINYINT"),
        SOURCE_FILE,
        f"CAST({_q(C.TIMESTAMP)} AS VARCHAR) AS {RAW_TIMESTAMP}",
    ]
    return f"SELECT {', '.join(select)} FROM ({table.query})"


def _items_sql(table: _Table, columns: dict[str, str], as_text: bool) -> str:
    select = [
        _id_sql(C.ITEM, columns, as_text),
        _id_sql(C.ARTIST, columns),
        _id_sql(C.ALBUM, columns),
        _cast_sql(C.GENRE, columns, "VARCHAR"),
        _cast_sql(C.TEMPO, columns, "DOUBLE"),
        f"{_embedding_sql(columns, table.where)} AS {_q(C.EMBEDDING)}",
        SOURCE_FILE,
    ]
    return f"SELECT {', '.join(select)} FROM ({table.query})"


def _embedding_sql(columns: dict[str, str], where: str) -> str:
    """FLOAT[] from a list column, or packed from numeric columns ``embedding_<i>``."""
    if C.EMBEDDING in columns:
        return f"CAST({_q(C.EMBEDDING)} AS FLOAT[])"
    parts = sorted((int(m[1]), c) for c in columns if (m := _VECTOR_COLUMN.match(c)))
    for _, name in parts:
        if type_family(columns[name]) not in NUMBERS:
            problem = f"type {columns[name]} is not a number"
            raise input_error(
                f"{where}, column {name!r}", problem, "write acoustic features as numbers"
            )
    if not parts:
        return "CAST(NULL AS FLOAT[])"
    values = _names([name for _, name in parts])
    return f"CASE WHEN {_q(parts[0][1])} IS NULL THEN NULL ELSE list_value({values})::FLOAT[] END"
