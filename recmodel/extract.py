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
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recmodel.columns import Window
from recmodel.config import ExtractConfig
from recmodel.validate import InputError

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
OUTPUTS = ("events", "items", "users", "test_targets")
SPILL_DIRNAME = "duckdb_spill"  # under out_dir unless a spill_dir is given
DUCKDB_DEFAULT_TEMP = ".tmp"  # DuckDB's own temp_directory default (relative to the cwd)

# Stages 01-10 each create one temporary table; {protocol} picks the split file.
TABLE_FILES = (
    "01_clean_events.sql", "02_sessionize.sql", "03_split_bounds.sql", "04_split_{protocol}.sql",
    "05_kept_items.sql", "06_kept_users.sql", "07_filter.sql", "08_item_vocab.sql",
    "09_user_vocab.sql", "10_final_events.sql",
)  # fmt: skip
SUMMARY_FILE = "11_summary.sql"
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
# Stage names of the summary SQL, in pipeline order.
FLAT_STAGES = ("raw", "raw_complete", "raw_in_window", "listen", "skip", "sessionized")
WINDOWED_STAGES = ("split", "filtered", "final")
SPLIT_TIMES = ("t_min", "t_max", "t_finetune", "t_val", "t_test")

_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_COMMENT = re.compile(r"--[^\n]*")
_CREATES = re.compile(r"create or replace temp table (\w+)", re.IGNORECASE)
_READS = re.compile(r"\b(?:from|join)\s+(\w+)", re.IGNORECASE)  # tables a statement reads
_COUNTING = ("create", "copy", "insert")  # statements whose result is one row count


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


