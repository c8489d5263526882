"""Schedulers: the shared schedule base (β_t, ᾱ_t, respacing, x̂_0), the DDPM and DDIM samplers built on it, and
diffusers' x̂_0 solvers set up for DDPM-trained models (`fast_sampler`)."""

from .fast_samplers import FAST_SAMPLERS, fast_sampler, x0_clipping_config
from .scheduling_common import (
    BETA_SCHEDULES,
    COMPATIBLE_DIFFUSERS_SCHEDULERS,
    DEFAULT_SAMPLING_STEPS,
    PREDICTION_TYPES,
    SAMPLING_TIMESTEP_SPACING,
    TIMESTEP_SPACINGS,
    VARIANCE_TYPES,
    BetaSchedule,
    PredictionType,
    ScheduleMixin,
    TimestepSpacing,
    VarianceType,
    make_betas,
)
from .scheduling_ddim_ext import DDIMExtScheduler, DDIMExtSchedulerOutput
from .scheduling_ddpm_ext import (
    DDPMExtScheduler,
    DDPMExtSchedulerOutput,
    posterior_coefficients,
)

__all__ = [
    "BETA_SCHEDULES",
    "COMPATIBLE_DIFFUSERS_SCHEDULERS",
    "PREDICTION_TYPES",
    "DEFAULT_SAMPLING_STEPS",
    "SAMPLING_TIMESTEP_SPACING",
    "TIMESTEP_SPACINGS",
    "VARIANCE_TYPES",
    "BetaSchedule",
    "PredictionType",
    "ScheduleMixin",
    "TimestepSpacing",
    "VarianceType",
    "make_betas",
    "FAST_SAMPLERS",
    "fast_sampler",
    "x0_clipping_config",
    "DDIMExtScheduler",
    "DDIMExtSchedulerOutput",
    "DDPMExtScheduler",
    "DDPMExtSchedulerOutput",
    "posterior_coefficients",
]
