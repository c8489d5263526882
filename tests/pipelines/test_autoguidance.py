"""Autoguidance (Karras et al. 2024): a guide UNet in the pipeline, its sampling rule, and its place on disk."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DiffusionPipeline
from hub_servers import publish_folder
from PIL import Image
from safetensors.torch import load_file, save_file

from ddpm_ext import DDIMExtScheduler, DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.commands.cli import main as cli_main
from ddpm_ext.pipelines.checkpoint_io import GUIDE_DIR, GUIDE_INDEX_KEY
from ddpm_ext.pipelines.guidance import AUTOGUIDANCE_SCALE_KEY, autoguide, combine_guidance
from ddpm_ext.seeding import image_generators


def unets(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    main = build_unet("tiny", **kwargs).eval()
    guide = build_unet("tiny", **kwargs).eval()  # other random weights: a different model of the same kind
    return main, guide


def make_pipe(scheduler=None, scale: float | None = None, **kwargs) -> DDPMExtPipeline:
    main, guide = unets(**kwargs)
    if scale is not None:
        guide.register_to_config(**{AUTOGUIDANCE_SCALE_KEY: scale})
    pipe = DDPMExtPipeline(unet=main,
                           scheduler=scheduler or DDIMExtScheduler(num_train_timesteps=50, beta_schedule="cosine"),
                           guide_unet=guide)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def manual_ddim(pipe: DDPMExtPipeline, x_T: torch.Tensor, w: float, steps: int = 5) -> torch.Tensor:
    """Deterministic DDIM written out: D̂ = D_guide + w (D − D_guide) at every step, trailing spacing."""
    scheduler = DDIMExtScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            d, g = pipe.unet(x, t).sample, pipe.guide_unet(x, t).sample
            x = scheduler.step(g + w * (d - g), int(t), x, eta=0.0, use_clipped_model_output=True).prev_sample
    return x


def test_autoguide_is_the_extrapolation_and_w1_runs_the_model_alone():
    d, g = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    called = []
    guide = lambda x, t: called.append(1) or g  # noqa: E731
    call = autoguide(lambda x, t: d, guide, 3.0, guided_channels=1)
    out = call(None, None)
    assert torch.equal(out[:, :1], g[:, :1] + 3.0 * (d[:, :1] - g[:, :1]))
    assert torch.equal(out[:, 1:], d[:, 1:])  # a learned variance keeps the main model's channels
    assert torch.equal(out, combine_guidance(d, g, 3.0, 1))
    model = lambda x, t: d  # noqa: E731
    called.clear()
    assert autoguide(model, guide, 1.0, guided_channels=2) is model and called == []


def test_sampling_equals_the_written_out_rule():
    pipe = make_pipe()
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for w in (1.0, 2.5):
        got = pipe(batch_size=2, latents=x_T, num_inference_steps=5, eta=0.0, autoguidance_scale=w,
                   output_type="latent").images
        torch.testing.assert_close(got, manual_ddim(pipe, x_T, w), rtol=0, atol=1e-5)
    # w = 1 is the UNet alone: the same images as a pipeline without a guide, and the guide is never run
    calls = []
    pipe.guide_unet.register_forward_hook(lambda *a: calls.append(1))
    alone = DDPMExtPipeline(unet=pipe.unet, scheduler=pipe.scheduler)
    alone.set_progress_bar_config(disable=True)
    a = pipe(batch_size=2, latents=x_T, num_inference_steps=5, autoguidance_scale=1, output_type="latent").images
    b = alone(batch_size=2, latents=x_T, num_inference_steps=5, output_type="latent").images
    # exact by construction: same weights, shapes, process and thread count (same kernels); w = 1 never runs the guide
    assert torch.equal(a, b) and calls == []


def test_default_scale_is_the_guides_saved_one():
    x_T = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    pipe = make_pipe(scale=3.0)
    assert pipe.autoguidance_scale == 3.0 and pipe.resolve_autoguidance_scale(None) == 3.0
    default = pipe(batch_size=1, latents=x_T, num_inference_steps=4, output_type="latent").images
    explicit = pipe(batch_size=1, latents=x_T, num_inference_steps=4, autoguidance_scale=3.0,
                    output_type="latent").images
    # exact by construction: same weights, shapes, process and thread count (same kernels)
    assert torch.equal(default, explicit)
    assert make_pipe().autoguidance_scale == 1.0  # a guide without a saved scale: off unless asked
    assert DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler()).autoguidance_scale == 1.0


def test_class_conditional_models_are_guided_after_classifier_free_guidance():
    pipe = make_pipe(num_class_embeds=3)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    labels, w_cfg, w_ag = torch.tensor([0, 1]), 2.0, 1.5
    scheduler = DDIMExtScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    scheduler.set_timesteps(3)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            def cfg(unet):
                c, u = (unet(x, t, class_labels=labels).sample,
                        unet(x, t, class_labels=torch.full_like(labels, 2)).sample)  # ∅ = K = 2
                return u + w_cfg * (c - u)

            d, g = cfg(pipe.unet), cfg(pipe.guide_unet)
            x = scheduler.step(g + w_ag * (d - g), int(t), x, eta=0.0, use_clipped_model_output=True).prev_sample
    got = pipe(batch_size=2, latents=x_T, num_inference_steps=3, class_labels=[0, 1], guidance_scale=w_cfg,
               autoguidance_scale=w_ag, output_type="latent").images
    torch.testing.assert_close(got, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bad", [0.5, 0, -1, math.nan, math.inf, "2", True])
def test_bad_autoguidance_scale_is_refused_before_sampling(bad):
    pipe = make_pipe()
    with pytest.raises(ValueError, match=r"`autoguidance_scale` must be a number >= 1, got"):
        pipe(batch_size=1, num_inference_steps=2, autoguidance_scale=bad)


def test_a_scale_without_a_guide_is_refused():
    pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler())
    with pytest.raises(ValueError,
                       match=r"`autoguidance_scale`=2 needs a guide model, but this pipeline has no `guide_unet`"):
        pipe(batch_size=1, num_inference_steps=2, autoguidance_scale=2)
    assert pipe(batch_size=1, num_inference_steps=2, autoguidance_scale=1,
                output_type="pt").images.shape == (1, 1, 8, 8)


@pytest.mark.parametrize(
    "guide, why",
    [
        (lambda: build_unet("tiny", sample_size=16), r"sample_size: 16 \(guide\) vs 8 \(unet\)"),
        (lambda: build_unet("tiny", num_class_embeds=3), r"num_class_embeds: 3 \(guide\) vs None \(unet\)"),
        (lambda: build_unet("tiny", out_channels=2), r"out_channels: 2 \(guide\) vs 1 \(unet\)"),
        (lambda: torch.nn.Conv2d(1, 1, 1), "`guide_unet` must be a diffusers `UNet2DModel` or None, got Conv2d"),
    ],
)
def test_a_guide_that_does_not_fit_is_refused(guide, why):
    with pytest.raises(ValueError, match=why):
        DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(), guide_unet=guide())


def test_the_guide_gets_the_fast_path_too():
    pipe = make_pipe()
    pipe.enable_fast_path(channels_last=True)
    assert pipe.guide_unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    pipe.disable_fast_path()
    assert pipe.guide_unet.conv_in.weight.is_contiguous()
    pipe.enable_fast_path(channels_last=False, compile=True)
    assert set(pipe._fast_path.compiled) == {"unet", "guide_unet"}
    assert pipe._fast_path.compiled["guide_unet"]._orig_mod is pipe.guide_unet


def test_save_load_round_trip_and_plain_diffusers_ignores_the_guide(tmp_path):
    pipe = make_pipe(scheduler=DDPMExtScheduler(num_train_timesteps=50, beta_schedule="cosine"), scale=2.0)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index[GUIDE_INDEX_KEY] == GUIDE_DIR and "guide_unet" not in index  # named by a private key only
    assert (tmp_path / GUIDE_DIR / "diffusion_pytorch_model.safetensors").is_file()
    loaded = DDPMExtPipeline.from_pretrained(tmp_path)
    assert loaded.autoguidance_scale == 2.0
    for a, b in zip(pipe.guide_unet.state_dict().values(), loaded.guide_unet.state_dict().values()):
        assert torch.equal(a, b)
    for cls in (DDPMPipeline, DiffusionPipeline):  # vanilla diffusers: the UNet and the scheduler, nothing else
        plain = cls.from_pretrained(tmp_path)
        assert type(plain).__name__ == "DDPMPipeline" and set(plain.components) == {"unet", "scheduler"}
    assert DDPMExtPipeline.from_pretrained(tmp_path, guide_unet=None).guide_unet is None
    other = build_unet("tiny")
    assert DDPMExtPipeline.from_pretrained(tmp_path, guide_unet=other).guide_unet is other
    # a later save without a guide: the index no longer names one and the old folder is gone
    DDPMExtPipeline(unet=pipe.unet, scheduler=pipe.scheduler).save_pretrained(tmp_path)
    assert GUIDE_INDEX_KEY not in json.loads((tmp_path / "model_index.json").read_text())
    assert not (tmp_path / GUIDE_DIR).exists()
    assert DDPMExtPipeline.from_pretrained(tmp_path).guide_unet is None


def test_guide_weights_are_checked_like_the_unets(tmp_path):
    make_pipe(scale=2.0).save_pretrained(tmp_path)
    weights = tmp_path / GUIDE_DIR / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    save_file({k: v for k, v in tensors.items() if k != "conv_out.bias"}, weights)
    with pytest.raises(ValueError,
                       match=r"guide_unet do not match its config.json: missing 1 tensor\(s\): conv_out.bias"):
        DDPMExtPipeline.from_pretrained(tmp_path)
    weights.unlink()
    torch.save(tensors, tmp_path / GUIDE_DIR / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError,
                       match=r"guide_unet has no safetensors weights .*Pickle files can run arbitrary code"):
        DDPMExtPipeline.from_pretrained(tmp_path)


def test_sample_command_uses_the_saved_scale_or_the_given_one(tmp_path):
    pipe = make_pipe(scheduler=DDPMExtScheduler(num_train_timesteps=20, beta_schedule="cosine"), scale=3.0)
    pipe.save_pretrained(tmp_path / "pipe")
    for extra, w in (([], 3.0), (["--autoguidance_scale", "1"], 1.0), (["--autoguidance_scale", "1.5"], 1.5)):
        out = tmp_path / f"grid-{w}.png"
        assert cli_main(["sample", str(tmp_path / "pipe"), "--num_images", "1", "--steps", "4", "--seed", "2",
                     "--output", str(out), *extra]) == 0
        expected = pipe(batch_size=1, generator=image_generators(2, 0, 1), num_inference_steps=4, output_type="np",
                        autoguidance_scale=w).images
        got = np.asarray(Image.open(out).convert("L"))[2:10, 2:10]
        assert np.abs(got.astype(int) - np.round(expected[0, ..., 0] * 255).astype(int)).max() <= 1, w


def test_hub_round_trip_with_a_guide(olah_hub, tmp_path):
    pipe = make_pipe(scheduler=DDPMExtScheduler(num_train_timesteps=50, beta_schedule="cosine"), scale=2.0)
    pipe.save_pretrained(tmp_path / "pipe")
    publish_folder(olah_hub.mirrors_root, "ddpm-ext-tests/autoguided", tmp_path / "pipe")
    ours = DDPMExtPipeline.from_pretrained("ddpm-ext-tests/autoguided")
    assert ours.autoguidance_scale == 2.0
    for a, b in zip(pipe.guide_unet.state_dict().values(), ours.guide_unet.state_dict().values()):
        assert torch.equal(a, b)
    vanilla = DDPMPipeline.from_pretrained("ddpm-ext-tests/autoguided", revision="main")  # the guide is not its
    assert set(vanilla.components) == {"unet", "scheduler"}
