"""ddpm_ext.files: writes that never destroy a good earlier file, with ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest
from PIL import Image

from ddpm_ext.files import (
    atomic_directory,
    atomic_path,
    atomic_write_text,
    file_sha256,
    temporary_names_as,
    write_with,
)


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


def test_a_failed_write_names_the_users_file_not_the_temporary_one(tmp_path):
    target = tmp_path / "samples.png"
    with pytest.raises(OSError) as e:
        with atomic_path(target) as tmp:
            raise OSError(28, "No space left on device", str(tmp))
    assert e.value.filename == str(target) and leftovers(tmp_path) == []
    staging, final = tmp_path / ".unet.x.tmp", tmp_path / "unet"
    with pytest.raises(OSError) as e, temporary_names_as(staging, final):
        raise OSError(28, "No space left on device", str(staging / "config.json"))
    assert e.value.filename == str(final / "config.json")


def test_file_sha256_is_the_sha256_of_the_content(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 "abc"
