"""What the lecture's figures share: argument checks, seeded sampling and the strip layout.

A strip figure is a column of labelled image grids drawn in one matplotlib figure (an Agg canvas, no pyplot
state), one image pixel to one figure pixel; the grids are [`ddpm_ext.images.make_grid`] with nearest-neighbour
upscaling. The underscored names are the figure modules' internals; [`check_steps`] and [`LECTURE_SCHEDULES`]
are public (`ddpm-ext figures` checks its step options with the former before drawing anything).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from ..files import write_with
from ..images import from_unit, make_grid
from ..pipelines.pipeline_ddpm_ext import DDPMExtPipeline
from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler
from ..seeding import image_generators, image_seed
from ..validation import check_int

__all__ = ["LECTURE_SCHEDULES", "check_steps"]

LECTURE_SCHEDULES: tuple[str, ...] = ("linear", "quadratic", "cosine")

_DPI = 100  # figures are laid out in pixels: 1 inch = 100 px
_PAD = 2  # pixels between grid tiles


# --------------------------------------------------------------------------------------------------
# Checks and timesteps
# --------------------------------------------------------------------------------------------------
def check_steps(pipeline: DDPMExtPipeline, name: str, steps: int) -> int:
    """A number of sampling steps for `pipeline`: an integer in 1..T (T = its `num_train_timesteps`).

    Args:
        pipeline ([`DDPMExtPipeline`]): the pipeline to be sampled.
        name (`str`): the argument's name, used in the error message (e.g. `"num_inference_steps"`, `"--steps"`).
        steps (`int`): the number to check.

    Returns:
        `int`: `steps`.

    Raises:
        `ValueError`: for a `pipeline` that is not a [`DDPMExtPipeline`], or `steps` not in 1..T, naming `name`.

    Example:

    ```py
    >>> from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
    >>> from ddpm_ext.figures.common import check_steps
    >>> pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=20))
    >>> check_steps(pipe, "--steps", 20)
    20
    >>> check_steps(pipe, "--steps", 21)
    Traceback (most recent call last):
    ...
    ValueError: `--steps` must be at most the pipeline's num_train_timesteps = 20, got 21.

    ```
    """
    if not isinstance(pipeline, DDPMExtPipeline):
        raise ValueError(f"`pipeline` must be a DDPMExtPipeline, got {type(pipeline).__name__}.")
    T = pipeline.scheduler.config.num_train_timesteps
    steps = check_int(name, steps, 1)
    if steps > T:
        raise ValueError(f"`{name}` must be at most the pipeline's num_train_timesteps = {T}, got {steps}.")
    return steps


def _check_schedules(schedules: Sequence[str]) -> tuple[str, ...]:
    if not schedules:
        raise ValueError("`schedules` must name at least one β schedule, got none.")
    for s in schedules:
        DDPMExtScheduler(num_train_timesteps=2, beta_schedule=s)  # raises a ValueError naming the bad schedule
    return tuple(schedules)


def _paper_t(code_t: int) -> int:
    """Code index -> the paper's t (1..T)."""
    return int(code_t) + 1


