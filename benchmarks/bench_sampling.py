"""Sampling wall time: `DDPMExtPipeline` vs diffusers' `DDPMPipeline`, same UNet, steps, batch and generator.

Both pipelines get the same UNet weights (1.1 M parameters, 32×32 RGB: bench_training.py's UNet with 3
channels) and a DDPM scheduler with the same configuration; every call starts from `generator.manual_seed(0)`.
Variants of ddpm_ext: the default path, and `enable_fast_path(...)` with channels-last, plus bf16 autocast (`--bf16`)
and `torch.compile` (`--compile`). Each variant is timed in rounds alternating with diffusers, and its images are
compared with diffusers' (max |Δ| in [0, 1] pixel units, against the tolerance stated in the table).

    python benchmarks/bench_sampling.py [--device cpu|cuda] [--quick] [--threads N] [--bf16] [--compile]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from _common import Row, add_common_args, alternate, generator, median, peak_memory, report, rounds, setup
from diffusers import DDPMPipeline, DDPMScheduler

# ddpm_ext after _common, which puts the repository root on sys.path (first-party imports sort last)
from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet

# max |Δ| in [0, 1] pixel units that counts as "the same images"
TOLERANCE = {"fp32": 1e-4, "bf16": 0.1}


def bench_unet(in_channels: int = 3, sample_size: int = 32):
    """The 1.1 M-parameter UNet of the benchmarks: `rgb32-small` with block_out_channels (32, 64, 64)."""
    torch.manual_seed(0)
    return build_unet("rgb32-small", block_out_channels=(32, 64, 64), in_channels=in_channels,
                      out_channels=in_channels, sample_size=sample_size)


def run(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    device = setup(args)
    batch, steps = (4, 10) if args.quick else (16, 50)
    n_rounds = rounds(args, full=5, quick=2)
    unet = bench_unet().to(device).eval()
    ours = DDPMExtPipeline(unet=unet, scheduler=DDPMExtScheduler())
    # the same weights, in their own module: the fast path changes the layout of ddpm_ext's UNet in place
    theirs = DDPMPipeline(unet=copy.deepcopy(unet), scheduler=DDPMScheduler())
    for p in (ours, theirs):
        p.set_progress_bar_config(disable=True)

    # ours with diffusers' spacing ("leading"; ddpm_ext's default is "trailing"), so the images must agree
    same = {"timestep_spacing": "leading"}

    def sample(pipe):
        kwargs = same if pipe is ours else {}
        return lambda: pipe(batch_size=batch, num_inference_steps=steps, generator=generator(device, 0),
                            output_type="np", **kwargs).images

    variants = [("default path", None, "fp32"), ("fast path: channels_last", {"channels_last": True}, "fp32")]
    if args.bf16:
        variants.append(("fast path: channels_last + bf16 autocast",
                         {"channels_last": True, "autocast_dtype": torch.bfloat16}, "bf16"))
    if args.compile:
        variants.append(("fast path: torch.compile", {"channels_last": False, "compile": True,
                                                       "compile_mode": args.compile_mode}, "fp32"))
    reference = torch.from_numpy(sample(theirs)())
    rows, notes = [], []
    for name, options, precision in variants:
        ours.disable_fast_path()
        if options is not None:
            ours.enable_fast_path(**options)
        start = time.perf_counter()
        images = torch.from_numpy(sample(ours)())  # also the warm-up (and compilation) call
        first = time.perf_counter() - start
        delta = (images - reference).abs().max().item()
        times = alternate({"ours": sample(ours), "theirs": sample(theirs)}, n_rounds, device, warmup=0)
        tol = TOLERANCE[precision]
        rows.append(Row(
            benchmark=f"sampling, batch {batch}, {steps} DDPM steps", variant=name,
            ours=median(times["ours"]), theirs=median(times["theirs"]), unit="per call",
            ours_mem=peak_memory(sample(ours), device), theirs_mem=peak_memory(sample(theirs), device),
            check=f"max |Δ| {delta:.1e} ({'≤' if delta <= tol else '>'} {tol:g})",
        ))
        if options and options.get("compile"):
            notes.append(f"torch.compile: the first call (compilation included) took {first:.1f} s")
    ours.disable_fast_path()
    notes.insert(0, f"median of {n_rounds} alternating rounds; UNet 1.1 M parameters, 32×32 RGB; "
                    "images compared in [0, 1]")
    return rows, notes


def main(argv: list[str] | None = None) -> None:
    args = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(argv)
    rows, notes = run(args)
    print(report("Sampling", rows, torch.device(args.device), notes))


if __name__ == "__main__":
    main()
