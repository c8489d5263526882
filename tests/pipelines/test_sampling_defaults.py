"""The pipeline's sampling defaults (issue 14): trailing spacing for a "leading" config, DDIM's consistent ε̂;
diffusers' behaviour when asked for explicitly; the user's scheduler config left as it was."""

from __future__ import annotations

import doctest

import diffusers
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler

from ddpm_ext import DDIMExtScheduler, DDPMExtInpaintPipeline, DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.pipelines.chain_start import resolve_timestep_spacing


def tiny_pipe(scheduler) -> DDPMExtPipeline:
    torch.manual_seed(0)
    pipe = DDPMExtPipeline(unet=build_unet("tiny").eval(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, **kwargs):
    kwargs.setdefault("batch_size", 2)
    kwargs.setdefault("output_type", "latent")
    return pipe(generator=torch.Generator().manual_seed(0), return_trajectory=True, **kwargs)


def test_default_spacing_starts_a_leading_config_at_T_and_leaves_the_config_alone():
    scheduler = DDPMExtScheduler()  # diffusers' default "leading"
    config = scheduler.config
    pipe = tiny_pipe(scheduler)
    out = run(pipe, num_inference_steps=10)
    assert out.timesteps == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]  # trailing: starts at T - 1
    assert pipe.scheduler.config is config and config.timestep_spacing == "leading"
    leading = run(pipe, num_inference_steps=10, timestep_spacing="leading")
    assert leading.timesteps == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]  # diffusers' chain
    assert not torch.equal(out.images, leading.images)


def test_config_spacing_other_than_leading_is_kept():
    for spacing in ("trailing", "linspace"):
        pipe = tiny_pipe(DDPMExtScheduler(timestep_spacing=spacing))
        assert resolve_timestep_spacing(pipe.scheduler) == spacing
        # exact by construction: same weights, shapes, process and thread count; the same spacing
        torch.testing.assert_close(run(pipe, num_inference_steps=7).images,
                                   run(pipe, num_inference_steps=7, timestep_spacing=spacing).images, rtol=0, atol=0)


def test_all_spacings_coincide_at_T_steps():
    pipe = tiny_pipe(DDPMExtScheduler(num_train_timesteps=20))
    ref = run(pipe, num_inference_steps=20, timestep_spacing="leading")
    for spacing in (None, "trailing", "linspace"):
        out = run(pipe, num_inference_steps=20, timestep_spacing=spacing)
        assert out.timesteps == ref.timesteps == list(range(19, -1, -1))
        # exact by construction: same weights, shapes, process and thread count; same timesteps at T
        assert torch.equal(out.images, ref.images)


def test_swapped_diffusers_scheduler_gets_the_spacing_and_keeps_its_config():
    scheduler = diffusers.DPMSolverMultistepScheduler(timestep_spacing="leading")
    config = dict(scheduler.config)
    pipe = tiny_pipe(scheduler)
    run(pipe, num_inference_steps=10)
    assert pipe.scheduler.timesteps[0] == 999 and dict(pipe.scheduler.config) == config
    run(pipe, num_inference_steps=10, timestep_spacing="leading")
    assert pipe.scheduler.timesteps[0] == 900  # diffusers' leading chain


def test_ddim_default_equals_diffusers_ddim_pipeline_with_consistent_eps_and_trailing():
    """Our default DDIM call = diffusers' DDIMPipeline(use_clipped_model_output=True) on a trailing config (T = 1000
    and S = 10: diffusers' t − T // S is then the next kept timestep)."""
    pipe = tiny_pipe(DDIMExtScheduler())
    theirs = DDIMPipeline(unet=pipe.unet, scheduler=DDIMScheduler(timestep_spacing="trailing"))
    theirs.set_progress_bar_config(disable=True)
    ours = pipe(batch_size=2, num_inference_steps=10, generator=torch.Generator().manual_seed(0),
                output_type="np").images
    ref = theirs(batch_size=2, num_inference_steps=10, generator=torch.Generator().manual_seed(0), eta=0.0,
                 use_clipped_model_output=True, output_type="np").images  # fmt: skip
    torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(ref), rtol=0, atol=1e-4)


def test_default_eps_differs_only_when_x0_is_clipped():
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    call = {"batch_size": 2, "num_inference_steps": 5, "output_type": "latent"}
    unclipped = tiny_pipe(DDIMExtScheduler(clip_sample=False))
    # exact by construction: same weights, shapes, process and thread count; x̂_0 never clipped: the same ε̂
    assert torch.equal(unclipped(latents=x_T.clone(), **call).images,
                       unclipped(latents=x_T.clone(), use_clipped_model_output=False, **call).images)
    clipped = tiny_pipe(DDIMExtScheduler(clip_sample=True))
    raw = clipped(latents=x_T.clone() * 3, use_clipped_model_output=False, **call).images  # large x_T: x̂_0 clipped
    default = clipped(latents=x_T.clone() * 3, **call).images
    assert not torch.allclose(raw, default)


def test_inpaint_pipeline_follows_the_same_rule():
    base = tiny_pipe(DDIMExtScheduler())
    pipe = DDPMExtInpaintPipeline(unet=base.unet, scheduler=base.scheduler)
    pipe.set_progress_bar_config(disable=True)
    image, mask = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)  # fill everything, no jumps: plain sampling
    call = {"num_inference_steps": 10, "jump_n_sample": 1, "output_type": "pt", "return_trajectory": True}
    with pytest.warns(UserWarning, match="fills every pixel"):
        out = pipe(image, mask, generator=torch.Generator().manual_seed(0), **call)
    assert out.timesteps[0] == 999 and base.scheduler.config.timestep_spacing == "leading"
    plain = base(batch_size=1, num_inference_steps=10, generator=torch.Generator().manual_seed(0),
                 output_type="pt").images
    torch.testing.assert_close(out.images, plain, rtol=0, atol=1e-6)
    with pytest.warns(UserWarning, match="fills every pixel"):
        leading = pipe(image, mask, generator=torch.Generator().manual_seed(0), timestep_spacing="leading", **call)
    assert leading.timesteps[0] == 900


def test_bad_spacing_is_refused_before_any_work():
    pipe = tiny_pipe(DDPMExtScheduler())
    with pytest.raises(ValueError, match=r"`timestep_spacing` must be one of .*'leading'.*'trailing'.*got 'uniform'"):
        pipe(num_inference_steps=2, timestep_spacing="uniform")
    with pytest.raises(ValueError, match=r"`timestep_spacing`='leading' does not apply with custom `timesteps`"):
        pipe(timesteps=[10, 5, 0], timestep_spacing="leading")
    pipe.scheduler = diffusers.DPMSolverSinglestepScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match=r"`timestep_spacing`='trailing' needs a scheduler with a `timestep_spacing` "
                       r"option; DPMSolverSinglestepScheduler has none \(allowed for it: None\)"):
        pipe(num_inference_steps=2, timestep_spacing="trailing")
    assert resolve_timestep_spacing(pipe.scheduler) is None
    pipe(num_inference_steps=2, output_type="latent")  # the default applies nothing there


def test_resolve_timestep_spacing_docstring_example_runs():
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(resolve_timestep_spacing, "resolve_timestep_spacing", globs={}):
        runner.run(test)
    failed, attempted = runner.summarize(verbose=False)
    assert attempted == 3 and failed == 0
