"""ddpm_ext: exact, complete DDPM (Ho et al. 2020) and DDIM for Hugging Face diffusers."""

from .likelihood import BitsPerDimOutput, bits_per_dim, bits_per_dim_variances
from .models import UNET_PRESETS, build_unet, unet_config
from .pipelines import DDPMExtInpaintPipeline, DDPMExtInpaintPipelineOutput, DDPMExtPipeline, DDPMExtPipelineOutput
from .schedulers import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    VARIANCE_TYPES,
    BetaSchedule,
    DDIMExtScheduler,
    DDIMExtSchedulerOutput,
    DDPMExtScheduler,
    DDPMExtSchedulerOutput,
    PredictionType,
    TimestepSpacing,
    VarianceType,
    fast_sampler,
    make_betas,
    posterior_coefficients,
)
from .version import __version__

__all__ = [
    "__version__",
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
    "DDPMExtInpaintPipeline",
    "DDPMExtInpaintPipelineOutput",
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
    "fast_sampler",
]
