"""One training run per output folder: the lock a run holds on its `--output_dir` while it reads and writes there.

The lock is the file `<output_dir>/.ddpm_ext-run.lock`, locked with the operating system's exclusive file lock
(`flock` on POSIX) and holding a record of its holder (pid, host, start time, command) for the message a second run
prints. The kernel drops the lock when the holding process ends, however it ends, so:

- a second run into the same folder finds it locked and stops with one line naming the holder's process
  ([`OutputDirInUse`]);
- a lock left by a killed run (the file is still there, nobody holds it) is taken over by the next run, which says
  whose it was ([`RunLock.taken_over`]); two runs racing to take it over cannot both win (the kernel grants the
  lock once), and no process id is ever guessed to be dead or alive;
- a run that ends normally removes the file while still holding the lock; a run that finds the file replaced after
  locking it (the holder removed it just then) retries on the new file, so two holders never coexist.

With an `accelerate launch` of several processes only the main process takes the lock
([`ddpm_ext.training.train.run`]).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: msvcrt's byte-range lock instead
    fcntl = None
    import msvcrt

__all__ = ["LOCK_FILE", "OutputDirInUse", "RunLock", "acquire_run_lock", "describe_holder", "lock_output_dir"]

LOCK_FILE = ".ddpm_ext-run.lock"
_WINDOWS_LOCK_OFFSET = 1 << 20  # msvcrt locks a byte range; lock one far past the record, which stays readable


class OutputDirInUse(ValueError):
    """Another run holds the output folder's lock."""


@dataclass
class RunLock:
    """A held run lock: the lock file, its open descriptor, and the record of the run that had left it behind
    (killed without releasing it), or None."""

    path: Path
    fd: int
    taken_over: dict[str, Any] | None = None

    def release(self) -> None:
        """Remove the lock file and drop the lock (in that order: see the module docstring). Idempotent."""
        if self.fd < 0:
            return
        if fcntl is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
        else:  # pragma: no cover - Windows cannot remove an open file
            os.close(self.fd)
            try:
                self.path.unlink(missing_ok=True)
            except OSError:
                pass
        self.fd = -1


def acquire_run_lock(output_dir: str | os.PathLike) -> RunLock:
    """Take the lock of `output_dir` (created if missing) for this process, or fail naming the holder.

    Returns:
        [`RunLock`]: held until [`RunLock.release`] or the end of the process.

    Raises:
        OutputDirInUse: another live process holds it; the message names its pid, host, start time and command.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            holder = _holder(fd)
            os.close(fd)
            if holder is not None and _dead_here(holder):  # its forked children (data loader workers) hold it
                raise OutputDirInUse(
                    f"--output_dir {out} is still locked by processes of a run that has ended "
                    f"({describe_holder(holder)}; lock file {path}): its child processes (data loader workers) "
                    "are still exiting; retry in a few seconds"
                )
            raise OutputDirInUse(
                f"--output_dir {out} is in use by another training run ({describe_holder(holder)}; lock file "
                f"{path}); wait for it to end, stop it, or train into another --output_dir"
            )
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is None or not os.path.samestat(current, os.fstat(fd)):
            os.close(fd)  # the holder removed the file as we locked it: lock the file that is there now
            continue
        previous = _read_record(fd)
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": _command()}
        data = json.dumps(record).encode()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)
        os.fsync(fd)
        return RunLock(path, fd, previous)


def lock_output_dir(
    output_dir: str | os.PathLike, accelerator: Any, lock: RunLock | None, *, create: bool
) -> tuple[RunLock | None, str | None]:
    """Take the lock of `output_dir` in the main process (unless `lock` is held already; only when the folder
    exists unless `create`); every process of the run learns the outcome (call it on all of them).

    Returns:
        `tuple[RunLock | None, str | None]`: the lock (main process; `lock` when already held, None when the
        folder does not exist yet and not `create`) and None, or None and the one-line error, on every process.
    """
    from accelerate.utils import broadcast_object_list  # noqa: PLC0415 (accelerate is heavy: only runs need it)

    error = None
    if accelerator.is_main_process and lock is None and (create or Path(output_dir).is_dir()):
        try:
            lock = acquire_run_lock(output_dir)
        except OutputDirInUse as e:
            error = str(e)
        else:
            if lock.taken_over is not None:
                accelerator.print(f"Took over the lock of {output_dir}, left by a run that ended without releasing "
                                  f"it ({describe_holder(lock.taken_over)}).")
    if accelerator.num_processes > 1:
        error = broadcast_object_list([error])[0]
    return lock, error


def describe_holder(record: dict[str, Any] | None) -> str:
    """The holder of a lock, for a message: `pid 123 on host h, started ..., running: ...`."""
    if not record:
        return "a run that is just starting"
    text = f"pid {record.get('pid')} on host {record.get('host')}, started {record.get('started')}"
    return text + (f", running: {record['command']}" if record.get("command") else "")


def _command() -> str:
    """This process's command line for the record, a `--hub_token` value masked (a token is never written)."""
    words = list(sys.argv)

    def is_token_flag(word: str) -> bool:  # argparse also takes a unique prefix, e.g. --hub_tok
        return len(word) > len("--hub_t") and "--hub_token".startswith(word)

    for i, word in enumerate(words):
        name = word.split("=", 1)[0]
        if "=" in word and is_token_flag(name):
            words[i] = f"{name}=***"
        elif i > 0 and is_token_flag(words[i - 1]):
            words[i] = "***"
    return " ".join(words)[:300]


def _try_lock(fd: int) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        return True
    os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)  # pragma: no cover - Windows
    try:  # pragma: no cover
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # pragma: no cover
        return False
    return True  # pragma: no cover


def _holder(fd: int, wait: float = 1.0) -> dict[str, Any] | None:
    """The record of the live holder: a holder that has just locked the file may not have written its record yet
    (empty, or still the record of the killed run it takes over); wait up to `wait` seconds for it."""
    deadline = time.monotonic() + wait
    record = _read_record(fd)
    while (record is None or _dead_here(record)) and time.monotonic() < deadline:
        time.sleep(0.02)
        record = _read_record(fd)
    return record


def _dead_here(record: dict[str, Any]) -> bool:
    """Whether `record` names a process of this host that no longer runs (only to word a message right)."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by another user
        return False
    return False


def _read_record(fd: int) -> dict[str, Any] | None:
    """The holder's record in the lock file, or None when empty (a holder still writing it) or unreadable."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        record = json.loads(os.read(fd, 4096) or b"null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
