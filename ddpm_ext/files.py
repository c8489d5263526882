"""Atomic file writes: a full disk or a kill while writing never destroys a good earlier file.

Every file the package writes (pipelines, grids, cards, metrics, figures, samples) goes through here: the
content is written to a temporary file in the same folder, flushed to disk, then renamed over the target with
`os.replace` (atomic on POSIX and Windows). Until the rename the old file is untouched; after it the new one is
complete. A failed write removes its temporary file and re-raises.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

__all__ = [
    "IMAGE_SUFFIXES",
    "atomic_directory",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_new_files",
    "images_in",
    "write_with",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is synced and renamed to `path`, on error removed.

    Example:

    ```py
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "grid.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'

    ```
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _final_mode(target))  # mkstemp makes 0600 files; give the permissions `open` would
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _final_mode(target: Path) -> int:
    """The mode a plain `open(target, "w")` would leave: the existing file's, else 0o666 less the umask."""
    try:
        return target.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; return the path."""
    return atomic_write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` (an earlier folder is swapped
    out and removed only after the new one is in place), on error it is removed and `path` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_with(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Call `writer(tmp_path)` (e.g. `image.save`) and move the result to `path` atomically; return the path."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)



def check_new_files(paths: list[str | os.PathLike], option: str, overwrite: bool = False) -> None:
    """Refuse to replace files that already exist, unless `overwrite`: a `ValueError` naming `option`, the files
    and `--overwrite` (the commands' outputs are the user's files: none is replaced without being asked)."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        shown = ", ".join(repr(p) for p in existing[:5]) + more
        raise ValueError(f"`{option}`: {shown} already exist(s); pass --overwrite to replace (nothing was written).")


def images_in(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in `folder` (by suffix), sorted; none for a folder that does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
