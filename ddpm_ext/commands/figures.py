"""`ddpm-ext figures`: write the lecture's figures ([`ddpm_ext.figures`]) for a data set and a trained pipeline."""

from __future__ import annotations

import argparse

import torch

from ..figures import ddpm_vs_ddim_figure, forward_process_figure, noise_comparison_figure, reverse_trajectory_figure, schedule_figure
from ..figures.common import check_steps
from ..pipelines.pipeline_ddpm_ext import DDPMExtPipeline
from ..validation import resolve_device
from .cli import check_output_dir, nonnegative_int, positive_int

__all__ = ["add_arguments", "run"]


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
        "--pipeline", default=None,
        help="A trained pipeline (folder or Hub repo id) for the reverse-process, with/without-z and DDPM-vs-DDIM "
        "figures; without it only the forward-process and schedule figures are written.",
    )
    parser.add_argument("--output_dir", default="figures", help="Folder for the PNGs and the GIF (default: figures).")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="Seed of the sampled images (image i as in `ddpm-ext sample --seed`) and of the forward "
                        "process's noise (default: 0).")
    parser.add_argument(
        "--dataset", default="mnist-5k",
        help="Data set of the forward-process image: a built-in name, a Hub data set or use --train_data_dir "
        "(default: mnist-5k).",
    )
    parser.add_argument("--train_data_dir", default=None, help="A local image folder instead of --dataset.")
    parser.add_argument("--image_index", type=nonnegative_int, default=0, help="Row of the data set to noise (default: 0).")
    parser.add_argument(
        "--steps", type=positive_int, default=100,
        help="DDPM steps of the reverse-trajectory and with/without-z figures (default: 100).",
    )
    parser.add_argument(
        "--step_counts", type=_step_list, default=[10, 50, 100],
        help="Comma-separated step counts of the DDPM-vs-DDIM figure (default: 10,50,100).",
    )
    parser.add_argument("--num_images", type=positive_int, default=8, help="Images per sampled row (default: 8).")
    parser.add_argument("--num_train_timesteps", type=positive_int, default=None,
                        help="T of the forward and schedule figures (default: the pipeline's, else 1000).")
    parser.add_argument("--device", default=None, help="Device for sampling (default: cuda if available, else cpu).")


def _data_image(args: argparse.Namespace) -> torch.Tensor:
    """The `--image_index` image of the data set, (C, H, W) in [-1, 1] at its own resolution."""
    from ..data import build_transform, find_image_column, load_image_dataset

    ds = load_image_dataset(None if args.train_data_dir else args.dataset, args.train_data_dir)
    if args.image_index >= len(ds):
        raise ValueError(f"`--image_index` must be below the data set's {len(ds)} rows, got {args.image_index}.")
    image = ds[args.image_index][find_image_column(ds)]
    transform = build_transform(min(image.size), center_crop=True, dataset=ds)
    return transform(image)


def run(args: argparse.Namespace) -> int:
    """Write the figures; print each path."""
    out = check_output_dir(args.output_dir, "--output_dir")
    pipe = None
    if args.pipeline is not None:
        pipe = DDPMExtPipeline.from_pretrained(args.pipeline).to(resolve_device(args.device))
        for s in [args.steps, *args.step_counts]:
            check_steps(pipe, "--steps / --step_counts", s)
    T = args.num_train_timesteps or (pipe.scheduler.config.num_train_timesteps if pipe is not None else 1000)
    image = _data_image(args)

    written = [
        forward_process_figure(image, out / "forward_process.png", num_train_timesteps=T, seed=args.seed).path,
        schedule_figure(out / "schedules.png", num_train_timesteps=T).path,
    ]
    if pipe is not None:
        rev = reverse_trajectory_figure(
            pipe, out / "reverse_trajectory.png", gif_path=out / "reverse_trajectory.gif",
            num_inference_steps=args.steps, num_images=min(args.num_images, 4), seed=args.seed,
        )
        written += [rev.path, rev.gif_path]
        written.append(noise_comparison_figure(
            pipe, out / "noise_comparison.png", num_inference_steps=args.steps, num_images=args.num_images,
            seed=args.seed,
        ).path)
        written.append(ddpm_vs_ddim_figure(
            pipe, out / "ddpm_vs_ddim.png", step_counts=args.step_counts, num_images=args.num_images, seed=args.seed,
        ).path)
    for p in written:
        print(p)
    return 0
