"""`ddpm-ext figures`: write the lecture's figures ([`ddpm_ext.figures`]) for a data set and a trained pipeline.

Without a pipeline the two figures that need none are written (the forward process and the schedules); with one,
also the reverse trajectory (PNG and GIF), the comparison with and without z, DDPM vs DDIM, the inpainting figure
and, for a class-conditional pipeline, the class grid. `--only` picks some of them. Every option is checked, and
the pipeline and the data images loaded, before the first figure is written.

```bash
ddpm-ext figures --output_dir figures                      # forward process and schedules only
ddpm-ext figures outputs/mnist --output_dir figures        # every figure the pipeline allows
ddpm-ext figures outputs/mnist --only inpainting --masks top_half strokes --jump_n_sample 10
ddpm-ext figures outputs/mnist-cond --only class_grid --class_labels 3 7 --guidance_scale 2
```
"""

from __future__ import annotations

import argparse
import inspect
from typing import Any, Callable

import torch
from PIL import Image

from ..data import build_transform, find_image_column, held_out_split, load_image_dataset
from ..figures import (
    class_grid_figure,
    ddpm_vs_ddim_figure,
    forward_process_figure,
    inpainting_figure,
    noise_comparison_figure,
    reverse_trajectory_figure,
    schedule_figure,
)
from ..figures.common import check_steps
from ..files import check_new_files
from ..pipelines.guidance import is_class_conditional, resolve_class_labels
from ..pipelines.pipeline_ddpm_ext import DDPMExtPipeline
from ..pipelines.pipeline_ddpm_ext_inpaint import MASK_KINDS
from ..validation import check_number, resolve_device
from .cli import add_overwrite_argument, check_output_dir, nonempty_path, nonnegative_int, positive_int, seed_int

__all__ = ["FIGURES", "PIPELINE_FIGURES", "add_arguments", "run"]

# the names of --only, in the order the figures are written; each is the stem of its file
FIGURES: tuple[str, ...] = (
    "forward_process", "schedules", "reverse_trajectory", "noise_comparison", "ddpm_vs_ddim", "inpainting", "class_grid"
)
PIPELINE_FIGURES: tuple[str, ...] = FIGURES[2:]  # the figures sampled from a trained pipeline


def _default(function: Callable[..., Any], name: str) -> Any:
    """The default of `function`'s keyword `name`: the command's defaults are the figure functions' own."""
    return inspect.signature(function).parameters[name].default


DEFAULT_STEPS: int = _default(reverse_trajectory_figure, "num_inference_steps")  # or T when the chain is shorter
DEFAULT_STEP_COUNTS: tuple[int, ...] = tuple(_default(ddpm_vs_ddim_figure, "step_counts"))  # those <= T


