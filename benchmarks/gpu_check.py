"""The prepared GPU check (issue 30): GPU tests, throughput against diffusers, a short bf16 run, peak memory.

One command for the moment an accelerator is lent, at most 8 minutes with the default sizes, exit status 1 on any
failure (a step that would overrun the global deadline is not run and counts as a failure):

    python benchmarks/gpu_check.py                                   # on a CUDA machine
    python benchmarks/gpu_check.py --cpu --output_dir /tmp/gpu-check # the same steps on a CPU, tiny sizes (smoke)

Steps, in the order of the table:

1. `gpu_tests`: `pytest -m gpu tests/gpu` (sampling on the device against the CPU for DDPM and DDIM, per-image
   generators on the device, exact checkpoint resume on the device); fails if any fails or none passes.
2. `train_throughput`: images/s of a training step of the `ddpm-cifar10` preset at 32×32 (the paper's CIFAR-10
   UNet, 35.7 M parameters, batch 128): fp32, bf16, fp16, bf16 + channels_last, bf16 + channels_last +
   torch.compile, each timed in alternating rounds against the same UNet trained as diffusers'
   `train_unconditional.py` does at the same precision (benchmarks/bench_training.py's two trainers).
3. `sampling`: time per image of diffusers' `DDPMPipeline` with 1000 steps (DDPM-1000) against ddpm_ext's
   default sampler (`DDPMExtPipeline`, DDPM respaced to DEFAULT_SAMPLING_STEPS = 50 trailing steps, what
   `ddpm-ext sample` uses), and against `DDPMExtPipeline` with the same 1000 steps (images compared).
4. `train_run`: the training command (`ddpm_ext.training.train.main`) in bf16 for about 2 minutes on 32×32 RGB
   digits; the logged loss must fall and the saved EMA weights must be finite float32.
5. `peak_memory`: every row's peak memory: `torch.cuda.max_memory_allocated` above what was allocated before (CUDA),
   or the process's peak RSS (`VmHWM`, reset before each measurement; CPU).

It writes `results.json` and `results.md` (plus the tests' junit XML and log) to `--output_dir`, by default
`benchmarks/results/gpu/<date>-<device>/`, and prints the table. `--cpu` runs every step on the CPU with tiny sizes
(a 128 k-parameter config of the same architecture at 16×16, a few steps, a 10-second run): a smoke run that the
slow test tier runs, so that the check cannot rot between GPU sessions. There torch.compile is skipped (it compiles
for minutes on a CPU), with the reason in the table, not as a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

STARTED = time.monotonic()  # the deadline counts from here: importing torch, diffusers and ddpm_ext takes seconds

import torch  # noqa: E402
from _common import ROOT, alternate, command_line, cpu_model, fmt_bytes, machine_line  # noqa: E402
from bench_training import DiffusersTrainer, OursTrainer  # noqa: E402 (after _common: it puts the repo on sys.path)

# --------------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------------
DEFAULT_BUDGET_S = 480.0  # the issue's 8 minutes
CPU_BUDGET_S = 300.0  # a guard against a hang: the smoke run takes about a minute on an idle 2-core machine


@dataclass
class Sizes:
    """The work of each step; `cuda()` is the real check, `cpu()` the smoke run."""

    unet_overrides: dict[str, Any]  # on top of the ddpm-cifar10 preset
    resolution: int  # training and sampling size
    train_batch: int  # images per training step (Ho et al.: 128)
    steps_per_round: int  # training steps per timed round
    train_rounds: int  # alternating timed rounds per training variant
    train_warmup: int  # untimed steps first (cuDNN autotuning, allocator, compilation)
    sample_batch: int
    sample_rounds: int  # alternating timed rounds of the sampling calls
    full_steps: int  # DDPM-1000
    train_seconds: float  # the bf16 run
    eval_batch: int  # the run's final sample grid
    learning_rate: float

    @staticmethod
    def cuda() -> Sizes:
        return Sizes(unet_overrides={}, resolution=32, train_batch=128, steps_per_round=4, train_rounds=5,
                     train_warmup=3, sample_batch=64, sample_rounds=2, full_steps=1000, train_seconds=120.0,
                     eval_batch=16, learning_rate=2e-4)  # 2e-4: Ho et al.'s CIFAR-10 rate

    @staticmethod
    def cpu() -> Sizes:
        return Sizes(unet_overrides={"block_out_channels": (16, 16, 16, 16), "layers_per_block": 1,
                                     "norm_num_groups": 8, "sample_size": 16},
                     resolution=16, train_batch=4, steps_per_round=2, train_rounds=2, train_warmup=1,
                     sample_batch=1, sample_rounds=1, full_steps=1000, train_seconds=10.0, eval_batch=4,
                     learning_rate=2e-3)


# --------------------------------------------------------------------------------------------------
# The global deadline
# --------------------------------------------------------------------------------------------------
class DeadlineExceeded(Exception):
    """Raised inside a piece of work when the check's global deadline passes."""


