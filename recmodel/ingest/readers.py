"""Reading input files with DuckDB: the shared pieces of every source layout.

:class:`SourceSpec` says where the input is; :func:`resolve_files` expands a file, glob or
directory; :func:`file_table` and :func:`reader_sql` turn files into a :class:`Table`, a query
whose rows carry the file they came from. :mod:`recmodel.ingest.formats` builds each layout from
these, and :mod:`recmodel.ingest.sources` registers the result as the canonical views.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import duckdb

from recmodel.core.errors import input_error

SOURCE_FILE = "__source_file"  # the file each row of a *_source view came from
RAW_TIMESTAMP = "__raw_timestamp"  # the source timestamp as text, before conversion
KINDS = ("canonical", "yambda", "lastfm1k", "movielens")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv"}


@dataclass(frozen=True)
class SourceSpec:
    """Where the input is and how it is laid out (the module docstring describes each kind)."""

    kind: str = "canonical"  # "canonical" | "yambda" | "lastfm1k" | "movielens"
    events: str = ""  # file, glob or directory (yambda: the directory holding listens.parquet)
    items: str | None = None  # optional item table; yambda/movielens: overrides the lookup

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise input_error(f"source kind {self.kind!r}", "unknown", f"use one of {KINDS}")


@dataclass(frozen=True)
class Table:
    """One input table as a query whose columns carry canonical names and source types."""

    query: str  # SELECT ... that also yields the __source_file column
    where: str  # how messages name it, e.g. "events file '/data/a.parquet'"
    files: tuple[str, ...]
    fmt: str  # "parquet", "csv" or "tsv"


def resolve_files(path: str, role: str, suffixes: tuple[str, ...] = tuple(FORMATS)) -> list[str]:
    """Expand a file, glob or directory (recursive) into sorted files; URIs pass through.

    Raises:
        InputError: the path does not exist, the glob matches nothing, or the directory holds
            no file with one of ``suffixes`` (hidden ``.``/``_`` files are skipped).
    """
    if "://" in path:
        return [path]
    if Path(path).is_file():  # a real file whose name holds [, ? or * is not a pattern
        return [path]
    if any(ch in path for ch in "*?["):
        files = sorted(f for f in glob.glob(path, recursive=True) if Path(f).is_file())
        if not files:
            raise input_error(f"{role} glob {path!r}", "matches no files", "check the pattern")
        return files
    if Path(path).is_file():
        return [path]
    if not Path(path).is_dir():
        problem = f"does not exist (working directory {Path.cwd()})"
        raise input_error(f"{role} path {path!r}", problem, "check the path")
    found = (f for f in Path(path).rglob("*") if f.is_file() and f.name[0] not in "._")
    files = sorted(str(f) for f in found if suffix(str(f)) in suffixes)
    if not files:
        problem = f"holds no {'/'.join(suffixes)} files"
        raise input_error(f"{role} directory {path!r}", problem, "point at the data files")
    return files


def suffix(path: str) -> str:
    return PurePosixPath(path.lower().removesuffix(".gz").removesuffix(".zst")).suffix


def file_table(path: str, role: str, **options: Any) -> Table:
    files = resolve_files(path, role)
    formats = sorted({FORMATS.get(suffix(f), f) for f in files})
    if len(formats) > 1 or formats[0] not in FORMATS.values():
        problem = f"has files of unknown or mixed formats {formats}"
        raise input_error(f"{role} {path!r}", problem, "use .parquet, .csv or .tsv files only")
    where = f"{role} file {files[0]!r}" if len(files) == 1 else f"{role} {path!r}"
    return Table(
        f"SELECT * FROM {reader_sql(files, formats[0], **options)}", where, (*files,), formats[0]
    )


def reader_sql(files: list[str] | tuple[str, ...], fmt: str, **options: Any) -> str:
    """The DuckDB table function that scans ``files``, tagging each row with its file."""
    # A view's text cannot hold bound parameters, so paths are written as escaped literals.
    if fmt == "tsv":
        options = {"delim": "\t", **options}
    args = [f"[{', '.join(literal(f) for f in files)}]", f"filename={literal(SOURCE_FILE)}"]
    args += [f"{key}={literal(value)}" for key, value in options.items()]
    return f"{'read_parquet' if fmt == 'parquet' else 'read_csv'}({', '.join(args)})"


def literal(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    return "'" + str(value).replace("'", "''") + "'"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def names_sql(columns: tuple[str, ...] | list[str]) -> str:
    return ", ".join(quote(c) for c in columns)


def describe(con: duckdb.DuckDBPyConnection, query: str, where: str) -> dict[str, str]:
    try:
        return {row[0]: row[1] for row in con.execute(f"DESCRIBE {query}").fetchall()}
    except duckdb.Error as exc:
        problem = f"DuckDB cannot read its schema: {exc}"
        raise input_error(where, problem, "check that the file is valid for its extension") from exc


def header_names(file: str, fmt: str) -> list[str] | None:
    """The column names exactly as a local file writes them (duplicates kept), or None.

    DuckDB renames a repeated column (``item_id``, ``item_id_1``), which would let a file with
    two ``item_id`` columns pass with the second silently ignored; the raw header shows it.
    Remote files are not opened here (None).
    """
    if "://" in file:
        return None
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(file).names)
    import csv
    import gzip

    opener = gzip.open if file.endswith(".gz") else open
    with opener(file, "rt", newline="") as fh:
        first = fh.readline()
    return next(csv.reader([first], delimiter="\t" if fmt == "tsv" else ","), [])


def check_headers(con: duckdb.DuckDBPyConnection, table: Table, wanted: tuple[str, ...]) -> None:
    """Every file of ``table`` names each column once, and all name the same ``wanted`` ones.

    Files read together (a glob, a directory) are unioned by column name: a file that lacks a
    column another file has would silently get NULLs in it (a missing ``played_ratio_pct``
    turns that file's skips into listens).

    Raises:
        InputError: naming the file and the column.
    """
    present: dict[str, set[str]] = {}
    for file in table.files:
        names = header_names(file, table.fmt)
        if names is not None:
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                problem = f"names column(s) {repeated} more than once"
                fix = "keep one column of each name"
                raise input_error(f"file {file!r}", problem, fix)
        if len(table.files) > 1:
            single = Table(
                f"SELECT * FROM {reader_sql([file], table.fmt)}", file, (file,), table.fmt
            )
            present[file] = set(describe(con, single.query, f"file {file!r}"))
    union = set().union(*present.values()) if present else set()
    for file, columns in present.items():
        missing = sorted((union - columns) & set(wanted))
        if missing:
            others = next(f for f, c in present.items() if missing[0] in c)
            problem = (
                f"lacks column {missing[0]!r}, which {others!r} has: read together, its rows "
                "would get NULL there"
            )
            raise input_error(f"file {file!r}", problem, "write the same columns in every file")
