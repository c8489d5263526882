"""diffusers' multistep solvers for a DDPM-trained pixel model, with the x̂_0 clipping the model was sampled with.

DPM-Solver++ (Lu et al. 2022) and UniPC (Zhao et al. 2023) work on the data prediction x̂_0 (`algorithm_type=
"dpmsolver++"`, `predict_x0=True`); `from_config` of a DDPM config gives them every schedule key but none of its
clipping (they have no `clip_sample`), so x̂_0 leaves [-1, 1] where DDPM / DDIM would clip it. What they offer is
dynamic thresholding (Saharia et al. 2022): per image s = quantile(|x̂_0|, ratio) clamped to [1, sample_max_value],
x̂_0 -> clamp(x̂_0, -s, s) / s (diffusers' `_threshold_sample`). With `sample_max_value = 1` that s is 1 for every
image, so it is exactly `clamp(x̂_0, -1, 1)`: DDPM's `clip_sample=True`. [`x0_clipping_config`] makes that
translation; [`fast_sampler`] builds the solver with it.
"""

from __future__ import annotations

import inspect
from typing import Any

import diffusers
from diffusers.schedulers.scheduling_utils import SchedulerMixin

# name -> (diffusers class, the options that make it a 2nd-order x̂_0 (data-prediction) solver)
FAST_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpmpp": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),  # DPM-Solver++(2M)
    "unipc": ("UniPCMultistepScheduler", {"predict_x0": True, "solver_order": 2}),  # UniPC-bh2, data prediction
}
_THRESHOLDING_KEYS = ("thresholding", "dynamic_thresholding_ratio", "sample_max_value")


def x0_clipping_config(config: Any) -> dict[str, Any]:
    """The thresholding options of diffusers' x̂_0-predicting schedulers that reproduce a DDPM config's clipping.

    Args:
        config (`dict` or `FrozenDict`): a scheduler config (ddpm_ext's or diffusers' `DDPMScheduler` /
            `DDIMScheduler`).

    Returns:
        `dict`: `thresholding`, `dynamic_thresholding_ratio`, `sample_max_value`: the config's own dynamic
        thresholding when it has `thresholding=True`; `thresholding=True, sample_max_value=1.0` (= clipping to
        [-1, 1], see the module docstring) for `clip_sample=True`; `thresholding=False` when it clips nothing.

    Raises:
        `ValueError`: for `clip_sample=True` with `clip_sample_range` ≠ 1, which thresholding cannot express
            (it always divides by s >= 1); pass `clip_x0=False` to [`fast_sampler`] to sample without clipping.

    Example:

    ```py
    >>> from ddpm_ext import DDPMExtScheduler
    >>> from ddpm_ext.schedulers.fast_samplers import x0_clipping_config
    >>> x0_clipping_config(DDPMExtScheduler().config)
    {'thresholding': True, 'dynamic_thresholding_ratio': 0.995, 'sample_max_value': 1.0}

    ```
    """
    ratio = float(config.get("dynamic_thresholding_ratio", 0.995))
    if config.get("thresholding", False):
        return {"thresholding": True, "dynamic_thresholding_ratio": ratio,
                "sample_max_value": float(config.get("sample_max_value", 1.0))}  # fmt: skip
    if config.get("clip_sample", False):
        r = float(config.get("clip_sample_range", 1.0))
        if r != 1.0:
            raise ValueError(
                f"`clip_sample_range`={r!r} cannot be expressed by the thresholding of diffusers' x̂_0 solvers (it "
                "clips to [-1, 1] at most; allowed: 1.0); pass `clip_x0=False` to sample without clipping."
            )
        return {"thresholding": True, "dynamic_thresholding_ratio": ratio, "sample_max_value": 1.0}
    return {"thresholding": False, "dynamic_thresholding_ratio": ratio, "sample_max_value": 1.0}


