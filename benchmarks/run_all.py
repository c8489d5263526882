"""Run the three benchmarks (scheduler step, sampling, training) and print one markdown table.

    python benchmarks/run_all.py [--device cpu|cuda] [--quick] [--threads N] [--bf16] [--compile]
        [--quality_steps N]

The table in docs/speed.md is this script's output, with the command and machine it names.
"""

from __future__ import annotations

import argparse
import time

import bench_sampling
import bench_scheduler
import bench_training
import torch
from _common import add_common_args, command_line, machine_line, markdown_table


def main(argv: list[str] | None = None) -> None:
    p = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--quality_steps", type=int, default=0, help="Passed to bench_training.py.")
    args = p.parse_args(argv)
    rows, notes = [], []
    start = time.perf_counter()
    for bench in (bench_scheduler, bench_sampling, bench_training):
        r, n = bench.run(args)
        rows += r
        notes += [f"{bench.__name__}: {note}" for note in n]
    device = torch.device(args.device)
    print("\n".join([
        machine_line(device), "", f"Command: `{command_line()}` ({time.strftime('%Y-%m-%d')}, "
        f"{time.perf_counter() - start:.0f} s)", "", markdown_table(rows), "", *[f"- {n}" for n in notes],
    ]))


if __name__ == "__main__":
    main()
