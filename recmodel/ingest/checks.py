"""Input validation that fails fast, with messages that name the file, the column and the fix.

Two layers:

* Schema checks (:func:`require_columns`, :func:`check_types`) run inside
  :func:`recmodel.ingest.sources.register_source` on ``DESCRIBE`` output, before a row is read, so a
  missing or mistyped column is reported by name rather than as a DuckDB binder error.
* Content checks (:func:`validate_source`) run one aggregate scan over the registered views
  and, only when a check fails, one ``LIMIT 1`` query that finds the offending file and value.

Limits (decisions, not DuckDB facts):

* ``timestamp`` lies in ``[0, 2100-01-01)`` in unix seconds; later values are almost always
  milliseconds or microseconds written where seconds were expected.
* ``played_ratio_pct`` above 100 is legitimate (rewinds and replays; Yambda documents it).
  Above :data:`MAX_PLAYED_RATIO_PCT` it is implausible: a few such rows are a warning, more
  than :data:`MAX_IMPLAUSIBLE_SHARE` of the rows with a ratio mean a wrong unit, an error.
* ``NULL`` ``played_ratio_pct`` means "no play-share signal": the event counts as listen+.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb

from recmodel.core.columns import Columns as C
from recmodel.core.errors import InputError, input_error
from recmodel.core.sql import bound_params
from recmodel.ingest.readers import RAW_TIMESTAMP, SOURCE_FILE, SourceSpec

logger = logging.getLogger(__name__)

MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01T00:00:00Z in unix seconds
MAX_PLAYED_RATIO_PCT = 1_000.0  # ten full plays of the track in one event
MAX_IMPLAUSIBLE_SHARE = 0.001  # more implausible ratios than this share means a wrong unit
MAX_EMBEDDING_ABS = 1e6  # larger acoustic values overflow the tower's projection in float32

_INTEGERS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT"}
_FAMILIES = dict.fromkeys(_INTEGERS | {"U" + name for name in _INTEGERS}, "integer")
_FAMILIES |= dict.fromkeys(("TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS"), "time")
_FAMILIES |= {"TIMESTAMP WITH TIME ZONE": "time", "DATE": "time", "FLOAT": "float"}
_FAMILIES |= {"DOUBLE": "float", "VARCHAR": "string", "UUID": "uuid", "BOOLEAN": "bool"}

IDS = frozenset({"integer", "string", "uuid"})
NUMBERS = frozenset({"integer", "float", "decimal"})
_ID_RULE = (IDS, "int64 or string ids")
# Column -> (type families it may have, what to write instead).
EVENT_TYPES = {
    C.USER: _ID_RULE,
    C.ITEM: _ID_RULE,
    C.TIMESTAMP: (NUMBERS | {"time", "string"}, "int64 unix seconds or TIMESTAMP"),
    C.PLAYED_RATIO: (NUMBERS, "a number (percent of the track played)"),
    C.TRACK_LENGTH: (NUMBERS, "a number of seconds"),
    C.IS_ORGANIC: (frozenset({"integer", "bool"}), "a bool or a 0/1 integer"),
}
ITEM_TYPES = {
    C.ITEM: _ID_RULE,
    C.ARTIST: _ID_RULE,
    C.ALBUM: _ID_RULE,
    C.GENRE: (frozenset({"string", "integer"}), "a string"),
    C.TEMPO: (NUMBERS, "a number (beats per minute)"),
    C.EMBEDDING: (frozenset({"list"}), "a list of numbers"),
}
_ALIASES = {
    C.USER: ("uid", "userid", "userId", "user", "UserID"),
    C.ITEM: ("track_id", "itemid", "itemId", "item", "movieId", "movie_id", "song_id"),
    C.TIMESTAMP: ("ts", "time", "event_time", "datetime", "date", "played_at"),
}


def type_family(duckdb_type: str) -> str:
    """Coarse family of a DuckDB type name: integer, float, decimal, string, time, list, ...

    >>> type_family("UINTEGER"), type_family("DECIMAL(10,2)"), type_family("FLOAT[128]")
    ('integer', 'decimal', 'list')
    """
    if duckdb_type.endswith("]"):
        return "list"
    if duckdb_type.startswith("DECIMAL"):
        return "decimal"
    return _FAMILIES.get(duckdb_type, "other")


def require_columns(columns: Mapping[str, str], required: Iterable[str], where: str) -> None:
    """Raise InputError naming the first required column that ``columns`` lacks."""
    for name in (n for n in required if n not in columns):
        alias = next((a for a in _ALIASES.get(name, ()) if a in columns), None)
        alias = alias or next((c for c in columns if c.lower() == name.lower()), None)
        fix = f"rename {alias!r} to {name!r}" if alias else f"add a {name!r} column"
        found = ", ".join(c for c in columns if c != SOURCE_FILE) or "none"
        problem = f"required column {name!r} is missing (found: {found})"
        raise input_error(where, problem, f"{fix}, or choose the source kind that fits")


def check_types(columns: Mapping[str, str], rules: Mapping[str, tuple], where: str) -> None:
    """Raise InputError for the first present column whose type its rule does not allow."""
    for name, (families, expected) in rules.items():
        family = type_family(columns.get(name, "absent"))
        if name not in columns or (family in families and _elements_ok(name, columns[name])):
            continue
        is_float = family in ("float", "decimal")
        fix = "cast them to int64 (or string) before writing" if is_float else f"write {expected}"
        raise input_error(f"{where}, column {name!r}", f"type {columns[name]} is not allowed", fix)


def _elements_ok(name: str, duckdb_type: str) -> bool:
    if name != C.EMBEDDING:
        return True
    return type_family(duckdb_type[: duckdb_type.rindex("[")]) in NUMBERS


@dataclass(frozen=True)
class _Rule:
    """A row-level check: rows of a *_source view matching ``condition`` are bad."""

    column: str
    condition: str  # SQL predicate; $max_ts and $max_ratio are bound
    problem: str  # completes "<n> of <m> rows ..."
    fix: str


_SECONDS = "write unix seconds (int64) or ISO-8601 text such as 2009-05-04T23:08:57Z"
_DROP = "drop or fill those rows"
_RATIO = C.PLAYED_RATIO
_IMPLAUSIBLE = _Rule(
    _RATIO,
    f"{_RATIO} > $max_ratio AND NOT isnan({_RATIO})",  # NaN compares above every number
    f"have {_RATIO} above {MAX_PLAYED_RATIO_PCT:g}",
    "write the percent of the track played (100 = one play), not seconds or milliseconds",
)
_EVENT_RULES = (
    _Rule(C.USER, "user_id IS NULL", "have no user_id (NULL)", _DROP),
    _Rule(C.ITEM, "item_id IS NULL", "have no item_id (NULL)", _DROP),
    _Rule(
        C.TIMESTAMP,
        f"timestamp IS NULL AND {RAW_TIMESTAMP} IS NULL",
        "have no timestamp (NULL)",
        _DROP,
    ),
    _Rule(C.TIMESTAMP, "timestamp IS NULL", "have a timestamp that does not parse", _SECONDS),
    _Rule(C.TIMESTAMP, "timestamp < 0", "have a negative timestamp (before 1970)", _SECONDS),
    _Rule(
        C.TIMESTAMP,
        "timestamp >= $max_ts",
        "have a timestamp after 2100-01-01",
        "these look like milliseconds or microseconds: divide by 1000 (or 1000000)",
    ),
    _Rule(_RATIO, f"isnan({_RATIO})", "have a NaN played_ratio_pct", "write NULL if unknown"),
    _Rule(_RATIO, f"{_RATIO} < 0", "have a negative played_ratio_pct", "write 0 or more"),
    _Rule(
        C.TRACK_LENGTH,
        "track_length_seconds < 0 OR isnan(track_length_seconds)",
        "have a negative or NaN track length",
        "write NULL where the length is unknown",
    ),
    _Rule(C.IS_ORGANIC, "is_organic NOT IN (0, 1)", "have is_organic not 0/1", "write 0 or 1"),
)


def validate_source(
    con: duckdb.DuckDBPyConnection, spec: SourceSpec, *, listen_threshold_pct: float
) -> list[str]:
    """Check the rows behind ``raw_events`` / ``raw_items`` with cheap aggregate scans.

    Runs after :func:`recmodel.ingest.sources.register_source` and before anything expensive.

    Args:
        con: the connection the source was registered on.
        spec: the registered source (named in messages that concern no single file).
        listen_threshold_pct: ``played_ratio_pct`` at or above this counts as listen+.

    Returns:
        Warnings (also logged): problems that do not stop a run.

    Raises:
        InputError: the data cannot be used; the message says where and how to fix it.
    """
    try:
        with _exact_statistics(con):
            warnings = _check_events(con, spec, listen_threshold_pct)
            views = "SELECT count(*) FROM duckdb_views() WHERE view_name = 'raw_items_source'"
            if _one(con, views)[0]:
                warnings += _check_items(con, spec)
    except duckdb.Error as exc:
        where = f"{spec.kind} source {spec.events!r}"
        raise input_error(
            where, f"DuckDB could not read the rows: {exc}", "repair the file"
        ) from exc
    for warning in warnings:
        logger.warning(warning)
    return warnings


def _check_events(con, spec: SourceSpec, threshold: float) -> list[str]:
    rules = (*_EVENT_RULES, _IMPLAUSIBLE)
    counts = ", ".join(f"count(*) FILTER (WHERE {rule.condition})" for rule in rules)
    listen_plus = f"{_RATIO} IS NULL OR ({_RATIO} >= $threshold AND NOT isnan({_RATIO}))"
    query = (
        f"SELECT count(*), count({_RATIO}), count(*) FILTER (WHERE {listen_plus}), "
        f"max({_RATIO}) FILTER (WHERE NOT isnan({_RATIO})), {counts} FROM raw_events_source"
    )
    params = {"max_ts": MAX_TIMESTAMP, "max_ratio": MAX_PLAYED_RATIO_PCT, "threshold": threshold}
    n, n_rated, n_listen_plus, max_ratio, *bad = _one(con, query, params)
    if n == 0:
        fix = "point SourceSpec.events at the files that hold the listening log"
        raise input_error(f"events {spec.events!r}", "the table is empty (0 rows)", fix)
    n_implausible = bad.pop()
    for rule, n_bad in zip(_EVENT_RULES, bad, strict=True):
        if n_bad:
            raise _row_error(con, "raw_events_source", rule, n_bad, n)
    if n_implausible > MAX_IMPLAUSIBLE_SHARE * n_rated:
        raise _row_error(con, "raw_events_source", _IMPLAUSIBLE, n_implausible, n)
    if n_listen_plus == 0:
        files = _one(con, f"SELECT string_agg(DISTINCT {SOURCE_FILE}, ', ') FROM raw_events_source")
        fix = "lower extract.listen_threshold_pct, or check the unit of the column"
        if max_ratio is not None and max_ratio <= 1:
            fix = "the values look like fractions in [0, 1]: multiply them by 100"
        problem = (
            f"no event reaches the listen+ threshold of {threshold:g}% (largest value "
            f"{max_ratio:g}), so every event would be filtered out"
        )
        raise input_error(f"events file {files[0]!r}, column {_RATIO!r}", problem, fix)
    if not n_implausible:
        return []
    return [
        f"events {spec.events!r}, column {_RATIO!r}: {n_implausible:,} of {n:,} rows are "
        f"above {MAX_PLAYED_RATIO_PCT:g}%; they are kept and count as listen+"
    ]


_ITEM_RULES = (
    _Rule(
        C.TEMPO,
        "isnan(tempo) OR isinf(tempo) OR tempo <= 0",
        "have a tempo that is NaN, infinite, zero or negative",
        "write NULL where the tempo is unknown",
    ),
    _Rule(
        C.EMBEDDING,
        # NaN sorts above every number, so list_max finds it; inf is above any limit
        "isnan(list_max(embedding)) OR "
        "greatest(abs(list_max(embedding)), abs(list_min(embedding))) > $max_abs",
        f"have an embedding value that is NaN, infinite or above {MAX_EMBEDDING_ABS:g} in size",
        "write finite, normalized vectors (NULL where unknown)",
    ),
)


def _check_items(con, spec: SourceSpec) -> list[str]:
    n, n_null, n_dup, n_lengths, files = _one(
        con,
        "SELECT count(*), count(*) FILTER (WHERE item_id IS NULL), count(item_id) - count(DISTINCT "
        f"item_id), count(DISTINCT len(embedding)), string_agg(DISTINCT {SOURCE_FILE}, ', ') "
        "FROM raw_items_source",
    )
    if n == 0:
        where = f"items {spec.items!r}" if spec.items else f"items found beside {spec.events!r}"
        fix = "point SourceSpec.items at the item metadata, or leave it unset"
        raise input_error(where, "the table is empty (0 rows)", fix)
    if n_null:
        rule = _Rule(C.ITEM, "item_id IS NULL", "have no item_id (NULL)", _DROP)
        raise _row_error(con, "raw_items_source", rule, n_null, n)
    if n_dup:
        item, files = _one(
            con,
            f"SELECT item_id, string_agg(DISTINCT {SOURCE_FILE}, ', ') FROM raw_items_source "
            "GROUP BY item_id HAVING count(*) > 1 ORDER BY item_id LIMIT 1",
        )
        problem = f"{n_dup:,} duplicated item rows (e.g. item_id {item!r})"
        raise input_error(
            f"items file {files!r}, column 'item_id'", problem, "keep one row per item"
        )
    if n_lengths > 1:
        lengths = con.execute(
            "SELECT DISTINCT len(embedding) AS d FROM raw_items_source "
            "WHERE d IS NOT NULL ORDER BY d"
        ).fetchall()
        problem = f"vectors have different lengths {[d for (d,) in lengths]}"
        fix = "write one length for every item (NULL where unknown)"
        raise input_error(f"items file {files!r}, column 'embedding'", problem, fix)
    params = {"max_abs": MAX_EMBEDDING_ABS}
    for rule in _ITEM_RULES:
        query = f"SELECT count(*) FILTER (WHERE {rule.condition}) FROM raw_items_source"
        (n_bad,) = _one(con, query, bound_params(query, params))
        if n_bad:
            raise _row_error(con, "raw_items_source", rule, n_bad, n)
    return _unknown_items(con, files)


def _unknown_items(con, files: str) -> list[str]:
    n_unknown, example, n_items = _one(
        con,
        "SELECT count(*) FILTER (WHERE e.item_id IS NULL), min(i.item_id) FILTER (WHERE e.item_id "
        "IS NULL), count(*) FROM raw_items AS i LEFT JOIN (SELECT DISTINCT item_id FROM raw_events)"
        " AS e ON i.item_id = e.item_id",
    )
    if not n_unknown:
        return []
    if n_unknown == n_items:
        sample = _one(con, "SELECT min(item_id) FROM raw_events")[0]
        problem = (
            f"none of its {n_items:,} item ids occurs in the events (items {example!r}, "
            f"events {sample!r}, ...)"
        )
        fix = "point --items at the metadata of these events, or write the same ids in both"
        raise input_error(f"items file {files!r}, column 'item_id'", problem, fix)
    return [
        f"items file {files!r}, column 'item_id': {n_unknown:,} of {n_items:,} items never "
        f"occur in the events (e.g. {example!r}); they are ignored"
    ]


@contextmanager
def _exact_statistics(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Keep DuckDB from folding predicates with Parquet min/max statistics while checking.

    Parquet min/max leave NaN out, and DuckDB 2.0 folds ``isnan(x)`` or ``x > c`` to false when
    the statistics say so, which would hide every NaN from the checks.
    """
    (before,) = _one(con, "SELECT current_setting('disabled_optimizers')")
    disabled = ",".join(filter(None, (before, "statistics_propagation")))
    con.execute("SET disabled_optimizers = $v", {"v": disabled})
    try:
        yield
    finally:
        con.execute("SET disabled_optimizers = $v", {"v": before})


