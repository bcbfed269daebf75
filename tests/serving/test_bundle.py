"""An export directory appears whole or not at all, and is verified whole when loaded."""

import json
import os
from pathlib import Path

import pytest

import recmodel.serving.bundle as bundle
from recmodel.serving.bundle import MANIFEST, BundleError, load_bundle, write_bundle


def writer(version: str, fail_after: int | None = None):
    """Writes three files holding ``version``; raises after ``fail_after`` of them."""

    def write(directory: Path) -> dict:
        names = ("a.bin", "b.bin", "c.bin")
        for i, name in enumerate(names):
            if fail_after is not None and i == fail_after:
                raise OSError("No space left on device")
            (directory / name).write_bytes((version * 1000 + name).encode())
        return {"files": {n[0]: n for n in names}, "version": version}

    return write


def contents(directory: Path) -> dict[str, str]:
    manifest, paths = load_bundle(directory)
    return {"version": manifest["version"], **{k: p.read_text() for k, p in paths.items()}}


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_write_then_load_verifies_every_hash(tmp_path):
    out = tmp_path / "serving"
    manifest = write_bundle(out, writer("v1"))
    assert set(manifest["sha256"]) == {"a.bin", "b.bin", "c.bin"}
    assert json.loads((out / MANIFEST).read_text()) == manifest
    assert contents(out)["version"] == "v1"
    (out / "b.bin").write_bytes(b"another model's file")
    with pytest.raises(BundleError, match="b.bin differs from the manifest's sha256"):
        load_bundle(out)
    (out / "b.bin").unlink()
    with pytest.raises(BundleError, match="b.bin is missing"):
        load_bundle(out)


@pytest.mark.parametrize("fail_after", [0, 1, 2])
def test_a_failed_write_leaves_the_earlier_export_intact(tmp_path, fail_after):
    out = tmp_path / "serving"
    write_bundle(out, writer("v1"))
    before = contents(out)
    with pytest.raises(OSError, match="No space left"):
        write_bundle(out, writer("v2", fail_after))
    assert contents(out) == before
    assert leftovers(tmp_path, "serving") == []  # no staging directory left behind


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(OSError):
        write_bundle(tmp_path / "serving", writer("v1", fail_after=1))
    assert list(tmp_path.iterdir()) == []


def test_a_new_export_replaces_the_old_one_whole(tmp_path):
    out = tmp_path / "serving"
    write_bundle(out, writer("v1"))
    (out / "stale.bin").write_bytes(b"from v1 only")
    write_bundle(out, writer("v2"))
    assert contents(out)["version"] == "v2"
    assert not (out / "stale.bin").exists()  # nothing of the old export mixes in


@pytest.mark.parametrize(("point", "expected"), [("aside", "v1"), ("in", "v1"), ("cleanup", "v2")])
def test_interrupted_at_every_point_of_the_swap_the_old_or_new_export_is_found(
    tmp_path, monkeypatch, point, expected
):
    """A kill at each step of the swap: the directory then holds v1 or v2, whole."""
    out = tmp_path / "serving"
    write_bundle(out, writer("v1"))
    real_replace, real_rmtree, renames = os.replace, bundle.shutil.rmtree, []

    def replace(src, dst):
        if (point, len(renames)) in (("aside", 0), ("in", 1)):
            raise KeyboardInterrupt("killed")
        renames.append(dst)
        return real_replace(src, dst)

    def rmtree(path, ignore_errors=False):
        if point == "cleanup" and ".replaced-" in str(path):
            raise KeyboardInterrupt("killed")
        return real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(bundle.os, "replace", replace)
    monkeypatch.setattr(bundle.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        write_bundle(out, writer("v2"))
    monkeypatch.setattr(bundle.os, "replace", real_replace)
    monkeypatch.setattr(bundle.shutil, "rmtree", real_rmtree)
    assert contents(out)["version"] == expected  # recovers an export left aside, verifies
    real_rmtree(next(tmp_path.glob(".serving.staging-*"), tmp_path / "none"), ignore_errors=True)
    assert leftovers(tmp_path, "serving") == []


def test_an_export_never_overwrites_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="holds files and no manifest.json"):
        write_bundle(tmp_path, writer("v1"))
    assert (tmp_path / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    write_bundle(empty, writer("v1"))
    assert contents(empty)["version"] == "v1"
