"""Pipelines: sampling ([`DDPMExtPipeline`]) and its checkpoints in diffusers' layout ([`checkpoint_io`])."""

from .pipeline_ddpm_ext import DDPMExtPipeline, DDPMExtPipelineOutput

__all__ = ["DDPMExtPipeline", "DDPMExtPipelineOutput"]
