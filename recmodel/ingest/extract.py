"""Session extraction: DuckDB SQL stages from raw events to the Parquet tables of a Dataset.

The logic lives in ``sql/``, one statement per numbered file; this module binds the parameters,
runs the files in order on a connection where ``raw_events`` and ``raw_items`` are registered
views, records what ran, checks the result and writes the outputs. Stages 01-10 build temporary
tables, stage 11 counts them, and the Parquet outputs (stages 12-15) are only written once the
counts pass the sanity checks, so a failed extraction leaves no outputs behind.

Every table is dropped as soon as the last file that reads it has run. The summary's counts of
the large intermediate tables are taken right after their stage (``sql/counts/``), so at most
two event-sized tables are alive at once: under a memory limit below the data size, DuckDB
spills less and the summary reads small tables.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recmodel.core.columns import Window
from recmodel.core.config import ExtractConfig
from recmodel.core.sql import DUCKDB_DEFAULT_TEMP, SqlRunner, configure, setting, sql_text
from recmodel.ingest.summary import build_summary, check_sanity

log = logging.getLogger(__name__)

OUTPUTS = ("events", "items", "users", "test_targets")
SPILL_DIRNAME = "duckdb_spill"  # under out_dir unless a spill_dir is given

# Stages 01-10 each create one temporary table; {protocol} picks the split file.
TABLE_FILES = (
    "01_clean_events.sql", "02_sessionize.sql", "03_split_bounds.sql", "04_split_{protocol}.sql",
    "05_kept_items.sql", "06_kept_users.sql", "07_filter.sql", "08_item_vocab.sql",
    "09_user_vocab.sql", "10_final_events.sql",
)  # fmt: skip
SUMMARY_FILE = "11_summary.sql"
RAW_COUNTS_FILE = "counts/raw_events.sql"  # the summary's counts of the raw rows, run first
# The summary's counts of a stage's table, run right after the stage that builds it.
COUNT_FILES = {
    table: f"counts/{table}.sql"
    for table in ("clean_events", "sessions", "split_events", "filtered_events")
}
KEEP_TABLES = ("split_bounds",)  # read from Python after the summary, dropped at the end
WRITE_FILES = dict(zip(OUTPUTS, (
    "12_write_events.sql", "13_write_items.sql", "14_write_users.sql",
    "15_write_test_targets.sql",
), strict=True))  # fmt: skip
# Window codes are bound like any other value, so the SQL never repeats a magic number.
WINDOW_PARAMS = {
    "window_pretrain": Window.PRETRAIN,
    "window_finetune": Window.FINETUNE,
    "window_val": Window.VAL,
    "window_test": Window.TEST,
}

_CREATES = re.compile(r"create or replace temp table (\w+)", re.IGNORECASE)
_READS = re.compile(r"\b(?:from|join)\s+(\w+)", re.IGNORECASE)  # tables a statement reads


@dataclass(frozen=True)
class ExtractResult:
    """What :func:`extract` produced.

    Attributes:
        paths: ``events``, ``items``, ``users``, ``test_targets`` -> Parquet files in out_dir.
        queries: per executed SQL file ``{"file", "sql", "params", "rows", "seconds",
            "dropped"}`` (``dropped``: the tables dropped after it, their last reader).
        summary: counts per stage and per split window, split times, dropped counts.
    """

    paths: dict[str, Path]
    queries: list[dict]
    summary: dict


def _spill_dir(con, out_dir: Path, spill_dir: Path | None) -> Path | None:
    """The spill directory to set: the one asked for, else ``out_dir/duckdb_spill`` unless the
    caller already chose one (DuckDB's default is ``.tmp`` under the working directory)."""
    if spill_dir is not None:
        return Path(spill_dir)
    if setting(con, "temp_directory") == DUCKDB_DEFAULT_TEMP:
        return out_dir / SPILL_DIRNAME
    return None


def stage_params(cfg: ExtractConfig, paths: dict[str, Path]) -> dict[str, Any]:
    """Every value any stage may bind: the config, the window codes and the output paths.

    Each file binds only the names it references (:func:`recmodel.core.sql.bound_params`), so
    the config's fields reach the SQL under their own names and a file never reads a stale copy.
    """
    return {
        **dataclasses.asdict(cfg),
        "cut_epoch": cut_epoch(cfg.cut_time),
        "history_seconds": cfg.history_days * 86_400.0,
        **WINDOW_PARAMS,
        **{f"{name}_path": str(path) for name, path in paths.items()},
    }


def cut_epoch(cut_time: str) -> int | None:
    """Unix seconds of an ISO cut time (UTC when it has no offset), None for the log's end."""
    if not cut_time:
        return None
    when = datetime.fromisoformat(cut_time)
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())


