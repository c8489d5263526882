"""The DDPM-vs-DDIM figure: samples of both samplers at several step counts, from the same seeds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..pipelines.pipeline_ddpm_ext import DDPMExtPipeline
from ..schedulers.scheduling_ddim_ext import DDIMExtScheduler
from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler
from ..validation import check_number
from .common import _row, _sample, _save_strips, _seeds, _with_scheduler, check_steps

__all__ = ["SamplerComparisonFigure", "ddpm_vs_ddim_figure"]


@dataclass
class SamplerComparisonFigure:
    """What [`ddpm_vs_ddim_figure`] drew.

    Args:
        path (`Path`): the PNG.
        seeds (`list[int]`): the torch seed of each image, [`ddpm_ext.seeding.image_seed`]`(seed, i)`.
        step_counts (`list[int]`): the numbers of sampling steps.
        eta (`float`): DDIM's η.
        samples (`dict[tuple[str, int], torch.Tensor]`): `("ddpm" | "ddim", steps)` -> samples (N, C, H, W) in [-1, 1].
        size (`tuple[int, int]`): (width, height) of the PNG in pixels.
    """

    path: Path
    seeds: list[int]
    step_counts: list[int]
    eta: float
    samples: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    size: tuple[int, int] = (0, 0)



def ddpm_vs_ddim_figure(
    pipeline: DDPMExtPipeline,
    output_path: str | Path,
    *,
    step_counts: Sequence[int] = (10, 50, 100),
    num_images: int = 8,
    seed: int = 0,
    eta: float = 0.0,
    scale: int = 3,
) -> SamplerComparisonFigure:
    r"""DDPM (ancestral) and DDIM (η = `eta`) samples at each step count, one row each, same seeds.

    Both samplers use the same trained UNet and the pipeline's schedule (respaced to each step count).

    Args:
        pipeline ([`DDPMExtPipeline`]): a trained pipeline.
        output_path (`str` or `Path`): the PNG.
        step_counts (`Sequence[int]`, defaults to (10, 50, 100)): numbers of sampling steps.
        num_images (`int`, defaults to 8): images per row.
        seed (`int`, defaults to 0): the seed of the images (image i as in `ddpm-ext sample --seed`).
        eta (`float`, defaults to 0.0): DDIM's η in [0, 1].
        scale (`int`, defaults to 3): nearest-neighbour enlargement.

    Returns:
        [`SamplerComparisonFigure`]

    Example:

    ```py
    >>> import tempfile, os
    >>> from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
    >>> from ddpm_ext.figures import ddpm_vs_ddim_figure
    >>> pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=20))
    >>> fig = ddpm_vs_ddim_figure(pipe, os.path.join(tempfile.mkdtemp(), "s.png"), step_counts=(2, 5), num_images=2)
    >>> sorted(fig.samples)
    [('ddim', 2), ('ddim', 5), ('ddpm', 2), ('ddpm', 5)]

    ```
    """
    counts = [check_steps(pipeline, "step_counts", s) for s in step_counts]
    if not counts:
        raise ValueError("`step_counts` must hold at least one number of steps, got none.")
    eta = check_number("eta", eta, 0, 1)
    seeds = _seeds(seed, num_images)
    ddpm, ddim = _with_scheduler(pipeline, DDPMExtScheduler), _with_scheduler(pipeline, DDIMExtScheduler)
    result = SamplerComparisonFigure(Path(output_path), seeds, counts, float(eta))
    labels = [f"image {i}" for i in range(len(seeds))]
    rows = []
    for name, pipe, kwargs in (("ddpm", ddpm, {}), ("ddim", ddim, {"eta": float(eta)})):
        for s in counts:
            images = _sample(pipe, seed, len(seeds), s, **kwargs)
            result.samples[(name, s)] = images
            rows.append(_row(f"{name.upper()}\n{s} steps", images, len(seeds), labels, scale))
    result.size = _save_strips(
        rows,
        "DDPM vs DDIM from the same trained model",
        f"the same x_T in each column (seed {seed}); DDIM η = {eta:g}; both respaced from "
        f"T = {pipeline.scheduler.config.num_train_timesteps}",
        result.path,
    )
    return result
