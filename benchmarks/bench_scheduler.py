"""Scheduler step overhead at batch 1×3×32×32, where the per-call overhead dominates: ddpm_ext vs diffusers.

Times `DDPMExtScheduler.step` against diffusers' `DDPMScheduler.step`, and `DDIMExtScheduler.step` against
`DDIMScheduler.step` (η = 0 and η = 1), with the same configuration, model output, sample, timesteps and
generator seed; both get the timesteps as the pipelines pass them (elements of `scheduler.timesteps`). The
100-step trajectories of both are also compared (max |Δ|).

    python benchmarks/bench_scheduler.py [--device cpu|cuda] [--quick] [--threads N]
"""

from __future__ import annotations

import argparse

import torch
from _common import Row, add_common_args, alternate, generator, median, peak_memory, report, rounds, setup
from diffusers import DDIMScheduler, DDPMScheduler

# ddpm_ext after _common, which puts the repository root on sys.path (first-party imports sort last)
from ddpm_ext import DDIMExtScheduler, DDPMExtScheduler

SHAPE = (1, 3, 32, 32)
STEPS = 100
TOLERANCE = 1e-4  # float32 rounding over 100 steps; the coefficients are computed in float64 (diffusers: float32)


def _loop(scheduler, device: torch.device, step_kwargs: dict, n_calls: int, seed: int = 0) -> torch.Tensor:
    """`n_calls` steps (cycling through the 100 timesteps) with a fixed model output; returns the last sample."""
    g = generator(device, seed)
    x = torch.randn(SHAPE, generator=g, device=device)
    eps = torch.randn(SHAPE, generator=g, device=device)
    timesteps = list(scheduler.timesteps)
    for i in range(n_calls):
        x = scheduler.step(eps, timesteps[i % len(timesteps)], x, generator=g, **step_kwargs).prev_sample
    return x


def run(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    device = setup(args)
    n_rounds = rounds(args, full=21, quick=5)
    calls = 100 if args.quick else 300
    cases = [
        ("DDPM step (fixed_small, clip)", DDPMExtScheduler(), DDPMScheduler(), {}),
        ("DDIM step, η = 0", DDIMExtScheduler(), DDIMScheduler(), {"eta": 0.0}),
        ("DDIM step, η = 1", DDIMExtScheduler(), DDIMScheduler(), {"eta": 1.0}),
    ]
    rows = []
    for name, ours, theirs, kwargs in cases:
        for s in (ours, theirs):
            s.set_timesteps(STEPS, device=device)
        delta = (_loop(ours, device, kwargs, STEPS) - _loop(theirs, device, kwargs, STEPS)).abs().max().item()
        times = alternate(
            {"ours": lambda: _loop(ours, device, kwargs, calls),
             "theirs": lambda: _loop(theirs, device, kwargs, calls)},
            n_rounds, device,
        )
        rows.append(Row(
            benchmark="scheduler step, 1×3×32×32", variant=name,
            ours=median(times["ours"]) / calls, theirs=median(times["theirs"]) / calls, unit="per step",
            ours_mem=peak_memory(lambda: _loop(ours, device, kwargs, calls), device),
            theirs_mem=peak_memory(lambda: _loop(theirs, device, kwargs, calls), device),
            check=f"max |Δ| after {STEPS} steps {delta:.1e} ({'≤' if delta <= TOLERANCE else '>'} {TOLERANCE:g})",
        ))
    notes = [f"median of {n_rounds} alternating rounds of {calls} steps each; goal: ddpm_ext ≤ 0.45× diffusers' time"]
    return rows, notes


def main(argv: list[str] | None = None) -> None:
    args = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(argv)
    rows, notes = run(args)
    print(report("Scheduler step overhead", rows, torch.device(args.device), notes))


if __name__ == "__main__":
    main()
