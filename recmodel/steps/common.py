"""What every step of the flow shares: its tables' place in the datastore and the typed config.

Nothing here imports torch: the data steps use it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recmodel.core.config import PipelineConfig
from recmodel.core.presets import from_dict
from recmodel.core.sql import connect
from recmodel.core.tables import TableRef, publish, run_table_root, write_table


class RunTables:
    """Publishes a step's tables under the run's own place in the datastore.

    Args:
        flow: the running FlowSpec (its datastore gives the root), or None with ``root``.
        root: an explicit directory or URI prefix (tests, benchmarks).
    """

    def __init__(self, flow: Any = None, root: str | None = None):
        self.root = root if root is not None else run_table_root(flow)

    def uri(self, name: str) -> str:
        return f"{self.root}/{name}.parquet"

    def publish(self, local_path: str | Path, name: str) -> TableRef:
        return publish(local_path, self.uri(name))

    def write(self, table: Any, name: str) -> TableRef:
        return write_table(table, self.uri(name))


def config_of(config: dict) -> PipelineConfig:
    """The typed configuration from the ``config`` artifact."""
    return from_dict(config, name=config.get("name", "custom"))


def connect_for(cfg: PipelineConfig, spill_dir: Path | None = None):
    """A DuckDB connection with the run's memory and thread limits (``[extract]``)."""
    return connect(cfg.extract.memory_limit, cfg.extract.threads, spill_dir)