def fast_sampler(
    sampler: str | type[SchedulerMixin], config: Any, *, clip_x0: bool | None = None, **kwargs: Any
) -> SchedulerMixin:
    """A diffusers solver built from a DDPM model's scheduler config, clipping x̂_0 as the model's sampler does.

    Args:
        sampler (`str` or a scheduler class): `"dpmpp"` (DPM-Solver++(2M): `DPMSolverMultistepScheduler` with
            `algorithm_type="dpmsolver++"`, `solver_order=2`), `"unipc"` (`UniPCMultistepScheduler`,
            `predict_x0=True`), or any diffusers scheduler class with a `thresholding` option.
        config (`dict` or `FrozenDict`): the model's scheduler config (`pipe.scheduler.config`).
        clip_x0 (`bool`, *optional*): `None` (default) clips as the config does ([`x0_clipping_config`]); `False`
            turns thresholding off; `True` clips to [-1, 1] whatever the config says.
        kwargs: further options of the solver's `__init__` (e.g. `use_karras_sigmas=True`); they win.

    Every key of `config` that the solver knows is taken from it (β schedule, `prediction_type`, `timestep_spacing`,
    ...), also for an in-memory config whose keys were defaults there.

    Returns:
        The scheduler, for `pipe.scheduler = ...`; [`DDPMExtPipeline`] samples with it as with any compatible one.

    Raises:
        `ValueError`: for an unknown name, a class without `thresholding`, a bad `clip_x0`, or a clipping the
            solver cannot express ([`x0_clipping_config`]).

    Example:

    ```py
    >>> import torch
    >>> from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet, fast_sampler
    >>> pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler())
    >>> pipe.scheduler = fast_sampler("dpmpp", pipe.scheduler.config)
    >>> pipe.scheduler.config.algorithm_type, pipe.scheduler.config.thresholding, pipe.scheduler.config.sample_max_value
    ('dpmsolver++', True, 1.0)
    >>> pipe(batch_size=2, num_inference_steps=10, output_type="pt").images.shape
    torch.Size([2, 1, 8, 8])

    ```
    """
    if isinstance(sampler, str):
        if sampler not in FAST_SAMPLERS:
            raise ValueError(
                f"`sampler` must be one of {sorted(FAST_SAMPLERS)} or a diffusers scheduler class, got {sampler!r}."
            )
        name, options = FAST_SAMPLERS[sampler]
        cls = getattr(diffusers, name)
    elif isinstance(sampler, type) and issubclass(sampler, SchedulerMixin):
        cls, options = sampler, {}
        if "thresholding" not in inspect.signature(cls.__init__).parameters:
            raise ValueError(
                f"`sampler` {cls.__name__} has no `thresholding` option, so x̂_0 cannot be clipped; use one of "
                f"{sorted(FAST_SAMPLERS)} or a scheduler class with `thresholding` (e.g. DEISMultistepScheduler)."
            )
    else:
        raise ValueError(
            f"`sampler` must be one of {sorted(FAST_SAMPLERS)} or a diffusers scheduler class, got {sampler!r}."
        )
    if clip_x0 is not None and not isinstance(clip_x0, bool):
        raise ValueError(f"`clip_x0` must be True, False or None, got {clip_x0!r}.")
    clipping = x0_clipping_config(config) if clip_x0 is None else x0_clipping_config(
        {"clip_sample": clip_x0, "dynamic_thresholding_ratio": config.get("dynamic_thresholding_ratio", 0.995)})
    # every key of the model's config that the solver knows carries over (diffusers' `from_config` would reset
    # those an in-memory config lists in `_use_default_values` to the solver's defaults, e.g. its "linspace"
    # spacing); keys it does not know are left out instead of being warned about, except ddpm_ext's private ones
    # (`_ddpm_ext_config` with `cosine_s` / `max_beta`; β then travel as a flagged `trained_betas`): diffusers keeps
    # them as hidden keys, so `DDPMExtScheduler.from_config(solver.config)` restores the options
    known = inspect.signature(cls.__init__).parameters
    model = {k: v for k, v in dict(config).items() if k in known or k.startswith("_ddpm_ext_")}
    return cls.from_config(model, **{**options, **clipping, **kwargs})