def bound_params(sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``params`` that ``sql`` references as ``$name`` (comments ignored).

    DuckDB rejects values a statement does not use, so each file gets exactly its own.
    """
    names = sorted(set(_PARAM.findall(_COMMENT.sub("", sql))))
    missing = [name for name in names if name not in params]
    if missing:
        raise KeyError(f"SQL parameter(s) not provided: {', '.join(missing)}")
    return {name: params[name] for name in names}


def run_sql_file(con, name: str, params: dict[str, Any]) -> tuple[dict, list[tuple]]:
    """Execute ``sql/<name>`` with its parameters bound.

    Returns:
        The query record ``{"file", "sql", "params", "rows", "seconds"}`` (``rows`` is the count
        a CREATE/COPY reports, or the number of rows a SELECT returned) and the fetched rows.
    """
    sql = (SQL_DIR / name).read_text()
    bound = bound_params(sql, params)
    start = time.perf_counter()
    result = con.execute(sql, bound).fetchall()
    seconds = time.perf_counter() - start
    first_word = _COMMENT.sub("", sql).split(maxsplit=1)[0].lower()
    rows = int(result[0][0]) if first_word in _COUNTING else len(result)
    log.info("%s: %d rows in %.2fs", name, rows, seconds)
    record = {"file": f"sql/{name}", "sql": sql, "params": bound, "rows": rows, "seconds": seconds}
    return record, result


def configure_duckdb(con, cfg: ExtractConfig, spill_dir: Path | None) -> dict[str, Any]:
    """Bound DuckDB's memory and threads; beyond the limit it spills to disk.

    Args:
        con: The connection; the settings stay on it after extraction.
        cfg: ``memory_limit`` and ``threads``.
        spill_dir: DuckDB's temporary directory, or None to keep the one the connection has.
            DuckDB refuses to switch it once something was spilled there.

    Returns:
        The settings in effect.
    """
    settings: dict[str, Any] = {
        "memory_limit": cfg.memory_limit,
        "threads": cfg.threads,
        # Only ORDER BY results need an order; letting the rest reorder saves memory.
        "preserve_insertion_order": False,
    }
    if spill_dir is not None:
        spill_dir.mkdir(parents=True, exist_ok=True)
        settings["temp_directory"] = str(spill_dir)
    for key, value in settings.items():
        con.execute(f"SET {key} = $value", {"value": value})
    settings["temp_directory"] = _setting(con, "temp_directory")
    return settings


def _setting(con, name: str) -> Any:
    return con.execute("SELECT current_setting($name)", {"name": name}).fetchall()[0][0]


def _spill_dir(con, out_dir: Path, spill_dir: Path | None) -> Path | None:
    """The spill directory to set: the one asked for, else ``out_dir/duckdb_spill`` unless the
    caller already chose one (DuckDB's default is ``.tmp`` under the working directory)."""
    if spill_dir is not None:
        return Path(spill_dir)
    if _setting(con, "temp_directory") == DUCKDB_DEFAULT_TEMP:
        return out_dir / SPILL_DIRNAME
    return None


def stage_params(cfg: ExtractConfig, paths: dict[str, Path]) -> dict[str, Any]:
    """Every value any stage may bind: the config, the window codes and the output paths.

    Each file binds only the names it references (:func:`bound_params`), so the config's
    fields reach the SQL under their own names and a file can never read a stale copy.
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
    """Every SQL file in run order: each table stage followed by its counts, the summary, the
    writes."""
    plan = []
    for name in table_stages(protocol):
        plan.append(name)
        counts = COUNT_FILES.get(created_table(name))
        plan += [counts] if counts else []
    return [*plan, SUMMARY_FILE, *WRITE_FILES.values()]


def created_table(name: str) -> str | None:
    """The temporary table that ``sql/<name>`` creates, if any."""
    found = _CREATES.search(_COMMENT.sub("", (SQL_DIR / name).read_text()))
    return found.group(1) if found else None


def drop_schedule(plan: list[str]) -> dict[str, list[str]]:
    """For each file of ``plan``, the tables it is the last to read (or create), in plan order.

    Tables in :data:`KEEP_TABLES` are left for :func:`drop_tables` at the end.
    """
    created = {created_table(name) for name in plan} - {None}
    last_reader = {}
    for name in plan:
        read = set(_READS.findall(_COMMENT.sub("", (SQL_DIR / name).read_text())))
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
        recmodel.validate.InputError: nothing is left after the listen+ threshold or the
            frequency thresholds, or fewer than ``cfg.min_test_users`` test users remain.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = configure_duckdb(con, cfg, _spill_dir(con, out_dir, spill_dir))
    paths = {name: out_dir / f"{name}.parquet" for name in OUTPUTS}
    for path in paths.values():
        path.unlink(missing_ok=True)  # a stale output must not outlive a failed run
    params = stage_params(cfg, paths)
    plan = extraction_plan(cfg.protocol)
    schedule = drop_schedule(plan)

    def run(name: str) -> tuple[dict, list[tuple]]:
        record, rows = run_sql_file(con, name, params)
        for table in schedule[name]:
            con.execute(f"DROP TABLE {table}")
        return {**record, "dropped": schedule[name]}, rows

    try:
        queries = [run(name)[0] for name in plan[: plan.index(SUMMARY_FILE)]]
        record, rows = run(SUMMARY_FILE)
        queries.append(record)
        rows_of = {query["file"]: query["rows"] for query in queries}
        kept = {
            "items": rows_of["sql/05_kept_items.sql"],
            "users": rows_of["sql/06_kept_users.sql"],
        }
        summary = build_summary(rows, _split_bounds(con), kept, cfg, settings)
        check_sanity(summary, cfg)
        queries += [run(WRITE_FILES[name])[0] for name in OUTPUTS]
    finally:
        drop_tables(con, plan)
    log.info(
        "extracted %d events of %d users and %d items",
        summary["n_events"],
        summary["n_users"],
        summary["n_items"],
    )
    return ExtractResult(paths=paths, queries=queries, summary=summary)


def _split_bounds(con) -> dict[str, int | None]:
    relation = con.table("split_bounds")
    (row,) = relation.fetchall()  # one row by construction
    return dict(zip(relation.columns, row, strict=True))


def _time(epoch: int | None) -> dict[str, Any]:
    iso = None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC).isoformat()
    return {"epoch": epoch, "iso": iso}


def _stage_counts(rows: list[tuple]) -> dict[str, dict]:
    """Summary rows ``(stage, window, events, users, items, sessions)`` -> nested dict.

    Stages and windows without any row (nothing reached them) are reported as zeros.
    """
    found = {
        (stage, window): {
            key: int(value)
            for key, value in zip(("events", "users", "items", "sessions"), values, strict=True)
            if value is not None
        }
        for stage, window, *values in rows
    }
    empty = {"events": 0, "users": 0, "items": 0}
    stages = {stage: found.get((stage, None), dict(empty)) for stage in FLAT_STAGES}
    windows = {None: "all", **Window.NAMES}
    for stage in WINDOWED_STAGES:
        # A window nothing reached has zero of whatever the stage counts.
        counted = [key for key in found.get((stage, None), empty) if key != "sessions"]
        stages[stage] = {
            name: found.get((stage, code), dict.fromkeys(counted, 0))
            for code, name in windows.items()
        }
    return stages


def build_summary(
    rows: list[tuple],
    bounds: dict,
    kept: dict[str, int],
    cfg: ExtractConfig,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The ``data_summary``: counts per stage and window, split times, drops and totals."""
    stages = _stage_counts(rows)
    listen, skip = stages["listen"]["events"], stages["skip"]["events"]
    filtered, final = stages["filtered"], stages["final"]
    names = SPLIT_TIMES if cfg.protocol == "temporal" else ("t_min", "t_max")
    split_times = {name: _time(bounds[name]) for name in names}
    if cfg.protocol == "temporal":
        split_times["gap_seconds"] = bounds["gap_seconds"]
    return {
        "protocol": cfg.protocol,
        "split_times": split_times,
        "stages": stages,
        "dropped": {
            "missing_ids_or_timestamp": stages["raw"]["events"] - stages["raw_complete"]["events"],
            "outside_rolling_window": stages["raw_complete"]["events"]
            - stages["raw_in_window"]["events"],
            "duplicates": stages["raw_in_window"]["events"] - listen - skip,
            "skips": skip,
            "consecutive_repeats": listen - stages["sessionized"]["events"],
            "leakage_gap": stages["sessionized"]["events"] - stages["split"]["all"]["events"],
            "frequency_thresholds": stages["split"]["all"]["events"] - filtered["all"]["events"],
            "test_out_of_vocabulary": filtered["test"]["events"] - final["test"]["events"],
        },
        "kept": {"items_min_item_events": kept["items"], "users_min_user_events": kept["users"]},
        "n_events": final["all"]["events"],
        "n_users": final["all"]["users"],
        "n_items": final["all"]["items"],
        "n_sessions": final["all"].get("sessions", 0),
        "n_test_users": final["test"]["users"],
        "duckdb_settings": settings,
    }


def check_sanity(summary: dict[str, Any], cfg: ExtractConfig) -> None:
    """Raise InputError when the thresholds left nothing usable, naming the counts."""
    stages = summary["stages"]
    listen, skip = stages["listen"]["events"], stages["skip"]["events"]
    if listen == 0:
        raise InputError(
            f"no listen+ events: 0 of {listen + skip} clean events (of "
            f"{stages['raw']['events']} raw rows) have played_ratio_pct >= "
            f"listen_threshold_pct={cfg.listen_threshold_pct}"
        )
    split = stages["split"]["all"]
    if summary["n_events"] == 0:
        raise InputError(
            f"every event was filtered out by the thresholds: "
            f"{summary['kept']['items_min_item_events']} of {split['items']} items have "
            f">= min_item_events={cfg.min_item_events} pre-test listen+ events and "
            f"{summary['kept']['users_min_user_events']} of {split['users']} users have "
            f">= min_user_events={cfg.min_user_events} on those items"
        )
    if summary["n_test_users"] < cfg.min_test_users:
        test = stages["split"]["test"]
        raise InputError(
            f"only {summary['n_test_users']} test users remain (listen+ events in the test "
            f"window and history before it), fewer than min_test_users={cfg.min_test_users}; "
            f"before filtering the test window had {test['events']} events of "
            f"{test['users']} users ({cfg.protocol} split)"
        )
