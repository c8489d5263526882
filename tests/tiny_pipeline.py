"""A tiny pipeline for the figure and command-line tests: random weights, 16x16, T = 20 (seconds on a CPU).

conftest.py saves it once per session as the `tiny_pipeline_dir` fixture.
"""

from __future__ import annotations

import torch

from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet

TINY_T = 20
TINY_SIZE = 16


def make_tiny_pipeline(seed: int = 0) -> DDPMExtPipeline:
    """A `tiny`-preset UNet at 16x16 (random init from `seed`) with a cosine DDPM scheduler of T = 20."""
    torch.manual_seed(seed)
    unet = build_unet("tiny", sample_size=TINY_SIZE).eval()
    pipe = DDPMExtPipeline(unet=unet, scheduler=DDPMExtScheduler(num_train_timesteps=TINY_T, beta_schedule="cosine"))
    pipe.set_progress_bar_config(disable=True)
    return pipe
