"""A tiny saved pipeline for the figure and command-line tests: random weights, 16x16, T = 20 (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
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


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """The tiny pipeline saved in diffusers' layout (safetensors), once per test session."""
    folder = tmp_path_factory.mktemp("tiny_pipeline")
    make_tiny_pipeline().save_pretrained(folder)
    return folder
