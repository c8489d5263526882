"""The lecture's figures, from the package's own schedulers and a trained pipeline.

Five figures, each a function that writes a PNG and returns a small dataclass holding the numbers behind it
(so tests, notebooks and the README can check what is drawn):

- [`forward_process_figure`]: one data image noised by q(x_t | x_0) at a row of timesteps, x_0 -> x_T, for the
  linear, quadratic and cosine β schedules (the same ε for every row);
- [`schedule_figure`]: ᾱ_t and log SNR = log(ᾱ_t / (1 - ᾱ_t)) against t for the three schedules, and β_t
  against the posterior variance β̃_t;
- [`reverse_trajectory_figure`]: x_t and the predicted x̂_0 of a trained model at a row of sampling steps, and
  an animated GIF of the whole denoising;
- [`noise_comparison_figure`]: DDPM sampling with and without the added noise σ_t z, from the same seeds;
- [`ddpm_vs_ddim_figure`]: DDPM and DDIM (η = 0) at several step counts, from the same seeds.

Timesteps on the figures are the paper's t = 1..T (x_0 is the data); the dataclasses keep diffusers' code index
t - 1, as `scheduler.timesteps` and `add_noise` use it. Plots and labelled panels are matplotlib (drawn on an Agg
canvas, no pyplot state); image grids are [`ddpm_ext.images.make_grid`] with nearest-neighbour upscaling, shown
pixel for pixel. `ddpm-ext figures` (`ddpm_ext/commands/figures.py`) writes all of them.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .files import write_with
from .images import from_unit, make_grid
from .pipelines.pipeline_ddpm_ext import DDPMExtPipeline
from .schedulers.scheduling_ddim_ext import DDIMExtScheduler
from .schedulers.scheduling_ddpm_ext import DDPMExtScheduler
from .seeding import image_generators, image_seed
from .validation import check_int, check_number

__all__ = [
    "LECTURE_SCHEDULES",
    "ForwardProcessFigure",
    "ScheduleFigure",
    "ReverseTrajectoryFigure",
    "NoiseComparisonFigure",
    "SamplerComparisonFigure",
    "forward_process_figure",
    "schedule_figure",
    "reverse_trajectory_figure",
    "noise_comparison_figure",
    "ddpm_vs_ddim_figure",
    "InpaintingFigure",
    "inpainting_figure",
]

LECTURE_SCHEDULES: tuple[str, ...] = ("linear", "quadratic", "cosine")

_DPI = 100  # figures are laid out in pixels: 1 inch = 100 px
_PAD = 2  # pixels between grid tiles
_SCHEDULE_COLORS = {"linear": "tab:blue", "quadratic": "tab:orange", "cosine": "tab:green", "sigmoid": "tab:red"}


# --------------------------------------------------------------------------------------------------
# Result dataclasses
# --------------------------------------------------------------------------------------------------
@dataclass
class ForwardProcessFigure:
    """What [`forward_process_figure`] drew.

    Args:
        path (`Path`): the PNG.
        timesteps (`list[int]`): code indices (0..T-1) of the noised columns; the first column is x_0 itself.
        x0 (`torch.Tensor`): the data image, (1, C, H, W) in [-1, 1].
        noise (`torch.Tensor`): the ε used for every schedule, (1, C, H, W).
        images (`dict[str, torch.Tensor]`): per schedule, x_t at `timesteps`, (K, C, H, W), not clipped.
        alphas_cumprod (`dict[str, np.ndarray]`): per schedule, the scheduler's ᾱ_t (float64) at `timesteps`.
        noise_std (`dict[str, np.ndarray]`): per schedule, the measured std of x_t - √ᾱ_t x_0 in each column
            (√(1 - ᾱ_t) times the std of ε).
        size (`tuple[int, int]`): (width, height) of the PNG in pixels.
    """

    path: Path
    timesteps: list[int]
    x0: torch.Tensor
    noise: torch.Tensor
    images: dict[str, torch.Tensor]
    alphas_cumprod: dict[str, np.ndarray]
    noise_std: dict[str, np.ndarray]
    size: tuple[int, int]


@dataclass
class ScheduleFigure:
    """What [`schedule_figure`] drew; every array has T values, for t = 1..T (code index 0..T-1).

    Args:
        path (`Path`): the PNG.
        betas, alphas_cumprod, log_snr, posterior_variance (`dict[str, np.ndarray]`): per schedule, β_t, ᾱ_t,
            log(ᾱ_t / (1 - ᾱ_t)) (natural log) and β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) β_t, from the scheduler.
        size (`tuple[int, int]`): (width, height) of the PNG in pixels.
    """

    path: Path
    betas: dict[str, np.ndarray]
    alphas_cumprod: dict[str, np.ndarray]
    log_snr: dict[str, np.ndarray]
    posterior_variance: dict[str, np.ndarray]
    size: tuple[int, int]


@dataclass
class ReverseTrajectoryFigure:
    """What [`reverse_trajectory_figure`] drew.

    Args:
        path (`Path`): the PNG.
        gif_path (`Path` or `None`): the animated GIF, when one was asked for.
        timesteps (`list[int]`): code timesteps of the shown steps (x_t is the input of that step).
        samples (`torch.Tensor`): x_t at the shown steps, (N, K, C, H, W) in [-1, 1].
        pred_original_samples (`torch.Tensor`): x̂_0 predicted at the shown steps, (N, K, C, H, W).
        final (`torch.Tensor`): the samples x_0, (N, C, H, W).
        num_frames (`int`): frames in the GIF (0 without one).
        size (`tuple[int, int]`): (width, height) of the PNG in pixels.
    """

    path: Path
    gif_path: Path | None
    timesteps: list[int]
    samples: torch.Tensor
    pred_original_samples: torch.Tensor
    final: torch.Tensor
    num_frames: int
    size: tuple[int, int]


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
    sub = textwrap.wrap(subtitle, max((width - 20) // 7, 20))  # ~7 px per character at 10 pt
    top = 10 + _TITLE_LINE + _SUBTITLE_LINE * len(sub) + 12
    height = top + sum(r.grid.height + band for r in rows) + _GAP * (len(rows) - 1) + _BOTTOM
    return width, height, sub, band


def _save_strips(rows: Sequence[_Row], title: str, subtitle: str, path: Path) -> tuple[int, int]:
    """Stack labelled grids in one matplotlib figure, 1 image pixel = 1 figure pixel; return its size."""
    from matplotlib.figure import Figure

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
# 1. The forward process
# --------------------------------------------------------------------------------------------------
def forward_process_figure(
    image: torch.Tensor,
    output_path: str | Path,
    *,
    timesteps: Sequence[int] | None = None,
    schedules: Sequence[str] = LECTURE_SCHEDULES,
    num_train_timesteps: int = 1000,
    seed: int = 0,
    scale: int = 3,
) -> ForwardProcessFigure:
    r"""Noise one data image with q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I) at a row of timesteps, per β schedule.

    Every row uses the same ε, so rows differ only by their ᾱ_t; x_t is computed with the scheduler's own
    `add_noise`. Each column is labelled with the paper's t and the row's ᾱ_t.

    Args:
        image (`torch.Tensor`): x_0, (C, H, W) or (1, C, H, W), in [-1, 1].
        output_path (`str` or `Path`): the PNG to write (parent folders are created).
        timesteps (`Sequence[int]`, *optional*): code indices in [0, T); by default the paper's
            t = 0.05 T, 0.1 T, 0.2 T, 0.3 T, 0.5 T, 0.7 T and T (code index t - 1).
        schedules (`Sequence[str]`, defaults to linear, quadratic, cosine): β schedules, one row each.
        num_train_timesteps (`int`, defaults to 1000): T.
        seed (`int`, defaults to 0): seed of ε.
        scale (`int`, defaults to 3): nearest-neighbour enlargement of the images.

    Returns:
        [`ForwardProcessFigure`]

    Example:

    ```py
    >>> import torch, tempfile, os
    >>> from ddpm_ext.figures import forward_process_figure
    >>> x0 = torch.zeros(1, 28, 28)
    >>> fig = forward_process_figure(x0, os.path.join(tempfile.mkdtemp(), "forward.png"))
    >>> fig.timesteps, round(float(fig.alphas_cumprod["linear"][0]), 3)
    ([49, 99, 199, 299, 499, 699, 999], 0.971)

    ```
    """
    T = check_int("num_train_timesteps", num_train_timesteps, 1)
    schedules = _check_schedules(schedules)
    x0 = image.detach().float().cpu()
    if x0.ndim == 3:
        x0 = x0[None]
    if x0.ndim != 4 or x0.shape[0] != 1:
        raise ValueError(f"`image` must be one image (C, H, W) or (1, C, H, W), got shape {tuple(image.shape)}.")
    if timesteps is None:
        timesteps = [max(round(f * T), 1) - 1 for f in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)]
    ts = [int(t) for t in timesteps]
    if not ts or any(not 0 <= t < T for t in ts):
        raise ValueError(f"`timesteps` must be a non-empty list of code indices in [0, {T}), got {list(timesteps)}.")
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(check_int("seed", seed, 0)))

    images, abars, stds, rows = {}, {}, {}, []
    k = len(ts)
    for name in schedules:
        scheduler = DDPMExtScheduler(num_train_timesteps=T, beta_schedule=name)
        ab = scheduler._alphas_cumprod64[ts]  # (K,) float64, the scheduler's own ᾱ
        xt = scheduler.add_noise(x0.expand(k, -1, -1, -1), noise.expand(k, -1, -1, -1), torch.tensor(ts))
        residual = xt.double() - torch.from_numpy(np.sqrt(ab))[:, None, None, None] * x0.double()
        images[name], abars[name] = xt, ab
        stds[name] = residual.flatten(1).std(dim=1, unbiased=False).numpy()
        labels = ["x₀ (data)"] + [f"t={_paper_t(t)}\nᾱ={a:.3f}" if a >= 1e-3 else f"t={_paper_t(t)}\nᾱ={a:.0e}"
                                  for t, a in zip(ts, ab)]
        rows.append(_row(name, torch.cat([x0, xt]), k + 1, labels, scale))

    path = Path(output_path)
    size = _save_strips(
        rows,
        r"Forward process $q(x_t \mid x_0)$:  $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$",
        f"one data image, the same ε in every row; T = {T}, t as in the paper (1…T)",
        path,
    )
    return ForwardProcessFigure(path, ts, x0, noise, images, abars, stds, size)


# --------------------------------------------------------------------------------------------------
# 2. The schedules
# --------------------------------------------------------------------------------------------------
def schedule_figure(
    output_path: str | Path,
    *,
    schedules: Sequence[str] = LECTURE_SCHEDULES,
    num_train_timesteps: int = 1000,
) -> ScheduleFigure:
    r"""Plot ᾱ_t, log SNR and β_t vs β̃_t against t for each β schedule (1500 x 460 pixels).

    The numbers are the scheduler's: `alphas_cumprod`, `betas` and the posterior variance of its full chain.

    Args:
        output_path (`str` or `Path`): the PNG to write.
        schedules (`Sequence[str]`, defaults to linear, quadratic, cosine): the β schedules.
        num_train_timesteps (`int`, defaults to 1000): T.

    Returns:
        [`ScheduleFigure`]

    Example:

    ```py
    >>> import tempfile, os
    >>> from ddpm_ext.figures import schedule_figure
    >>> fig = schedule_figure(os.path.join(tempfile.mkdtemp(), "schedules.png"))
    >>> fig.size, round(float(fig.alphas_cumprod["cosine"][499]), 3)
    ((1500, 460), 0.494)

    ```
    """
    from matplotlib.figure import Figure

    T = check_int("num_train_timesteps", num_train_timesteps, 2)
    schedules = _check_schedules(schedules)
    betas, abars, snrs, tildes = {}, {}, {}, {}
    for name in schedules:
        s = DDPMExtScheduler(num_train_timesteps=T, beta_schedule=name)
        betas[name] = s._betas64.copy()
        abars[name] = s._alphas_cumprod64.copy()
        snrs[name] = np.log(abars[name]) - np.log1p(-abars[name])
        tildes[name] = s._chain["posterior_variance"].copy()

    t = np.arange(1, T + 1)
    width, height = 1500, 460
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    axes = fig.subplots(1, 3, gridspec_kw={"left": 0.05, "right": 0.99, "bottom": 0.13, "top": 0.86, "wspace": 0.22})
    fig.suptitle(f"β schedules: linear, quadratic, cosine (T = {T})", fontsize=14, weight="bold")
    for name in schedules:
        c = _SCHEDULE_COLORS.get(name)
        axes[0].plot(t, abars[name], color=c, label=name)
        axes[1].plot(t, snrs[name], color=c, label=name)
        axes[2].plot(t, betas[name], color=c, label=rf"{name}: $\beta_t$")
        axes[2].plot(t[1:], tildes[name][1:], color=c, ls="--", label=rf"{name}: $\tilde\beta_t$")
    axes[0].set(
        title=r"$\bar\alpha_t = \Pi_{i \leq t}\,(1 - \beta_i)$: signal kept in $x_t$",
        ylabel=r"$\bar\alpha_t$", ylim=(-0.02, 1.02),
    )
    axes[1].set(title=r"log SNR $= \log\,\bar\alpha_t / (1 - \bar\alpha_t)$", ylabel="log SNR (nats)")
    axes[2].set(
        title=r"$\beta_t$ (solid) vs $\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t$ (dashed)",
        ylabel="variance (log scale)", yscale="log",
    )
    for ax in axes[:2]:
        ax.set_xlim(0, T)
    axes[2].set_xscale("log")  # β̃_t differs from β_t at small t only
    axes[2].set_xlim(1, T)
    for ax in axes:
        ax.set_xlabel("t (log scale)" if ax is axes[2] else "t")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="best")
    path = Path(output_path)
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=_DPI, format="png"))
    return ScheduleFigure(path, betas, abars, snrs, tildes, (width, height))


# --------------------------------------------------------------------------------------------------
# Sampling helpers (model-dependent figures)
# --------------------------------------------------------------------------------------------------
def _with_scheduler(pipeline: DDPMExtPipeline, cls: type) -> DDPMExtPipeline:
    """The same UNet with a `cls` scheduler made from the pipeline's config; no progress bar."""
    if not isinstance(pipeline, DDPMExtPipeline):
        raise ValueError(f"`pipeline` must be a DDPMExtPipeline, got {type(pipeline).__name__}.")
    pipe = DDPMExtPipeline(unet=pipeline.unet, scheduler=cls.from_config(pipeline.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _check_steps(pipeline: DDPMExtPipeline, name: str, steps: int) -> int:
    if not isinstance(pipeline, DDPMExtPipeline):
        raise ValueError(f"`pipeline` must be a DDPMExtPipeline, got {type(pipeline).__name__}.")
    T = pipeline.scheduler.config.num_train_timesteps
    steps = check_int(name, steps, 1)
    if steps > T:
        raise ValueError(f"`{name}` must be at most the pipeline's num_train_timesteps = {T}, got {steps}.")
    return steps


def _seeds(seed: int, num_images: int) -> list[int]:
    """The package's per-image seeds ([`ddpm_ext.seeding.image_seed`]) of images 0..num_images-1."""
    check_int("seed", seed, 0)
    return [image_seed(seed, i) for i in range(check_int("num_images", num_images, 1))]


def _sample(pipe: DDPMExtPipeline, seed: int, num_images: int, steps: int, **kwargs) -> torch.Tensor:
    """Images 0..num_images-1 of `seed` (the package's seeding rule), (N, C, H, W) in [-1, 1]."""
    images = pipe(
        batch_size=num_images, generator=image_generators(seed, 0, num_images), num_inference_steps=steps,
        output_type="pt", **kwargs
    ).images  # (N, C, H, W) in [0, 1]
    return from_unit(images.cpu())


# --------------------------------------------------------------------------------------------------
# 3. The reverse trajectory
# --------------------------------------------------------------------------------------------------
def reverse_trajectory_figure(
    pipeline: DDPMExtPipeline,
    output_path: str | Path,
    *,
    gif_path: str | Path | None = None,
    num_inference_steps: int = 100,
    num_images: int = 4,
    num_columns: int = 8,
    seed: int = 0,
    scale: int = 3,
    max_frames: int = 40,
) -> ReverseTrajectoryFigure:
    r"""x_t and the model's x̂_0 at `num_columns` steps of DDPM sampling, and optionally an animated GIF.

    Sampling is the pipeline's DDPM (ancestral, respaced to `num_inference_steps`) with one generator per image
    ([`ddpm_ext.seeding.image_generators`], the rule of every command).

    Args:
        pipeline ([`DDPMExtPipeline`]): a trained pipeline; its scheduler config is used with a DDPM scheduler.
        output_path (`str` or `Path`): the PNG.
        gif_path (`str` or `Path`, *optional*): where to write the GIF (x_t above x̂_0, every step or every
            few steps, at most `max_frames` frames, the last one held).
        num_inference_steps (`int`, defaults to 100): sampling steps.
        num_images (`int`, defaults to 4): images 0, 1, ... of `seed`.
        num_columns (`int`, defaults to 8): shown steps, evenly spread from the first to the last.
        seed (`int`, defaults to 0): the seed of the images (image i as in `ddpm-ext sample --seed`).
        scale (`int`, defaults to 3): nearest-neighbour enlargement.
        max_frames (`int`, defaults to 40): most frames in the GIF.

    Returns:
        [`ReverseTrajectoryFigure`]

    Example:

    ```py
    >>> import torch, tempfile, os
    >>> from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
    >>> from ddpm_ext.figures import reverse_trajectory_figure
    >>> pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=20))
    >>> d = tempfile.mkdtemp()
    >>> fig = reverse_trajectory_figure(pipe, os.path.join(d, "rev.png"), gif_path=os.path.join(d, "rev.gif"),
    ...                                 num_inference_steps=10, num_images=2, num_columns=5)
    >>> fig.timesteps, tuple(fig.samples.shape)
    ([19, 15, 11, 5, 1], (2, 5, 1, 8, 8))

    ```
    """
    steps = _check_steps(pipeline, "num_inference_steps", num_inference_steps)
    k = min(check_int("num_columns", num_columns, 1), steps)
    check_int("max_frames", max_frames, 2)
    seeds = _seeds(seed, num_images)
    pipe = _with_scheduler(pipeline, DDPMExtScheduler)
    out = pipe(
        batch_size=len(seeds), generator=image_generators(seed, 0, len(seeds)), num_inference_steps=steps,
        output_type="pt", return_trajectory=True,
    )
    traj = torch.stack(out.trajectory, dim=1)  # (N, S + 1, C, H, W): x_T ... x_0
    x0s = torch.stack(out.pred_original_samples, dim=1)  # (N, S, C, H, W)
    cols = np.unique(np.linspace(0, steps - 1, k).round().astype(int)).tolist()
    ts = [out.timesteps[i] for i in cols]
    samples, preds = traj[:, cols], x0s[:, cols]
    n = len(seeds)
    labels = [f"t={_paper_t(t)}" for t in ts]
    # (N, K, C, H, W) -> (N * K, C, H, W): one image per grid row, one shown step per column
    rows = [
        _row("$x_t$", samples.reshape(-1, *samples.shape[2:]), len(cols), labels, scale),
        _row("$\\hat{x}_0$ predicted\nfrom $x_t$", preds.reshape(-1, *preds.shape[2:]), len(cols), labels, scale),
    ]
    path = Path(output_path)
    size = _save_strips(
        rows,
        r"Reverse process: DDPM sampling from $x_T \sim \mathcal{N}(0, I)$",
        f"{steps} respaced steps of T = {pipeline.scheduler.config.num_train_timesteps}; "
        f"{n} images of seed {seed} (one per grid row); t as in the paper",
        path,
    )

    num_frames = 0
    gif = None
    if gif_path is not None:
        gif = Path(gif_path)
        num_frames = _save_gif(traj, x0s, out.timesteps, gif, scale=2, max_frames=max_frames)
    return ReverseTrajectoryFigure(path, gif, ts, samples, preds, traj[:, -1], num_frames, size)


def _save_gif(
    traj: torch.Tensor, x0s: torch.Tensor, timesteps: list[int], path: Path, *, scale: int, max_frames: int
) -> int:
    """Animated GIF: per frame, x_t of every image (top row) above its x̂_0 (bottom row), under a caption."""
    steps = x0s.shape[1]
    # frame j shows x_t before step j (j < S) with that step's x̂_0; the last frame shows x_0 twice
    idx = np.unique(np.linspace(0, steps, min(max_frames, steps + 1)).round().astype(int)).tolist()
    font = ImageFont.load_default(size=13)
    legend = "top: x_t, bottom: predicted x_0"
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    text_width = int(probe.textlength(legend, font=font)) + 8
    header = 38  # two caption lines
    frames = []
    n = traj.shape[0]
    for j in idx:
        pred = x0s[:, j] if j < steps else traj[:, -1]
        grid = make_grid(torch.cat([traj[:, j], pred]).float().clamp(-1, 1), nrow=n, padding=_PAD, scale=scale)
        frame = Image.new("L", (max(grid.width, text_width), grid.height + header), 255)
        frame.paste(grid, ((frame.width - grid.width) // 2, header))
        draw = ImageDraw.Draw(frame)
        draw.text((4, 2), f"t = {_paper_t(timesteps[j])}" if j < steps else "t = 0: the samples x_0", fill=0, font=font)
        draw.text((4, 19), legend, fill=90, font=font)
        frames.append(frame)
    durations = [80] * (len(frames) - 1) + [2000]
    write_with(path, lambda tmp: frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                                                duration=durations, loop=0, optimize=True))
    return len(frames)


# --------------------------------------------------------------------------------------------------
# 4. With and without the added noise z
# --------------------------------------------------------------------------------------------------
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
    >>> fig = noise_comparison_figure(pipe, os.path.join(tempfile.mkdtemp(), "z.png"), num_inference_steps=5, num_images=3)
    >>> tuple(fig.with_noise.shape), tuple(fig.without_noise.shape)
    ((3, 1, 8, 8), (3, 1, 8, 8))

    ```
    """
    steps = _check_steps(pipeline, "num_inference_steps", num_inference_steps)
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


# --------------------------------------------------------------------------------------------------
# 5. DDPM vs DDIM
# --------------------------------------------------------------------------------------------------
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
    counts = [_check_steps(pipeline, "step_counts", s) for s in step_counts]
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


# --------------------------------------------------------------------------------------------------
# 6. Inpainting (RePaint)
# --------------------------------------------------------------------------------------------------
@dataclass
class InpaintingFigure:
    """What [`inpainting_figure`] drew: one row per mask.

    Args:
        path (`Path`): the PNG.
        mask_kinds (`list[str]`): the masks, one per row (see `pipeline_ddpm_ext_inpaint.make_mask`).
        image (`torch.Tensor`): the input, (1, C, H, W) in [-1, 1].
        fill_masks (`torch.Tensor`): (M, 1, H, W) bool, True where the row's pixels were filled.
        timesteps (`list[int]`): code timesteps of the shown trajectory columns (x at that point of the RePaint
            schedule, jumps included; the first is x_T).
        samples (`torch.Tensor`): x at those points, (M, K, C, H, W) in [-1, 1], not clipped.
        completions (`torch.Tensor`): the outputs, (M, C, H, W) in [-1, 1]; kept pixels equal `image`.
        num_inference_steps, jump_length, jump_n_sample (`int`): the sampler's settings.
        size (`tuple[int, int]`): (width, height) of the PNG in pixels.
    """

    path: Path
    mask_kinds: list[str]
    image: torch.Tensor
    fill_masks: torch.Tensor
    timesteps: list[int]
    samples: torch.Tensor
    completions: torch.Tensor
    num_inference_steps: int
    jump_length: int
    jump_n_sample: int
    size: tuple[int, int]


def inpainting_figure(
    pipeline: DDPMExtPipeline,
    image: torch.Tensor,
    output_path: str | Path,
    *,
    mask_kinds: Sequence[str] = ("left_half", "centre_box", "strokes"),
    num_inference_steps: int = 100,
    jump_length: int = 10,
    jump_n_sample: int = 5,
    num_columns: int = 5,
    seed: int = 0,
    scale: int = 3,
) -> InpaintingFigure:
    r"""Inpainting one image with several masks: input, mask, a few points of the trajectory, the completion.

    Sampling is RePaint ([`DDPMExtInpaintPipeline`]) with the pipeline's UNet and scheduler; every row starts from
    the same x_T (one generator seeded `seed` per row).

    Args:
        pipeline ([`DDPMExtPipeline`]): a trained pipeline (any ddpm_ext scheduler).
        image (`torch.Tensor`): (C, H, W) or (1, C, H, W) in [-1, 1], e.g. a data-set image.
        output_path (`str` or `Path`): the PNG.
        mask_kinds (`Sequence[str]`, defaults to left half, centre box, random strokes): one row each; any of
            `"left_half"`, `"top_half"`, `"centre_box"`, `"strokes"` (strokes drawn from `seed`).
        num_inference_steps (`int`, defaults to 100): steps of the respaced chain.
        jump_length, jump_n_sample (`int`, default 10 and 5): RePaint's resampling.
        num_columns (`int`, defaults to 5): trajectory points shown, evenly spread over the schedule (x_T first).
        seed (`int`, defaults to 0): the seed of every row.
        scale (`int`, defaults to 3): nearest-neighbour enlargement.

    Returns:
        [`InpaintingFigure`]

    Example:

    ```py
    >>> import tempfile, os, torch
    >>> from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
    >>> from ddpm_ext.figures import inpainting_figure
    >>> pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=20))
    >>> fig = inpainting_figure(pipe, torch.zeros(1, 8, 8), os.path.join(tempfile.mkdtemp(), "inpaint.png"),
    ...                         num_inference_steps=10, jump_length=3, jump_n_sample=2, num_columns=4)
    >>> fig.timesteps, tuple(fig.samples.shape), bool((fig.completions[~fig.fill_masks] == 0).all())
    ([19, 13, 7, 1], (3, 4, 1, 8, 8), True)

    ```
    """
    from .pipelines.pipeline_ddpm_ext_inpaint import DDPMExtInpaintPipeline, make_mask

    steps = _check_steps(pipeline, "num_inference_steps", num_inference_steps)
    k = check_int("num_columns", num_columns, 1)
    seed = check_int("seed", seed, 0)
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4) or (image.ndim == 4 and image.shape[0] != 1):
        raise ValueError(f"`image` must be a tensor (C, H, W) or (1, C, H, W) in [-1, 1], got {getattr(image, 'shape', image)!r}.")
    x = (image if image.ndim == 4 else image[None]).detach().float().cpu()
    kinds = list(mask_kinds)
    if not kinds:
        raise ValueError("`mask_kinds` must name at least one mask, got none.")
    h, w = x.shape[-2:]
    masks = torch.cat([make_mask(kind, h, w, seed=seed) for kind in kinds])  # (M, 1, H, W), 1 = fill
    pipe = DDPMExtInpaintPipeline(unet=pipeline.unet, scheduler=pipeline.scheduler)
    pipe.set_progress_bar_config(disable=True)
    m = len(kinds)
    out = pipe(
        x.expand(m, -1, -1, -1), masks, num_inference_steps=steps, jump_length=jump_length,
        jump_n_sample=jump_n_sample, generator=[g for _ in range(m) for g in image_generators(seed, 0, 1)], output_type="pt", return_trajectory=True,
    )
    traj = torch.stack(out.trajectory[:-1], dim=1)  # (M, L, C, H, W): x_T ... the last x before x_0
    cols = np.unique(np.linspace(0, traj.shape[1] - 1, min(k, traj.shape[1])).round().astype(int)).tolist()
    ts = [out.timesteps[i] for i in cols]
    samples = traj[:, cols]
    completions = from_unit(out.images.cpu())
    shown_mask = from_unit(out.fill_mask.float()).expand(-1, x.shape[1], -1, -1)  # white = fill
    labels = ["input", "mask\n(white: fill)", *[f"t={_paper_t(t)}" for t in ts], "completion"]
    ncols = len(labels)
    rows = []
    for i, kind in enumerate(kinds):
        row = torch.cat([x, shown_mask[i : i + 1], samples[i], completions[i : i + 1]])
        rows.append(_row(kind.replace("_", " "), row, ncols, labels, scale))
    path = Path(output_path)
    size = _save_strips(
        rows,
        "Inpainting with an unconditional DDPM (RePaint)",
        f"{steps} respaced steps of T = {pipeline.scheduler.config.num_train_timesteps}, jump length {jump_length}, "
        f"{jump_n_sample} samples per stretch; x along the RePaint schedule (jumps included); t as in the paper",
        path,
    )
    return InpaintingFigure(
        path, kinds, x, out.fill_mask, ts, samples, completions, steps, jump_length, jump_n_sample, size
    )


# --------------------------------------------------------------------------------------------------
# 7. Class-conditional samples: one row per class (classifier-free guidance)
# --------------------------------------------------------------------------------------------------
@dataclass
class ClassGridFigure:
    """What [`class_grid_figure`] drew.

    Args:
        path (`Path`): the PNG.
        class_ids (`list[int]`): the class of each row.
        class_names (`list[str]`): its name.
        seeds (`list[int]`): the seed of each column ([`ddpm_ext.seeding.image_seed`] of image j; the same x_T in
            every row).
        guidance_scale (`float`): w.
        samples (`torch.Tensor`): (rows, columns, C, H, W) in [-1, 1].
        size (`tuple[int, int]`): (width, height) of the PNG in pixels.
    """

    path: Path
    class_ids: list[int]
    class_names: list[str]
    seeds: list[int]
    guidance_scale: float
    samples: torch.Tensor
    size: tuple[int, int] = (0, 0)


def class_grid_figure(
    pipeline: DDPMExtPipeline,
    output_path: str | Path,
    *,
    class_labels: Sequence[int | str] | None = None,
    num_per_class: int = 8,
    guidance_scale: float = 1.0,
    num_inference_steps: int = 100,
    seed: int = 0,
    scale: int = 3,
) -> ClassGridFigure:
    r"""Samples of a class-conditional pipeline, one row per class, the same seeds in every row.

    Args:
        pipeline ([`DDPMExtPipeline`]): a class-conditional pipeline.
        output_path (`str` or `Path`): the PNG.
        class_labels (`list[int | str]`, *optional*): the classes (ids or names); all by default.
        num_per_class (`int`, defaults to 8): images per row.
        guidance_scale (`float`, defaults to 1.0): classifier-free guidance w.
        num_inference_steps (`int`, defaults to 100): sampling steps.
        seed (`int`, defaults to 0): column j is image j of `seed` (the package's seeding rule), in every row.
        scale (`int`, defaults to 3): nearest-neighbour enlargement.

    Returns:
        [`ClassGridFigure`]

    Example:

    ```py
    >>> import tempfile, os
    >>> from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
    >>> from ddpm_ext.figures import class_grid_figure
    >>> pipe = DDPMExtPipeline(unet=build_unet("tiny", num_class_embeds=3), scheduler=DDPMExtScheduler(num_train_timesteps=20))
    >>> fig = class_grid_figure(pipe, os.path.join(tempfile.mkdtemp(), "c.png"), num_per_class=2, num_inference_steps=5)
    >>> tuple(fig.samples.shape), fig.class_names
    ((2, 2, 1, 8, 8), ['0', '1'])

    ```
    """
    from .pipelines.guidance import check_guidance_scale, class_names, num_classes, resolve_class_labels

    names = class_names(pipeline.unet)  # raises for an unconditional UNet
    ids = list(range(num_classes(pipeline.unet))) if class_labels is None else resolve_class_labels(pipeline.unet, list(class_labels))
    w = check_guidance_scale(guidance_scale)
    steps = _check_steps(pipeline, "num_inference_steps", num_inference_steps)
    seeds = _seeds(seed, num_per_class)
    labels = [c for c in ids for _ in seeds]
    generators = [g for _ in ids for g in image_generators(seed, 0, len(seeds))]  # the same x_T in every row
    images = from_unit(pipeline(batch_size=len(labels), generator=generators, num_inference_steps=steps,
                                output_type="pt", class_labels=labels, guidance_scale=w).images.cpu())
    samples = images.reshape(len(ids), len(seeds), *images.shape[1:])
    result = ClassGridFigure(Path(output_path), ids, [names[c] for c in ids], seeds, w, samples)
    ticks = [f"image {j}" for j in range(len(seeds))]
    rows = [_row(f"{names[c]}\n(class {c})", samples[r], len(seeds), ticks, scale) for r, c in enumerate(ids)]
    result.size = _save_strips(
        rows,
        "Class-conditional samples",
        f"one row per class, the same seed in each column; guidance w = {w:g}; {steps} steps",
        result.path,
    )
    return result
