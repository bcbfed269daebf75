"""DuckDB in one place: the connection every step opens and the runner of the files in ``sql/``.

:func:`connect` opens a connection bounded in memory and threads; beyond its memory limit DuckDB
spills to a temporary directory. :class:`SqlRunner` executes one file of ``sql/`` at a time with
its ``$named`` parameters bound (each file gets exactly the names it references, never values
formatted into the text) and keeps a record of every run: file, text, parameters, rows and
seconds. The flow publishes those records as the ``sql_queries`` artifact, so every statement
that produced a table of a run, the ranker's included, can be read back with its values.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import duckdb

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
DUCKDB_DEFAULT_TEMP = ".tmp"  # DuckDB's own temp_directory default (relative to the cwd)
FETCH_MODES = ("rows", "numpy", "arrow")

_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_COMMENT = re.compile(r"--[^\n]*")
_COUNTING = ("create", "copy", "insert")  # statements whose result is one row count


def connect(
    memory_limit: str = "4GB", threads: int = 2, spill_dir: Path | str | None = None
) -> duckdb.DuckDBPyConnection:
    """A new in-memory connection with :func:`configure`'s settings."""
    con = duckdb.connect()
    configure(con, memory_limit, threads, None if spill_dir is None else Path(spill_dir))
    return con


def configure(
    con: duckdb.DuckDBPyConnection, memory_limit: str, threads: int, spill_dir: Path | None
) -> dict[str, Any]:
    """Bound DuckDB's memory and threads; beyond the limit it spills to disk.

    Args:
        con: the connection; the settings stay on it.
        memory_limit: DuckDB's ``memory_limit`` (``"4GB"``).
        threads: DuckDB's worker threads.
        spill_dir: DuckDB's temporary directory, or None to keep the one the connection has.
            DuckDB refuses to switch it once something was spilled there.

    Returns:
        The settings in effect (``temp_directory`` as DuckDB reports it).
    """
    settings: dict[str, Any] = {
        "memory_limit": memory_limit,
        "threads": threads,
        # Only ORDER BY results need an order; letting the rest reorder saves memory.
        "preserve_insertion_order": False,
    }
    if spill_dir is not None:
        spill_dir.mkdir(parents=True, exist_ok=True)
        settings["temp_directory"] = str(spill_dir)
    for key, value in settings.items():
        con.execute(f"SET {key} = $value", {"value": value})
    settings["temp_directory"] = setting(con, "temp_directory")
    return settings


def setting(con: duckdb.DuckDBPyConnection, name: str) -> Any:
    """The current value of DuckDB setting ``name``."""
    return con.execute("SELECT current_setting($name)", {"name": name}).fetchall()[0][0]


def sql_text(name: str) -> str:
    """The text of ``sql/<name>`` without its comments."""
    return _COMMENT.sub("", (SQL_DIR / name).read_text())


def bound_params(sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``params`` that ``sql`` references as ``$name`` (comments ignored).

    DuckDB rejects values a statement does not use, so each file gets exactly its own.

    Raises:
        KeyError: the text references a name that ``params`` lacks.
    """
    names = sorted(set(_PARAM.findall(_COMMENT.sub("", sql))))
    missing = [name for name in names if name not in params]
    if missing:
        raise KeyError(f"SQL parameter(s) not provided: {', '.join(missing)}")
    return {name: params[name] for name in names}


class SqlRunner:
    """Runs files of ``sql/`` on one connection and records each run.

    Args:
        con: the connection, with every table or view the files read already registered.
        records: the list the records are appended to (a new one by default); pass the same
            list to several runners to gather one ``sql_queries`` artifact.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, records: list[dict] | None = None):
        self.con = con
        self.records = [] if records is None else records

    def run(self, name: str, params: dict[str, Any] | None = None, fetch: str = "rows") -> Any:
        """Execute ``sql/<name>`` with its parameters bound, and record it.

        Args:
            name: path under ``sql/``, e.g. ``"ranker/01_candidate_features.sql"``.
            params: values the file may reference; it is bound to the ones it does.
            fetch: ``"rows"`` (a list of tuples), ``"numpy"`` (a dict of column arrays) or
                ``"arrow"`` (a ``pyarrow.Table``).

        Returns:
            The result in the ``fetch`` form. The record's ``rows`` is the count that a
            CREATE/COPY/INSERT reports, else the number of rows returned.
        """
        if fetch not in FETCH_MODES:
            raise ValueError(f"fetch must be one of {FETCH_MODES}, got {fetch!r}")
        sql = (SQL_DIR / name).read_text()
        bound = bound_params(sql, params or {})
        start = time.perf_counter()
        result = self._execute(sql, bound, fetch)
        seconds = time.perf_counter() - start
        rows = _row_count(sql, result, fetch)
        log.info("%s: %d rows in %.2fs", name, rows, seconds)
        self.records.append(
            {"file": f"sql/{name}", "sql": sql, "params": bound, "rows": rows, "seconds": seconds}
        )
        return result

    @property
    def last(self) -> dict[str, Any]:
        """The record of the latest run."""
        return self.records[-1]

    def _execute(self, sql: str, params: dict[str, Any], fetch: str) -> Any:
        if fetch == "arrow":
            # A relation hands its rows to Arrow without the extra copy a DB-API result makes.
            relation = self.con.sql(sql, params=params)
            # ``to_arrow_table`` in DuckDB >= 1.4, ``arrow`` before.
            return (getattr(relation, "to_arrow_table", None) or relation.arrow)()
        relation = self.con.execute(sql, params)
        if fetch == "numpy":
            return relation.fetchnumpy()
        return relation.fetchall()


def _row_count(sql: str, result: Any, fetch: str) -> int:
    if fetch == "numpy":
        return len(next(iter(result.values()))) if result else 0
    if fetch == "arrow":
        return result.num_rows
    first_word = _COMMENT.sub("", sql).split(maxsplit=1)[0].lower()
    return int(result[0][0]) if first_word in _COUNTING else len(result)
