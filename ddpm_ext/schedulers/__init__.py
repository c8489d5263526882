"""Schedulers: the shared schedule base (β_t, ᾱ_t, respacing, x̂_0) and the DDPM and DDIM samplers built on it."""

from .scheduling_common import (
    BETA_SCHEDULES,
    COMPATIBLE_DIFFUSERS_SCHEDULERS,
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
    "SAMPLING_TIMESTEP_SPACING",
    "TIMESTEP_SPACINGS",
    "VARIANCE_TYPES",
    "BetaSchedule",
    "PredictionType",
    "ScheduleMixin",
    "TimestepSpacing",
    "VarianceType",
    "make_betas",
    "DDIMExtScheduler",
    "DDIMExtSchedulerOutput",
    "DDPMExtScheduler",
    "DDPMExtSchedulerOutput",
    "posterior_coefficients",
]
