"""What every step of the flow shares: its tables' place in the datastore and the typed config.

Nothing here imports torch: the data steps use it too.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from recmodel.core.config import ConfigError, PipelineConfig
from recmodel.core.errors import InputError
from recmodel.core.files import read_json, write_checkpoint, write_json, write_object
from recmodel.core.presets import from_dict
from recmodel.core.sql import connect
from recmodel.core.tables import publish, run_table_root, write_table

log = logging.getLogger(__name__)

# Metaflow's METAFLOW_EXIT_DISALLOW_RETRY: a task that exits with it is not retried.
NO_RETRY_EXIT = 202
F = TypeVar("F", bound=Callable[..., Any])


def stops_on_bad_input(func: F) -> F:
    """Bad input or settings end a flow step at once: logged whole, and never retried.

    Both are deterministic, so ``@retry`` would only fail the same way again (an extraction
    retried three times on an InputError). Inside a running flow the error is logged through
    ``logging`` (Metaflow echoes task logs as they are, while its own exception printer drops
    every ``*``, which globs in the messages need) and the task exits with Metaflow's
    no-retry status. Outside a flow the error is raised as it is.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (InputError, ConfigError) as exc:
            from metaflow import current

            if not current.is_running_flow:
                raise
            log.error("%s: %s", type(exc).__name__, exc)
            log.error("this is an error of the input or the settings: the step is not retried")
            raise SystemExit(NO_RETRY_EXIT) from exc

    return wrapper  # type: ignore[return-value]


class RunTables:
    """Publishes a step's tables under the run's own place in the datastore.

    Args:
        flow: the running FlowSpec (its datastore gives the root), or None with ``root``.
        root: an explicit directory or URI prefix (tests, benchmarks).
    """

    def __init__(self, flow: Any = None, root: str | None = None):
        self.root = root if root is not None else run_table_root(flow)

    def uri(self, name: str, suffix: str = ".parquet") -> str:
        return f"{self.root}/{name}{suffix}"

    def location(self, name: str) -> str:
        """A folder (or URI prefix) of the run's for files that later steps share."""
        return f"{self.root}/{name}"

    def publish(self, local_path: str | Path, name: str) -> dict[str, Any]:
        """Publish a finished Parquet file; returns its reference (a plain dict)."""
        return publish(local_path, self.uri(name))

    def write(self, table: Any, name: str) -> dict[str, Any]:
        """Write an Arrow table; returns its reference (a plain dict)."""
        return write_table(table, self.uri(name))

    def write_json(self, value: Any, name: str, **about: Any) -> dict[str, Any]:
        """Write a JSON document; returns its reference, with ``about`` shown beside it."""
        return write_json(value, self.uri(name, ".json"), **about)

    def write_object(self, value: Any, name: str) -> dict[str, Any]:
        """Pickle a fitted model into a file; returns its reference."""
        return write_object(value, self.uri(name, ".pkl"))

    def write_checkpoint(self, weights: bytes, model_config: dict, name: str) -> dict[str, Any]:
        """Store a model's safetensors bytes; the reference carries the model config."""
        return write_checkpoint(weights, model_config, self.uri(name, ".safetensors"))


def record_queries(earlier: Any, records: list[dict], tables: RunTables) -> dict[str, Any]:
    """The run's ``sql_queries`` so far plus ``records``, as a JSON document beside the tables.

    The full text of every executed file, with its parameters, rows and seconds, is tens of KB:
    kept in a file (``load_artifact("sql_queries")`` reads it), not carried through every step
    as an artifact. The reference lists each file once, in the order they first ran.

    Args:
        earlier: the ``sql_queries`` artifact of the previous step: a reference, a list of
            records (runs written before the document), or None.
        records: this step's records (:attr:`recmodel.core.sql.SqlRunner.records`).
        tables: where this step publishes.
    """
    if earlier is None:
        earlier = []
    elif isinstance(earlier, dict):
        earlier = read_json(earlier)
    queries = [*earlier, *records]
    return tables.write_json(queries, "sql_queries", queries=len(queries), files=_files(queries))


def _files(queries: list[dict]) -> list[str]:
    """Each file once, in the order it first ran, with its rows (summed over user shards)."""
    rows: dict[str, list] = {}
    for query in queries:
        rows.setdefault(query["file"], []).append(query.get("rows"))
    described = []
    for file, counts in rows.items():
        total = "?" if None in counts else f"{sum(counts):,}"
        runs = f"{len(counts)} runs, " if len(counts) > 1 else ""
        described.append(f"{file} ({runs}{total} rows)")
    return described


def config_of(config: dict) -> PipelineConfig:
    """The typed configuration from the ``config`` artifact."""
    return from_dict(config, name=config.get("name", "custom"))


def connect_for(cfg: PipelineConfig, spill_dir: Path | None = None):
    """A DuckDB connection with the run's memory and thread limits (``[extract]``)."""
    return connect(cfg.extract.memory_limit, cfg.extract.threads, spill_dir)
