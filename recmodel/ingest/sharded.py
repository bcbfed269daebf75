"""Session extraction over user shards: the files of ``sql/`` split into per-user work and merges.

Every stage of the extraction is either *per user* (cleaning, sessions, the split labels, the
user threshold, the filter, the dense indices, the outputs' rows: a user's rows depend on that
user's events and on small global tables only) or *global* (the split times, the kept items,
the vocabularies, the summary's distinct counts: aggregates over every user, no larger than the
catalogue or the user list). Users are assigned to ``n`` shards by ``hash(user_id) % n``, the raw
events are written once into a folder per shard (:func:`partition_raw`), and the extraction runs
in four rounds; each round runs the per-user files of :data:`ROUNDS` on every shard, each shard
on its own connection that reads only its folder, then the round's global files once over every
shard's tables:

=====  =========================================  =========================================
round  per shard                                  merge (over all shards)
=====  =========================================  =========================================
1      raw counts, 01 clean events, 02 sessions   03 split times
2      04 split labels (+ counts)                 05 kept items
3      06 kept users, 07 filter (+ counts)        08 item vocabulary, 09 user vocabulary
4      10 final events, 11 summary rows,          the summary, 13 items, 14 users, the
       12 events, 15 test targets                 events and test targets of every shard
=====  =========================================  =========================================

The files are the very ones :func:`recmodel.ingest.extract.extract` runs on one node, unchanged:
a stage reads its tables by name, and here those names are views over Parquet files, the
shard's own or every shard's. Tables a later round or a merge reads are stored as Parquet under
``work/shard-K/`` and ``work/merged/`` (``work`` a local folder or an object store prefix); the
rest are dropped where they were made. A merge reads a column or two of each shard's table
through a streaming aggregate, and the shards' events and test targets are joined by
:func:`merge_by_user`, which holds a batch per shard: no process holds the events of more than
one shard.

The shards' results equal the single-node result row for row (``tests/ingest/test_sharded.py``)
because each per-user stage sees a whole user, and the two global quantities that do not add up
over users are taken again in the merge: the log's end (the cut, computed once before round 1)
and the distinct tracks per stage (``sql/shards/merge_summary.sql``).

:func:`run_shard` and :func:`run_merge` are the units a scheduler runs (a Metaflow ``foreach``
over shards, one per round); :func:`extract_sharded` runs them all in order in this process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recmodel.core.config import ExtractConfig
from recmodel.core.files import filesystem
from recmodel.core.sql import SqlRunner, configure
from recmodel.ingest.extract import (
    OUTPUTS,
    RAW_COUNTS_FILE,
    SUMMARY_FILE,
    WRITE_FILES,
    ExtractResult,
    created_table,
    split_bounds,
    stage_params,
    tables_read,
)
from recmodel.ingest.readers import literal
from recmodel.ingest.summary import build_summary, check_sanity

log = logging.getLogger(__name__)

CUT_FILE = "shards/cut.sql"
PARTITION_FILE = "shards/partition_raw.sql"
RAW_DIR = "raw"  # the raw events by shard, under work
PARTITION_FLUSH_ROWS = 65_536  # per thread and shard: bounds the partitioned write's buffers
MERGE_SUMMARY_FILE = "shards/merge_summary.sql"
BATCH_ROWS = 1 << 16  # rows read from a shard's file at a time by merge_by_user
SUMMARY_ROWS = "summary_rows"  # each shard's rows of stage 11, merged by MERGE_SUMMARY_FILE
# Tables kept for the summary even when no later file reads them: the users that pass the
# threshold (counted) and the split times (read back).
SUMMARY_TABLES = ("kept_users", "split_bounds")
MERGED_DIR = "merged"
USER_KEY = "user_idx"

Connect = Callable[[], duckdb.DuckDBPyConnection]  # a new connection with raw_events, raw_items


@dataclass(frozen=True)
class Round:
    """One round: per-user files run on every shard, then global files over all shards."""

    shard_files: tuple[str, ...]
    merge_files: tuple[str, ...]


ROUNDS = (
    Round(
        (RAW_COUNTS_FILE, "01_clean_events.sql", "counts/clean_events.sql",
         "02_sessionize.sql", "counts/sessions.sql"),
        ("03_split_bounds.sql",),
    ),
    Round(("04_split_{protocol}.sql", "counts/split_events.sql"), ("05_kept_items.sql",)),
    Round(
        ("06_kept_users.sql", "07_filter.sql", "counts/filtered_events.sql"),
        ("08_item_vocab.sql", "09_user_vocab.sql"),
    ),
    Round(
        ("10_final_events.sql", SUMMARY_FILE, WRITE_FILES["events"],
         WRITE_FILES["test_targets"]),
        (MERGE_SUMMARY_FILE, WRITE_FILES["items"], WRITE_FILES["users"]),
    ),
)  # fmt: skip
# Written per shard in the last round, each sorted by user_idx first; merge_by_user joins them.
SHARD_OUTPUTS = ("events", "test_targets")


def location(base: str | Path, *parts: str) -> str:
    """``base/part/...``: a local path or an object store URI (DuckDB and pyarrow read both)."""
    return "/".join([str(base).rstrip("/"), *parts])


def shard_dir(work: str | Path, shard: int) -> str:
    return location(work, f"shard-{shard:04d}")


def table_path(directory: str, table: str) -> str:
    return location(directory, f"{table}.parquet")


def _is_local(path: str) -> bool:
    return "://" not in path


def files_of(files: tuple[str, ...], protocol: str) -> list[str]:
    return [name.format(protocol=protocol) for name in files]


def stored_tables(protocol: str) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """Per round, the tables its shards and its merge store; the rest live and die in place.

    A table is stored when a file that runs after it (a later merge or round) reads it, or the
    summary does (:data:`SUMMARY_TABLES`).
    """
    parts = [files_of(p, protocol) for r in ROUNDS for p in (r.shard_files, r.merge_files)]
    stored = []
    for index, files in enumerate(parts):
        made = {created_table(name) for name in files} - {None}
        read_after = set().union(*(tables_read(n) for later in parts[index + 1 :] for n in later))
        stored.append(sorted(made & (read_after | set(SUMMARY_TABLES))))
    return dict(enumerate(stored[0::2])), dict(enumerate(stored[1::2]))


def global_cut(connect: Connect, cfg: ExtractConfig, records: list[dict]) -> int | None:
    """The cut every shard binds: the configured one, else the end of the whole log.

    Stage 01 takes the log's end from ``raw_events`` when no cut is set; a shard sees only its
    own users' events, so the end is taken once over all of them and bound as ``cut_epoch``.
    """
    params = stage_params(cfg, {})
    if params["cut_epoch"] is not None:
        return params["cut_epoch"]
    con = connect()
    try:
        ((cut,),) = SqlRunner(con, records).run(CUT_FILE)
    finally:
        con.close()
    return None if cut is None else int(cut)


def partition_raw(
    connect: Connect, cfg: ExtractConfig, work: str | Path, n_shards: int, records: list[dict]
) -> None:
    """Write the raw events once, a folder per user shard, for the shards to read their own.

    One streaming pass over the log (DuckDB's partitioned write spills like any other), so
    that no shard task scans the whole log. One shard reads the log itself: nothing to write.
    """
    if n_shards == 1:
        return
    raw_dir = location(work, RAW_DIR)
    if _is_local(raw_dir):
        Path(raw_dir).mkdir(parents=True, exist_ok=True)
    con = connect()
    try:
        _configure(con, cfg, None)
        # Rows a thread buffers per shard before it writes them (DuckDB's default: 524,288).
        con.execute(f"SET partitioned_write_flush_threshold = {PARTITION_FLUSH_ROWS}")
        SqlRunner(con, records).run(PARTITION_FILE, {"n_shards": n_shards, "raw_dir": raw_dir})
    finally:
        con.close()


def _shard_events(con, work: str | Path, shard: int, n_shards: int) -> None:
    """Narrow ``raw_events`` to the shard's own folder of partitioned raw events."""
    if n_shards == 1:  # the whole log is the one shard's
        return
    folder = location(work, RAW_DIR, f"shard={shard}")
    con.execute("ALTER VIEW raw_events RENAME TO raw_events_unsharded")
    fs, path = filesystem(folder)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:  # a shard without users
        con.execute("CREATE VIEW raw_events AS SELECT * FROM raw_events_unsharded WHERE false")
        return
    files = literal(location(folder, "*.parquet"))
    con.execute(
        f"CREATE VIEW raw_events AS SELECT * FROM read_parquet({files}, hive_partitioning = false)"
    )


def _params(cfg: ExtractConfig, paths: dict[str, Any], cut: int | None) -> dict[str, Any]:
    return {**stage_params(cfg, paths), "cut_epoch": cut}


def _view(con, name: str, files: list[str]) -> None:
    """``name`` as a view over Parquet ``files`` (DDL takes no parameters: quoted literals)."""
    listed = ", ".join(literal(path) for path in files)
    con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet([{listed}])")


def _store(con, table: str, directory: str) -> None:
    if _is_local(directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
    con.execute(f"COPY {table} TO {literal(table_path(directory, table))} (FORMAT parquet)")
    con.execute(f"DROP TABLE {table}")


def tables_before(protocol: str, round_index: int) -> tuple[list[str], list[str]]:
    """The tables each shard and the merges have stored by the start of a round."""
    shards, merges = stored_tables(protocol)
    return (
        [t for r in range(round_index) for t in shards[r]],
        [t for r in range(round_index) for t in merges[r]],
    )


def _merged_views(con, work: str, names: list[str]) -> None:
    for name in names:
        _view(con, name, [table_path(location(work, MERGED_DIR), name)])


def _configure(con, cfg: ExtractConfig, spill_dir: Path | None) -> dict[str, Any]:
    return configure(con, cfg.memory_limit, cfg.threads, spill_dir)


def run_shard(
    connect: Connect,
    cfg: ExtractConfig,
    work: str | Path,
    round_index: int,
    shard: int,
    n_shards: int,
    cut: int | None,
    spill_dir: Path | None = None,
) -> list[dict]:
    """Run one round's per-user files on one shard; store what later files read.

    The connection's ``raw_events`` is the shard's folder of :func:`partition_raw`; the shard's
    tables from earlier rounds and the merged tables are views over their Parquet files.

    Returns:
        The records of the files run, each with its ``shard``.
    """
    round_ = ROUNDS[round_index]
    own = shard_dir(work, shard)
    stored, _ = stored_tables(cfg.protocol)
    own_tables, merged_tables = tables_before(cfg.protocol, round_index)
    con = connect()
    records: list[dict] = []
    try:
        _configure(con, cfg, spill_dir)
        _shard_events(con, work, shard, n_shards)
        _merged_views(con, work, merged_tables)
        for table in own_tables:
            _view(con, table, [table_path(own, table)])
        paths = {name: table_path(own, name) for name in SHARD_OUTPUTS}
        params = _params(cfg, paths, cut)
        runner = SqlRunner(con, records)
        for name in files_of(round_.shard_files, cfg.protocol):
            if name == SUMMARY_FILE:
                rows = runner.run(name, params, fetch="arrow")
                con.register("summary_arrow", rows)
                con.execute(f"CREATE TEMP TABLE {SUMMARY_ROWS} AS SELECT * FROM summary_arrow")
                _store(con, SUMMARY_ROWS, own)
            else:
                runner.run(name, params)
        for table in stored[round_index]:
            _store(con, table, own)
    finally:
        con.close()
    return [{**record, "shard": shard} for record in records]


def run_merge(
    connect: Connect,
    cfg: ExtractConfig,
    work: str | Path,
    round_index: int,
    n_shards: int,
    cut: int | None,
    out_dir: Path | None = None,
    spill_dir: Path | None = None,
) -> tuple[list[dict], dict[str, Any] | None]:
    """Run one round's global files over every shard's tables; store what later files read.

    The last round builds the summary, checks it (an :class:`~recmodel.core.errors.InputError`
    leaves no output behind) and writes the Dataset's tables to ``out_dir``.

    Returns:
        ``(records, summary)``; the summary only from the last round.
    """
    round_ = ROUNDS[round_index]
    last = round_index == len(ROUNDS) - 1
    _, stored = stored_tables(cfg.protocol)
    shard_tables = tables_before(cfg.protocol, round_index + 1)[0]
    merged_tables = tables_before(cfg.protocol, round_index)[1]
    if last:
        shard_tables += [*SHARD_OUTPUTS, SUMMARY_ROWS]
    shards = [shard_dir(work, k) for k in range(n_shards)]
    paths = {name: Path(out_dir or ".") / f"{name}.parquet" for name in OUTPUTS}
    if last:
        Path(out_dir or ".").mkdir(parents=True, exist_ok=True)
        for path in paths.values():  # a stale output must not outlive a failed run
            path.unlink(missing_ok=True)
    params = _params(cfg, paths, cut)
    con = connect()
    records: list[dict] = []
    summary = None
    try:
        settings = _configure(con, cfg, spill_dir)
        _merged_views(con, work, merged_tables)
        for table in shard_tables:
            _view(con, table, [table_path(s, table) for s in shards])
        runner = SqlRunner(con, records)
        for name in files_of(round_.merge_files, cfg.protocol):
            if name == MERGE_SUMMARY_FILE:  # checked before any output is written
                con.register("merged_rows", runner.run(name, params, fetch="arrow"))
                summary = _summary(con, cfg, settings, n_shards)
            else:
                runner.run(name, params)
        for table in stored[round_index]:
            _store(con, table, location(work, MERGED_DIR))
    finally:
        con.close()
    if last:
        for name in SHARD_OUTPUTS:
            merge_by_user([table_path(s, name) for s in shards], paths[name])
    return [{**record, "shard": None} for record in records], summary


def merge_by_user(files: list[str], out: Path, batch_rows: int = BATCH_ROWS) -> int:
    """Join shard files sorted by ``user_idx`` into one file in ``user_idx`` order.

    Each user's rows lie in one file, in the order they must keep. The files are read a batch at
    a time; the users below the smallest last user buffered by a file not yet read to its end
    are complete, so their rows (a prefix of each buffer) are taken and stably sorted by
    ``user_idx``. Memory holds about a batch per file, whatever the log's size;
    ``tests/ingest/test_sharded.py`` checks the result against a full sort.

    Returns:
        The rows written.
    """
    opened = [pq.ParquetFile(path, filesystem=fs) for fs, path in map(filesystem, map(str, files))]
    readers = [f.iter_batches(batch_size=batch_rows) for f in opened]
    schema = opened[0].schema_arrow
    buffers = [schema.empty_table() for _ in files]
    done = [False] * len(files)

    def pull(k: int) -> None:
        batch = next(readers[k], None)
        if batch is None:
            done[k] = True
        else:
            buffers[k] = pa.concat_tables([buffers[k], pa.Table.from_batches([batch], schema)])

    written = 0
    with pq.ParquetWriter(out, schema) as writer:
        while True:
            for k in range(len(files)):
                if not done[k] and buffers[k].num_rows == 0:
                    pull(k)
            pending = [k for k in range(len(files)) if not done[k]]
            if not pending and not any(b.num_rows for b in buffers):
                break
            lasts = {k: buffers[k][USER_KEY][-1].as_py() for k in pending}
            bound = min(lasts.values()) if pending else None
            parts = []
            for k, buffer in enumerate(buffers):
                cut = buffer.num_rows if bound is None else _first_at(buffer, bound)
                parts.append(buffer.slice(0, cut))
                buffers[k] = buffer.slice(cut)
            chunk = pa.concat_tables(parts)
            if chunk.num_rows:
                order = pc.sort_indices(chunk, sort_keys=[(USER_KEY, "ascending")])  # stable
                writer.write_table(chunk.take(order))
                written += chunk.num_rows
            else:  # the files at the bound hold that one user only so far: read on
                for k in pending:
                    if lasts[k] == bound:
                        pull(k)
    return written


def _first_at(table: pa.Table, user: int) -> int:
    """The first row of ``table`` (sorted by user) whose user is ``user`` or later."""
    return int(np.searchsorted(table[USER_KEY].to_numpy(), user, side="left"))


def _summary(con, cfg: ExtractConfig, settings: dict, n_shards: int) -> dict:
    rows = con.execute("SELECT * FROM merged_rows").fetchall()
    kept = {
        "items": con.execute("SELECT count(*) FROM kept_items").fetchall()[0][0],
        "users": con.execute("SELECT count(*) FROM kept_users").fetchall()[0][0],
    }
    summary = build_summary(rows, split_bounds(con), kept, cfg, settings)
    check_sanity(summary, cfg)
    return {**summary, "shards": n_shards}


def remove_tables(work: str | Path) -> None:
    """Delete the shards' and merges' tables under ``work`` (a local folder or a URI)."""
    fs, path = filesystem(str(work))
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def extract_sharded(
    connect: Connect,
    cfg: ExtractConfig,
    out_dir: Path,
    n_shards: int,
    work: Path,
    spill_dir: Path | None = None,
) -> ExtractResult:
    """:func:`~recmodel.ingest.extract.extract`'s result, computed over ``n_shards`` shards.

    Args:
        connect: opens a new connection with the ``raw_events`` and ``raw_items`` views.
        cfg: extraction settings.
        out_dir: where the Dataset's four Parquet tables go.
        n_shards: user shards (1 runs the same rounds on one shard).
        work: a local directory for the shards' and merges' tables.
        spill_dir: DuckDB's temporary directory; None keeps each connection's.
    """
    if n_shards < 1:
        raise ValueError(f"n_shards must be at least 1, got {n_shards}")
    out_dir, work = Path(out_dir), Path(work)
    for name in OUTPUTS:  # a stale output must not outlive a failed run
        (out_dir / f"{name}.parquet").unlink(missing_ok=True)
    remove_tables(work)  # an earlier run's
    records: list[dict] = []
    cut = global_cut(connect, cfg, records)
    partition_raw(connect, cfg, work, n_shards, records)
    summary = None
    for index in range(len(ROUNDS)):
        for shard in range(n_shards):
            records += run_shard(connect, cfg, work, index, shard, n_shards, cut, spill_dir)
        merged, summary = run_merge(connect, cfg, work, index, n_shards, cut, out_dir, spill_dir)
        records += merged
    assert summary is not None
    paths = {name: out_dir / f"{name}.parquet" for name in OUTPUTS}
    log.info(
        "extracted %d events of %d users and %d items over %d shards",
        summary["n_events"],
        summary["n_users"],
        summary["n_items"],
        n_shards,
    )
    return ExtractResult(paths=paths, queries=records, summary=summary)
