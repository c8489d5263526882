"""The forward-process figure: one data image noised by q(x_t | x_0) at a row of timesteps, per β schedule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler
from ..validation import check_int
from .common import LECTURE_SCHEDULES, _check_schedules, _paper_t, _row, _save_strips

__all__ = ["ForwardProcessFigure", "forward_process_figure"]


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

