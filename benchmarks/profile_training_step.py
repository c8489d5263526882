"""Where the quick start's training step spends its time (issue 15): step time per batch size and layout, the
step's FLOPs, and a torch.profiler table of its operators.

The step is the training script's own (`ddpm_ext.training.train.training_step` with the quick start's cosine β,
v-prediction and min-SNR-5, then backward, gradient clipping at 1 and AdamW) on the `mnist-small` UNet with
random 28×28 batches; the data pipeline, EMA and logging are not in it. Each variant is warmed up, then timed
over `--rounds` steps; the median is reported, with the time per image.

    python benchmarks/profile_training_step.py --threads 2                 # batch 64, 32, 16; fp32 NCHW
    python benchmarks/profile_training_step.py --threads 2 --layouts default channels_last bf16 --batch_sizes 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the package, without installing

from ddpm_ext import DDPMExtScheduler, build_unet  # noqa: E402
from ddpm_ext.training.train import training_step  # noqa: E402

LAYOUTS = ("default", "channels_last", "bf16")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's choice).")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[64, 32, 16], help="Batch sizes (default: 64 32 16).")
    p.add_argument("--layouts", nargs="+", default=["default"], choices=LAYOUTS,
                   help="default = fp32 NCHW; channels_last = NHWC weights and batches; "
                        "bf16 = the forward under CPU autocast.")
    p.add_argument("--rounds", type=int, default=12, help="Timed steps per variant (default: 12).")
    p.add_argument("--warmup", type=int, default=3, help="Untimed steps first (default: 3).")
    p.add_argument("--profile_rows", type=int, default=15,
                   help="Operators in the profile table of the first variant (0: no profile).")
    args = p.parse_args(argv)
    for name in ("rounds",):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.profile_rows < 0:
        p.error("--warmup and --profile_rows must be >= 0")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if any(b < 1 for b in args.batch_sizes):
        p.error(f"--batch_sizes must be >= 1, got {args.batch_sizes}")
    return args


def make_step(batch_size: int, layout: str):
    torch.manual_seed(0)
    unet = build_unet("mnist-small")
    scheduler = DDPMExtScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=3e-3)
    clean = torch.rand(batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    if layout == "channels_last":
        unet = unet.to(memory_format=torch.channels_last)
        clean = clean.contiguous(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(1)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=layout == "bf16"):
            loss = training_step(unet, scheduler, clean, generator, loss_type="simple", snr_gamma=5.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows, first = [], None
    for layout in args.layouts:
        for b in args.batch_sizes:
            step = make_step(b, layout)
            for _ in range(args.warmup):
                step()
            times = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            median = statistics.median(times)
            with FlopCounterMode(display=False) as counter:
                step()
            gflop = counter.get_total_flops() / 1e9
            rows.append((layout, b, median, 1e3 * median / b, gflop, gflop / median))
            first = first or step
    print(f"Training step of the quick start (mnist-small, 28x28), {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}, median of {args.rounds} steps\n")
    print("| layout | batch | s / step | ms / image | GFLOP / step | GFLOP/s |\n|---|---|---|---|---|---|")
    for layout, b, median, per_image, gflop, rate in rows:
        print(f"| {layout} | {b} | {median:.4f} | {per_image:.2f} | {gflop:.1f} | {rate:.0f} |")
    if args.profile_rows and first is not None:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                first()
        print(f"\nProfile of 5 steps of {args.layouts[0]}, batch {args.batch_sizes[0]} (self CPU time):\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
