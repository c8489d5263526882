"""ddpm_ext: exact, complete DDPM (Ho et al. 2020) and DDIM for Hugging Face diffusers."""

from .schedules import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    VARIANCE_TYPES,
    BetaSchedule,
    PredictionType,
    TimestepSpacing,
    VarianceType,
    make_betas,
)
from .likelihood import BitsPerDimOutput, bits_per_dim, bits_per_dim_variances
from .pipeline_ddpm_ext import DDPMExtPipeline, DDPMExtPipelineOutput
from .scheduling_ddim_ext import DDIMExtScheduler, DDIMExtSchedulerOutput
from .scheduling_ddpm_ext import DDPMExtScheduler, DDPMExtSchedulerOutput, posterior_coefficients
from .unet_presets import UNET_PRESETS, build_unet, unet_config

__version__ = "0.1.0"

__all__ = [
    "BETA_SCHEDULES",
    "PREDICTION_TYPES",
    "TIMESTEP_SPACINGS",
    "VARIANCE_TYPES",
    "BetaSchedule",
    "PredictionType",
    "TimestepSpacing",
    "VarianceType",
    "make_betas",
    "BitsPerDimOutput",
    "bits_per_dim",
    "bits_per_dim_variances",
    "DDPMExtPipeline",
    "DDPMExtPipelineOutput",
    "UNET_PRESETS",
    "build_unet",
    "unet_config",
    "DDIMExtScheduler",
    "DDIMExtSchedulerOutput",
    "DDPMExtScheduler",
    "DDPMExtSchedulerOutput",
    "posterior_coefficients",
]
