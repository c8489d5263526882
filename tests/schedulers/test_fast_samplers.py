"""`fast_sampler`: diffusers' DPM-Solver++ / UniPC built from a DDPM config, clipping x̂_0 as the model's sampler."""

from __future__ import annotations

import doctest

import diffusers
import numpy as np
import pytest
import torch

from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet, fast_sampler
from ddpm_ext.schedulers import FAST_SAMPLERS, fast_samplers, x0_clipping_config


def test_clipping_translation():
    assert x0_clipping_config(DDPMExtScheduler().config)["thresholding"] is True
    assert x0_clipping_config(DDPMExtScheduler().config)["sample_max_value"] == 1.0
    assert x0_clipping_config(DDPMExtScheduler(clip_sample=False).config)["thresholding"] is False
    dynamic = x0_clipping_config(
        DDPMExtScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0).config)
    assert dynamic == {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.0}
    with pytest.raises(ValueError, match=r"`clip_sample_range`=0.5 cannot be expressed .*allowed: 1.0.*clip_x0=False"):
        x0_clipping_config(DDPMExtScheduler(clip_sample_range=0.5).config)


@pytest.mark.parametrize("name", sorted(FAST_SAMPLERS))
def test_thresholding_with_max_value_1_is_exactly_clipping(name):
    """diffusers' own `_threshold_sample` of the built solver, on a hand case and on random x̂_0 far outside [-1, 1]."""
    s = fast_sampler(name, DDPMExtScheduler().config)
    hand = torch.tensor([[[[-3.0, -1.0], [0.25, 7.5]]]])
    assert s._threshold_sample(hand).flatten().tolist() == [-1.0, -1.0, 0.25, 1.0]
    x0 = 4 * torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s._threshold_sample(x0), x0.clamp(-1, 1))


def test_solver_options_and_schedule_come_through():
    ours = DDPMExtScheduler(beta_schedule="cosine", cosine_s=0.02, prediction_type="v_prediction")
    dpmpp, unipc = fast_sampler("dpmpp", ours.config), fast_sampler("unipc", ours.config)
    assert type(dpmpp) is diffusers.DPMSolverMultistepScheduler and dpmpp.config.algorithm_type == "dpmsolver++"
    assert (dpmpp.config.solver_order == 2 and type(unipc) is diffusers.UniPCMultistepScheduler
            and unipc.config.predict_x0)
    for s in (dpmpp, unipc):
        assert s.config.prediction_type == "v_prediction" and s.config.thresholding
        torch.testing.assert_close(s.alphas_cumprod, ours.alphas_cumprod, rtol=1e-5, atol=1e-7)
    assert fast_sampler("dpmpp", ours.config, clip_x0=False).config.thresholding is False
    assert fast_sampler("dpmpp", ours.config, use_karras_sigmas=True).config.use_karras_sigmas
    assert fast_sampler("unipc", DDPMExtScheduler().config).config.timestep_spacing == "leading"  # not UniPC's default
    deis = fast_sampler(diffusers.DEISMultistepScheduler, ours.config)
    assert type(deis) is diffusers.DEISMultistepScheduler and deis.config.thresholding


@pytest.mark.parametrize("name", sorted(FAST_SAMPLERS))
def test_sampled_x0_stay_within_range_only_when_clipped(name, monkeypatch):
    torch.manual_seed(0)
    pipe = DDPMExtPipeline(unet=build_unet("tiny").eval(), scheduler=DDPMExtScheduler())
    pipe.set_progress_bar_config(disable=True)
    largest = {}
    for clip in (None, False):
        pipe.scheduler = fast_sampler(name, DDPMExtScheduler().config, clip_x0=clip)
        convert, seen = pipe.scheduler.convert_model_output, []

        def spy(*args, _convert=convert, _seen=seen, **kwargs):
            x0 = _convert(*args, **kwargs)  # the data prediction x̂_0 the solver steps with
            _seen.append(x0.abs().max().item())
            return x0

        monkeypatch.setattr(pipe.scheduler, "convert_model_output", spy)
        pipe(batch_size=2, num_inference_steps=6, generator=torch.Generator().manual_seed(0), output_type="latent")
        largest[clip] = max(seen)
    assert largest[None] <= 1.0 < largest[False]


def test_bad_arguments_are_refused():
    config = DDPMExtScheduler().config
    with pytest.raises(ValueError, match=r"`sampler` must be one of \['dpmpp', 'unipc'\] .*got 'heun'"):
        fast_sampler("heun", config)
    with pytest.raises(ValueError, match=r"`sampler` EulerDiscreteScheduler has no `thresholding` option"):
        fast_sampler(diffusers.EulerDiscreteScheduler, config)
    with pytest.raises(ValueError, match=r"`clip_x0` must be True, False or None, got 1"):
        fast_sampler("dpmpp", config, clip_x0=1)


def test_docstring_examples_run():
    result = doctest.testmod(fast_samplers, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_a_swap_through_fast_sampler_and_back_keeps_ddpm_ext_options():
    ours = DDPMExtScheduler(beta_schedule="cosine", cosine_s=0.02)  # β that diffusers' keys cannot express
    solver = fast_sampler("dpmpp", ours.config)
    torch.testing.assert_close(solver.alphas_cumprod, ours.alphas_cumprod, rtol=1e-5, atol=1e-6)
    back = DDPMExtScheduler.from_config(solver.config)  # the private `_ddpm_ext_config` rode along, hidden
    assert back.config._ddpm_ext_config == {"cosine_s": 0.02, "max_beta": 0.999}
    np.testing.assert_array_equal(back._betas64, ours._betas64)