@dataclass
class Deadline:
    """The check's time budget: what is left, and whether a piece of work estimated at `s` seconds still fits."""

    budget_s: float
    clock: Callable[[], float] = time.monotonic
    start: float | None = None  # default: now

    def __post_init__(self) -> None:
        if self.start is None:
            self.start = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def allows(self, estimate_s: float) -> bool:
        return estimate_s <= self.left()

    def refusal(self, estimate_s: float) -> str:
        return f"not run: needs about {estimate_s:.0f} s, {max(0.0, self.left()):.0f} s of the budget left"


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise [`DeadlineExceeded`] in the main thread after `seconds` (SIGALRM), so a compilation or a run that
    overruns is stopped at the deadline instead of running on."""
    if seconds <= 0:
        raise DeadlineExceeded

    def ring(signum, frame):
        raise DeadlineExceeded

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------
PASSED, FAILED, SKIPPED, NOT_RUN = "passed", "failed", "skipped", "not run"
FAILING = (FAILED, NOT_RUN)  # "skipped" is for what cannot run on this device (the reason is given), not a failure
STEPS = ("gpu_tests", "train_throughput", "sampling", "train_run", "peak_memory")


@dataclass
class Row:
    """One line of the table: a variant of a step, its status and numbers."""

    step: str
    variant: str
    status: str = PASSED
    ours: str = ""  # ddpm_ext's measurement, formatted
    theirs: str = ""  # diffusers' measurement
    time_ratio: float | None = None  # ddpm_ext's time / diffusers' time (below 1: ddpm_ext is faster)
    ours_peak: int | None = None  # bytes
    theirs_peak: int | None = None
    note: str = ""
    data: dict[str, Any] = field(default_factory=dict)  # the raw numbers for the JSON


@dataclass
class StepResult:
    name: str
    status: str = PASSED
    seconds: float = 0.0
    reason: str = ""
    rows: list[Row] = field(default_factory=list)

    def settle(self) -> StepResult:
        """The step fails when a row fails; otherwise it passes (skipped rows allowed) unless nothing ran."""
        if self.status in FAILING:
            return self
        statuses = [r.status for r in self.rows]
        if any(s in FAILING for s in statuses):
            self.status = FAILED
        elif statuses and all(s == SKIPPED for s in statuses):
            self.status = SKIPPED
        return self


def render_table(rows: list[Row]) -> str:
    """The markdown table of every row (pure: also what the fast tier tests)."""
    header = ["step", "variant", "status", "ddpm_ext", "diffusers", "time ratio ddpm_ext / diffusers", "speed-up",
              "peak memory ddpm_ext / diffusers", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        ratio = "" if r.time_ratio is None else f"{r.time_ratio:.2f}×"
        speedup = "" if not r.time_ratio else f"{1 / r.time_ratio:.2f}×"
        memory = "" if r.ours_peak is None and r.theirs_peak is None else fmt_bytes(r.ours_peak)
        if r.theirs_peak is not None:
            memory += f" / {fmt_bytes(r.theirs_peak)}"
        status = r.status if r.status == PASSED else f"**{r.status}**"
        cells = [r.step, r.variant, status, r.ours, r.theirs, ratio, speedup, memory, r.note]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def exit_code(results: list[StepResult]) -> int:
    """1 when any step (or row) failed or was not run, else 0; every step of [`STEPS`] must be there."""
    names = [r.name for r in results]
    if sorted(names) != sorted(STEPS):
        return 1
    return int(any(r.status in FAILING or any(row.status in FAILING for row in r.rows) for r in results))


# --------------------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------------------
def _vm_hwm() -> int | None:
    """This process's peak resident set size (VmHWM) in bytes, or None where /proc is missing."""
    try:
        match = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then `m.bytes`.

    CUDA: `torch.cuda.max_memory_allocated` during the block above what was allocated before it (weights, gradients,
    optimizer state and activations made in the block). CPU: the process's peak RSS (VmHWM) during the block, reset
    at its start through /proc/self/clear_refs (Linux); it counts the whole process (Python, libraries, everything
    resident), so it is only comparable between rows of the same run.
    """

    def __init__(self, device: torch.device):
        self.device, self.bytes = device, None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.bytes = _vm_hwm()


def memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated above what was allocated before (tensors only)"
    return "process peak RSS (VmHWM, reset before each measurement; the whole process, CPU smoke run)"


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# 1. The GPU tests
# --------------------------------------------------------------------------------------------------
GPU_TESTS = "tests/gpu"
TESTS_CAP_S = {"cuda": 150.0, "cpu": 200.0}  # the tests may take at most this much of the budget


def parse_junit(xml_text: str) -> list[dict[str, Any]]:
    """The test cases of a pytest junit XML report: name, outcome (passed / failed / error / skipped), seconds,
    message and the `record_property` values (pure: the fast tier tests it)."""
    cases = []
    for case in ET.fromstring(xml_text).iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (child.get("message") or "").strip()
                break
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        cases.append({"name": case.get("name"), "classname": case.get("classname"), "outcome": outcome,
                      "seconds": float(case.get("time") or 0.0), "message": message, "properties": properties})
    return cases


def judge_tests(cases: list[dict[str, Any]], returncode: int) -> tuple[str, str]:
    """The step's status and reason: failed if pytest failed or any case failed, or if no case passed (all skipped,
    e.g. CUDA not seen by the tests on a CUDA machine)."""
    failed = [c["name"] for c in cases if c["outcome"] in ("failed", "error")]
    passed = [c for c in cases if c["outcome"] == "passed"]
    if failed:
        return FAILED, f"{len(failed)} failed: {', '.join(failed)}"
    if not passed:
        return FAILED, f"no GPU test passed ({len(cases)} collected, all skipped)"
    if returncode != 0:
        return FAILED, f"pytest exited with {returncode}"
    return PASSED, ""


def run_gpu_tests(ctx: Context) -> StepResult:
    step = StepResult("gpu_tests")
    xml = ctx.output_dir / "gpu_tests.xml"
    log = ctx.output_dir / "gpu_tests.log"
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)}
    if ctx.device.type == "cpu":
        env.update(DDPM_EXT_TEST_DEVICE="cpu", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", GPU_TESTS, "-p", "no:cacheprovider",
           f"--junitxml={xml}", "-o", "junit_family=xunit1"]  # xunit1 keeps record_property
    try:
        with open(log, "w") as out:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=max(1.0, min(ctx.deadline.left(), TESTS_CAP_S[ctx.device.type])),
                                  check=False)
    except subprocess.TimeoutExpired:
        step.status, step.reason = NOT_RUN, "stopped at the deadline (pytest killed)"
        return step
    cases = parse_junit(xml.read_text()) if xml.is_file() else []
    step.status, step.reason = judge_tests(cases, proc.returncode)
    for c in cases:
        props = c["properties"]
        note = c["message"][:200] if c["outcome"] != "passed" else ""
        if "max_abs_diff" in props:
            note = f"max |Δ| {float(props['max_abs_diff']):.1e} (≤ {float(props['tolerance']):g}) " + note
        elif "tensors_compared" in props:
            note = f"{props['tensors_compared']} tensors equal to the bit " + note
        status = {"passed": PASSED, "skipped": SKIPPED}.get(c["outcome"], FAILED)
        step.rows.append(Row("gpu_tests", c["name"], status, note=note.strip(),
                             data={"seconds": c["seconds"], **props}))
    if not cases:
        step.rows.append(Row("gpu_tests", "pytest -m gpu", FAILED, note=f"no junit report; see {log.name}"))
    return step


# --------------------------------------------------------------------------------------------------
# 2. Training throughput
# --------------------------------------------------------------------------------------------------
@dataclass
class TrainVariant:
    name: str
    precision: str  # --mixed_precision
    channels_last: bool = False
    compile: bool = False


TRAIN_VARIANTS = [
    TrainVariant("fp32", "no"),
    TrainVariant("bf16", "bf16"),
    TrainVariant("fp16", "fp16"),
    TrainVariant("bf16 + channels_last", "bf16", channels_last=True),
    TrainVariant("bf16 + channels_last + compile", "bf16", channels_last=True, compile=True),
]
DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_skip_reason(variant: TrainVariant) -> str | None:
    """Why a training variant cannot run in the CPU smoke run, or None."""
    if variant.compile:
        return "skipped on the CPU: torch.compile compiles for minutes there (docs/speed.md), beyond the smoke budget"
    if variant.precision == "fp16":
        try:
            torch.amp.GradScaler("cpu")
        except (RuntimeError, AttributeError, TypeError) as e:
            return f"skipped on the CPU: no fp16 gradient scaler here ({e})"
    return None


def base_unet(sizes: Sizes) -> torch.nn.Module:
    from ddpm_ext import build_unet  # noqa: PLC0415 (after _common put the repository on sys.path)

    torch.manual_seed(0)
    return build_unet("ddpm-cifar10", **sizes.unet_overrides)


def train_variant(ctx: Context, variant: TrainVariant, base: torch.nn.Module, batch: torch.Tensor) -> Row:
    """Time one variant against diffusers' step at the same precision; the peak memory of each."""
    device, sizes = ctx.device, ctx.sizes
    flags = ["--channels_last"] if variant.channels_last else []
    with PeakMemory(device) as mem_ours:
        ours = OursTrainer(copy.deepcopy(base), device, flags, autocast_dtype=DTYPES[variant.precision],
                           compile=variant.compile, grad_scaler=variant.precision == "fp16")
        start = time.perf_counter()
        losses = [float(ours.step(batch)) for _ in range(sizes.train_warmup)]
        first = time.perf_counter() - start
    with PeakMemory(device) as mem_theirs:
        theirs = DiffusersTrainer(copy.deepcopy(base), device, mixed_precision=variant.precision)
        losses += [float(theirs.step(batch)) for _ in range(sizes.train_warmup)]

    def steps(trainer):
        def go():
            for _ in range(sizes.steps_per_round):
                trainer.step(batch)
        return go

    times = alternate({"ours": steps(ours), "theirs": steps(theirs)}, sizes.train_rounds, device, warmup=0)
    t_ours = statistics.median(times["ours"]) / sizes.steps_per_round
    t_theirs = statistics.median(times["theirs"]) / sizes.steps_per_round
    n = batch.shape[0]
    finite = all(map(lambda v: v == v and abs(v) != float("inf"), losses))
    note = f"median of {sizes.train_rounds} alternating rounds of {sizes.steps_per_round} steps"
    if variant.compile:
        note += f"; first {sizes.train_warmup} steps (compilation) {first:.1f} s"
    if not finite:
        note += "; a warm-up loss was not finite"
    del ours, theirs
    return Row("train_throughput", variant.name, PASSED if finite else FAILED,
               ours=f"{n / t_ours:.1f} img/s", theirs=f"{n / t_theirs:.1f} img/s", time_ratio=t_ours / t_theirs,
               ours_peak=mem_ours.bytes, theirs_peak=mem_theirs.bytes, note=note,
               data={"ours_images_per_s": n / t_ours, "diffusers_images_per_s": n / t_theirs,
                     "ours_step_s": t_ours, "diffusers_step_s": t_theirs, "first_steps_s": first,
                     "batch": n, "precision": variant.precision, "channels_last": variant.channels_last,
                     "compile": variant.compile})


