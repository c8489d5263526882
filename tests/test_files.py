"""ddpm_ext.files: writes that never destroy a good earlier file, with ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest
from PIL import Image

from ddpm_ext.files import atomic_directory, atomic_path, atomic_write_text, write_with


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_replace_and_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "sub" / "results.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            raise OSError(28, "disk full")
    assert target.read_text() == "second" and leftovers(target.parent) == []


def test_write_with_a_writer_keeps_the_extension_for_format_sniffing(tmp_path):
    path = write_with(tmp_path / "grid.png", lambda tmp: Image.new("L", (3, 2), 7).save(tmp))  # format from ".png"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (3, 2)


def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path):
    old = os.umask(0o022)
    try:
        fresh = atomic_write_text(tmp_path / "new.txt", "x")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644  # not mkstemp's 0600
        kept = tmp_path / "kept.txt"
        kept.write_text("x")
        kept.chmod(0o640)
        atomic_write_text(kept, "y")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_atomic_directory_swaps_in_whole_or_not_at_all(tmp_path):
    target = tmp_path / "pipe"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("2")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "1" and leftovers(tmp_path) == []
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"] and leftovers(tmp_path) == []
