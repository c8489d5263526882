"""The noise-comparison figure: DDPM sampling with and without the added noise σ_t z, from the same seeds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..pipelines.pipeline_ddpm_ext import DDPMExtPipeline
from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler
from .common import _row, _sample, _save_strips, _seeds, _with_scheduler, check_steps

__all__ = ["NoiseComparisonFigure", "noise_comparison_figure"]


@dataclass
class NoiseComparisonFigure:
    """What [`noise_comparison_figure`] drew: samples in [-1, 1], (N, C, H, W), from the same seeds.

    Args:
        path (`Path`): the PNG.
        seeds (`list[int]`): the torch seed of each image, [`ddpm_ext.seeding.image_seed`]`(seed, i)` (x_T and
            every z of image i come from `torch.Generator().manual_seed(seeds[i])`).
        num_inference_steps (`int`): DDPM steps.
        with_noise (`torch.Tensor`): Algorithm 2, x_{t-1} = μ_θ(x_t, t) + σ_t z.
        without_noise (`torch.Tensor`): x_{t-1} = μ_θ(x_t, t), the same x_T.
        size (`tuple[int, int]`): (width, height) of the PNG in pixels.
    """

    path: Path
    seeds: list[int]
    num_inference_steps: int
    with_noise: torch.Tensor
    without_noise: torch.Tensor
    size: tuple[int, int]



def noise_comparison_figure(
    pipeline: DDPMExtPipeline,
    output_path: str | Path,
    *,
    num_inference_steps: int = 100,
    num_images: int = 8,
    seed: int = 0,
    scale: int = 3,
) -> NoiseComparisonFigure:
    r"""DDPM sampling with the added noise σ_t z (Algorithm 2) and without it (the mean μ_θ only), same seeds.

    Image i starts from the same x_T in both rows (its generator is [`ddpm_ext.seeding.image_generators`]`(seed,
    i, 1)`, as in every command); without z the chain is deterministic.

    Args:
        pipeline ([`DDPMExtPipeline`]): a trained pipeline (sampled with a DDPM scheduler from its config).
        output_path (`str` or `Path`): the PNG.
        num_inference_steps (`int`, defaults to 100): DDPM steps.
        num_images (`int`, defaults to 8): images per row.
        seed (`int`, defaults to 0): the seed of the images (image i as in `ddpm-ext sample --seed`).
        scale (`int`, defaults to 3): nearest-neighbour enlargement.

    Returns:
        [`NoiseComparisonFigure`]

    Example:

    ```py
    >>> import tempfile, os
    >>> from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
    >>> from ddpm_ext.figures import noise_comparison_figure
    >>> pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=20))
    >>> fig = noise_comparison_figure(pipe, os.path.join(tempfile.mkdtemp(), "z.png"), num_inference_steps=5,
    ...                               num_images=3)
    >>> tuple(fig.with_noise.shape), tuple(fig.without_noise.shape)
    ((3, 1, 8, 8), (3, 1, 8, 8))

    ```
    """
    steps = check_steps(pipeline, "num_inference_steps", num_inference_steps)
    seeds = _seeds(seed, num_images)
    pipe = _with_scheduler(pipeline, DDPMExtScheduler)
    with_z = _sample(pipe, seed, len(seeds), steps)
    without_z = _sample(pipe, seed, len(seeds), steps, stochastic=False)
    labels = [f"image {i}" for i in range(len(seeds))]
    rows = [
        _row("with $z$\n(Algorithm 2)", with_z, len(seeds), labels, scale),
        _row("without $z$\n(mean $\\mu_\\theta$ only)", without_z, len(seeds), labels, scale),
    ]
    path = Path(output_path)
    size = _save_strips(
        rows,
        r"With and without the added noise: $x_{t-1} = \mu_\theta(x_t, t) + \sigma_t z$",
        f"DDPM, {steps} steps, $\\sigma_t^2$ of the scheduler ({pipe.scheduler.config.variance_type}); "
        "the same $x_T$ in each column",
        path,
    )
    return NoiseComparisonFigure(path, seeds, steps, with_z, without_z, size)