def train_estimate(ctx: Context, variant: TrainVariant) -> float:
    """The least time a variant takes: work is refused only when it cannot fit; if it overruns, the alarm stops it."""
    if ctx.device.type == "cpu":
        return 3.0
    return 60.0 if variant.compile else 10.0


def run_train_throughput(ctx: Context, variants: list[TrainVariant]) -> list[Row]:
    base = base_unet(ctx.sizes)
    n_params = sum(p.numel() for p in base.parameters())
    ctx.facts["train_unet_parameters"] = n_params
    g = torch.Generator().manual_seed(0)
    # a fixed batch in [-1, 1]: the step's cost does not depend on the pixels
    batch = (torch.rand(ctx.sizes.train_batch, 3, ctx.sizes.resolution, ctx.sizes.resolution, generator=g) * 2 - 1)
    batch = batch.to(ctx.device)
    rows = []
    for variant in variants:
        reason = cpu_skip_reason(variant) if ctx.device.type == "cpu" else None
        if reason is not None:
            rows.append(Row("train_throughput", variant.name, SKIPPED, note=reason))
            continue
        rows.append(guarded(ctx, "train_throughput", variant.name, train_estimate(ctx, variant),
                            lambda v=variant: train_variant(ctx, v, base, batch)))
        free(ctx.device)
    return rows


