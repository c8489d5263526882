"""How both pipelines start a sampling chain: x_T ~ N(0, I) and the call's timesteps with their spacing."""

from __future__ import annotations

import diffusers
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ..schedulers.scheduling_common import (
    COMPATIBLE_DIFFUSERS_SCHEDULERS,
    SAMPLING_TIMESTEP_SPACING,
    TIMESTEP_SPACINGS,
    ScheduleMixin,
)
from ..validation import check_choice

__all__ = [
    "LEADING_BY_DEFAULT",
    "draw_initial_noise",
    "resolve_timestep_spacing",
    "set_sampling_timesteps",
    "switches_to_sampling_spacing",
]

# diffusers' schedulers in `compatibles` that the pipeline's default samples with "leading", whatever their config
# says: diffusers' own PNDMScheduler diverges with trailing spacing on a cosine (squaredcos_cap_v2) model (std 9.6
# at 100 steps, 78 at 50, 1e4 at 20, where the data has 0.3; 0.30 with "leading"), measured with the exact-ε oracle
# of tests/pipelines/test_scheduler_swaps.py, which also checks that this stays so. A config saying "trailing" is
# what `ddpm-ext train` saves (and what `from_config` carries into a swapped-in PNDM), so the default must not
# keep it; an explicit `timestep_spacing="trailing"` is still used as given.
LEADING_BY_DEFAULT: tuple[str, ...] = ("PNDMScheduler",)


def draw_initial_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | list[torch.Generator] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """x_T ~ N(0, I), drawn exactly as diffusers' `DDPMPipeline` (and `DDPMExtPipeline`) draw it.

    On "mps" the numbers are drawn on the CPU and moved (randn on mps is not reproducible).
    """
    if device.type == "mps":
        return randn_tensor(shape, generator=generator, dtype=dtype).to(device)
    return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


def resolve_timestep_spacing(
    scheduler: SchedulerMixin, timestep_spacing: str | None = None, *, custom_timesteps: bool = False
) -> str | None:
    """The timestep spacing a [`DDPMExtPipeline`] call samples with, after checking the call's `timestep_spacing`.

    `None` (the pipeline's default) means the scheduler config's own spacing, except that diffusers' default
    `"leading"` becomes `"trailing"` ([`SAMPLING_TIMESTEP_SPACING`]: few-step chains start at t = T - 1, not at
    (S - 1)·T/S) for the schedulers verified with it ([`switches_to_sampling_spacing`]), and that diffusers' PNDM
    ([`LEADING_BY_DEFAULT`]) samples with `"leading"` whatever its config says (its trailing chains diverge on
    cosine models). An explicit value is used as it is (`"leading"` with a leading config: diffusers' behaviour).

    Args:
        scheduler (`SchedulerMixin`): the sampler; it needs `timestep_spacing` in its config for a spacing to apply.
        timestep_spacing (`str`, *optional*): `"leading"`, `"trailing"`, `"linspace"`, or `None`.
        custom_timesteps (`bool`, defaults to `False`): the call passes its own `timesteps` (no spacing applies).

    Returns:
        `str` or `None`: the spacing, or `None` where none applies (custom timesteps, or a scheduler without the
        option).

    Raises:
        `ValueError`: for a value outside the three, or an explicit value with custom `timesteps` or with a
            scheduler whose config has no `timestep_spacing`.

    Example:

    ```py
    >>> from ddpm_ext import DDPMExtScheduler
    >>> from ddpm_ext.pipelines.chain_start import resolve_timestep_spacing
    >>> resolve_timestep_spacing(DDPMExtScheduler()), resolve_timestep_spacing(DDPMExtScheduler(), "leading")
    ('trailing', 'leading')

    ```
    """
    if timestep_spacing is not None:
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if custom_timesteps:
            raise ValueError(
                f"`timestep_spacing`={timestep_spacing!r} does not apply with custom `timesteps`; "
                "pass one or the other."
            )
    configured = scheduler.config.get("timestep_spacing")
    if custom_timesteps:
        return None
    if configured is None:
        if timestep_spacing is not None:
            raise ValueError(
                f"`timestep_spacing`={timestep_spacing!r} needs a scheduler with a `timestep_spacing` option; "
                f"{type(scheduler).__name__} has none (allowed for it: None)."
            )
        return None
    if timestep_spacing is None:
        if _is_diffusers_class(scheduler, LEADING_BY_DEFAULT):
            return "leading"
        switch = configured == "leading" and switches_to_sampling_spacing(scheduler)
        return SAMPLING_TIMESTEP_SPACING if switch else configured
    return timestep_spacing


def switches_to_sampling_spacing(scheduler: SchedulerMixin) -> bool:
    """Whether the pipeline's default turns `scheduler`'s `"leading"` config into [`SAMPLING_TIMESTEP_SPACING`].

    Only for the combinations that the exact-ε swap tests verified with both spacings and both β schedules:
    ddpm_ext's schedulers and diffusers' in [`COMPATIBLE_DIFFUSERS_SCHEDULERS`] (by exact class, not a subclass),
    except [`LEADING_BY_DEFAULT`] (PNDM). Any other scheduler samples with its config's own spacing.
    """
    if isinstance(scheduler, ScheduleMixin):
        return True
    return _is_diffusers_class(scheduler, COMPATIBLE_DIFFUSERS_SCHEDULERS) and not _is_diffusers_class(
        scheduler, LEADING_BY_DEFAULT
    )


def _is_diffusers_class(scheduler: SchedulerMixin, names: tuple[str, ...] | list[str]) -> bool:
    """Whether `scheduler` is exactly (not a subclass of) one of diffusers' scheduler classes `names`."""
    name = type(scheduler).__name__
    return name in names and type(scheduler) is getattr(diffusers, name, None)


def set_sampling_timesteps(
    scheduler: SchedulerMixin,
    num_inference_steps: int | None = None,
    *,
    timesteps: list[int] | None = None,
    timestep_spacing: str | None = None,
    device: torch.device | str | None = None,
) -> None:
    """`scheduler.set_timesteps` with `timestep_spacing` (as [`resolve_timestep_spacing`] gives it) in place of the
    config's for this one call: the config is restored right after, so the user's scheduler keeps its own config
    (and saves it unchanged); only `timesteps`, which every `set_timesteps` call sets, reflect the spacing.

    Every scheduler's `step` then walks `scheduler.timesteps` (ddpm_ext's land on the next kept timestep for every
    spacing; diffusers' `DDPMScheduler` / `DDIMScheduler` step to t − T // S, the next kept timestep only when S
    divides T).
    """
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=timesteps, device=device)
        return
    saved = scheduler._internal_dict
    if timestep_spacing is None or timestep_spacing == saved.get("timestep_spacing"):
        scheduler.set_timesteps(num_inference_steps, device=device)
        return
    scheduler.register_to_config(timestep_spacing=timestep_spacing)
    try:
        scheduler.set_timesteps(num_inference_steps, device=device)
    finally:
        scheduler._internal_dict = saved  # the very same config object as before the call
