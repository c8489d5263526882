"""What a training run tells its user on stdout (main process): what it is about to do ([`start_summary`]), when it
will be done ([`FinishEstimate`]), and what it wrote and how to use it ([`end_summary`]).

The texts are built here and printed by [`ddpm_ext.training.train.run`] and the loop; they hold no token and only
ASCII, so any terminal prints them. The commands of the end summary are the exact command lines to run, with every
path quoted for a POSIX shell.
"""

from __future__ import annotations

import argparse
import math
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..data import BUILTIN_DATASETS
from ..hub.push import DEFAULT_PUSH_TIMEOUT, retry_command
from ..pipelines.checkpoint_io import GUIDE_DIR
from .checkpoints import list_checkpoints
from .outputs import hub_repo_id

if TYPE_CHECKING:  # what a run is built from; setup.py does not import this module
    from .setup import RunParts

__all__ = [
    "DEFAULT_DATASET",
    "FinishEstimate",
    "data_source",
    "end_summary",
    "format_duration",
    "model_description",
    "start_summary",
    "use_commands",
]

DEFAULT_DATASET = "mnist-5k"  # what a run trains on when no data flag is given
CHANNEL_NAMES = {1: "grey", 3: "RGB", 4: "RGBA"}


# --------------------------------------------------------------------------------------------------
# At the start
# --------------------------------------------------------------------------------------------------
def start_summary(args: argparse.Namespace, parts: RunParts, *, hub_url: str | None = None) -> str:
    """What the run is about to do: data, model, diffusion, steps and batch, learning rate, output folder, the
    checkpoint it resumes and the Hub repo it pushes to (`hub_url`, reached by the pre-flight).

    `parts` is what [`ddpm_ext.training.setup.build_run`] returned (before or after `prepare_run`)."""
    accelerator, config = parts.accelerator, parts.unet.config
    channels = config.in_channels
    per_process, processes = args.train_batch_size, accelerator.num_processes
    accumulation = args.gradient_accumulation_steps
    batch = per_process * processes * accumulation
    scheduler = parts.scheduler.config
    lines = [
        "Training a DDPM:",
        f"  data:       {data_source(args)}, {parts.num_train_images:,} images at "
        f"{parts.resolution}x{parts.resolution}, {_channels(channels)}",
        f"  model:      {model_description(args)}, {count_parameters(parts.unet):,} parameters"
        + (f", class-conditional ({len(parts.conditioning.names)} classes)" if parts.conditioning is not None else ""),
        f"  diffusion:  T = {scheduler.num_train_timesteps}, {scheduler.beta_schedule} betas, "
        f"{scheduler.prediction_type} prediction, variance {scheduler.variance_type}, {args.loss_type} loss",
        f"  steps:      {parts.max_steps:,} optimisation steps of batch {batch} "
        f"= {per_process} per process x {processes} process{'es' if processes != 1 else ''} x {accumulation} "
        f"accumulated",
        f"  learning:   rate {args.learning_rate:g} ({args.lr_scheduler} schedule after {args.lr_warmup_steps} warm-up "
        f"steps), EMA {'on' if args.use_ema else 'off'}",
        f"  output:     {args.output_dir}",
    ]
    if parts.identity.saved is not None:
        lines.append(f"  resuming:   {args.resume} (step {parts.identity.saved['global_step']:,} of "
                     f"{parts.max_steps:,})")
    if hub_url is not None:
        lines.append(f"  Hub:        pushes to {hub_url} at the end (token checked, repository reached)")
    return "\n".join(lines)


def _channels(channels: int) -> str:
    return f"{channels} channel{'s' if channels != 1 else ''} ({CHANNEL_NAMES.get(channels, 'other')})"


def data_source(args: argparse.Namespace) -> str:
    """Where the training images come from, in words.

    Example:

    ```py
    >>> import argparse
    >>> from ddpm_ext.training.report import data_source
    >>> data_source(argparse.Namespace(dataset_name=None, train_data_dir="shapes/", dataset_split="train"))
    'image folder shapes/'
    >>> data_source(argparse.Namespace(dataset_name="openmoji-32", train_data_dir=None, dataset_split="train"))
    'openmoji-32 (built-in), split train'

    ```
    """
    if args.train_data_dir:
        return f"image folder {args.train_data_dir}"
    name = args.dataset_name or DEFAULT_DATASET
    if name in BUILTIN_DATASETS:
        default = "" if args.dataset_name else ", the default"
        return f"{name} (built-in{default}), split {args.dataset_split}"
    kind = "data set folder" if Path(name).exists() else "Hub data set"
    return f"{kind} {name}, split {args.dataset_split}"


def model_description(args: argparse.Namespace) -> str:
    """The model a run trains: the pretrained pipeline it fine-tunes, or the preset (or config file) it starts from."""
    if args.pretrained_model_name_or_path:
        return f"fine-tuning {args.pretrained_model_name_or_path}"
    if Path(args.model_config).suffix == ".json":
        return f"new UNet from {args.model_config}"
    picked = " (picked from the data's channels)" if args.model_config_picked else ""
    return f"new UNet, preset {args.model_config}{picked}"


