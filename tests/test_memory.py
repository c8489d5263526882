"""Memory before allocating (ddpm_ext.memory): the estimates, the device's limit, and the refusals that use them."""

from __future__ import annotations

import pytest
import torch

from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet, unet_config
from ddpm_ext.memory import (
    SCHEDULE_BYTES_PER_STEP,
    available_memory,
    check_fits,
    format_bytes,
    sampling_bytes,
    schedule_bytes,
)


def test_the_cpu_limit_is_memavailable():
    with open("/proc/meminfo", encoding="ascii") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    # the kernel's number moves between two reads; 1 GiB covers what other processes do meanwhile
    assert abs(available_memory("cpu") - kib * 1024) < 2**30
    assert available_memory("meta") is None  # no known limit: nothing is refused


def test_sampling_estimate_counts_images_and_unet_activations():
    config = unet_config("tiny")  # 8x8, 1 channel, block_out_channels (8, 16), layers_per_block 1
    # images: 8 tensors of 1x8x8; skips: conv_in 8x64 + 2 x (8x64 + 16x16); working: 4 x 2 x 8x64 (the largest level)
    per_image = 8 * 64 + (8 * 64 + 2 * (8 * 64 + 16 * 16)) + 4 * 2 * 8 * 64
    assert sampling_bytes(config, 3) == 3 * per_image * 4
    assert sampling_bytes(config, 3, unet_batch_factor=2) > sampling_bytes(config, 3)
    assert sampling_bytes(config, 1, height=16, width=16) > sampling_bytes(config, 1)
    # a real workload passes with a wide margin: 64 images of 32x32 RGB need about a hundred MiB
    assert sampling_bytes(unet_config("rgb32-small"), 64) == 105 * 2**20
    assert schedule_bytes(1000) == 1000 * SCHEDULE_BYTES_PER_STEP


def test_check_fits_names_the_argument_the_estimate_and_the_limit():
    check_fits(10, "cpu", "`batch_size`=1", limit=10)
    with pytest.raises(ValueError, match=r"`batch_size`=9 needs about 2\.0 GiB .* cpu has 1\.0 GiB available; smaller"):
        check_fits(2**31, "cpu", "`batch_size`=9", "smaller", limit=2**30)
    assert format_bytes(3.8 * 2**30) == "3.8 GiB" and format_bytes(512) == "512 B"


def test_pipeline_refuses_a_batch_that_cannot_fit_before_drawing_anything():
    pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=10))
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match=r"`batch_size`=1000000000 of 8x8 images needs about .* TiB .* available"):
        pipe(batch_size=10**9, num_inference_steps=2)
    assert pipe(batch_size=64, num_inference_steps=1, output_type="pt").images.shape == (64, 1, 8, 8)


def test_scheduler_refuses_a_chain_that_cannot_fit():
    with pytest.raises(ValueError, match=r"`num_train_timesteps`=1000000000 needs about .* GiB .* available"):
        DDPMExtScheduler(num_train_timesteps=10**9)
    assert torch.is_tensor(DDPMExtScheduler(num_train_timesteps=4000).alphas_cumprod)