# --------------------------------------------------------------------------------------------------
# Sampling by the package's seeding rule (model-dependent figures)
# --------------------------------------------------------------------------------------------------
def _with_scheduler(pipeline: DDPMExtPipeline, cls: type) -> DDPMExtPipeline:
    """The same UNet with a `cls` scheduler made from the pipeline's config; no progress bar."""
    if not isinstance(pipeline, DDPMExtPipeline):
        raise ValueError(f"`pipeline` must be a DDPMExtPipeline, got {type(pipeline).__name__}.")
    pipe = DDPMExtPipeline(unet=pipeline.unet, scheduler=cls.from_config(pipeline.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _seeds(seed: int, num_images: int) -> list[int]:
    """The package's per-image seeds ([`ddpm_ext.seeding.image_seed`]) of images 0..num_images-1."""
    check_int("seed", seed, 0)
    return [image_seed(seed, i) for i in range(check_int("num_images", num_images, 1))]


def _sample(pipe: DDPMExtPipeline, seed: int, num_images: int, steps: int, **kwargs: Any) -> torch.Tensor:
    """Images 0..num_images-1 of `seed` (the package's seeding rule), (N, C, H, W) in [-1, 1]."""
    images = pipe(
        batch_size=num_images, generator=image_generators(seed, 0, num_images), num_inference_steps=steps,
        output_type="pt", **kwargs
    ).images  # (N, C, H, W) in [0, 1]
    return from_unit(images.cpu())


# --------------------------------------------------------------------------------------------------
# Layout: labelled rows of image grids, shown pixel for pixel
# --------------------------------------------------------------------------------------------------
@dataclass
class _Row:
    label: str  # left of the row
    grid: Image.Image
    tick_x: list[float]  # column centres in grid pixels
    tick_labels: list[str]


def _row(label: str, images: torch.Tensor, ncols: int, tick_labels: Sequence[str], scale: int) -> _Row:
    """A grid of (R * ncols, C, H, W) images in [-1, 1], `ncols` per row, with one label per column."""
    grid = make_grid(images.float().clamp(-1, 1), nrow=ncols, padding=_PAD, scale=scale)
    tile = images.shape[-1] * scale
    ticks = [_PAD + c * (tile + _PAD) + (tile - 1) / 2 for c in range(ncols)]
    return _Row(label, grid, ticks, list(tick_labels))


_LEFT, _RIGHT, _BOTTOM, _GAP, _LINE, _MIN_WIDTH = 150, 20, 8, 10, 16, 640
_TITLE_LINE, _SUBTITLE_LINE = 24, 17  # pixel heights of a title / subtitle line


def _strip_layout(rows: Sequence[_Row], subtitle: str) -> tuple[int, int, list[str], int]:
    """(width, height, subtitle lines, tick-label band) in pixels of the figure `_save_strips` draws.

    The width is the widest grid plus margins (at least 640 px); the subtitle is wrapped to fit it.
    """
    lines = max(len(lbl.split("\n")) for r in rows for lbl in r.tick_labels)
    band = _LINE * lines + 10  # tick labels under each grid
    width = max(_LEFT + max(r.grid.width for r in rows) + _RIGHT, _MIN_WIDTH)
    sub = textwrap.wrap(subtitle, max((width - 20) // 7, 20))  # wrapped at 7 px per character (10 pt text)
    top = 10 + _TITLE_LINE + _SUBTITLE_LINE * len(sub) + 12
    height = top + sum(r.grid.height + band for r in rows) + _GAP * (len(rows) - 1) + _BOTTOM
    return width, height, sub, band


def _save_strips(rows: Sequence[_Row], title: str, subtitle: str, path: Path) -> tuple[int, int]:
    """Stack labelled grids in one matplotlib figure, 1 image pixel = 1 figure pixel; return its size."""
    width, height, sub, band = _strip_layout(rows, subtitle)
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    fig.text(0.5, 1 - 8 / height, title, ha="center", va="top", fontsize=13, weight="bold")
    for i, line in enumerate(sub):
        fig.text(0.5, 1 - (10 + _TITLE_LINE + _SUBTITLE_LINE * i) / height, line, ha="center", va="top",
                 fontsize=10, color="0.25")
    y = 10 + _TITLE_LINE + _SUBTITLE_LINE * len(sub) + 12
    for r in rows:
        gw, gh = r.grid.size
        ax = fig.add_axes((_LEFT / width, 1 - (y + gh) / height, gw / width, gh / height))
        arr = np.asarray(r.grid)
        ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks(r.tick_x)
        ax.set_xticklabels(r.tick_labels, fontsize=9)
        ax.tick_params(axis="x", length=3, pad=2)
        ax.set_yticks([])
        ax.set_ylabel(r.label, rotation=0, ha="right", va="center", fontsize=11, labelpad=10)
        for spine in ax.spines.values():
            spine.set_visible(False)
        y += gh + band + _GAP
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=_DPI, format="png"))
    return width, height
