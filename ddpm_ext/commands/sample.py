"""`ddpm-ext sample`: images from a trained pipeline, as a PNG grid and optionally one file per image.

Image i is drawn with its own generator, [`ddpm_ext.seeding.image_generators`]`(--seed, i, 1)` (the rule
`ddpm-ext evaluate`, the figures and the pipeline share), so a given image does not depend on `--batch_size` or
`--num_images`. Every option is checked, and the pipeline loaded, before anything is written.

```bash
ddpm-ext sample outputs/mnist --num_images 64 --steps 100 --output samples.png
ddpm-ext sample outputs/mnist --scheduler ddim --steps 50 --eta 0.0 --images_dir samples/
ddpm-ext sample outputs/mnist --no-noise --output without_z.png   # the lecture's sampling without z
ddpm-ext sample outputs/mnist-cond --class_labels 3 7 --guidance_scale 2   # a row of 3s, a row of 7s
```
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..cpu_threads import AdaptiveThreads
from ..files import check_new_files, images_in, write_with
from ..images import save_image_grid, to_pil
from ..memory import check_fits, stored_images_bytes
from ..pipelines.pipeline_ddpm_ext import DDPMExtPipeline
from ..schedulers.fast_samplers import FAST_SAMPLERS, fast_sampler
from ..schedulers.scheduling_common import DEFAULT_SAMPLING_STEPS, TIMESTEP_SPACINGS
from ..schedulers.scheduling_ddim_ext import DDIMExtScheduler
from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler
from ..seeding import image_generators
from ..validation import check_number, resolve_device
from .cli import (
    add_cpu_threads_argument,
    add_overwrite_argument,
    check_output_dir,
    nonempty_path,
    positive_int,
    seed_int,
)
from .guidance_options import add_guidance_arguments, cli_guidance

__all__ = ["SCHEDULERS", "add_arguments", "run", "check_output_file"]

SCHEDULERS = {"ddpm": DDPMExtScheduler, "ddim": DDIMExtScheduler}
DEFAULT_STEPS = DEFAULT_SAMPLING_STEPS  # or T when the pipeline's chain is shorter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `ddpm-ext sample`."""
    parser.add_argument(
        "pipeline", help="A pipeline folder (e.g. the training script's --output_dir) or a Hub repo id 'org/name'."
    )
    parser.add_argument("--num_images", type=positive_int, default=16, help="Number of images (default: 16).")
    parser.add_argument(
        "--steps", type=positive_int, default=None,
        help=f"Sampling steps, 1..T; fewer than T respaces the chain (default: {DEFAULT_STEPS}, or T if smaller).",
    )
    parser.add_argument(
        "--scheduler", choices=[*sorted(SCHEDULERS), *FAST_SAMPLERS], default=None,
        help="Sampler: ddpm (ancestral, Algorithm 2), ddim, or diffusers' dpmpp (DPM-Solver++ 2M) / unipc with the "
        "model's x̂_0 clipping (ddpm_ext.fast_sampler) (default: the pipeline's saved scheduler).",
    )
    parser.add_argument(
        "--timestep_spacing", choices=TIMESTEP_SPACINGS, default=None,
        help="Timesteps of a respaced chain (default: the pipeline's: trailing, starting at T, for a config that says "
        "diffusers' 'leading'; leading: diffusers' chain).",
    )
    parser.add_argument(
        "--ddim_eps", choices=("consistent", "model"), default=None,
        help="DDIM's ε̂: consistent = recomputed from the clipped x̂_0 (the pipeline's default); model = the UNet's own "
        "(diffusers' DDIMPipeline).",
    )
    parser.add_argument(
        "--eta", type=float, default=None, help="DDIM's η in [0, 1] (needs DDIM; default: 0, deterministic)."
    )
    parser.add_argument(
        "--autoguidance_scale", type=float, default=None,
        help="Autoguidance w >= 1 with the pipeline's guide model (trained with --autoguidance_scale): 1 = the UNet "
        "alone (diffusers' DDPMPipeline sampling); default: the w saved with the guide, 1 without a guide.",
    )
    parser.add_argument(
        "--no-noise", dest="no_noise", action="store_true",
        help="Sample without the added noise z: every step returns the mean μ_θ (the lecture's comparison).",
    )
    parser.add_argument(
        "--seed", type=seed_int, default=0,
        help="Seed of the images: image i has its own generator from (seed, i), as in `ddpm-ext evaluate` "
        "and the figures (default: 0).",
    )
    parser.add_argument(
        "--output", type=nonempty_path, default="samples.png", help="The grid image to write (default: samples.png)."
    )
    parser.add_argument("--nrow", type=positive_int, default=None, help="Images per grid row (default: ceil(sqrt(N))).")
    parser.add_argument(
        "--images_dir", type=nonempty_path, default=None,
        help="Also write each image as 00000.png, 00001.png, ... here; a folder that already holds images is refused "
        "unless --overwrite (which replaces the numbered images of an earlier run, and says so).",
    )
    parser.add_argument("--batch_size", type=positive_int, default=16, help="Images per forward pass (default: 16).")
    parser.add_argument("--device", default=None, help="Torch device (default: cuda if available, else cpu).")
    add_guidance_arguments(parser)  # --class_labels, --guidance_scale
    add_cpu_threads_argument(parser)
    add_overwrite_argument(parser, "--output and the images of --images_dir")


