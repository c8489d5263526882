"""CPU threads that give way when other processes need the cores.

PyTorch runs its CPU kernels on one OpenMP thread per core, and OpenMP's threads busy-wait between kernels.
On an idle machine that is the fastest choice; as soon as another CPU-bound process runs, the spinning threads
fight it for the cores and every step slows down several times (`python benchmarks/bench_contention.py`
measures it). One thread is robust but slower on an idle machine, and so is `OMP_WAIT_POLICY=PASSIVE`. No
setting fixed at start-up is right for both, so
[`AdaptiveThreads`] decides while the job runs: once per `interval` seconds it reads how much CPU the *other*
processes used (Linux `/proc/stat` minus this process's own CPU time, so its own spinning threads do not
count) and sets `torch.set_num_threads` to the cores they leave free (at least 1, at most the number the job
started with). The training loop and the sampling commands call [`AdaptiveThreads.tick`] once per step, in the
main thread (OpenMP thread counts belong to the thread that sets them).

It stays off — the thread count is then exactly what PyTorch or the user chose — when the user set
`OMP_NUM_THREADS` ([`threads_chosen_by_user`]; `accelerate launch` sets it for every job it starts, so under
`accelerate launch` its value is taken as the most threads to use, and `--cpu_threads N` fixes a count), when the
job runs on an accelerator, when only one thread is available, or where
`/proc/stat` does not exist (not Linux). Thread counts change the order of floating-point sums, so a run whose
thread count changed is not bit-identical to one that kept it: set `OMP_NUM_THREADS` for bit-exact reruns.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any, Callable

import torch

from .validation import check_int, check_number

__all__ = ["AdaptiveThreads", "other_processes_cpu", "parse_cpu_threads", "threads_chosen_by_user"]

_PROC_STAT = "/proc/stat"


def parse_cpu_threads(value: str | int, name: str = "cpu_threads") -> str | int:
    """`"auto"` or a thread count >= 1 (an int or its text); else a `ValueError` naming `name` and the value.

    Example:

    ```py
    >>> parse_cpu_threads("auto"), parse_cpu_threads("2")
    ('auto', 2)

    ```
    """
    if value == "auto":
        return "auto"
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if isinstance(value, bool) or count < 1 or str(count) != str(value).strip():
        raise ValueError(f"`{name}` must be 'auto' or an integer >= 1, got {value!r}.")
    return count


def threads_chosen_by_user(environ: Any = None) -> bool:
    """Whether `OMP_NUM_THREADS` is the user's choice: set, and not by `accelerate launch`, which always sets it
    (to cores / processes) in the environment of the script it starts, together with its `ACCELERATE_DYNAMO_*`
    variables.

    Example:

    ```py
    >>> threads_chosen_by_user({"OMP_NUM_THREADS": "1"}), threads_chosen_by_user({})
    (True, False)
    >>> threads_chosen_by_user({"OMP_NUM_THREADS": "2", "ACCELERATE_DYNAMO_BACKEND": "NO"})  # accelerate launch
    False

    ```
    """
    environ = os.environ if environ is None else environ
    return "OMP_NUM_THREADS" in environ and "ACCELERATE_DYNAMO_BACKEND" not in environ


def _busy_seconds(path: str = _PROC_STAT) -> float | None:
    """CPU seconds all processes spent busy since boot (user + nice + system + irq + softirq + steal)."""
    try:
        with open(path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 5:
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class _Sample:
    __slots__ = ("wall", "busy", "own")

    def __init__(self, busy: float) -> None:
        self.wall, self.busy, self.own = time.monotonic(), busy, _own_seconds()


def other_processes_cpu(seconds: float = 0.5) -> float | None:
    """How many cores the other processes kept busy over the next `seconds` (None where it cannot be read).

    Example:

    ```py
    >>> from ddpm_ext.cpu_threads import other_processes_cpu
    >>> load = other_processes_cpu(0.2)
    >>> load is None or load >= 0
    True

    ```
    """
    busy = _busy_seconds()
    if busy is None:
        return None
    first = _Sample(busy)
    time.sleep(seconds)
    return _others(first, _Sample(_busy_seconds() or busy))


def _others(a: _Sample, b: _Sample) -> float:
    wall = max(b.wall - a.wall, 1e-9)
    return max(0.0, ((b.busy - a.busy) - (b.own - a.own)) / wall)


class AdaptiveThreads:
    """Set `torch.set_num_threads` to the cores other processes leave free, re-checked while a job runs.

    Args:
        max_threads (`int`, *optional*): the most threads to use; defaults to `torch.get_num_threads()` at creation
            (PyTorch's choice: one per core this process may run on).
        interval (`float`, defaults to 1.0): seconds between two readings of the machine's load.
        patience (`int`, defaults to 2): how many readings in a row must ask for the same new thread count before it
            changes (a short burst of another process does not flip it).
        enabled (`bool`, *optional*): force on or off; by default on unless the user set `OMP_NUM_THREADS`
            ([`threads_chosen_by_user`]), the job runs on
            an accelerator (`device` other than CPU), `max_threads` is 1 or `/proc/stat` cannot be read.
        device (`str` or `torch.device`, *optional*): the job's device; anything but CPU turns it off.
        machine_cores (`int`, *optional*): the cores `/proc/stat` counts (defaults to `os.cpu_count()`): the free
            cores are these minus the other processes' load, so on a large machine other jobs on other cores do not
            take this job's threads away.

    Example:

    ```py
    >>> import torch
    >>> from ddpm_ext.cpu_threads import AdaptiveThreads
    >>> threads = AdaptiveThreads(interval=0.0, patience=1)
    >>> for step in range(3):
    ...     _ = torch.ones(64, 64) @ torch.ones(64, 64)   # one step of work
    ...     n = threads.tick()                           # once per step, in the main thread
    >>> 1 <= n <= threads.max_threads
    True
    >>> threads.restore()                                # back to the starting thread count

    ```
    """

    def __init__(
        self,
        max_threads: int | None = None,
        interval: float = 1.0,
        patience: int = 2,
        enabled: bool | None = None,
        device: Any = None,
        machine_cores: int | None = None,
    ) -> None:
        self._initial = torch.get_num_threads()
        self.max_threads = check_int("max_threads", self._initial if max_threads is None else max_threads, 1)
        self.machine_cores = check_int("machine_cores", machine_cores or os.cpu_count() or self.max_threads, 1)
        self.interval = check_number("interval", interval, 0)
        self.patience = check_int("patience", patience, 1)
        on_cpu = device is None or torch.device(device).type == "cpu"
        if enabled is None:
            enabled = on_cpu and not threads_chosen_by_user() and self.max_threads > 1
        busy = _busy_seconds() if enabled else None
        self.enabled = bool(enabled) and busy is not None
        self.threads = self.max_threads if self.enabled else self._initial
        self._last = _Sample(busy) if self.enabled else None
        self._wanted, self._streak = self.threads, 0
        self.steps_at = Counter()  # thread count -> steps run with it (for the run's record)
        self.changes = 0
        if self.enabled and self.threads != self._initial:
            torch.set_num_threads(self.threads)

    @classmethod
    def from_option(cls, option: str | int, device: Any = None) -> "AdaptiveThreads":
        """The threads of a job given `--cpu_threads` = `option`: `"auto"` adapts (unless off for the reasons in
        the class docstring); an integer N sets exactly N threads and keeps them."""
        option = parse_cpu_threads(option)
        if option == "auto":
            return cls(device=device)
        before = torch.get_num_threads()
        torch.set_num_threads(option)
        fixed = cls(max_threads=option, enabled=False)
        fixed._initial = before  # what `restore` gives back
        return fixed

    def wanted_threads(self, others: float) -> int:
        """The thread count for `others` cores kept busy by other processes: the machine's free cores, rounded
        down unless at least 0.6 of the last one is free, clipped to [1, `max_threads`]."""
        free = self.machine_cores - others
        return max(1, min(self.max_threads, int(free + 0.4)))

    def tick(self) -> int:
        """Call once per step (training step or denoising step) in the main thread; returns the thread count the
        next step runs with."""
        self.steps_at[self.threads] += 1
        if not self.enabled:
            return self.threads
        now = time.monotonic()
        if now - self._last.wall < self.interval:
            return self.threads
        sample = _Sample(_busy_seconds() or self._last.busy)
        wanted = self.wanted_threads(_others(self._last, sample))
        self._last = sample
        if wanted == self.threads:
            self._streak = 0
            return self.threads
        self._streak = self._streak + 1 if wanted == self._wanted else 1
        self._wanted = wanted
        if self._streak >= self.patience:
            torch.set_num_threads(wanted)
            self.threads, self._streak = wanted, 0
            self.changes += 1
        return self.threads

    def callback(self) -> Callable:
        """A `callback_on_step_end` for [`DDPMExtPipeline`] that ticks once per denoising step."""

        def on_step_end(pipe, step, timestep, callback_kwargs):
            self.tick()
            return {}

        return on_step_end

    def summary(self) -> dict[str, Any]:
        """What the run used: `adaptive` (on or off), `max_threads`, steps per thread count, number of changes."""
        return {"adaptive": self.enabled, "max_threads": self.max_threads,
                "steps_per_thread_count": {str(k): v for k, v in sorted(self.steps_at.items())},
                "changes": self.changes}

    def restore(self) -> None:
        """Set the thread count back to what it was at creation."""
        if torch.get_num_threads() != self._initial:
            torch.set_num_threads(self._initial)
        self.threads = self._initial
