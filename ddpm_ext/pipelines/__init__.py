"""Pipelines: sampling ([`DDPMExtPipeline`]), inpainting ([`DDPMExtInpaintPipeline`]) and what they share.

One job per module: [`pipeline_ddpm_ext`] sampling and bits/dim, [`pipeline_ddpm_ext_inpaint`] RePaint inpainting,
[`chain_start`] how a sampling chain starts (x_T, spacing, respaced timesteps), [`guidance`] class labels,
classifier-free guidance and autoguidance, [`fast_path`] the opt-in autocast / channels-last / compile of the UNet
calls, [`checkpoint_io`] saving and loading in diffusers' layout.
"""

from .pipeline_ddpm_ext import DDPMExtPipeline, DDPMExtPipelineOutput
from .pipeline_ddpm_ext_inpaint import DDPMExtInpaintPipeline, DDPMExtInpaintPipelineOutput

__all__ = ["DDPMExtInpaintPipeline", "DDPMExtInpaintPipelineOutput", "DDPMExtPipeline", "DDPMExtPipelineOutput"]
