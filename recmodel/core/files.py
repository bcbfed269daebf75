"""Files beside a run's artifacts, and the plain references that artifacts hold to them.

A reference is a dict of built-in types (the Metaflow UI and any client unpickle it without
this package) with the file's ``uri``, its ``format``, a content hash and its size, plus small
values that describe the content::

    {"uri": ".../_tables/finetune/finetune_checkpoint.safetensors", "format": "safetensors",
     "model_config": {...}, "sha256": "3b0c...", "nbytes": 239616}

Every file is written whole or not at all (a temporary name renamed when complete, locally; an
object-store key appears on close) and read back against its hash. Parquet tables have their
own functions in :mod:`recmodel.core.tables`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from recmodel.core.plain import plain

log = logging.getLogger(__name__)

HASH_BLOCK = 1 << 22  # bytes read at a time while hashing
# The ``format`` of a reference: a table, a JSON document, a pickled object, model weights.
PARQUET, JSON_DOC, PICKLE, SAFETENSORS = "parquet", "json", "pickle", "safetensors"


class TableIntegrityError(RuntimeError):
    """A stored table no longer matches the hash recorded when it was written."""


def is_file_ref(value: Any) -> bool:
    """A plain-dict reference to a file beside the run (a table, a JSON document, ...)."""
    return isinstance(value, dict) and {"uri", "format", "sha256"} <= value.keys()


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def sha256_of(fs: pafs.FileSystem, path: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with fs.open_input_stream(path) as fh:
        while block := fh.read(HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def copy_file(local_path: str | Path, uri: str) -> str:
    """Copy a finished local file to ``uri`` (a path or an object-store URI) atomically.

    Locally the copy is written under a temporary name and renamed when complete; object
    stores write a key atomically on close. Returns the destination path.
    """
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, path)
    else:
        pafs.copy_files(str(local_path), path, destination_filesystem=fs)
    return path


def publish_bytes(data: bytes, uri: str, fmt: str, **about: Any) -> dict[str, Any]:
    """Write ``data`` as one file at ``uri`` (atomically) and return its plain reference.

    Args:
        data: the file's content.
        uri: a path or an object-store URI.
        fmt: the reference's ``format`` (:data:`JSON_DOC`, :data:`PICKLE`, ...).
        about: small plain values that describe the content, shown with the reference.
    """
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "file"
        local.write_bytes(data)
        path = copy_file(local, uri)
    ref = {
        "uri": uri if "://" in uri else path,
        "format": fmt,
        **about,
        "sha256": hashlib.sha256(data).hexdigest(),
        "nbytes": len(data),
    }
    log.info("published %s (%s, %d bytes)", ref["uri"], fmt, len(data))
    return ref


def read_bytes(ref: dict[str, Any]) -> bytes:
    """The content of a referenced file, checked against its recorded hash."""
    fs, path = filesystem(ref["uri"])
    with fs.open_input_stream(path) as fh:
        data = fh.read()
    if hashlib.sha256(data).hexdigest() != ref["sha256"]:
        raise TableIntegrityError(
            f"{ref['uri']}: the content hash differs from the recorded {ref['sha256'][:12]}; "
            "the file was modified after the run wrote it"
        )
    return data


def write_json(value: Any, uri: str, **about: Any) -> dict[str, Any]:
    """Write ``value`` as a JSON document at ``uri`` (as :func:`recmodel.core.plain.plain`)."""
    text = json.dumps(plain(value), indent=1, allow_nan=False)
    return publish_bytes(text.encode("utf-8"), uri, JSON_DOC, **about)


def read_json(ref: dict[str, Any]) -> Any:
    """The value of a referenced JSON document."""
    return json.loads(read_bytes(ref))


def write_object(value: Any, uri: str) -> dict[str, Any]:
    """Pickle a Python object (a fitted model) to ``uri``; the reference names its class."""
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    return publish_bytes(pickle.dumps(value), uri, PICKLE, type=kind)


def load_object(value: Any) -> Any:
    """The object behind a :func:`write_object` reference; any other value as it is.

    Steps receive either the reference or, from runs written before objects were stored as
    files, the object itself.
    """
    if is_file_ref(value) and value["format"] == PICKLE:
        return pickle.loads(read_bytes(value))  # our own run's file, checked by its hash
    return value


def write_checkpoint(weights: bytes, model_config: dict[str, Any], uri: str) -> dict[str, Any]:
    """Store a model's safetensors bytes at ``uri``; the reference carries its model config."""
    return publish_bytes(weights, uri, SAFETENSORS, model_config=plain(model_config))


def load_checkpoint(value: Any) -> Any:
    """``{"safetensors": bytes, "model_config": dict}`` from a :func:`write_checkpoint`
    reference; a checkpoint of a run that stored the bytes in the artifact as it is."""
    if is_file_ref(value) and value["format"] == SAFETENSORS:
        return {"safetensors": read_bytes(value), "model_config": value["model_config"]}
    return value
