"""The input layouts beyond the canonical table: each adapter maps its files onto queries with the
canonical column names (:mod:`recmodel.ingest.sources` turns those into the ``raw_events`` and
``raw_items`` views and checks them).

Each adapter returns ``(events, items or None)`` as :class:`recmodel.ingest.readers.Table` queries.
"""

from __future__ import annotations

from pathlib import Path

from recmodel.core.columns import Columns as C
from recmodel.core.errors import input_error
from recmodel.ingest.checks import require_columns, type_family
from recmodel.ingest.readers import (
    SOURCE_FILE,
    SourceSpec,
    Table,
    describe,
    file_table,
    literal,
    names_sql,
    quote,
    reader_sql,
    resolve_files,
)


def _canonical(con, spec: SourceSpec) -> tuple[Table, Table | None]:
    events = file_table(spec.events, "events", union_by_name=True)
    items = file_table(spec.items, "items", union_by_name=True) if spec.items else None
    return events, items


_YAMBDA_EVENTS = ("listens.parquet", "multi_event.parquet")
_YAMBDA_ITEMS = {  # column -> files it may come from, the official name first
    C.ARTIST: ("artist_item_mapping.parquet", "artist_mapping.parquet"),
    C.ALBUM: ("album_item_mapping.parquet", "album_mapping.parquet"),
    C.EMBEDDING: ("embeddings.parquet",),
}


def _yambda(con, spec: SourceSpec) -> tuple[Table, Table | None]:
    path = _yambda_events_file(spec.events)
    where, reader = f"events file {path!r}", reader_sql([path], "parquet")
    found = describe(con, f"SELECT * FROM {reader}", where)
    columns = {C.USER if c == "uid" else c: t for c, t in found.items()}
    require_columns(columns, C.REQUIRED_EVENTS, where)
    wanted = [c for c in (*C.REQUIRED_EVENTS, *C.OPTIONAL_EVENTS, "event_type") if c in columns]
    # The sequential layout holds one row of parallel lists per user: UNNEST zips them back.
    unnest = {c: "UNNEST" if type_family(columns[c]) == "list" else "" for c in wanted}
    inner = ", ".join(
        f"{unnest[c]}({quote('uid' if c == C.USER else c)}) AS {quote(c)}" for c in wanted
    )
    keep = names_sql([c for c in wanted if c != "event_type"])
    listens = " WHERE event_type = 'listen'" if "event_type" in columns else ""
    query = f"SELECT {keep}, {SOURCE_FILE} FROM (SELECT {inner}, {SOURCE_FILE} FROM {reader})"
    return Table(query + listens, where, (path,), "parquet"), _yambda_items(con, spec, path)


def _yambda_events_file(events: str) -> str:
    if "://" in events:
        return events if events.endswith(".parquet") else f"{events.rstrip('/')}/listens.parquet"
    resolve_files(events, "events")  # the usual message for a missing path
    if Path(events).is_file():
        return events
    for name in _YAMBDA_EVENTS:
        if Path(events, name).is_file():
            return str(Path(events, name))
    problem = f"holds neither {' nor '.join(_YAMBDA_EVENTS)}"
    fix = "point SourceSpec.events at Yambda's flat/<size> or sequential/<size> directory"
    raise input_error(f"events directory {events!r}", problem, fix)


def _yambda_items(con, spec: SourceSpec, events_file: str) -> Table | None:
    if spec.items:
        dirs = [spec.items.rstrip("/")]
    elif "://" not in events_file:
        dirs = [str(p) for p in Path(events_file).parents[:3]]
    else:
        return None
    local = "://" not in dirs[0]
    candidates = {
        c: [f"{d}/{n}" for d in dirs for n in names] for c, names in _YAMBDA_ITEMS.items()
    }
    found = {c: p for c, paths in candidates.items() if (p := _first_file(paths, local))}
    if not found:
        return None
    ids = " UNION ".join(f"SELECT item_id FROM t_{c}" for c in found)
    ctes = ", ".join(_yambda_cte(con, c, p) for c, p in found.items())
    joins = " ".join(f"LEFT JOIN t_{c} USING (item_id)" for c in found)
    files = ", ".join(found.values())
    query = (
        f"WITH {ctes}, ids AS ({ids}) SELECT item_id, {names_sql(list(found))}, "
        f"{literal(files)} AS {SOURCE_FILE} FROM ids {joins}"
    )
    return Table(query, f"items files {files!r}", tuple(found.values()), "parquet")


def _first_file(paths: list[str], local: bool) -> str | None:
    # Remote: assume the official name; a missing file is reported when its schema is read.
    return next((p for p in paths if Path(p).is_file()), None) if local else paths[0]


