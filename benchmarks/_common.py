"""Shared helpers of the benchmarks: options, alternating timed rounds, peak memory, the machine, markdown.

The benchmarks are scripts, not tests: they compare ddpm_ext with diffusers in one process, on the same
inputs, alternating the two in every round so that a slow spell of the machine hits both alike, and report
medians. Run them from the repository root, e.g. `python benchmarks/run_all.py --quick --threads 1`.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import diffusers
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the package, without installing


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------
def add_common_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="Where to run (cuda: the first GPU).")
    p.add_argument("--quick", action="store_true",
                   help="Few rounds and small sizes: checks that everything runs; numbers are rough.")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's choice).")
    p.add_argument("--rounds", type=int, default=None, help="Timed rounds per variant (default: 15, 5 with --quick).")
    p.add_argument("--compile", action="store_true",
                   help="Also time the torch.compile variants (compilation takes minutes on a CPU).")
    p.add_argument("--compile_mode", default=None,
                   help="torch.compile mode for those variants, e.g. reduce-overhead (CUDA graphs).")
    p.add_argument("--bf16", action="store_true", help="Also time the bfloat16-autocast variants.")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Apply --threads and check --device; return the device."""
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.rounds is not None and args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {args.rounds}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible to PyTorch here.")
    return torch.device(args.device)


def rounds(args: argparse.Namespace, full: int = 15, quick: int = 5) -> int:
    return args.rounds or (quick if args.quick else full)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------------
def alternate(fns: dict[str, Callable[[], object]], n_rounds: int, device: torch.device,
              warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, `n_rounds` times, alternating the functions within every round.

    The order of the functions is reversed every other round, so neither always runs first. `warmup` untimed
    rounds come first (allocator, caches, lazy initialisation, compilation).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
        synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(n_rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            synchronize(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


class _MallinfoStruct(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _heap_reader() -> Callable[[], int] | None:
    """Bytes the C heap has handed out and not taken back (glibc's mallinfo2), or None without glibc >= 2.33."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallinfoStruct

    def read() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd  # small blocks in use + mmapped (large tensor) blocks

    return read


class _HeapSampler:
    """The C heap's bytes in use, sampled every millisecond in a thread; keeps the maximum."""

    def __init__(self, read: Callable[[], int]) -> None:
        self.read = read
        self.peak = self.start = read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.read())
            time.sleep(0.001)

    def __enter__(self) -> "_HeapSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak memory one call of `fn` adds, in bytes.

    CUDA: `torch.cuda.max_memory_allocated` above the level before the call (tensors only). CPU: the C heap's
    bytes in use (glibc `mallinfo2`, where PyTorch's CPU tensors live) above the level before the call,
    sampled every millisecond: an estimate that can miss a spike shorter than a millisecond. `None` where
    glibc's `mallinfo2` is missing (not Linux / glibc < 2.33).
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    read = _heap_reader()
    if read is None:
        return None
    with _HeapSampler(read) as s:
        fn()
    return s.peak - s.start


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One comparison: ddpm_ext's variant against diffusers on the same work."""

    benchmark: str
    variant: str
    ours: float  # seconds per unit of work (a step, a sampling call, a training step)
    theirs: float
    unit: str = "per call"
    ours_mem: int | None = None
    theirs_mem: int | None = None
    check: str = ""  # agreement with diffusers, or the quality summary
    throughput: tuple[float, float] | None = None  # (ours, theirs) in images/s, where it applies
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """ddpm_ext's time / diffusers' time: below 1 is faster."""
        return self.ours / self.theirs


HEADER = ["benchmark", "variant", "ddpm_ext", "diffusers", "time ratio ddpm_ext / diffusers", "speed-up",
          "peak memory ddpm_ext / diffusers", "agreement / quality"]


def row_cells(r: Row) -> list[str]:
    if r.throughput is not None:
        ours, theirs = f"{r.throughput[0]:.1f} img/s", f"{r.throughput[1]:.1f} img/s"
    else:
        ours, theirs = f"{fmt_time(r.ours)} {r.unit}", f"{fmt_time(r.theirs)} {r.unit}"
    return [r.benchmark, r.variant, ours, theirs, f"{r.ratio:.2f}×", f"{1 / r.ratio:.2f}×",
            f"{fmt_bytes(r.ours_mem)} / {fmt_bytes(r.theirs_mem)}", r.check]


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_line(device: torch.device) -> str:
    """CPU model, cores, bf16 support, torch / diffusers versions, threads, and the GPU where one is used."""
    flags = cpu_flags()
    bf16 = ("avx512_bf16" if "avx512_bf16" in flags
            else ("amx_bf16" if "amx_bf16" in flags else "no avx512_bf16/amx_bf16"))
    isa = "avx512f" if "avx512f" in flags else ("avx2" if "avx2" in flags else "no avx2")
    parts = [f"CPU: {cpu_model()} ({os.cpu_count()} cores, {isa}, {bf16})",
             f"torch {torch.__version__}", f"diffusers {diffusers.__version__}", f"{torch.get_num_threads()} threads"]
    if device.type == "cuda":
        parts.insert(1, f"GPU: {torch.cuda.get_device_name(device)}")
    return "Machine: " + ", ".join(parts) + f"; device {device.type}"


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def report(title: str, rows: list[Row], device: torch.device, notes: list[str] = ()) -> str:
    """The markdown block a benchmark prints: title, machine, command, date, table, notes."""
    out = [f"### {title}", "", machine_line(device), "",
           f"Command: `{command_line()}` ({time.strftime('%Y-%m-%d')})", "", markdown_table(rows)]
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out)
