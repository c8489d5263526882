"""What a training run writes besides its checkpoints: the pipeline, sample grids, training_info.json, the model
card, and the push to the Hub (with its pre-flight before the first step, [`check_hub`]).

The pipeline is saved with one mechanism, [`save_pipeline_whole`]: the whole pipeline is written into a staging
folder first (all the disk writes), then moved into the output folder by renames. What is guaranteed:

- A failure while writing (a full disk, an error, a kill) leaves every file of the earlier pipeline in the output
  folder as it was, and the staging folder is removed (on an error) or left as `.pipeline-*.tmp` (on a kill),
  which no loader reads.
- The renames need no disk space, so a full disk cannot stop them; `model_index.json`, the file that makes a
  folder load as a pipeline, is renamed last. Only a kill between these few renames can leave new components
  beside the earlier index (or one moved aside as `.<name>.old-<pid>`); every file is whole either way.
- Nothing else in the output folder (checkpoints, samples, logs, the card) is touched.

Every other file is written atomically on its own ([`ddpm_ext.files`]).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import broadcast_object_list
from diffusers import UNet2DModel
from safetensors import SafetensorError

from ..files import atomic_write_text, naming_failed_writes, temporary_names_as, write_with
from ..hub import describe_error, push_pipeline, reach_repo, write_model_card
from ..hub.push import retry_command
from ..images import save_image_grid
from ..network import HubDeadlineError
from ..pipelines.checkpoint_io import GUIDE_DIR
from ..pipelines.guidance import (
    AUTOGUIDANCE_SCALE_KEY,
    GUIDE_STEP_KEY,
    balanced_class_labels,
    grid_images_per_class,
    is_class_conditional,
    num_classes,
)
from ..pipelines.pipeline_ddpm_ext import DDPMExtPipeline
from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler
from ..seeding import image_generators

if TYPE_CHECKING:  # the loop's state, read here; train.py imports this module
    from .train import Trainer

__all__ = [
    "check_hub",
    "hub_repo_id",
    "pipeline_to_save",
    "push",
    "sample_grid_call",
    "save_outputs",
    "save_pipeline_whole",
    "training_info",
    "write_samples",
]

INDEX = "model_index.json"


def pipeline_to_save(trainer: Trainer) -> DDPMExtPipeline:
    """The pipeline of `trainer` as saved now: a copy of the UNet carrying the EMA weights when EMA is on, and a
    copy of the autoguidance guide once taken (its config records the guide's step and the default scale w)."""
    accelerator, unet, ema, scheduler = trainer.accelerator, trainer.unet, trainer.ema, trainer.scheduler
    guide_unet, guide_step, autoguidance_scale = trainer.guide_unet, trainer.guide_step, trainer.args.autoguidance_scale
    model = copy.deepcopy(accelerator.unwrap_model(unet, keep_torch_compile=False)).eval()  # the live one trains on
    model.to(memory_format=torch.contiguous_format)  # after --channels_last: sample and save in the usual layout
    if ema is not None:
        ema.copy_to(model.parameters())
    guide = None
    if guide_unet is not None and guide_step is not None:
        guide = copy.deepcopy(guide_unet)
        guide.register_to_config(**{AUTOGUIDANCE_SCALE_KEY: autoguidance_scale, GUIDE_STEP_KEY: guide_step})
    pipe = DDPMExtPipeline(unet=model, scheduler=DDPMExtScheduler.from_config(scheduler.config), guide_unet=guide)
    pipe.set_progress_bar_config(desc="sample", leave=False)
    return pipe


def save_pipeline_whole(pipe: DDPMExtPipeline, output_dir: Path) -> None:
    """Save `pipe` into `output_dir` as a whole: written into a staging folder there, then renamed in part by part,
    `model_index.json` last; an earlier pipeline's `guide_unet/` that `pipe` lacks is removed after that (see the
    module docstring for what is guaranteed)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pipeline-", suffix=".tmp", dir=output_dir))
    try:
        # a full disk: an OSError naming the file at its place in the output folder (the staging folder is gone)
        with temporary_names_as(staging, output_dir), naming_failed_writes():
            pipe.save_pretrained(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for part in sorted(staging.iterdir(), key=lambda p: p.name == INDEX):
        target = output_dir / part.name
        old = output_dir / f".{part.name}.old-{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(part, target)
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    staging.rmdir()
    if pipe.guide_unet is None and (output_dir / GUIDE_DIR).is_dir():  # an earlier run's guide: not this pipeline's
        shutil.rmtree(output_dir / GUIDE_DIR)


def write_samples(accelerator: Any, args: argparse.Namespace, step: int, pipe: DDPMExtPipeline) -> Path | None:
    """Sample `--eval_batch_size` images of `pipe` (autoguided at its default w when it has a guide) with a fixed
    seed and write samples/step-<step>.png and samples.png (main process); log them to the trackers."""
    if not accelerator.is_main_process:
        return None
    call, nrow, order = sample_grid_call(pipe.unet, args.eval_batch_size, args.guidance_scale)  # a row per class
    images = pipe(
        generator=image_generators(args.seed, 0, call["batch_size"]),  # the package's seeding rule
        num_inference_steps=args.ddpm_num_inference_steps, output_type="np", **call,
    ).images
    if order is not None:
        images = images[order]
    path = Path(args.output_dir) / "samples" / f"step-{step:06d}.png"
    write_with(path, lambda tmp: save_image_grid(images, tmp, nrow))
    write_with(Path(args.output_dir) / "samples.png", lambda tmp: shutil.copyfile(path, tmp))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("samples", images, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb  # noqa: PLC0415 (an optional dependency, needed with --logger wandb only)

            tracker.log({"samples": [wandb.Image(img) for img in images]}, step=step)
    return path


def sample_grid_call(
    unet: UNet2DModel, num_images: int, guidance_scale: float = 1.0
) -> tuple[dict[str, Any], int | None, list[int] | None]:
    """Pipeline keywords, the grid's row length and its display order for a sample grid: `num_images` images
    for an unconditional UNet; for a conditional one, `max(1, num_images // K)` images per class, shown one row
    per class.

    A conditional grid asks image i for class i mod K ([`~ddpm_ext.pipelines.guidance.balanced_class_labels`], the
    pairing `ddpm-ext evaluate` uses), so its images are evaluate's first ones, pixel for pixel; the display
    order puts image r·K + c at row c, column r.

    Example:

    ```py
    >>> from ddpm_ext import build_unet
    >>> from ddpm_ext.training.outputs import sample_grid_call
    >>> sample_grid_call(build_unet("tiny", num_class_embeds=3), 4, 2.0)
    ({'batch_size': 4, 'class_labels': [0, 1, 0, 1], 'guidance_scale': 2.0}, 2, [0, 2, 1, 3])
    >>> sample_grid_call(build_unet("tiny"), 4)
    ({'batch_size': 4}, None, None)

    ```
    """
    if not is_class_conditional(unet):
        return {"batch_size": num_images}, None, None
    k = num_classes(unet)
    per_class = grid_images_per_class(num_images, k)
    labels = balanced_class_labels(per_class * k, k)
    order = [r * k + c for c in range(k) for r in range(per_class)]
    kwargs = {"batch_size": len(labels), "class_labels": labels, "guidance_scale": float(guidance_scale)}
    return kwargs, per_class, order


def save_outputs(args: argparse.Namespace, trainer: Trainer, num_train_images: int, resolution: int) -> int:
    """Write the pipeline ([`save_pipeline_whole`]), the sample grid, training_info.json and the model card; push
    when asked. Returns the exit status: 0, 1 (a write failed) or 3 (the push failed)."""
    output_dir = Path(args.output_dir)
    pipe = pipeline_to_save(trainer)
    try:
        with naming_failed_writes():
            save_pipeline_whole(pipe, output_dir)
            grid = write_samples(trainer.accelerator, args, trainer.global_step, pipe)
            info = training_info(trainer, pipe, num_train_images, resolution)
            atomic_write_text(output_dir / "training_info.json", json.dumps(info, indent=2))
            write_model_card(output_dir, args=vars(args), info=info, grid_path=grid,
                             train_data_dir=args.train_data_dir,
                             dataset_name=args.dataset_name or (None if args.train_data_dir else "mnist-5k"))
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error type
        what = getattr(e, "filename", None) or f"the outputs to {output_dir}"
        print(f"error: could not write {what} ({getattr(e, 'strerror', None) or e}); the checkpoints and every "
              "earlier file in the output folder are intact (each is replaced only once its new version is "
              "complete).", file=sys.stderr)
        return 1
    return push(args, output_dir, trainer.accelerator) if args.push_to_hub else 0


def training_info(trainer: Trainer, pipe: DDPMExtPipeline, num_train_images: int, resolution: int) -> dict[str, Any]:
    """The run's record for training_info.json and the model card."""
    return {
        "global_step": trainer.global_step,
        "final_loss": trainer.loss_value,
        "train_seconds_this_run": round(trainer.train_seconds, 1),
        "num_processes": trainer.accelerator.num_processes,
        "num_train_images": num_train_images,
        "resolution": resolution,
        "cpu_threads": trainer.threads.summary() if trainer.threads is not None else None,
        "autoguidance": None if pipe.guide_unet is None else {
            "scale": pipe.autoguidance_scale, "guide_step": trainer.guide_step,
            "guide": "the EMA weights of that step" if trainer.ema is not None else "the weights of that step"},
        **(trainer.conditioning.info() if trainer.conditioning is not None else {}),
    }


def hub_repo_id(args: argparse.Namespace) -> str:
    """The Hub repo a run pushes to: `--hub_model_id`, or the `--output_dir` folder's name."""
    return args.hub_model_id or Path(args.output_dir).name


def check_hub(args: argparse.Namespace, accelerator: Any) -> tuple[str | None, str | None]:
    """The Hub pre-flight of `--push_to_hub`, before the first step: check the token and create or reach the repo
    ([`ddpm_ext.hub.reach_repo`], main process; the outcome is shared with every process).

    Returns:
        `tuple[str | None, str | None]`: the repo's URL (main process) and None, or None and the one-line error
        (token masked), the same on every process.
    """
    url = error = None
    if accelerator.is_main_process:
        repo_id = hub_repo_id(args)
        try:
            url = reach_repo(repo_id, private=args.hub_private_repo, token=args.hub_token,
                             timeout=args.hub_push_timeout)
        except Exception as e:  # noqa: BLE001 (any failure: one line, before any work)
            error = (f"--push_to_hub: the Hub repository {repo_id} could not be created or reached "
                     f"({describe_error(e, args.hub_token)}); nothing was trained or written. Check the token "
                     "(HF_TOKEN, `hf auth login` or --hub_token) and the network, or train without --push_to_hub.")
    if accelerator.num_processes > 1:
        error = broadcast_object_list([error])[0]
    return url, error


def push(args: argparse.Namespace, output_dir: Path, accelerator: Any) -> int:
    """Upload `output_dir` to the Hub; on failure say how to retry (the local output stays). Returns 0 or 3."""
    repo_id = hub_repo_id(args)
    timeout = args.hub_push_timeout
    try:
        url = push_pipeline(output_dir, repo_id=repo_id, private=args.hub_private_repo, token=args.hub_token,
                            timeout=timeout)
    except Exception as e:  # noqa: BLE001 (the local output stays; say how to retry)
        why = (f"it did not finish within {timeout:g} s: the Hub did not answer in time"
               if isinstance(e, HubDeadlineError) else describe_error(e, args.hub_token))
        accelerator.print(
            f"error: the push to the Hub failed ({why}). The trained pipeline is intact in {output_dir}; retry with: "
            f"{retry_command(output_dir, repo_id, private=args.hub_private_repo, timeout=timeout)}"
        )
        return 3
    accelerator.print(f"Pushed to {url}")
    return 0