def _step_list(text: str) -> list[int]:
    try:
        values = [positive_int(v) for v in text.split(",") if v.strip()]
    except argparse.ArgumentTypeError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers >= 1, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `ddpm-ext figures`."""
    parser.add_argument(
        "pipeline", nargs="?", default=None,
        help="A trained pipeline folder (e.g. the training script's --output_dir) or a Hub repo id 'org/name', for "
        "the figures sampled from a model; without it only forward_process and schedules are written.",
    )
    parser.add_argument(
        "--output_dir", type=nonempty_path, default="figures",
        help="Folder for the PNGs and the GIF (default: figures); figures already there are kept unless --overwrite.",
    )
    parser.add_argument(
        "--only", nargs="+", choices=FIGURES, default=None, metavar="FIGURE",
        help=f"Write only these figures, one of {', '.join(FIGURES)} each (default: every figure the inputs allow; "
        "class_grid needs a class-conditional pipeline).",
    )
    parser.add_argument(
        "--seed", type=seed_int, default=0,
        help="Seed of the sampled images (image i as in `ddpm-ext sample --seed`), of the forward process's noise "
        "and of the inpainting masks' strokes (default: 0).",
    )
    parser.add_argument(
        "--dataset", default="mnist-5k",
        help="Data set of the forward-process and inpainting images: a built-in name or a Hub data set; or use "
        "--train_data_dir (default: mnist-5k).",
    )
    parser.add_argument("--train_data_dir", default=None, help="A local image folder instead of --dataset.")
    parser.add_argument(
        "--image_index", type=nonnegative_int, default=0,
        help="Row of the data set: the forward process noises this row of the training split; the inpainting figure "
        "completes this row of the held-out split ('test' where the built-in data set has one, else the training "
        "split), at the pipeline's resolution (default: 0).",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=None,
        help="Sampling steps of the reverse-trajectory, with/without-z, inpainting and class-grid figures, 1..T "
        f"(default: {DEFAULT_STEPS}, or T if smaller).",
    )
    parser.add_argument(
        "--step_counts", type=_step_list, default=None,
        help="Comma-separated step counts of the DDPM-vs-DDIM figure, each 1..T (default: those of "
        f"{','.join(map(str, DEFAULT_STEP_COUNTS))} that are at most T, else T).",
    )
    parser.add_argument(
        "--num_images", type=positive_int, default=8,
        help="Images per sampled row, and per class of the class grid; the reverse trajectory shows at most 4 "
        "(default: %(default)s).",
    )
    parser.add_argument(
        "--num_train_timesteps", type=positive_int, default=None,
        help="T of the forward and schedule figures (default: the pipeline's, else 1000).",
    )
    parser.add_argument(
        "--masks", nargs="+", choices=MASK_KINDS, default=list(_default(inpainting_figure, "mask_kinds")),
        metavar="MASK",
        help=f"Masks of the inpainting figure, one row each, from {', '.join(MASK_KINDS)} (strokes are drawn from "
        f"--seed) (default: {' '.join(_default(inpainting_figure, 'mask_kinds'))}).",
    )
    parser.add_argument(
        "--jump_length", type=positive_int, default=_default(inpainting_figure, "jump_length"),
        help="RePaint's j of the inpainting figure: timesteps per resampling jump (default: %(default)s).",
    )
    parser.add_argument(
        "--jump_n_sample", type=positive_int, default=_default(inpainting_figure, "jump_n_sample"),
        help="RePaint's r of the inpainting figure: times each stretch is resampled; 1 = no resampling "
        "(default: %(default)s).",
    )
    parser.add_argument(
        "--class_labels", nargs="+", default=None, metavar="LABEL",
        help="Classes of the class grid (ids or names), one row each (default: every class of the pipeline).",
    )
    parser.add_argument(
        "--guidance_scale", type=float, default=None,
        help="Classifier-free guidance w >= 0 of the class grid: 0 unconditional, 1 conditional, > 1 guided "
        f"(default: {_default(class_grid_figure, 'guidance_scale')}).",
    )
    parser.add_argument("--device", default=None, help="Device for sampling (default: cuda if available, else cpu).")
    add_overwrite_argument(parser, "figure files")


def _figures_to_draw(args: argparse.Namespace, pipe: DDPMExtPipeline | None) -> list[str]:
    """The figures asked for (`--only`) or allowed by the inputs, in file order; a `ValueError` for one that cannot
    be drawn."""
    conditional = pipe is not None and is_class_conditional(pipe.unet)
    if args.only is None:
        names = [f for f in FIGURES if pipe is not None or f not in PIPELINE_FIGURES]
        names = [f for f in names if f != "class_grid" or conditional]
    else:
        names = [f for f in FIGURES if f in args.only]
        needs_pipeline = [f for f in names if f in PIPELINE_FIGURES]
        if pipe is None and needs_pipeline:
            raise ValueError(
                f"`--only {' '.join(needs_pipeline)}` needs a trained pipeline: give its folder or Hub repo id as "
                "PIPELINE (the first argument)."
            )
        if "class_grid" in names and not conditional:
            raise ValueError(
                "`--only class_grid` needs a class-conditional pipeline, but PIPELINE's UNet is unconditional "
                "(no `num_class_embeds`)."
            )
    for option, value in (("--class_labels", args.class_labels), ("--guidance_scale", args.guidance_scale)):
        if value is not None and "class_grid" not in names:
            reason = "it is not in `--only`" if conditional else "it needs a class-conditional PIPELINE"
            raise ValueError(f"`{option}` is an option of the class_grid figure, which is not drawn: {reason}.")
    return names


def _data_image(args: argparse.Namespace, split: str) -> tuple[Image.Image, Any]:
    """The `--image_index` image of the data set's `split`, and the data set."""
    ds = load_image_dataset(None if args.train_data_dir else args.dataset, args.train_data_dir, split=split)
    if args.image_index >= len(ds):
        raise ValueError(
            f"`--image_index` must be below {len(ds)}, the number of rows of the data set's split {split!r}, "
            f"got {args.image_index}."
        )
    return ds[args.image_index][find_image_column(ds)], ds