def _row_error(con, view: str, rule: _Rule, n_bad: int, n: int) -> InputError:
    """The error of a failed row rule, naming an offending file and its value."""
    params = {"max_ts": MAX_TIMESTAMP, "max_ratio": MAX_PLAYED_RATIO_PCT}
    params["max_abs"] = MAX_EMBEDDING_ABS
    value = RAW_TIMESTAMP if rule.column == C.TIMESTAMP else rule.column
    # An aggregate FILTER, not WHERE: a WHERE is pushed into the Parquet scan, whose
    # min/max pruning would skip a row group holding only a NaN.
    (row,) = _one(
        con,
        f"SELECT any_value(struct_pack(f := {SOURCE_FILE}, v := CAST({value} AS VARCHAR))) "
        f"FILTER (WHERE {rule.condition}) FROM {view}",
        {k: v for k, v in params.items() if f"${k}" in rule.condition},
    )
    source_file, example = row["f"], row["v"]
    example = "" if example is None else f" (e.g. {example!r})"
    role = "events" if view.startswith("raw_events") else "items"
    where = f"{role} file {source_file!r}, column {rule.column!r}"
    return input_error(where, f"{n_bad:,} of {n:,} rows {rule.problem}{example}", rule.fix)


def _one(con, query: str, params: Mapping | None = None) -> tuple:
    """The single row of ``query`` (fetched to the end, so the connection is free again)."""
    (row,) = con.execute(query, params or {}).fetchall()
    return row
