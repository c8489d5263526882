"""The lecture's figures, from the package's own schedulers and a trained pipeline.

Seven figures, each a function that writes a PNG and returns a small dataclass holding the numbers behind it
(so tests, notebooks and the docs can check what is drawn); each sits in a module of its own with its dataclass:

- [`forward_process_figure`] (`forward_process.py`): one data image noised by q(x_t | x_0) at a row of timesteps,
  x_0 -> x_T, for the linear, quadratic and cosine β schedules (the same ε for every row);
- [`schedule_figure`] (`schedules.py`): ᾱ_t and log SNR = log(ᾱ_t / (1 - ᾱ_t)) against t for the three
  schedules, and β_t against the posterior variance β̃_t;
- [`reverse_trajectory_figure`] (`reverse_trajectory.py`): x_t and the predicted x̂_0 of a trained model at a row
  of sampling steps, and an animated GIF of the whole denoising;
- [`noise_comparison_figure`] (`noise_comparison.py`): DDPM sampling with and without the added noise σ_t z, from
  the same seeds;
- [`ddpm_vs_ddim_figure`] (`ddpm_vs_ddim.py`): DDPM and DDIM (η = 0) at several step counts, from the same seeds;
- [`inpainting_figure`] (`inpainting.py`): one image completed by RePaint under several masks, with points of
  the trajectory;
- [`class_grid_figure`] (`class_grid.py`): samples of a class-conditional pipeline, one row per class, the same
  seeds in every row.

What they share (checks, seeded sampling, the strip layout) is in `common.py`. Timesteps on the figures are the
paper's t = 1..T (x_0 is the data); the dataclasses keep diffusers' code index t - 1, as `scheduler.timesteps` and
`add_noise` use it. Plots and labelled panels are matplotlib (drawn on an Agg canvas, no pyplot state); image grids
are [`ddpm_ext.images.make_grid`] with nearest-neighbour upscaling, shown pixel for pixel. `ddpm-ext figures`
(`ddpm_ext/commands/figures.py`) writes all of them.
"""

from .class_grid import ClassGridFigure, class_grid_figure
from .common import LECTURE_SCHEDULES
from .ddpm_vs_ddim import SamplerComparisonFigure, ddpm_vs_ddim_figure
from .forward_process import ForwardProcessFigure, forward_process_figure
from .inpainting import InpaintingFigure, inpainting_figure
from .noise_comparison import NoiseComparisonFigure, noise_comparison_figure
from .reverse_trajectory import ReverseTrajectoryFigure, reverse_trajectory_figure
from .schedules import ScheduleFigure, schedule_figure

__all__ = [
    "LECTURE_SCHEDULES",
    "ForwardProcessFigure",
    "ScheduleFigure",
    "ReverseTrajectoryFigure",
    "NoiseComparisonFigure",
    "SamplerComparisonFigure",
    "InpaintingFigure",
    "ClassGridFigure",
    "forward_process_figure",
    "schedule_figure",
    "reverse_trajectory_figure",
    "noise_comparison_figure",
    "ddpm_vs_ddim_figure",
    "inpainting_figure",
    "class_grid_figure",
]