def table_stages(protocol: str) -> list[str]:
    """The SQL files that build the intermediate tables, in order."""
    return [name.format(protocol=protocol) for name in TABLE_FILES]


def extraction_plan(protocol: str) -> list[str]:
    """Every SQL file in run order: the raw rows' counts, each table stage followed by its
    counts, the summary, the writes."""
    plan = [RAW_COUNTS_FILE]
    for name in table_stages(protocol):
        plan.append(name)
        counts = COUNT_FILES.get(created_table(name))
        plan += [counts] if counts else []
    return [*plan, SUMMARY_FILE, *WRITE_FILES.values()]


def created_table(name: str) -> str | None:
    """The temporary table that ``sql/<name>`` creates, if any."""
    found = _CREATES.search(sql_text(name))
    return found.group(1) if found else None


def tables_read(name: str) -> set[str]:
    """The tables and views ``sql/<name>`` reads."""
    return set(_READS.findall(sql_text(name)))


def drop_schedule(plan: list[str]) -> dict[str, list[str]]:
    """For each file of ``plan``, the tables it is the last to read (or create), in plan order.

    Tables in :data:`KEEP_TABLES` are left for :func:`drop_tables` at the end.
    """
    created = {created_table(name) for name in plan} - {None}
    last_reader = {}
    for name in plan:
        read = tables_read(name)
        for table in sorted(created & (read | {created_table(name)})):
            last_reader[table] = name
    schedule: dict[str, list[str]] = {name: [] for name in plan}
    for table, name in last_reader.items():
        if table not in KEEP_TABLES:
            schedule[name].append(table)
    return schedule


def drop_tables(con, plan: list[str]) -> None:
    """Drop every temporary table the files of ``plan`` create, freeing what they hold."""
    for name in plan:
        table = created_table(name)
        if table:
            con.execute(f"DROP TABLE IF EXISTS {table}")


def extract(
    con, cfg: ExtractConfig, out_dir: Path, *, spill_dir: Path | None = None
) -> ExtractResult:
    """Clean, sessionize, split and filter ``raw_events``; write the Dataset tables.

    Args:
        con: DuckDB connection with the views ``raw_events`` and ``raw_items``.
        cfg: Extraction settings.
        out_dir: Where ``events``, ``items``, ``users`` and ``test_targets`` Parquet files go.
        spill_dir: DuckDB's temporary directory. By default the connection keeps the one its
            owner set, and gets ``out_dir / "duckdb_spill"`` if it still has DuckDB's default.

    Raises:
        recmodel.ingest.checks.InputError: nothing is left after the listen+ threshold or the
            frequency thresholds, or a window after pretrain holds fewer than
            ``cfg.min_window_users`` requests (:func:`recmodel.ingest.summary.check_windows`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = configure(con, cfg.memory_limit, cfg.threads, _spill_dir(con, out_dir, spill_dir))
    paths = {name: out_dir / f"{name}.parquet" for name in OUTPUTS}
    for path in paths.values():
        path.unlink(missing_ok=True)  # a stale output must not outlive a failed run
    params = stage_params(cfg, paths)
    plan = extraction_plan(cfg.protocol)
    schedule = drop_schedule(plan)
    runner = SqlRunner(con)

    def run(name: str) -> list[tuple]:
        rows = runner.run(name, params)
        for table in schedule[name]:
            con.execute(f"DROP TABLE {table}")
        runner.last["dropped"] = schedule[name]
        return rows

    try:
        for name in plan[: plan.index(SUMMARY_FILE)]:
            run(name)
        rows = run(SUMMARY_FILE)
        rows_of = {query["file"]: query["rows"] for query in runner.records}
        kept = {
            "items": rows_of["sql/05_kept_items.sql"],
            "users": rows_of["sql/06_kept_users.sql"],
        }
        summary = build_summary(rows, split_bounds(con), kept, cfg, settings)
        check_sanity(summary, cfg)
        for name in OUTPUTS:
            run(WRITE_FILES[name])
    finally:
        drop_tables(con, plan)
    log.info(
        "extracted %d events of %d users and %d items",
        summary["n_events"],
        summary["n_users"],
        summary["n_items"],
    )
    return ExtractResult(paths=paths, queries=runner.records, summary=summary)


def split_bounds(con) -> dict[str, int | None]:
    """The one row of the ``split_bounds`` table (stage 03) as a dict."""
    relation = con.table("split_bounds")
    (row,) = relation.fetchall()  # one row by construction
    return dict(zip(relation.columns, row, strict=True))
