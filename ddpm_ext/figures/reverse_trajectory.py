"""The reverse-trajectory figure: x_t and the predicted x̂_0 at a row of DDPM sampling steps, and its GIF."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..files import write_with
from ..images import make_grid
from ..pipelines.pipeline_ddpm_ext import DDPMExtPipeline
from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler
from ..seeding import image_generators
from ..validation import check_int
from .common import _PAD, _paper_t, _row, _save_strips, _seeds, _with_scheduler, check_steps

__all__ = ["ReverseTrajectoryFigure", "reverse_trajectory_figure"]


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
    steps = check_steps(pipeline, "num_inference_steps", num_inference_steps)
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