def _yambda_cte(con, column: str, path: str) -> str:
    where, reader = f"items file {path!r}", reader_sql([path], "parquet")
    found = describe(con, f"SELECT * FROM {reader}", where)
    source = column
    if column == C.EMBEDDING:
        source = "normalized_embed" if "normalized_embed" in found else "embed"
    require_columns(found, (C.ITEM, source), where)
    if column == C.EMBEDDING:  # one row per item already; a duplicate is reported by validation
        return f"t_{column} AS (SELECT item_id, {quote(source)} AS {column} FROM {reader})"
    # A track on several albums (or by several artists) keeps the smallest id.
    return f"t_{column} AS (SELECT item_id, min({column}) AS {column} FROM {reader} GROUP BY 1)"


_LASTFM_FILE = "userid-timestamp-artid-artname-traid-traname.tsv"
_LASTFM_FIELDS = ("user_id", "ts", "artist_mbid", "artist_name", "track_mbid", "track_name")
_LASTFM_KEY = "COALESCE(track_mbid, artist_name || chr(9) || track_name)"


def _lastfm1k(con, spec: SourceSpec) -> tuple[Table, Table | None]:
    events = str(Path(spec.events, _LASTFM_FILE)) if Path(spec.events).is_dir() else spec.events
    files = resolve_files(events, "events", (".tsv",))
    # No quoting: track names hold bare quotes, and a tab never occurs inside a field.
    fields = dict.fromkeys(_LASTFM_FIELDS, "VARCHAR")
    reader = reader_sql(files, "tsv", header=False, quote="", escape="", columns=fields)
    rows = f"FROM {reader} WHERE {_LASTFM_KEY} IS NOT NULL"
    query = f"SELECT user_id, {_LASTFM_KEY} AS item_id, ts AS timestamp, {SOURCE_FILE} {rows}"
    items = (
        f"SELECT {_LASTFM_KEY} AS item_id, min(COALESCE(artist_mbid, artist_name)) AS "
        f"artist_id, min({SOURCE_FILE}) AS {SOURCE_FILE} {rows} GROUP BY 1"
    )
    where = f"file {files[0]!r}" if len(files) == 1 else repr(events)
    return (
        Table(query, f"events {where}", (*files,), "tsv"),
        Table(items, f"items {where}", (*files,), "tsv"),
    )


_ML_RATINGS = {"user_id": "BIGINT", "item_id": "BIGINT", "rating": "DOUBLE", "timestamp": "BIGINT"}
_ML_MOVIES = {"item_id": "BIGINT", "title": "VARCHAR", "genres": "VARCHAR"}


def _movielens(con, spec: SourceSpec) -> tuple[Table, Table | None]:
    path = spec.events
    if Path(path).is_dir():
        inter = sorted(Path(path).glob("*.inter"))
        path = str(inter[0] if len(inter) == 1 else Path(path, "ratings.dat"))
    resolve_files(path, "events")  # the usual message for a missing path
    if path.endswith(".inter"):
        events, _ = _recbole(con, path, "events")
    else:
        reader = reader_sql([path], "csv", delim="::", header=False, columns=_ML_RATINGS)
        query = f"SELECT user_id, item_id, timestamp, {SOURCE_FILE} FROM {reader}"
        events = Table(query, f"events file {path!r}", (path,), "csv")
    beside = (
        Path(path).with_name("movies.dat")
        if path.endswith(".dat")
        else Path(path).with_suffix(".item")
    )
    items = spec.items or str(beside)
    if not spec.items and ("://" in items or not beside.is_file()):
        return events, None
    resolve_files(items, "items")
    if items.endswith(".item"):
        table, names = _recbole(con, items, "items")
        genre = "split_part(genre, ' ', 1)" if "genre" in names else "NULL"  # first of the list
        query = f"SELECT item_id, {genre} AS genre, {SOURCE_FILE} FROM ({table.query})"
        return events, Table(query, table.where, (items,), "tsv")
    # movies.dat of ML-1M is Latin-1; only the ids and the ASCII genres are used.
    reader = reader_sql(
        [items], "csv", delim="::", header=False, quote="", encoding="latin-1", columns=_ML_MOVIES
    )
    query = f"SELECT item_id, split_part(genres, '|', 1) AS genre, {SOURCE_FILE} FROM {reader}"
    return events, Table(query, f"items file {items!r}", (items,), "csv")


def _recbole(con, path: str, role: str) -> tuple[Table, list[str]]:
    """A RecBole atomic file (tab separated, header ``name:type``) and its plain field names."""
    where, reader = f"{role} file {path!r}", reader_sql([path], "tsv", header=True, quote="")
    fields = {c: c.split(":")[0] for c in describe(con, f"SELECT * FROM {reader}", where)}
    fields.pop(SOURCE_FILE)
    select = ", ".join(f"{quote(c)} AS {quote(name)}" for c, name in fields.items())
    table = Table(f"SELECT {select}, {SOURCE_FILE} FROM {reader}", where, (path,), "tsv")
    return table, list(fields.values())


ADAPTERS = {
    "canonical": _canonical,
    "yambda": _yambda,
    "lastfm1k": _lastfm1k,
    "movielens": _movielens,
}
