"""Large tables as versioned Parquet files beside a run's artifacts.

Metaflow pickles and gzips artifacts on one thread, which is slow for tables of millions of rows.
Large tables are therefore written as Parquet under the run's own place in the datastore
(``<datastore root>/<flow>/<run id>/_tables/<step>/<name>.parquet``, a local directory or an
object store prefix) and the artifact holds a :class:`TableRef`: an immutable reference with
the URI, row count, schema and a content hash. :func:`read_table` and :func:`duckdb_view` turn a
reference back into an Arrow table or a DuckDB view; :func:`load_artifact` loads any artifact of
any past run by name, resolving references transparently.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

TABLES_DIR = "_tables"  # not a Metaflow step: the local metadata only lists dirs with _meta
HASH_BLOCK = 1 << 22  # bytes read at a time while hashing
ROOT_ENV = "RECMODEL_TABLE_ROOT"  # overrides where tables go (e.g. a bucket prefix)


class TableIntegrityError(RuntimeError):
    """A stored table no longer matches the hash recorded when it was written."""


@dataclass(frozen=True)
class TableRef:
    """Immutable reference to a Parquet table stored beside a run's artifacts."""

    uri: str
    rows: int
    schema: tuple[tuple[str, str], ...]  # (column, Arrow type) pairs
    sha256: str
    nbytes: int

    @property
    def columns(self) -> list[str]:
        return [name for name, _ in self.schema]

    def __repr__(self) -> str:  # shown by the Metaflow UI and the Client API
        cols = ", ".join(f"{n}: {t}" for n, t in self.schema)
        return f"TableRef({self.uri!r}, rows={self.rows}, sha256={self.sha256[:12]}, [{cols}])"


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def _sha256(fs: pafs.FileSystem, path: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with fs.open_input_stream(path) as fh:
        while block := fh.read(HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def run_table_root(flow: Any = None) -> str:
    """Directory (or URI prefix) under which the current run's tables are written.

    Args:
        flow: the running FlowSpec. Metaflow does not expose the datastore root of a running
            task publicly; it is read from the task's datastore, falling back to the
            configured local root. ``$RECMODEL_TABLE_ROOT`` overrides both.
    """
    from metaflow import current

    if os.environ.get(ROOT_ENV):
        root = os.environ[ROOT_ENV]
    else:
        storage = getattr(getattr(flow, "_datastore", None), "_storage_impl", None)
        root = getattr(storage, "datastore_root", None)
        if root is None:
            from metaflow.plugins.datastores.local_storage import LocalStorage

            root = LocalStorage.get_datastore_root_from_config(log.info)
    return f"{str(root).rstrip('/')}/{current.flow_name}/{current.run_id}/{TABLES_DIR}/{current.step_name}"


def copy_file(local_path: str | Path, uri: str) -> str:
    """Copy a finished local file to ``uri`` (a path or an object-store URI) atomically.

    Locally the copy is written under a temporary name and renamed when complete; object
    stores write a key atomically on close. Returns the destination path.
    """
    fs, path = _filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, path)
    else:
        pafs.copy_files(str(local_path), path, destination_filesystem=fs)
    return path


def publish(local_path: str | Path, uri: str) -> TableRef:
    """Copy a finished local Parquet file to ``uri`` and return its reference.

    The file is first written under a temporary name and renamed when complete (locally), so
    a failed copy never leaves a half-written table behind a valid-looking name.
    """
    local_path = str(local_path)
    meta = pq.read_metadata(local_path)
    schema = meta.schema.to_arrow_schema()
    digest, size = _sha256(pafs.LocalFileSystem(), local_path)
    path = copy_file(local_path, uri)
    ref = TableRef(
        uri=uri if "://" in uri else path,
        rows=meta.num_rows,
        schema=tuple((f.name, str(f.type)) for f in schema),
        sha256=digest,
        nbytes=size,
    )
    log.info("published %s", ref)
    return ref


def write_table(table: pa.Table, uri: str) -> TableRef:
    """Write an Arrow table as Parquet at ``uri`` and return its reference."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "table.parquet")
        pq.write_table(table, local)
        return publish(local, uri)


def verify(ref: TableRef) -> None:
    """Raise :class:`TableIntegrityError` if the stored file changed since it was written."""
    fs, path = _filesystem(ref.uri)
    digest, _ = _sha256(fs, path)
    if digest != ref.sha256:
        raise TableIntegrityError(
            f"{ref.uri}: content hash {digest[:12]} differs from the recorded {ref.sha256[:12]}; "
            "the table was modified after the run wrote it"
        )


def read_table(ref: TableRef, columns: list[str] | None = None, check: bool = True) -> pa.Table:
    """Load a referenced table as Arrow (verifying its hash unless ``check`` is False)."""
    if check:
        verify(ref)
    fs, path = _filesystem(ref.uri)
    return pq.read_table(path, columns=columns, filesystem=fs)


def local_path(ref: TableRef) -> str:
    """A path DuckDB can read: the file itself for local refs, the URI otherwise."""
    return _filesystem(ref.uri)[1] if "://" not in ref.uri else ref.uri


def duckdb_view(con: Any, ref: TableRef, name: str) -> None:
    """Register ``ref`` as a DuckDB view called ``name`` (read lazily, out of core)."""
    # DDL cannot take bound parameters: the path is quoted as a SQL string literal instead.
    path = local_path(ref).replace("'", "''")
    con.execute(f"CREATE OR REPLACE VIEW \"{name}\" AS SELECT * FROM read_parquet('{path}')")


def load_artifact(
    name: str, run: str | Any = "latest", flow: str = "TwoStageFlow", as_table: bool = True
) -> Any:
    """Load artifact ``name`` of a run through the Metaflow Client API.

    Args:
        name: artifact name, e.g. ``"report"`` or ``"recommendations"``.
        run: ``"latest"`` (latest successful run), a run id, a ``"Flow/run_id"`` pathspec or a
            ``metaflow.Run``.
        flow: flow name used with ``"latest"`` or a bare run id.
        as_table: turn a :class:`TableRef` into an Arrow table.
    """
    from metaflow import Flow, Run

    if run == "latest":
        run_obj = Flow(flow).latest_successful_run
        if run_obj is None:
            raise LookupError(f"{flow} has no successful run")
    elif isinstance(run, str):
        run_obj = Run(run if "/" in run else f"{flow}/{run}")
    else:
        run_obj = run
    for step in run_obj:  # latest steps first: the newest value of a name wins
        task = step.task
        if task is not None and name in task:
            value = task[name].data
            return read_table(value) if as_table and isinstance(value, TableRef) else value
    raise LookupError(f"artifact {name!r} not found in {run_obj.pathspec}")
