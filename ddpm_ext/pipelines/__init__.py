"""Pipelines: sampling ([`DDPMExtPipeline`]), inpainting ([`DDPMExtInpaintPipeline`]) and their checkpoints in
diffusers' layout ([`checkpoint_io`])."""

from .pipeline_ddpm_ext import DDPMExtPipeline, DDPMExtPipelineOutput
from .pipeline_ddpm_ext_inpaint import DDPMExtInpaintPipeline, DDPMExtInpaintPipelineOutput

__all__ = ["DDPMExtInpaintPipeline", "DDPMExtInpaintPipelineOutput", "DDPMExtPipeline", "DDPMExtPipelineOutput"]
