"""The schedules figure: ᾱ_t, log SNR and β_t against the posterior variance β̃_t for each β schedule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..files import write_with
from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler
from ..validation import check_int
from .common import _DPI, LECTURE_SCHEDULES, _check_schedules

__all__ = ["ScheduleFigure", "schedule_figure"]

_SCHEDULE_COLORS = {"linear": "tab:blue", "quadratic": "tab:orange", "cosine": "tab:green", "sigmoid": "tab:red"}


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
