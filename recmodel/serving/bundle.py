"""A serving export as one directory that appears whole, and is checked whole when loaded.

:func:`write_bundle` writes every file into a staging directory beside the target, hashes
them into the manifest (written last), and only then swaps the staging directory in: a
failure while writing (a full disk, a killed process) leaves the previous export as it was,
and a finished export never mixes files of two models. :func:`load_bundle` reads the manifest
and verifies the sha256 of every file it lists before anything is used.

The swap is two renames on one filesystem: the old directory aside, the new one in. A process
killed between them leaves the old export aside under a hidden name; the next
:func:`write_bundle` or :func:`load_bundle` of that directory puts it back first, so a reader
always finds the old export or the new one, whole. An export never writes into a directory
that holds anything but an earlier export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
HASH_BLOCK = 1 << 22


class BundleError(RuntimeError):
    """An export directory is missing, incomplete, changed since it was written, or foreign."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def write_bundle(out_dir: str | Path, write: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Build an export with ``write(staging_dir) -> manifest`` and swap it in at ``out_dir``.

    Args:
        out_dir: the export's directory: new, empty, or an earlier export (replaced whole).
        write: writes the files into the directory it is given and returns the manifest,
            whose ``files`` maps roles to file names in that directory.

    Returns:
        The manifest as written, with ``sha256`` (file name -> digest) added.

    Raises:
        BundleError: ``out_dir`` holds files that are not an export (nothing is touched).
    """
    out = Path(out_dir).absolute()
    recover(out)
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        manifest = write(staging)
        names = sorted(manifest["files"].values())
        manifest["sha256"] = {name: sha256_file(staging / name) for name in names}
        with open(staging / MANIFEST, "w", encoding="utf-8") as fh:  # last: the seal
            json.dump(manifest, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def load_bundle(directory: str | Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The manifest of an export and the path of each of its files, all hashes verified.

    Raises:
        BundleError: no manifest, a listed file missing, or a file whose sha256 differs.
    """
    root = Path(directory)
    recover(root.absolute())
    if not (root / MANIFEST).is_file():
        raise BundleError(f"{root}: no {MANIFEST}; not an export, or an export that did not finish")
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    hashes = manifest.get("sha256") or {}
    if set(hashes) != set(manifest["files"].values()):
        raise BundleError(f"{root}: {MANIFEST} does not hash every file it lists")
    for name, expected in hashes.items():
        path = root / name
        if not path.is_file():
            raise BundleError(f"{root}: {name} is missing")
        if sha256_file(path) != expected:
            raise BundleError(
                f"{root}: {name} differs from the manifest's sha256 (a partial copy, or a file "
                "of another export); export again"
            )
    return manifest, {role: root / name for role, name in manifest["files"].items()}


def recover(out: Path) -> bool:
    """Put back an earlier export left aside by a swap that did not finish; True if it did.

    With ``out`` in place, an export still aside is one a finished swap did not get to delete.
    """
    aside = sorted(out.parent.glob(f".{out.name}.replaced-*")) if out.parent.is_dir() else []
    if out.exists():
        for path in aside:
            shutil.rmtree(path, ignore_errors=True)
        return False
    if not aside:
        return False
    os.replace(aside[-1], out)
    log.warning("restored %s from an export swap that did not finish", out)
    return True


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out} is a file, not an export directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise BundleError(
            f"{out} holds files and no {MANIFEST}: an export replaces its directory whole, so it "
            "only goes to a new or empty directory or over an earlier export"
        )


def _swap_in(staging: Path, out: Path) -> None:
    """Put the finished ``staging`` directory at ``out``, replacing an earlier export."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = out.with_name(f".{out.name}.replaced-{os.getpid()}-{time.time_ns()}")
    os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
    log.info("replaced the earlier export at %s", out)
