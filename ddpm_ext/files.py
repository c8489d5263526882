"""Atomic file writes: a full disk or a kill while writing never destroys a good earlier file.

Every file the package writes (pipelines, grids, cards, metrics, figures, samples) goes through here: the
content is written to a temporary file in the same folder, flushed to disk, then renamed over the target with
`os.replace` (atomic on POSIX and Windows). Until the rename the old file is untouched; after it the new one is
complete. A failed write removes its temporary file and re-raises, naming the target (not the temporary file).

[`naming_failed_writes`] makes the writers of PyTorch and safetensors fail like `open` does: an `OSError` naming
the file (PyTorch reports a full disk as `RuntimeError: [enforce fail at inline_container.cc]`, safetensors as a
`SafetensorError`, neither naming the file). [`file_sha256`] is the content hash checkpoints record.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
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
    "file_sha256",
    "images_in",
    "naming_failed_writes",
    "temporary_names_as",
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
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        _rename_in_error(e, tmp, target)  # the user's file could not be written; the temporary name is gone
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


@contextlib.contextmanager
def temporary_names_as(tmp: str | os.PathLike, target: str | os.PathLike) -> Iterator[None]:
    """Within the block, an `OSError` naming a path inside the temporary file or folder `tmp` names it at its
    place in `target` instead (what is written into `tmp` becomes `target`; the temporary name is gone after a
    failure).
    """
    try:
        yield
    except OSError as e:
        _rename_in_error(e, Path(tmp), Path(target))
        raise


def _rename_in_error(error: BaseException, tmp: Path, target: Path) -> None:
    if not isinstance(error, OSError) or error.filename is None:
        return
    name = Path(os.fspath(error.filename))
    if name == tmp:
        error.filename = os.fspath(target)
    elif tmp in name.parents:
        error.filename = os.fspath(target / name.relative_to(tmp))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The SHA-256 of the file at `path`, in hex (read in chunks: any file size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def naming_failed_writes() -> Iterator[None]:
    """Within the block, a failed `torch.save` or `safetensors.torch.save_file` raises an `OSError` naming the file.

    PyTorch reports a full disk as `RuntimeError: [enforce fail at inline_container.cc:...] ... file write failed`
    and safetensors as `SafetensorError: Error while serializing: IoError(... StorageFull ...)`; neither names the
    file. Both are looked up on their modules at call time by accelerate and diffusers, so they are wrapped here for
    the block's duration (the process's only writer then: the training loop is single-threaded). The error keeps
    `errno.ENOSPC` when the message says the disk is full (`errno.EIO` otherwise) and chains the original.
    """
    import safetensors.torch  # noqa: PLC0415 (torch and safetensors are heavy: imported by the code that saves)
    import torch  # noqa: PLC0415

    real_torch_save, real_save_file = torch.save, safetensors.torch.save_file

    def named(writer: Callable, label: str) -> Callable:
        def write(obj, f, *args, **kwargs):
            try:
                return writer(obj, f, *args, **kwargs)
            except OSError as e:
                if e.filename is None and isinstance(f, (str, os.PathLike)):
                    e.filename = os.fspath(f)
                raise
            except Exception as e:  # noqa: BLE001 (RuntimeError from torch, SafetensorError: a failed write)
                if not isinstance(f, (str, os.PathLike)):
                    raise
                text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                full = "No space left" in text or "StorageFull" in text
                code = errno.ENOSPC if full else errno.EIO
                raise OSError(code, os.strerror(code) if full else f"{label} failed: {text[:200]}",
                              os.fspath(f)) from e
        return write

    torch.save = named(real_torch_save, "torch.save")
    safetensors.torch.save_file = named(real_save_file, "safetensors save_file")
    try:
        yield
    finally:
        torch.save, safetensors.torch.save_file = real_torch_save, real_save_file