def check_output_file(path: str, option: str) -> Path:
    """A file to write: an image extension Pillow knows, not a folder, no parent that is a file."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"`{option}` {path!r} is a folder; give a file name such as {str(out / 'samples.png')!r}.")
    Image.init()
    known = sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE)
    if out.suffix.lower() not in known:
        raise ValueError(
            f"`{option}` {path!r} must end with an image extension Pillow can write, e.g. .png (got {out.suffix!r})."
        )
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"`{option}` {path!r} cannot be written: {str(parent)!r} is a file, not a folder.")
    return out


def run(args: argparse.Namespace) -> int:
    """Sample and write the grid (and the single images); print the paths written."""
    # 1. Options that need no pipeline
    if args.eta is not None:
        if args.scheduler == "ddpm":
            raise ValueError(
                f"`--eta` {args.eta} is DDIM's η; it cannot be used with `--scheduler ddpm` (use `--scheduler ddim`)."
            )
        check_number("--eta", args.eta, 0, 1)
    output = check_output_file(args.output, "--output")
    check_new_files([output], "--output", args.overwrite)
    images_dir = check_output_dir(args.images_dir, "--images_dir") if args.images_dir is not None else None
    older = images_in(images_dir) if images_dir is not None else []
    if older and not args.overwrite:
        raise ValueError(
            f"`--images_dir` {str(images_dir)!r} already holds {len(older)} image(s) (e.g. {older[0].name}); new "
            "images would mix with them. Pass --overwrite to replace them, or give an empty folder (nothing was "
            "written)."
        )
    device = resolve_device(args.device)

    # 2. The pipeline, and the options that depend on it
    pipe = DDPMExtPipeline.from_pretrained(args.pipeline)
    if args.scheduler in FAST_SAMPLERS:
        pipe.scheduler = fast_sampler(args.scheduler, pipe.scheduler.config)
    elif args.scheduler is not None:
        pipe.scheduler = SCHEDULERS[args.scheduler].from_config(pipe.scheduler.config)
    is_ddim = isinstance(pipe.scheduler, DDIMExtScheduler)
    if args.ddim_eps is not None and not is_ddim:
        raise ValueError(
            f"`--ddim_eps` {args.ddim_eps} needs a DDIM scheduler, but the pipeline's is "
            f"{type(pipe.scheduler).__name__}; "
            "add `--scheduler ddim`."
        )
    if args.eta is not None and not is_ddim:
        raise ValueError(
            f"`--eta` {args.eta} needs a DDIM scheduler, but the pipeline's is {type(pipe.scheduler).__name__}; "
            "add `--scheduler ddim`."
        )
    if args.no_noise and not isinstance(pipe.scheduler, (DDPMExtScheduler, DDIMExtScheduler)):
        raise ValueError(
            f"`--no-noise` needs a ddpm or ddim scheduler; pass `--scheduler ddpm` "
            f"(the pipeline has {type(pipe.scheduler).__name__})."
        )
    T = pipe.scheduler.config.num_train_timesteps
    steps = args.steps if args.steps is not None else min(DEFAULT_STEPS, T)
    if steps > T:
        raise ValueError(f"`--steps` must be at most the pipeline's num_train_timesteps = {T}, got {steps}.")
    _, guide, nrow = cli_guidance(pipe, args.class_labels, args.guidance_scale, args.num_images, args.nrow)
    autoguidance = pipe.resolve_autoguidance_scale(args.autoguidance_scale)  # w > 1 needs the pipeline's guide
    height, width = pipe._sample_hw()
    check_fits(stored_images_bytes(args.num_images, pipe.unet.config.in_channels, height, width), "cpu",
               f"`--num_images` {args.num_images} ({height}x{width} images kept until written)",
               "sample fewer images per command (several --seed values)")
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)

    # 3. Sample, batch by batch, one generator per image
    kwargs = {"eta": float(args.eta or 0.0)} if is_ddim else {}
    if args.ddim_eps is not None:
        kwargs["use_clipped_model_output"] = args.ddim_eps == "consistent"
    if args.timestep_spacing is not None:
        kwargs["timestep_spacing"] = args.timestep_spacing
    kwargs["autoguidance_scale"] = autoguidance
    starts = range(0, args.num_images, args.batch_size)
    chunks = []

    threads = AdaptiveThreads.from_option(args.cpu_threads, device)

    def advance(*_) -> None:  # pipeline callback: one tick per denoising step; returns None (changes nothing)
        bar.update(1)
        threads.tick()

    try:
        with tqdm(
            total=len(starts) * steps, desc=f"sampling {args.num_images} images", unit="step", file=sys.stderr
        ) as bar:
            for start in starts:
                count = min(args.batch_size, args.num_images - start)
                out = pipe(
                    batch_size=count,
                    generator=image_generators(args.seed, start, count),
                    num_inference_steps=steps,
                    stochastic=not args.no_noise,
                    output_type="np",
                    callback_on_step_end=advance,
                    **guide(start, count),
                    **kwargs,
                )
                chunks.append(out.images)
    finally:
        threads.restore()  # the caller's thread count back (`run` is also called in-process)
    images = np.concatenate(chunks)  # (N, H, W, C) in [0, 1]

    # 4. Write (the pipeline refused a non-finite sample: nothing is written for one)
    save_image_grid(images, output, nrow)
    print(output)
    if images_dir is not None:
        written = {images_dir / f"{i:05d}.png" for i in range(len(images))}
        for i, im in enumerate(to_pil(images)):
            write_with(images_dir / f"{i:05d}.png", im.save)
        stale = [p for p in older if p not in written and re.fullmatch(r"\d{5}\.png", p.name)]
        for p in stale:  # the numbered images of an earlier, larger run: --overwrite replaces that set
            p.unlink()
        print(f"{len(images)} images in {images_dir}")
        if older:
            kept = len(older) - len(stale) - len(written & set(older))
            print(f"--overwrite: replaced {len(written & set(older))} and removed {len(stale)} older image(s) in "
                  f"{images_dir}" + (f"; {kept} other image(s) left as they were" if kept else ""), file=sys.stderr)
    return 0