# --------------------------------------------------------------------------------------------------
# 3. Sampling throughput
# --------------------------------------------------------------------------------------------------
# max |Δ| in [0, 1] between ddpm_ext's and diffusers' DDPM-1000 images (same UNet, same noise). The pipelines'
# scheduler arithmetic differs in the last bits; on CUDA the UNet's TF32 convolutions (the default) turn such input
# differences into differences of TF32's precision, so the GPU's tolerance is that of the device-vs-CPU test's
# default math (tests/gpu/test_cuda.py: an estimate until a GPU run measures it).
SAMPLING_TOL = {"cpu": 1e-3, "cuda": 2e-2}


def run_sampling(ctx: Context) -> list[Row]:
    from diffusers import DDPMPipeline, DDPMScheduler  # noqa: PLC0415 (after _common: sys.path)

    from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler  # noqa: PLC0415 (likewise)
    from ddpm_ext.schedulers import DEFAULT_SAMPLING_STEPS  # noqa: PLC0415 (likewise)

    device, sizes = ctx.device, ctx.sizes
    n, full = sizes.sample_batch, sizes.full_steps
    unet = base_unet(sizes).eval()
    with PeakMemory(device) as mem_ours:
        ours = DDPMExtPipeline(unet=unet.to(device), scheduler=DDPMExtScheduler())
        ours.set_progress_bar_config(disable=True)
        ours(n, num_inference_steps=2, output_type="pt")  # warm-up
    with PeakMemory(device) as mem_theirs:
        theirs = DDPMPipeline(unet=copy.deepcopy(unet), scheduler=DDPMScheduler())
        theirs.set_progress_bar_config(disable=True)
        theirs(n, num_inference_steps=2, output_type="np")  # warm-up
    images = {}

    def call(name, pipe, steps):
        def go():
            g = torch.Generator(device).manual_seed(0)
            if pipe is theirs:
                images[name] = torch.from_numpy(pipe(n, generator=g, num_inference_steps=steps,
                                                     output_type="np").images)
            else:  # (B, C, H, W) -> (B, H, W, C) as diffusers' "np"
                images[name] = pipe(n, generator=g, num_inference_steps=steps,
                                    output_type="pt").images.permute(0, 2, 3, 1).cpu()
        return go

    times = alternate({"diffusers": call("diffusers", theirs, full), "ours_full": call("ours_full", ours, full),
                       "ours_default": call("ours_default", ours, DEFAULT_SAMPLING_STEPS)},
                      sizes.sample_rounds, device, warmup=0)
    per_image = {k: statistics.median(v) / n for k, v in times.items()}
    ms = {k: f"{v * 1e3:.1f} ms/image" for k, v in per_image.items()}
    delta = (images["ours_full"] - images["diffusers"]).abs().max().item()
    tol = SAMPLING_TOL[device.type]
    same_work_ok = delta <= tol
    base = {"batch": n, "diffusers_s_per_image": per_image["diffusers"], "rounds": sizes.sample_rounds}
    return [
        Row("sampling", f"time to image: ddpm_ext default (DDPM, {DEFAULT_SAMPLING_STEPS} trailing steps) vs "
                        f"diffusers DDPM-{full}", PASSED,
            ours=ms["ours_default"], theirs=ms["diffusers"],
            time_ratio=per_image["ours_default"] / per_image["diffusers"], ours_peak=mem_ours.bytes,
            theirs_peak=mem_theirs.bytes, note=f"batch {n}; median of {sizes.sample_rounds} alternating rounds",
            data={**base, "ours_s_per_image": per_image["ours_default"], "ours_steps": DEFAULT_SAMPLING_STEPS}),
        Row("sampling", f"same work: ddpm_ext DDPM-{full} vs diffusers DDPM-{full}", PASSED if same_work_ok else FAILED,
            ours=ms["ours_full"], theirs=ms["diffusers"],
            time_ratio=per_image["ours_full"] / per_image["diffusers"], ours_peak=mem_ours.bytes,
            theirs_peak=mem_theirs.bytes,
            note=f"images max |Δ| {delta:.1e} ({'≤' if same_work_ok else '>'} {tol:g}, [0, 1] units)",
            data={**base, "ours_s_per_image": per_image["ours_full"], "ours_steps": full, "max_abs_diff": delta}),
    ]


