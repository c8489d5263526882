"""`ddpm-ext inpaint`: fill the masked part of an image with a trained pipeline (RePaint, Lugmayr et al. 2022).

The mask is white (or any channel >= 128) where pixels are to be filled and black where the image is kept, as in
diffusers' inpainting pipelines; grey masks are thresholded at 128 (with a warning). The image is used at its own
size (nothing is resized, so the kept pixels come back unchanged). Every option is checked, and the pipeline and
both images loaded, before sampling starts; the output is written atomically.

```bash
ddpm-ext inpaint outputs/mnist --image digit.png --mask left_half.png --output completed.png
ddpm-ext inpaint outputs/mnist --image digit.png --mask box.png --output out.png \\
    --steps 250 --jump_length 10 --jump_n_sample 10 --seed 3
ddpm-ext inpaint outputs/mnist --image digit.png --mask box.png --output out.png --scheduler ddim --eta 0
```
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from ..files import atomic_path, check_new_files
from ..pipelines.pipeline_ddpm_ext_inpaint import (
    DDPMExtInpaintPipeline,
    repaint_schedule,
)
from ..schedulers.scheduling_ddim_ext import DDIMExtScheduler
from ..seeding import image_generators
from ..validation import resolve_device
from .cli import add_overwrite_argument, nonempty_path, positive_int, seed_int
from .sample import SCHEDULERS, check_output_file

__all__ = ["add_arguments", "run", "DEFAULT_STEPS"]

DEFAULT_STEPS = 250  # RePaint's setting (or T when the pipeline's chain is shorter)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `ddpm-ext inpaint`."""
    parser.add_argument(
        "pipeline",
        help="A pipeline folder (e.g. the training script's --output_dir) or a Hub repo id 'org/name'.",
    )
    parser.add_argument("--image", required=True, help="The image to complete (any format Pillow reads).")
    parser.add_argument(
        "--mask", required=True,
        help="The mask, same size as the image: white = fill, black = keep (diffusers' inpainting convention).",
    )
    parser.add_argument(
        "--output", type=nonempty_path, default="inpainted.png",
        help="The completed image to write (default: inpainted.png); an existing file is kept unless --overwrite.",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=None,
        help=f"Steps of the (respaced) chain, 1..T (default: {DEFAULT_STEPS}, or T if smaller).",
    )
    parser.add_argument(
        "--jump_length", type=positive_int, default=10, help="RePaint's j: timesteps per resampling jump (default: 10)."
    )
    parser.add_argument(
        "--jump_n_sample", type=positive_int, default=10,
        help="RePaint's r: times each stretch is resampled; 1 = no resampling (default: 10).",
    )
    parser.add_argument(
        "--scheduler", choices=sorted(SCHEDULERS), default=None,
        help="Sampler: ddpm (ancestral) or ddim (default: the pipeline's saved scheduler).",
    )
    parser.add_argument("--eta", type=float, default=None, help="DDIM's η in [0, 1] (needs DDIM; default: 0).")
    parser.add_argument(
        "--no-noise", dest="no_noise", action="store_true",
        help="Model steps without the added noise z (the kept region and the jumps stay noisy).",
    )
    parser.add_argument(
        "--seed", type=seed_int, default=0,
        help="Seed: the generator of image 0 of this seed (ddpm_ext.seeding.image_generators), as `ddpm-ext sample` "
        "draws it (default: 0).",
    )
    parser.add_argument("--device", default=None, help="Torch device (default: cuda if available, else cpu).")
    add_overwrite_argument(parser, "--output")


def _open_image(path: str, option: str) -> Image.Image:
    if not Path(path).is_file():
        raise ValueError(f"`{option}` {path!r} is not a file.")
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except OSError as e:
        raise ValueError(f"`{option}` {path!r} is not an image Pillow can read: {e}") from None


def run(args: argparse.Namespace) -> int:
    """Inpaint and write the completed image; print its path."""
    # 1. Options and files that need no pipeline
    if args.eta is not None and not 0.0 <= args.eta <= 1.0:
        raise ValueError(f"`--eta` must be in [0, 1], got {args.eta}.")
    if args.eta is not None and args.scheduler == "ddpm":
        raise ValueError(f"`--eta` {args.eta} is DDIM's η; it cannot be used with `--scheduler ddpm`.")
    output = check_output_file(args.output, "--output")
    check_new_files([output], "--output", args.overwrite)
    image, mask = _open_image(args.image, "--image"), _open_image(args.mask, "--mask")
    if image.size != mask.size:
        raise ValueError(
            f"`--mask` is {mask.size[0]}x{mask.size[1]} (WxH) but `--image` is {image.size[0]}x{image.size[1]}."
        )

    # 2. The pipeline, and the options that depend on it
    pipe = DDPMExtInpaintPipeline.from_pretrained(args.pipeline)
    if args.scheduler is not None:
        pipe.scheduler = SCHEDULERS[args.scheduler].from_config(pipe.scheduler.config)
    is_ddim = isinstance(pipe.scheduler, DDIMExtScheduler)
    if args.eta is not None and not is_ddim:
        raise ValueError(f"`--eta` {args.eta} needs a DDIM scheduler; add `--scheduler ddim`.")
    T = pipe.scheduler.config.num_train_timesteps
    steps = args.steps if args.steps is not None else min(DEFAULT_STEPS, T)
    if steps > T:
        raise ValueError(f"`--steps` must be at most the pipeline's num_train_timesteps = {T}, got {steps}.")
    pipe = pipe.to(resolve_device(args.device))
    repaint_schedule(steps, args.jump_length, args.jump_n_sample)  # checked here too, before any UNet call

    # 3. Inpaint (the pipeline checks image, mask and sizes before its first UNet call; its bar goes to stderr)
    kwargs = {"eta": float(args.eta or 0.0)} if is_ddim else {}
    out = pipe(
        image,
        mask,
        num_inference_steps=steps,
        jump_length=args.jump_length,
        jump_n_sample=args.jump_n_sample,
        stochastic=not args.no_noise,
        generator=image_generators(args.seed, 0, 1),  # x_T of image 0 of --seed, as in `ddpm-ext sample`
        output_type="pil",
        **kwargs,
    )

    # 4. Write (the pipeline refused a non-finite result: nothing is written for one)
    with atomic_path(output) as tmp:
        out.images[0].save(tmp, format=Image.registered_extensions()[output.suffix.lower()])
    print(output)
    return 0
