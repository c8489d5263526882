"""Memory before allocating: what sampling and a diffusion schedule need, what the device has, and the refusal.

One owner for every size check of the package: the pipelines check a call's `batch_size` here before drawing x_T,
the schedulers their `num_train_timesteps` before building the schedule, and the training flags `--eval_batch_size`,
`--resolution` and `--ddpm_num_steps` before any model or data is loaded. A request that does not fit is refused
with a `ValueError` naming the argument, the estimate and the limit, instead of a raw allocator `RuntimeError`
(or a `MemoryError` deep inside NumPy) after minutes of work.

The estimates count the tensors that are really allocated, and stay on the low side (a refusal must never block a
workload that runs): x_t, the model output and the scheduler step's temporaries; the UNet's activations without
gradients (the skip connections every down block keeps for the up path, and a few working tensors at the largest
level); the images returned. Attention matrices are not counted (PyTorch's fused attention does not materialise
them). The limit is the memory the device has available now: `MemAvailable` of `/proc/meminfo` (or
`os.sysconf`) on a CPU, `torch.cuda.mem_get_info` plus the allocator's free cache on CUDA; elsewhere (MPS) no limit
is known and nothing is refused.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

__all__ = [
    "SCHEDULE_BYTES_PER_STEP",
    "available_memory",
    "check_fits",
    "format_bytes",
    "sampling_bytes",
    "schedule_bytes",
    "stored_images_bytes",
]

# Bytes per timestep of a scheduler's tables: float64 coefficients (β, α, ᾱ, the posterior's, their logs...) and the
# timestep -> index map of its grid (a dict of Python ints); measured 340 (DDIM) to 660 (DDPM), rounded down.
SCHEDULE_BYTES_PER_STEP = 300
# x_t, the model output, the step's temporaries (x̂_0, the mean, the noise, x_{t-1}) and the returned images, each
# one (B, C, H, W) float32 tensor.
_SAMPLE_TENSORS = 8
# working tensors of a UNet block at its level, besides the skip connections (input, normalised, activated, output)
_WORKING_TENSORS = 4


def format_bytes(n: float) -> str:
    """`n` bytes in words: "3.8 GiB", "120.0 MiB", "512 B"."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def available_memory(device: torch.device | str | None = None) -> int | None:
    """The bytes `device` can still allocate now, or `None` where that is not known (then nothing is refused).

    CPU: `MemAvailable` of `/proc/meminfo` (the kernel's estimate of what can be allocated without swapping), else
    `os.sysconf`'s available physical pages. CUDA: the free memory `torch.cuda.mem_get_info` reports plus what
    PyTorch's caching allocator holds unused.
    """
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _sample_hw(sample_size: Any) -> tuple[int, int]:
    if isinstance(sample_size, (list, tuple)):
        return int(sample_size[0]), int(sample_size[-1])
    return int(sample_size), int(sample_size)


def sampling_bytes(
    unet_config: Mapping[str, Any],
    batch_size: int,
    *,
    height: int | None = None,
    width: int | None = None,
    unet_batch_factor: int = 1,
    element_size: int = 4,
) -> int:
    """Bytes one sampling call of `batch_size` images allocates beyond the weights (a low estimate, see the module).

    Args:
        unet_config (`Mapping`): the UNet2DModel config (`in_channels`, `sample_size`, `block_out_channels`,
            `layers_per_block`, `down_block_types`).
        batch_size (`int`): images of the call.
        height, width (`int`, *optional*): the image size, when it is not the config's `sample_size` (inpainting).
        unet_batch_factor (`int`, defaults to 1): images per image in each UNet call (2 with classifier-free
            guidance: both branches go through one batched call).
        element_size (`int`, defaults to 4): bytes of one value (float32).

    Example:

    ```py
    >>> from ddpm_ext.models.unet_presets import unet_config
    >>> from ddpm_ext.memory import format_bytes, sampling_bytes
    >>> format_bytes(sampling_bytes(unet_config("rgb32-small"), 64))
    '105.0 MiB'

    ```
    """
    h, w = _sample_hw(unet_config.get("sample_size", 32))
    h, w = height or h, width or w
    pixels = h * w
    images = _SAMPLE_TENSORS * int(unet_config.get("in_channels", 3)) * pixels
    channels = [int(c) for c in unet_config.get("block_out_channels", (64,))]
    per_level = int(unet_config.get("layers_per_block", 2)) + 1  # each resnet's output and the downsampler's
    skips = channels[0] * pixels  # conv_in's output
    largest = 0
    for level, c in enumerate(channels):
        level_pixels = max(1, pixels >> (2 * level))  # each downsampling halves H and W
        skips += per_level * c * level_pixels
        largest = max(largest, c * level_pixels)
    unet = (skips + _WORKING_TENSORS * 2 * largest) * unet_batch_factor  # the up path concatenates skip and input
    return int(batch_size) * (images + unet) * element_size


def stored_images_bytes(num_images: int, channels: int, height: int, width: int) -> int:
    """Bytes of `num_images` sampled images kept until they are written: the float32 batches, their concatenation
    and the uint8 grid (9 bytes per value)."""
    return int(num_images) * int(channels) * int(height) * int(width) * 9


def schedule_bytes(num_train_timesteps: int) -> int:
    """Bytes a scheduler's precomputed tables of a chain of `num_train_timesteps` steps take (a low estimate)."""
    return int(num_train_timesteps) * SCHEDULE_BYTES_PER_STEP


def check_fits(
    needed: int, device: torch.device | str | None, what: str, advice: str = "", *, limit: int | None = None
) -> None:
    """Refuse `what` (e.g. "`batch_size`=1000000000") when `needed` bytes exceed the device's available memory.

    Args:
        needed (`int`): the estimate, in bytes.
        device (`torch.device` or `str`): where it is allocated ([`available_memory`] gives the limit).
        what (`str`): the argument and its value, as the message names them.
        advice (`str`, *optional*): what to do instead, appended to the message.
        limit (`int`, *optional*): the limit in bytes instead of [`available_memory`]`(device)` (tests).

    Raises:
        `ValueError`: "`batch_size`=1000000000 needs about 3.7 TiB (estimate) but cpu has 20.1 GiB available ...".
    """
    limit = available_memory(device) if limit is None else limit
    if limit is not None and needed > limit:
        where = torch.device("cpu" if device is None else device)
        raise ValueError(
            f"{what} needs about {format_bytes(needed)} of memory (estimate) but {where} has "
            f"{format_bytes(limit)} available{'; ' + advice if advice else ''}."
        )