# --------------------------------------------------------------------------------------------------
# 4. A short bf16 training run
# --------------------------------------------------------------------------------------------------
LOSS_FALL = 0.8  # the mean logged loss of the last tenth of the steps must be below 0.8 × that of the first tenth


def rgb_digits(folder: Path) -> Path:
    """mnist-5k's 4,500 training digits as 32×32 RGB (padded, each tinted with a seeded colour), saved with
    `Dataset.save_to_disk`: colour images that ship with the package's dependencies (no download)."""
    import datasets  # noqa: PLC0415 (heavy; only this step needs it)
    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    from ddpm_ext.data import load_mnist_5k  # noqa: PLC0415 (after _common: sys.path)

    gray = np.stack([np.asarray(im) for im in load_mnist_5k(split="train")["image"]])  # (N, 28, 28) uint8
    gray = np.pad(gray, ((0, 0), (2, 2), (2, 2)))
    tints = np.random.default_rng(0).uniform(0.3, 1.0, size=(len(gray), 1, 1, 3))
    rgb = (gray[..., None] * tints).round().astype(np.uint8)  # (N, 32, 32, 3)
    data = datasets.Dataset.from_dict({"image": [Image.fromarray(x) for x in rgb]},
                                      features=datasets.Features({"image": datasets.Image()}))
    data.save_to_disk(str(folder))
    return folder