def _forward_image(args: argparse.Namespace) -> torch.Tensor:
    """The forward process's x_0: (C, H, W) in [-1, 1] at the image's own resolution, from the training split."""
    image, ds = _data_image(args, "train")
    return build_transform(min(image.size), center_crop=True, dataset=ds)(image)


def _inpainting_image(args: argparse.Namespace, pipe: DDPMExtPipeline) -> torch.Tensor:
    """The inpainting figure's input: (C, H, W) in [-1, 1] from the held-out split, at the pipeline's size."""
    image, _ = _data_image(args, held_out_split(None if args.train_data_dir else args.dataset))
    return pipe.preprocess([image])[0]  # the training transform, to the UNet's sample_size and channels


def run(args: argparse.Namespace) -> int:
    """Write the figures; print each path."""
    # 1. Options that need no pipeline
    out = check_output_dir(args.output_dir, "--output_dir")
    if args.guidance_scale is not None:
        check_number("--guidance_scale", args.guidance_scale, 0)

    # 2. The pipeline, and the options that depend on it
    pipe = None
    if args.pipeline is not None:
        pipe = DDPMExtPipeline.from_pretrained(args.pipeline).to(resolve_device(args.device))
    names = _figures_to_draw(args, pipe)
    gif = [out / "reverse_trajectory.gif"] if "reverse_trajectory" in names else []
    check_new_files([out / f"{n}.png" for n in names] + gif, "--output_dir", args.overwrite)  # before any work
    steps = step_counts = None
    if pipe is not None:
        chain = pipe.scheduler.config.num_train_timesteps
        steps = check_steps(pipe, "--steps", args.steps) if args.steps is not None else min(DEFAULT_STEPS, chain)
        if args.step_counts is not None:
            step_counts = [check_steps(pipe, "--step_counts", s) for s in args.step_counts]
        else:
            step_counts = [s for s in DEFAULT_STEP_COUNTS if s <= chain] or [chain]
    class_ids = None
    if "class_grid" in names and args.class_labels is not None:
        class_ids = resolve_class_labels(pipe.unet, args.class_labels)

    # 3. The data images
    forward_image = _forward_image(args) if "forward_process" in names else None
    inpainting_input = _inpainting_image(args, pipe) if "inpainting" in names else None

    # 4. Draw, in file order; print each file as it is written
    T = args.num_train_timesteps or (pipe.scheduler.config.num_train_timesteps if pipe is not None else 1000)
    sampled = {"num_inference_steps": steps, "seed": args.seed}
    if "forward_process" in names:
        print(forward_process_figure(forward_image, out / "forward_process.png", num_train_timesteps=T,
                                     seed=args.seed).path)
    if "schedules" in names:
        print(schedule_figure(out / "schedules.png", num_train_timesteps=T).path)
    if "reverse_trajectory" in names:
        rev = reverse_trajectory_figure(pipe, out / "reverse_trajectory.png", gif_path=out / "reverse_trajectory.gif",
                                        num_images=min(args.num_images, 4), **sampled)
        print(rev.path, rev.gif_path, sep="\n")
    if "noise_comparison" in names:
        print(noise_comparison_figure(pipe, out / "noise_comparison.png", num_images=args.num_images, **sampled).path)
    if "ddpm_vs_ddim" in names:
        print(ddpm_vs_ddim_figure(pipe, out / "ddpm_vs_ddim.png", step_counts=step_counts,
                                  num_images=args.num_images, seed=args.seed).path)
    if "inpainting" in names:
        print(inpainting_figure(pipe, inpainting_input, out / "inpainting.png", mask_kinds=args.masks,
                                jump_length=args.jump_length, jump_n_sample=args.jump_n_sample, **sampled).path)
    if "class_grid" in names:
        pipe.set_progress_bar_config(disable=True)  # the class grid samples with the pipeline itself
        w = _default(class_grid_figure, "guidance_scale") if args.guidance_scale is None else args.guidance_scale
        print(class_grid_figure(pipe, out / "class_grid.png", class_labels=class_ids, num_per_class=args.num_images,
                                guidance_scale=w, **sampled).path)
    return 0
