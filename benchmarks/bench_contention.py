"""Step time of training and sampling with and without a competing CPU load, for several threading choices.

    python benchmarks/bench_contention.py [--steps 30] [--load 2] [--batch_size 64] [--model_config mnist-small]

Each threading choice runs in a fresh subprocess (OpenMP reads `OMP_NUM_THREADS` / `OMP_WAIT_POLICY` when torch
is imported, so they cannot change inside one process). Every measurement is done twice: on the machine as it
is, and while `--load` busy-looping processes (one per core by default) compete for the CPU. The table gives
the median step time of each and the slowdown under load; docs/speed.md's "Threading" table is this script's
output. Run it alone on the machine: its own competitors are the only load it should see.

The first choice is ddpm_ext's default for training and sampling (`--cpu_threads auto`,
[`ddpm_ext.cpu_threads.AdaptiveThreads`], ticked once per step as the training loop does): its threads column
also says how many steps under load ran with how many threads. `GOMP_SPINCOUNT` shortens OpenMP's busy-wait
(libgomp, the OpenMP of PyTorch's Linux wheels) instead of removing it, as `OMP_WAIT_POLICY=PASSIVE` does.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> environment of the measured process ("" = leave the variable unset: PyTorch's own default)
# ("ADAPTIVE": "1" = ddpm_ext's default, `--cpu_threads auto`: ddpm_ext.cpu_threads.AdaptiveThreads ticks every step)
CHOICES: dict[str, dict[str, str]] = {
    "ddpm_ext default (--cpu_threads auto, adaptive)": {"OMP_NUM_THREADS": "", "OMP_WAIT_POLICY": "", "ADAPTIVE": "1"},
    "torch default (all cores, OpenMP busy-wait)": {"OMP_NUM_THREADS": "", "OMP_WAIT_POLICY": ""},
    "all cores, GOMP_SPINCOUNT=10000": {"OMP_NUM_THREADS": "", "OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000"},
    "all cores, OMP_WAIT_POLICY=PASSIVE": {"OMP_NUM_THREADS": "", "OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread": {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": ""},
    "1 thread, OMP_WAIT_POLICY=PASSIVE": {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
}

_WORKER = r"""
import json, statistics, sys, time
import torch
from ddpm_ext import DDPMExtScheduler, build_unet
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
unet = build_unet(cfg["model_config"])
size = unet.config.sample_size
x0 = torch.rand(cfg["batch_size"], unet.config.in_channels, size, size) * 2 - 1
sched = DDPMExtScheduler(beta_schedule="cosine")
opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
g = torch.Generator().manual_seed(0)
threads = None
if cfg["adaptive"]:
    from ddpm_ext.cpu_threads import AdaptiveThreads
    threads = AdaptiveThreads()

def train_step():
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
    loss = torch.nn.functional.mse_loss(unet(sched.add_noise(x0, noise, t), t).sample, noise)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)

@torch.no_grad()
def sample_step():
    unet(x0, torch.full((x0.shape[0],), 500)).sample

out = {"threads": torch.get_num_threads()}
for name, fn in (("train", train_step), ("sample", sample_step)):
    for _ in range(cfg["warmup"]):
        fn()
        threads and threads.tick()
    times = []
    for _ in range(cfg["steps"]):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
        threads and threads.tick()
    out[name] = {"median": statistics.median(times), "max": max(times)}
    if threads:
        out[name]["threads"] = dict(threads.summary()["steps_per_thread_count"])
print(json.dumps(out))
"""


def _busy(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


def measure(env_overrides: dict[str, str], cfg: dict, load: int) -> dict:
    env = dict(os.environ)
    cfg = {**cfg, "adaptive": env_overrides.get("ADAPTIVE") == "1"}
    for key, value in env_overrides.items():
        if key == "ADAPTIVE":
            continue
        env.pop(key, None)
        if value:
            env[key] = value
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    competitors = [mp.Process(target=_busy, args=(time.time() + 3600,), daemon=True) for _ in range(load)]
    for c in competitors:
        c.start()
    try:
        res = subprocess.run(
            [sys.executable, "-c", _WORKER, json.dumps(cfg)], env=env, capture_output=True, text=True, check=True
        )
    finally:
        for c in competitors:
            c.terminate()
            c.join()
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="Timed steps per measurement (after --warmup).")
    p.add_argument("--warmup", type=int, default=3, help="Untimed steps first.")
    p.add_argument("--load", type=int, default=os.cpu_count() or 2, help="Busy-looping competitor processes.")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--model_config", default="mnist-small")
    p.add_argument("--choices", nargs="+", default=list(CHOICES), choices=list(CHOICES), metavar="CHOICE")
    args = p.parse_args(argv)
    cfg = {"steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size, "model_config": args.model_config}
    print(f"{os.cpu_count()} cores; {args.model_config}, batch {args.batch_size}; {args.steps} timed steps; "
          f"load = {args.load} busy-looping processes; `{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}` "
          f"({time.strftime('%Y-%m-%d')})\n")
    print("| threading | threads | train step idle | train step under load | slowdown | UNet forward idle | "
          "forward under load | slowdown |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.choices:
        idle = measure(CHOICES[name], cfg, 0)
        busy = measure(CHOICES[name], cfg, args.load)
        ti, tb = idle["train"]["median"], busy["train"]["median"]
        si, sb = idle["sample"]["median"], busy["sample"]["median"]
        used = busy["train"].get("threads")  # adaptive: steps per thread count under load
        threads = f"{idle['threads']}" + (
            f" (under load: {', '.join(f'{n}: {c} steps' for n, c in used.items())})" if used else "")
        print(f"| {name} | {threads} | {ti:.3f} s | {tb:.3f} s (max {busy['train']['max']:.2f}) | "
              f"{tb / ti:.1f}× | {si:.3f} s | {sb:.3f} s | {sb / si:.1f}× |", flush=True)


if __name__ == "__main__":
    main()