def logged_losses(logging_dir: Path) -> list[float]:
    import logging  # noqa: PLC0415

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: PLC0415 (heavy)

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # one INFO line per event file otherwise
    losses = []
    for run in sorted({p.parent for p in logging_dir.rglob("events.out.tfevents*")}):
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        if "loss" in acc.Tags().get("scalars", []):
            losses += [e.value for e in sorted(acc.Scalars("loss"), key=lambda e: e.step)]
    return losses


def tensors_finite_fp32(path: Path) -> tuple[bool, bool, int]:
    from safetensors.torch import load_file  # noqa: PLC0415

    tensors = load_file(path)
    return (all(torch.isfinite(v).all() for v in tensors.values()),
            all(v.dtype == torch.float32 for v in tensors.values()), len(tensors))


def run_train_run(ctx: Context, work: Path) -> list[Row]:
    import ddpm_ext.training.train as train  # noqa: PLC0415 (after _common: sys.path)

    device, sizes = ctx.device, ctx.sizes
    data = rgb_digits(work / "rgb-digits")
    model = "ddpm-cifar10"
    if sizes.unet_overrides:  # the CPU smoke run's small config of the same architecture, as a config file
        from ddpm_ext import unet_config  # noqa: PLC0415

        model = str(work / "unet_config.json")
        Path(model).write_text(json.dumps(unet_config("ddpm-cifar10", **sizes.unet_overrides)))
    step_s = ctx.facts.get("bf16_step_s")  # the bf16 throughput row's step time, when it ran
    calibrated = step_s is not None
    if not calibrated:
        step_s = 0.05 if device.type == "cuda" else 0.1
    # the loop does more than the timed step (data loading in the main process, EMA, logging, the final save):
    # aim at 60% of the target from the step's time alone
    max_steps = max(20, int(0.6 * sizes.train_seconds / step_s))
    out = work / "run"
    argv = ["--dataset_name", str(data), "--model_config", model, "--resolution", str(sizes.resolution),
            "--mixed_precision", "bf16", "--train_batch_size", str(sizes.train_batch),
            "--max_train_steps", str(max_steps), "--checkpointing_steps", str(max_steps),
            "--learning_rate", str(sizes.learning_rate), "--lr_warmup_steps", str(max(1, max_steps // 20)),
            "--eval_batch_size", str(sizes.eval_batch), "--logger", "tensorboard", "--output_dir", str(out),
            "--seed", "0"]
    if device.type == "cpu":
        argv += ["--ddpm_num_inference_steps", "4", "--cpu_threads", str(torch.get_num_threads())]
    start = time.perf_counter()
    with PeakMemory(device) as mem:
        code = train.main(argv)
    seconds = time.perf_counter() - start
    problems = [] if code == 0 else [f"the training command exited with {code}"]
    losses = logged_losses(out / "logs") if code == 0 else []
    tenth = max(1, len(losses) // 10)
    first = sum(losses[:tenth]) / tenth if losses else float("nan")
    last = sum(losses[-tenth:]) / tenth if losses else float("nan")
    if code == 0 and not (last < LOSS_FALL * first):
        problems.append(f"the loss did not fall: {first:.4f} → {last:.4f} (needs < {LOSS_FALL} × the first)")
    ema_checks = {}
    if code == 0:
        for label, path in (("checkpoint EMA", out / f"checkpoint-{max_steps}" / "unet_ema"),
                            ("pipeline UNet (EMA)", out / "unet")):
            finite, fp32, count = tensors_finite_fp32(path / "diffusion_pytorch_model.safetensors")
            ema_checks[label] = {"finite": finite, "float32": fp32, "tensors": count}
            if not (finite and fp32):
                problems.append(f"{label}: {'finite' if finite else 'NOT finite'}, {'fp32' if fp32 else 'NOT fp32'}")
    note = (f"{max_steps} steps of batch {sizes.train_batch} in {seconds:.0f} s "
            f"({max_steps * sizes.train_batch / seconds:.0f} img/s with the loop's data, EMA and saving); "
            f"loss {first:.4f} → {last:.4f} (first / last tenth); EMA weights finite float32"
            + ("" if calibrated else "; step count not calibrated (the bf16 throughput row did not run)"))
    if problems:
        note = "; ".join(problems) + "; " + note
    return [Row("train_run", f"bf16, {sizes.train_seconds:.0f} s target", FAILED if problems else PASSED,
                ours=f"{seconds:.0f} s", ours_peak=mem.bytes, note=note,
                data={"steps": max_steps, "seconds": seconds, "exit_code": code,
                      "loop_images_per_s": max_steps * sizes.train_batch / seconds, "loss_first_tenth": first,
                      "loss_last_tenth": last, "logged_losses": len(losses), "ema": ema_checks,
                      "calibrated": calibrated})]


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    deadline: Deadline
    output_dir: Path
    facts: dict[str, Any] = field(default_factory=dict)  # numbers one step hands to a later one


def guarded(ctx: Context, step: str, variant: str, estimate_s: float, work: Callable[[], Row]) -> Row:
    """`work()` if it fits the deadline, stopped at it; a row that says why it did not pass otherwise."""
    if not ctx.deadline.allows(estimate_s):
        return Row(step, variant, NOT_RUN, note=ctx.deadline.refusal(estimate_s))
    try:
        with alarm(ctx.deadline.left()):
            return work()
    except DeadlineExceeded:
        return Row(step, variant, NOT_RUN, note="stopped at the global deadline")
    except Exception as e:  # noqa: BLE001 (every failure becomes a row; the traceback goes to stderr)
        traceback.print_exc()
        return Row(step, variant, FAILED, note=f"{type(e).__name__}: {e}"[:300])


def guarded_rows(ctx: Context, step: str, variant: str, estimate_s: float,
                 work: Callable[[], list[Row]]) -> list[Row]:
    rows: list[Row] = []
    row = guarded(ctx, step, variant, estimate_s, lambda: rows.extend(work()) or Row(step, variant))
    return rows if row.status == PASSED and rows else [row]


def run_check(ctx: Context) -> list[StepResult]:
    """Every step in an order that keeps the riskiest (compilation) last; the results in the table's order."""
    results: dict[str, StepResult] = {}
    cuda = ctx.device.type == "cuda"

    def timed(name: str, fn: Callable[[StepResult], None]) -> None:
        step = results.setdefault(name, StepResult(name))
        start = time.perf_counter()
        try:
            fn(step)
        except Exception as e:  # noqa: BLE001 (outside a guarded piece of work: the step fails, the check goes on)
            traceback.print_exc()
            step.status, step.reason = FAILED, f"{type(e).__name__}: {e}"[:300]
        step.seconds += time.perf_counter() - start

    def tests(step):
        estimate = 30.0 if cuda else 20.0
        if not ctx.deadline.allows(estimate):
            step.status, step.reason = NOT_RUN, ctx.deadline.refusal(estimate)
            return
        done = run_gpu_tests(ctx)
        step.status, step.reason, step.rows = done.status, done.reason, done.rows

    def throughput(variants):
        def go(step):
            step.rows += run_train_throughput(ctx, variants)
            bf16 = next((r for r in step.rows if r.variant == "bf16" and r.status == PASSED), None)
            if bf16 is not None:
                ctx.facts["bf16_step_s"] = bf16.data["ours_step_s"]
        return go

    def sampling(step):
        estimate = 30.0 if cuda else 10.0
        step.rows += guarded_rows(ctx, "sampling", "DDPM-1000 vs default", estimate, lambda: run_sampling(ctx))

    def train_run(step):
        estimate = ctx.sizes.train_seconds + (20.0 if cuda else 5.0)
        with tempfile.TemporaryDirectory(prefix="gpu-check-run-") as work:
            step.rows += guarded_rows(ctx, "train_run", f"bf16, {ctx.sizes.train_seconds:.0f} s target", estimate,
                                      lambda: run_train_run(ctx, Path(work)))

    early = [v for v in TRAIN_VARIANTS if not v.compile]
    late = [v for v in TRAIN_VARIANTS if v.compile]
    timed("gpu_tests", tests)
    timed("train_throughput", throughput(early))
    timed("sampling", sampling)
    free(ctx.device)
    timed("train_run", train_run)
    free(ctx.device)
    timed("train_throughput", throughput(late))

    memory = StepResult("peak_memory")
    for name in ("train_throughput", "sampling", "train_run"):
        for r in results[name].rows:
            if r.status == PASSED:
                ok = r.ours_peak is not None and (r.theirs_peak is not None or name == "train_run")
                memory.rows.append(Row("peak_memory", f"{name}: {r.variant}", PASSED if ok else FAILED,
                                       ours=fmt_bytes(r.ours_peak), theirs=fmt_bytes(r.theirs_peak)
                                       if name != "train_run" else "",
                                       note="CUDA max_memory_allocated" if cuda else "process peak RSS (CPU)",
                                       data={"ours_bytes": r.ours_peak, "diffusers_bytes": r.theirs_peak}))
    if not memory.rows:
        memory.status, memory.reason = FAILED, "no measured row"
    results["peak_memory"] = memory
    return [results[name].settle() for name in STEPS]


def device_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-smoke-{cpu_model()}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def write_results(ctx: Context, results: list[StepResult], *, header: str) -> tuple[Path, Path, str]:
    code = exit_code(results)
    rows = [r for s in results for r in s.rows]
    steps_md = [f"- `{s.name}`: {s.status}" + (f" ({s.reason})" if s.reason else "") + f", {s.seconds:.0f} s"
                for s in results]
    table = render_table(rows)
    markdown = "\n".join([header, "", *steps_md, "", table, "", f"Peak memory: {memory_kind(ctx.device)}.",
                          f"Overall: {'PASSED' if code == 0 else 'FAILED'} in {ctx.deadline.elapsed():.0f} s "
                          f"(budget {ctx.deadline.budget_s:.0f} s)."])
    payload = {
        "ok": code == 0,
        "device": ctx.device.type,
        "device_name": (torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else cpu_model()),
        "machine": machine_line(ctx.device),
        "command": command_line(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "budget_s": ctx.deadline.budget_s,
        "elapsed_s": ctx.deadline.elapsed(),
        "sizes": asdict(ctx.sizes),
        "facts": ctx.facts,
        "memory_kind": memory_kind(ctx.device),
        "steps": {s.name: {**{k: v for k, v in asdict(s).items() if k != "name"}} for s in results},
    }
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = ctx.output_dir / "results.json", ctx.output_dir / "results.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str))
    md_path.write_text(markdown + "\n")
    return json_path, md_path, markdown


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true",
                   help="Run every step on the CPU with tiny sizes (the smoke run of the slow test tier).")
    p.add_argument("--output_dir", default=None,
                   help="Where results.json, results.md and the tests' report go (default: "
                        "benchmarks/results/gpu/<date>-<device>/).")
    p.add_argument("--budget_s", type=float, default=None,
                   help=f"The global deadline in seconds (default {DEFAULT_BUDGET_S:.0f}, {CPU_BUDGET_S:.0f} with "
                        "--cpu); work that would overrun it is not run and counts as a failure.")
    p.add_argument("--train_seconds", type=float, default=None,
                   help="Length of the bf16 training run (default 120, 10 with --cpu).")
    args = p.parse_args(argv)
    for name in ("budget_s", "train_seconds"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            p.error(f"--{name} must be > 0, got {value}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible to PyTorch here; run with --cpu for the CPU smoke run", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    sizes = Sizes.cpu() if args.cpu else Sizes.cuda()
    if args.train_seconds is not None:
        sizes.train_seconds = args.train_seconds
    deadline = Deadline(args.budget_s or (CPU_BUDGET_S if args.cpu else DEFAULT_BUDGET_S), start=STARTED)
    output_dir = Path(args.output_dir) if args.output_dir else (
        ROOT / "benchmarks" / "results" / "gpu" / f"{time.strftime('%Y-%m-%d', time.gmtime())}-{device_slug(device)}")
    output_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(device, sizes, deadline, output_dir)
    label = "CPU smoke run (tiny sizes: not GPU numbers)" if args.cpu else "GPU check"
    header = "\n".join([f"### {label}", "", machine_line(device), "",
                        f"Command: `{command_line()}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"])
    print(header, flush=True)
    results = run_check(ctx)
    json_path, md_path, markdown = write_results(ctx, results, header=header)
    print("\n" + markdown.split("\n", len(header.splitlines()))[-1])
    print(f"\nWrote {json_path} and {md_path}")
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
