"""Large tables and documents as versioned files beside a run's artifacts.

Metaflow pickles and gzips artifacts on one thread, which is slow for tables of millions of rows.
Large tables are therefore written as Parquet under the run's own place in the datastore
(``<datastore root>/<flow>/<run id>/_tables/<step>/<name>.parquet``, a local directory or an
object store prefix) and the artifact holds a reference: a plain dict with the URI, the row
count, the columns and a content hash::

    {"uri": ".../_tables/extract_sessions/events.parquet", "format": "parquet", "rows": 48155,
     "columns": {"user_idx": "int32", ...}, "sha256": "9f1c...", "nbytes": 412345}

References are plain built-in types on purpose: the Metaflow UI and any client unpickle
artifacts without this package installed, and show the dict as it is. Other files (a JSON
document such as the executed SQL, a pickled model) get the same kind of reference with their
own ``format``. :func:`read_table` and :func:`duckdb_view` turn a table reference back into an
Arrow table or a DuckDB view; :func:`load_artifact` loads any artifact of any past run by name,
resolving references transparently. Runs written before references were plain dicts hold
:class:`TableRef` objects; every function here accepts both.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recmodel.core.files import (
    JSON_DOC,
    PARQUET,
    TableIntegrityError,
    copy_file,
    filesystem,
    is_file_ref,
    load_checkpoint,
    load_object,
    read_json,
    sha256_of,
)

log = logging.getLogger(__name__)

TABLES_DIR = "_tables"  # not a Metaflow step: the local metadata only lists dirs with _meta
ROOT_ENV = "RECMODEL_TABLE_ROOT"  # overrides where tables go (e.g. a bucket prefix)


@dataclass(frozen=True)
class TableRef:
    """Immutable reference to a Parquet table stored beside a run's artifacts.

    Artifacts hold its plain-dict form (:meth:`to_dict`); runs written before that hold the
    object itself, which only unpickles where this package is installed. :meth:`of` reads both.
    """

    uri: str
    rows: int
    schema: tuple[tuple[str, str], ...]  # (column, Arrow type) pairs
    sha256: str
    nbytes: int

    @property
    def columns(self) -> list[str]:
        return [name for name, _ in self.schema]

    def __repr__(self) -> str:
        cols = ", ".join(f"{n}: {t}" for n, t in self.schema)
        return f"TableRef({self.uri!r}, rows={self.rows}, sha256={self.sha256[:12]}, [{cols}])"

    def to_dict(self) -> dict[str, Any]:
        """The plain form artifacts hold (built-in types only)."""
        return {
            "uri": self.uri,
            "format": PARQUET,
            "rows": self.rows,
            "columns": dict(self.schema),
            "sha256": self.sha256,
            "nbytes": self.nbytes,
        }

    @classmethod
    def of(cls, ref: AnyRef) -> TableRef:
        """The reference ``ref`` as an object, from its plain dict or an object of a past run."""
        if isinstance(ref, TableRef):
            return ref
        if not is_table_ref(ref):
            raise TypeError(f"not a table reference: {ref!r}")
        return cls(
            uri=ref["uri"],
            rows=int(ref["rows"]),
            schema=tuple((str(n), str(t)) for n, t in ref["columns"].items()),
            sha256=ref["sha256"],
            nbytes=int(ref["nbytes"]),
        )


AnyRef = TableRef | dict  # what steps receive: a plain reference, or a past run's object


def is_table_ref(value: Any) -> bool:
    """A reference to a Parquet table, in its plain form or as a past run's :class:`TableRef`."""
    return isinstance(value, TableRef) or (is_file_ref(value) and value["format"] == PARQUET)


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


def publish(local_path: str | Path, uri: str) -> dict[str, Any]:
    """Copy a finished local Parquet file to ``uri`` and return its reference (a plain dict).

    The file is first written under a temporary name and renamed when complete (locally), so
    a failed copy never leaves a half-written table behind a valid-looking name.
    """
    local_path = str(local_path)
    meta = pq.read_metadata(local_path)
    schema = meta.schema.to_arrow_schema()
    digest, size = sha256_of(pafs.LocalFileSystem(), local_path)
    path = copy_file(local_path, uri)
    ref = TableRef(
        uri=uri if "://" in uri else path,
        rows=meta.num_rows,
        schema=tuple((f.name, str(f.type)) for f in schema),
        sha256=digest,
        nbytes=size,
    )
    log.info("published %s (%d rows, %d bytes)", ref.uri, ref.rows, ref.nbytes)
    return ref.to_dict()


def write_table(table: pa.Table, uri: str) -> dict[str, Any]:
    """Write an Arrow table as Parquet at ``uri`` and return its reference (a plain dict)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "table.parquet")
        pq.write_table(table, local)
        return publish(local, uri)


def resolve(value: Any, tables: bool = True) -> Any:
    """A reference's content (Arrow table, JSON value, checkpoint, object); else ``value``.

    Args:
        value: an artifact's value.
        tables: resolve table references too (False leaves them, e.g. for DuckDB views).
    """
    if is_table_ref(value):
        return read_table(value) if tables else value
    if is_file_ref(value) and value["format"] == JSON_DOC:
        return read_json(value)
    return load_object(load_checkpoint(value))


def verify(ref: AnyRef) -> None:
    """Raise :class:`TableIntegrityError` if the stored file changed since it was written."""
    ref = TableRef.of(ref)
    fs, path = filesystem(ref.uri)
    digest, _ = sha256_of(fs, path)
    if digest != ref.sha256:
        raise TableIntegrityError(
            f"{ref.uri}: content hash {digest[:12]} differs from the recorded {ref.sha256[:12]}; "
            "the table was modified after the run wrote it"
        )


def read_table(ref: AnyRef, columns: list[str] | None = None, check: bool = True) -> pa.Table:
    """Load a referenced table as Arrow (verifying its hash unless ``check`` is False)."""
    ref = TableRef.of(ref)
    if check:
        verify(ref)
    fs, path = filesystem(ref.uri)
    return pq.read_table(path, columns=columns, filesystem=fs)


def local_path(ref: AnyRef) -> str:
    """A path DuckDB can read: the file itself for local refs, the URI otherwise."""
    uri = TableRef.of(ref).uri
    return filesystem(uri)[1] if "://" not in uri else uri


def duckdb_view(con: Any, ref: AnyRef, name: str) -> None:
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
        as_table: turn a table reference into an Arrow table (False: return the reference).
            Other references always resolve to their content (:func:`resolve`): a JSON
            document to its value, weights to ``{"safetensors": bytes, "model_config"}``.
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
            return resolve(value, tables=as_table)
    raise LookupError(f"artifact {name!r} not found in {run_obj.pathspec}")