def count_parameters(model: Any) -> int:
    """The number of parameters of `model` (unwrapped or not: the same tensors)."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# After the first steps
# --------------------------------------------------------------------------------------------------
class FinishEstimate:
    """When to tell the estimated time left, and what: once 10 steps or 5% of this run's steps are done (whichever
    comes first, at least 2), timed from the end of its first step so that start-up costs are left out.

    Example:

    ```py
    >>> from ddpm_ext.training.report import FinishEstimate
    >>> clock = iter([0.0, 8.0])
    >>> estimate = FinishEstimate(0, 100, now=lambda: next(clock))
    >>> estimate.at_step
    5
    >>> [estimate.after_step(s) for s in (1, 2, 3, 4)]
    [None, None, None, None]
    >>> estimate.after_step(5)
    'Step 5 of 100: about 3 min 10 s left (2.00 s per step).'

    ```
    """

    def __init__(self, first_step: int, max_steps: int, *, now: Callable[[], float] = time.monotonic):
        self.first_step, self.max_steps, self.now = first_step, max_steps, now
        steps = max_steps - first_step
        self.at_step = first_step + min(10, max(2, math.ceil(0.05 * steps)))
        self.started = None  # the time the run's first step ended

    def after_step(self, step: int) -> str | None:
        """Call after each optimisation step `step`: the line to print once, at `at_step`, else None."""
        if step == self.first_step + 1:
            self.started = self.now()
        if step != self.at_step or step >= self.max_steps or self.started is None:
            return None
        per_step = (self.now() - self.started) / (step - self.first_step - 1)
        left = per_step * (self.max_steps - step)
        return f"Step {step:,} of {self.max_steps:,}: about {format_duration(left)} left ({per_step:.2f} s per step)."


def format_duration(seconds: float) -> str:
    """`seconds` as a person says it: to a tenth below 10 s, to the second below an hour.

    Example:

    ```py
    >>> from ddpm_ext.training.report import format_duration
    >>> format_duration(0.42), format_duration(42.4), format_duration(190), format_duration(7325)
    ('0.4 s', '42 s', '3 min 10 s', '2 h 2 min')

    ```
    """
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


# --------------------------------------------------------------------------------------------------
# At the end
# --------------------------------------------------------------------------------------------------
def end_summary(args: argparse.Namespace, *, steps: int, seconds: float, pushed_url: str | None = None) -> str:
    """What the run wrote into `--output_dir` (after `steps` steps in `seconds`) and the commands that use it; the
    repo's URL when the push succeeded (`pushed_url`)."""
    out = Path(args.output_dir)
    pipeline = ["model_index.json", "unet/", "scheduler/"] + ([f"{GUIDE_DIR}/"] if (out / GUIDE_DIR).is_dir() else [])
    written = [("pipeline", f"{out} ({', '.join(pipeline)})")]
    for label, name in (("sample grid", "samples.png"), ("model card", "README.md"),
                        ("run record", "training_info.json")):
        if (out / name).is_file():
            written.append((label, str(out / name)))
    checkpoints = [p.name for p in list_checkpoints(out)]
    if checkpoints:
        written.append(("checkpoints", f"{', '.join(checkpoints)} (continue with --resume_from_checkpoint latest)"))
    lines = [f"Done: {steps:,} steps in {format_duration(seconds)}. Written:"]
    lines += [f"  {label + ':':<13} {what}" for label, what in written]
    if pushed_url is not None:
        lines.append(f"  {'Hub:':<13} {pushed_url}")
    lines.append("Use it:")
    lines += [f"  {command}" for command in use_commands(args, pushed=pushed_url is not None)]
    return "\n".join(lines)


def use_commands(args: argparse.Namespace, *, pushed: bool = False) -> list[str]:
    """The command lines that sample, evaluate and push (unless `pushed`) the pipeline a run wrote.

    Example:

    ```py
    >>> import argparse
    >>> from ddpm_ext.training.report import use_commands
    >>> args = argparse.Namespace(output_dir="runs/my digits", dataset_name=None, train_data_dir=None,
    ...                           hub_model_id=None, hub_private_repo=False)
    >>> for command in use_commands(args):
    ...     print(command)
    ddpm-ext sample 'runs/my digits' --num_images 16 --output samples.png
    ddpm-ext evaluate 'runs/my digits' --dataset mnist-5k
    ddpm-ext push 'runs/my digits' --repo_id 'my digits'

    ```
    """
    out = shlex.quote(str(args.output_dir))
    data = args.train_data_dir or args.dataset_name or DEFAULT_DATASET
    commands = [
        f"ddpm-ext sample {out} --num_images 16 --output samples.png",
        f"ddpm-ext evaluate {out} --dataset {shlex.quote(str(data))}",
    ]
    if not pushed:
        commands.append(retry_command(args.output_dir, hub_repo_id(args), private=args.hub_private_repo,
                                      timeout=getattr(args, "hub_push_timeout", DEFAULT_PUSH_TIMEOUT)))
    return commands
