"""The package's one seeding rule for sampled images: image i of seed s has its own generator, keyed by (s, i).

`ddpm-ext sample`, `ddpm-ext evaluate`, the figures and anyone calling the pipeline with
`generator=image_generators(seed, 0, n)` therefore get the same image i for the same seed, whatever the batch
size or the number of images (the pipeline draws x_T and every z of image i from its own generator; the UNet's
float round-off may differ with the batch size in the last bits, far below one 8-bit level).

The seed of image i is a word of NumPy's `SeedSequence(seed, spawn_key=(tag, i))`, not `seed + i`: with
`seed + i`, runs with seeds 0 and 1 would share all but one image, while here every (seed, i) pair gets an
independent stream. The tag separates this stream from other uses of the same seed (data order, bits/dim noise,
KID subsets, augmentation).
"""

from __future__ import annotations

import numpy as np
import torch

from .validation import check_int, check_seed

__all__ = ["image_generators", "image_seed"]

# Domain tag of the per-image sampling stream (kept from ddpm-ext evaluate, whose published numbers use it).
_SAMPLE_STREAM = 0x5A3D1E


def image_seed(seed: int, index: int) -> int:
    """The seed (an integer in [0, 2⁶³)) of image `index` drawn with `seed`.

    Example:

    ```py
    >>> image_seed(0, 0) == image_seed(0, 0), image_seed(0, 1) == image_seed(1, 0)
    (True, False)

    ```
    """
    seed, index = check_seed("seed", seed), check_int("index", index, 0)
    word = np.random.SeedSequence(seed, spawn_key=(_SAMPLE_STREAM, index)).generate_state(1, np.uint64)[0]
    return int(word >> np.uint64(1))  # torch seeds must fit in a signed 64-bit integer


def image_generators(
    seed: int, start: int, count: int, device: str | torch.device = "cpu"
) -> list[torch.Generator]:
    """Generators of images `start, ..., start + count - 1` for `seed`: pass them to a pipeline as `generator=`.

    Args:
        seed (`int`): The run's seed, in [0, 2**32).
        start (`int`): Index of the first image (e.g. the offset of a batch), >= 0.
        count (`int`): Number of images, >= 0.
        device (`str` or `torch.device`, defaults to `"cpu"`): Device of the generators. CPU generators give the
            same images on every device (the pipeline draws on the CPU and moves the noise); a CUDA generator
            draws a different stream.

    Example:

    ```py
    >>> import torch
    >>> from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
    >>> from ddpm_ext.seeding import image_generators
    >>> pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=10))
    >>> pipe.set_progress_bar_config(disable=True)
    >>> four = pipe(4, generator=image_generators(0, 0, 4), num_inference_steps=3, output_type="pt").images
    >>> last_two = pipe(2, generator=image_generators(0, 2, 2), num_inference_steps=3, output_type="pt").images
    >>> (four[2:] - last_two).abs().max() < 1e-5  # the same images (up to the UNet's batch-size round-off)
    tensor(True)

    ```
    """
    start, count = check_int("start", start, 0), check_int("count", count, 0)
    return [torch.Generator(device).manual_seed(image_seed(seed, i)) for i in range(start, start + count)]
