"""Training throughput (images/s): the training script's step vs a step written as in diffusers' example.

ddpm_ext's step is `training_step` of ddpm_ext/training/train.py (Algorithm 1 with the script's seeded
randomness), imported, not copied, followed by what the script's loop does: backward, gradient clipping at
1.0, AdamW from the script's `build_optimizer` (training/setup.py: `--optimizer_impl` is the script's own), zero_grad.
diffusers' step follows examples/unconditional_image_generation/train_unconditional.py: `torch.randn` noise,
`torch.randint` timesteps, `DDPMScheduler.add_noise`, `F.mse_loss(model_output.float(), noise.float())`,
backward, clipping at 1.0, `torch.optim.AdamW`, zero_grad. Neither keeps an EMA (the example's default).
Both train the same 1.1 M-parameter UNet (the same initial weights) on the same MNIST-5k batches, padded to
32×32, batch 64 (16 with --quick).

`--quality_steps N` also trains every variant and the diffusers-style step N steps from the same seed and
reports the training-loss curve (mean of the first and last tenth of the steps) and L_simple on the 500
held-out MNIST-5k test digits with fixed (t, ε), so a faster variant that learns worse would show.

    python benchmarks/bench_training.py [--device cpu|cuda] [--quick] [--threads N] [--bf16] [--compile]
        [--quality_steps N]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from _common import Row, add_common_args, alternate, median, peak_memory, report, rounds, setup
from bench_sampling import bench_unet
from diffusers import DDPMScheduler

# ddpm_ext after _common, which puts the repository root on sys.path (first-party imports sort last)
import ddpm_ext.training.train as train_ddpm
from ddpm_ext import DDPMExtScheduler
from ddpm_ext.data import load_mnist_5k
from ddpm_ext.training.flags import parse_args
from ddpm_ext.training.setup import build_optimizer

LEARNING_RATE = 5e-4  # the same for every variant; no warm-up or decay (not what is being compared)


def mnist_32(split: str) -> torch.Tensor:
    """MNIST-5k digits of `split` as (N, 1, 32, 32) in [-1, 1] (28×28 padded with the background value)."""
    images = np.stack([np.asarray(im, dtype=np.float32) for im in load_mnist_5k(split=split)["image"]])
    x = torch.from_numpy(images / 127.5 - 1.0).unsqueeze(1)
    return F.pad(x, (2, 2, 2, 2), value=-1.0)


class OursTrainer:
    """The training script's step: its `training_step`, then the loop's backward / clip / AdamW / zero_grad."""

    def __init__(self, unet, device, flags: list[str], autocast_dtype=None, compile=False, compile_mode=None,
                 grad_scaler=False):
        self.args = parse_args(["--learning_rate", str(LEARNING_RATE), *flags])
        self.train_ddpm = train_ddpm
        self.unet = unet.to(device).train()
        if self.args.channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.model = torch.compile(self.unet, mode=compile_mode) if compile else self.unet
        self.scheduler = DDPMExtScheduler()
        self.optimizer = build_optimizer(self.unet.parameters(), self.args)
        self.randomness = train_ddpm.StepRandomness(self.args.seed)
        self.device, self.autocast_dtype, self.step_count = device, autocast_dtype, 0
        # fp16 autocast needs loss scaling, as accelerate's `--mixed_precision fp16` does it (torch.amp.GradScaler)
        self.scaler = torch.amp.GradScaler(device.type) if grad_scaler else None

    def step(self, clean: torch.Tensor) -> torch.Tensor:
        if self.args.channels_last:
            clean = clean.contiguous(memory_format=torch.channels_last)
        g = self.randomness.generator(self.step_count, 0, 0)
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else contextlib.nullcontext())
        with autocast:
            loss = self.train_ddpm.training_step(self.model, self.scheduler, clean, g, loss_type="simple")
        backward_clip_step(loss, self.unet, self.optimizer, self.scaler)
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        return loss.detach()


def backward_clip_step(loss: torch.Tensor, unet, optimizer, scaler=None) -> None:
    """backward, clipping at 1.0, the optimizer step: through `scaler` (fp16) as accelerate's backward,
    `clip_grad_norm_` (which unscales first) and optimizer step do it."""
    if scaler is None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()


# train_unconditional.py's `weight_dtype` of each --mixed_precision
MIXED_PRECISION_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DiffusersTrainer:
    """One step as in diffusers' train_unconditional.py (no EMA; fp32 unless `mixed_precision` is given).

    With `mixed_precision` "bf16" or "fp16" the step does what the example does under accelerate: the batch and the
    noise in `weight_dtype`, the UNet's forward under `torch.autocast` (accelerate wraps the prepared model's
    forward in it), the loss in float32, and for fp16 a gradient scaler.
    """

    def __init__(self, unet, device, seed: int = 0, mixed_precision: str = "no"):
        self.unet = unet.to(device).train()
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.999),
                                           weight_decay=0.0, eps=1e-8)
        self.device = device
        self.weight_dtype = MIXED_PRECISION_DTYPES[mixed_precision]
        self.scaler = torch.amp.GradScaler(device.type) if mixed_precision == "fp16" else None
        torch.manual_seed(seed)

    def step(self, clean_images: torch.Tensor) -> torch.Tensor:
        if self.weight_dtype is not None:
            clean_images = clean_images.to(self.weight_dtype)
        noise = torch.randn(clean_images.shape, dtype=clean_images.dtype, device=clean_images.device)
        bsz = clean_images.shape[0]
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (bsz,),
                                  device=clean_images.device).long()
        noisy_images = self.scheduler.add_noise(clean_images, noise, timesteps)
        with torch.autocast(self.device.type, dtype=self.weight_dtype, enabled=self.weight_dtype is not None):
            model_output = self.unet(noisy_images, timesteps).sample
        loss = F.mse_loss(model_output.float(), noise.float())
        backward_clip_step(loss, self.unet, self.optimizer, self.scaler)
        self.optimizer.zero_grad()
        return loss.detach()


@torch.no_grad()
def held_out_loss(unet, test: torch.Tensor, device: torch.device, batch: int = 100) -> float:
    """L_simple on the held-out digits with (t, ε) fixed by a seed: the same draws for every model."""
    scheduler, g = DDPMExtScheduler(), torch.Generator().manual_seed(1234)
    unet.eval()
    total = 0.0
    for i in range(0, len(test), batch):
        x0 = test[i : i + batch]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
        x_t = scheduler.add_noise(x0, noise, t).to(device)
        out = unet(x_t, t.to(device)).sample.float().cpu()
        total += F.mse_loss(out, noise, reduction="sum").item()
    unet.train()
    return total / test.numel()


def variants(args: argparse.Namespace, device: torch.device) -> list[tuple[str, dict]]:
    v = [("training script, default flags", {"flags": []}),
         ("--channels_last", {"flags": ["--channels_last"]}),
         ("--optimizer_impl foreach", {"flags": ["--optimizer_impl", "foreach"]}),
         ("--optimizer_impl fused", {"flags": ["--optimizer_impl", "fused"]})]
    if args.bf16:
        v.append(("bf16 autocast (--mixed_precision bf16)", {"flags": [], "autocast_dtype": torch.bfloat16}))
    if args.compile:
        v.append(("torch.compile (--compile)", {"flags": [], "compile": True, "compile_mode": args.compile_mode}))
    return v


def run(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    device = setup(args)
    batch = 16 if args.quick else 64
    steps_per_round = 2 if args.quick else 4
    n_rounds = rounds(args, full=7, quick=3)
    train = mnist_32("train")
    base = bench_unet(in_channels=1)
    n_params = sum(p.numel() for p in base.parameters())

    def batches():
        i = 0
        while True:
            yield train[(i * batch) % (len(train) - batch):][:batch].to(device)
            i += 1

    trainers = {name: OursTrainer(copy.deepcopy(base), device, **opts) for name, opts in variants(args, device)}
    theirs = DiffusersTrainer(copy.deepcopy(base), device)
    data = batches()
    fixed = next(data)

    def steps(trainer):
        def go():
            for _ in range(steps_per_round):
                trainer.step(fixed)
        return go

    first = {}
    for name, trainer in trainers.items():  # warm-up; compilation happens here
        start = time.perf_counter()
        trainer.step(fixed)
        first[name] = time.perf_counter() - start
    fns = {name: steps(t) for name, t in trainers.items()}
    fns["diffusers"] = steps(theirs)
    times = alternate(fns, n_rounds, device, warmup=1)
    t_theirs = median(times["diffusers"]) / steps_per_round
    mem_theirs = peak_memory(steps(theirs), device)
    rows = []
    for name, trainer in trainers.items():
        t_ours = median(times[name]) / steps_per_round
        rows.append(Row(
            benchmark=f"training step, batch {batch}, 32×32, {n_params / 1e6:.2f} M-param UNet", variant=name,
            ours=t_ours, theirs=t_theirs, unit="per step", throughput=(batch / t_ours, batch / t_theirs),
            ours_mem=peak_memory(steps(trainer), device), theirs_mem=mem_theirs,
        ))
    notes = [f"median of {n_rounds} alternating rounds of {steps_per_round} steps; images/s = batch / median step time"]
    notes += [f"{name}: first step (compilation included) {first[name]:.1f} s"
              for name in trainers if "compile" in name]

    if args.quality_steps:
        test = mnist_32("test")
        curves = {}
        for name, opts in variants(args, device):
            trainer, data = OursTrainer(copy.deepcopy(base), device, **opts), batches()
            curves[name] = ([float(trainer.step(next(data))) for _ in range(args.quality_steps)],
                            held_out_loss(trainer.unet, test, device))
        trainer, data = DiffusersTrainer(copy.deepcopy(base), device), batches()
        curves["diffusers"] = ([float(trainer.step(next(data))) for _ in range(args.quality_steps)],
                               held_out_loss(trainer.unet, test, device))
        tenth = max(1, args.quality_steps // 10)
        for row in rows + [None]:
            name = row.variant if row is not None else "diffusers"
            losses, held = curves[name]
            summary = (f"{args.quality_steps} steps: train loss {np.mean(losses[:tenth]):.4f} → "
                       f"{np.mean(losses[-tenth:]):.4f}, held-out L_simple {held:.4f}")
            if row is not None:
                row.check = summary
            else:
                notes.append(f"diffusers-style step, {summary}")
    return rows, notes


def main(argv: list[str] | None = None) -> None:
    p = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--quality_steps", type=int, default=0,
                   help="Also train every variant this many steps and compare the losses.")
    args = p.parse_args(argv)
    rows, notes = run(args)
    print(report("Training", rows, torch.device(args.device), notes))


if __name__ == "__main__":
    main()
