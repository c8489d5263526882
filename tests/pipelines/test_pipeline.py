"""DDPMExtPipeline: sampling, UNet presets, and checkpoints that round-trip with vanilla diffusers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, DiffusionPipeline, UNet2DModel
from hub_servers import publish_folder
from PIL import Image

from ddpm_ext import (
    UNET_PRESETS,
    DDIMExtScheduler,
    DDPMExtPipeline,
    DDPMExtScheduler,
    build_unet,
    unet_config,
)


def tiny_unet(seed: int = 0, **overrides) -> UNet2DModel:
    torch.manual_seed(seed)
    return build_unet("tiny", **overrides).eval()


def make_pipe(scheduler=None, **unet_overrides) -> DDPMExtPipeline:
    pipe = DDPMExtPipeline(unet=tiny_unet(**unet_overrides), scheduler=scheduler or DDPMExtScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


# This file checks parity with vanilla diffusers: ddpm_ext's pipeline is asked for diffusers' behaviour explicitly
# (the config's own spacing instead of "trailing" for a "leading" config, DDIM's ε̂ as the model gives it).
DIFFUSERS_BEHAVIOUR = {"timestep_spacing": "leading", "use_clipped_model_output": False}


def sample(pipe, seed=0, **kwargs):
    if isinstance(pipe, DDPMExtPipeline):
        kwargs = {**DIFFUSERS_BEHAVIOUR, "timestep_spacing": pipe.scheduler.config.timestep_spacing, **kwargs}
    kwargs.setdefault("num_inference_steps", 10)
    kwargs.setdefault("batch_size", 2)
    kwargs.setdefault("output_type", "np")
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------
class TestSampling:
    def test_output_types(self):
        pipe = make_pipe()
        np_img = sample(pipe)
        assert np_img.shape == (2, 8, 8, 1) and np_img.dtype == np.float32
        assert np_img.min() >= 0 and np_img.max() <= 1
        pt = sample(pipe, output_type="pt")
        assert pt.shape == (2, 1, 8, 8)
        np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), np_img, atol=1e-6)
        pil = sample(pipe, output_type="pil")
        assert len(pil) == 2 and isinstance(pil[0], Image.Image) and pil[0].size == (8, 8)
        tup = pipe(batch_size=2, num_inference_steps=3, output_type="np", return_dict=False)
        assert isinstance(tup, tuple) and tup[0].shape == (2, 8, 8, 1)

    def test_determinism_and_generator_list(self):
        pipe = make_pipe()
        a, b, c = sample(pipe, seed=1), sample(pipe, seed=1), sample(pipe, seed=2)
        # exact by construction: same weights, shapes, process and thread count (same kernels)
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)
        gens = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]
        per_image = pipe(batch_size=2, generator=gens, num_inference_steps=5, output_type="np").images
        single = pipe(batch_size=1, generator=[torch.Generator().manual_seed(6)], num_inference_steps=5,
                      output_type="np").images
        # with one generator per image, each image depends only on its own generator (x_T and every z)
        np.testing.assert_allclose(per_image[1], single[0], atol=1e-5)

    def test_same_images_as_diffusers_ddpm_pipeline(self):
        unet = tiny_unet()
        ours = DDPMExtPipeline(unet=unet,
                               scheduler=DDPMExtScheduler(beta_schedule="cosine", variance_type="fixed_large"))
        theirs = DDPMPipeline(unet=unet,
                              scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="fixed_large"))
        for p in (ours, theirs):
            p.set_progress_bar_config(disable=True)
        np.testing.assert_allclose(sample(ours, num_inference_steps=20), sample(theirs, num_inference_steps=20),
                                   atol=1e-4)

    def test_ddim_swap_and_eta(self):
        pipe = make_pipe(DDPMExtScheduler(beta_schedule="cosine"))
        pipe.scheduler = DDIMExtScheduler.from_config(pipe.scheduler.config)
        a, b = sample(pipe, seed=0, eta=0.0), sample(pipe, seed=99, eta=0.0)
        assert not np.allclose(a, b)  # different x_T
        theirs = DDIMPipeline(unet=pipe.unet, scheduler=DDIMScheduler(beta_schedule="squaredcos_cap_v2"))
        theirs.set_progress_bar_config(disable=True)
        ref = theirs(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=10, eta=0.0,
                     output_type="np", use_clipped_model_output=None).images
        np.testing.assert_allclose(a, ref, atol=1e-4)
        # η = 1 draws fresh noise at each step
        assert not np.allclose(sample(pipe, seed=0, eta=1.0), a)

    def test_without_z(self):
        pipe = make_pipe()
        a = sample(pipe, stochastic=False, seed=3)
        b = sample(pipe, stochastic=False, seed=3)
        # exact by construction: same weights, shapes, process and thread count (same kernels)
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, sample(pipe, seed=3))

    def test_trajectory_and_callback(self):
        pipe = make_pipe()
        seen = []

        def callback(p, i, t, tensors):
            seen.append((i, t, tensors["latents"].shape))
            return None

        out = pipe(batch_size=2, num_inference_steps=6, output_type="pt", return_trajectory=True,
                   callback_on_step_end=callback, generator=torch.manual_seed(0))
        assert out.timesteps == pipe.scheduler.timesteps.tolist() and len(out.timesteps) == 6
        assert len(out.trajectory) == 7 and len(out.pred_original_samples) == 6
        torch.testing.assert_close(out.images, (out.trajectory[-1] / 2 + 0.5).clamp(0, 1))
        assert [s[0] for s in seen] == list(range(6)) and seen[0][1] == out.timesteps[0]
        # x_T is N(0, I) noise; the last x̂_0 is the final sample (no noise at the last step)
        torch.testing.assert_close(out.pred_original_samples[-1], out.trajectory[-1])

    def test_callback_can_replace_latents(self):
        pipe = make_pipe()
        out = pipe(batch_size=1, num_inference_steps=3, output_type="pt",
                   callback_on_step_end=lambda p, i, t, d: {"latents": torch.zeros_like(d["latents"])})
        torch.testing.assert_close(out.images, torch.full_like(out.images, 0.5))

    def test_learned_range_pipeline(self):
        pipe = make_pipe(DDPMExtScheduler(variance_type="learned_range"), out_channels=2)
        assert sample(pipe).shape == (2, 8, 8, 1)


# --------------------------------------------------------------------------------------------------
# UNet presets
# --------------------------------------------------------------------------------------------------
def test_paper_preset_parameter_count():
    n = sum(p.numel() for p in build_unet("ddpm-cifar10").parameters())
    assert n == pytest.approx(35.7e6, rel=0.01)


def test_presets_use_positional_time_embeddings():
    for name in UNET_PRESETS:
        cfg = unet_config(name)
        assert cfg["time_embedding_type"] == "positional"
    cfg = unet_config("ddpm-cifar10")
    assert cfg["block_out_channels"] == (128, 256, 256, 256) and cfg["layers_per_block"] == 2
    assert cfg["dropout"] == 0.1 and cfg["down_block_types"][1] == "AttnDownBlock2D"  # attention at 16x16


def test_small_presets_run_forward():
    for name, shape in (("mnist-small", (2, 1, 28, 28)), ("rgb32-small", (2, 3, 32, 32))):
        unet = build_unet(name)
        assert unet(torch.randn(shape), torch.tensor([3, 999])).sample.shape == shape


def test_preset_overrides_and_json(tmp_path):
    assert unet_config("mnist-small", sample_size=32)["sample_size"] == 32
    unet = tiny_unet()
    unet.save_config(tmp_path)
    cfg = unet_config(tmp_path / "config.json", in_channels=3, out_channels=3)
    assert cfg["in_channels"] == 3 and cfg["block_out_channels"] == [8, 16]
    assert UNet2DModel(**cfg).config.in_channels == 3


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("nope",), {}, r"`preset` must be one of .*'ddpm-cifar10'.*got 'nope'"),
        (("tiny",), {"channels": 3}, r"Unknown UNet2DModel config keys \['channels'\]"),
        (("missing.json",), {}, r"no such JSON file exists"),
    ],
)
def test_bad_preset(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        unet_config(*args, **kwargs)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"block_out_channels": (8, -16)}, r"`block_out_channels` must be a non-empty list .* >= 1, got \(8, -16\)"),
        ({"block_out_channels": (8, 0)}, r"`block_out_channels` must be a non-empty list of integers >= 1"),
        ({"block_out_channels": (8, 16.5)}, r"`block_out_channels` must be a non-empty list of integers >= 1"),
        ({"block_out_channels": (8, 18)},
         r"`block_out_channels` must be a list of multiples of `norm_num_groups` = 4 \(GroupNorm\), got \(8, 18\)"),
        ({"block_out_channels": (8, 16, 32)}, r"`down_block_types` must be a list of 3 block types"),
        ({"in_channels": 0}, r"`in_channels` must be an integer >= 1, got 0"),
        ({"out_channels": -1}, r"`out_channels` must be an integer >= 1, got -1"),
        ({"layers_per_block": 1.5}, r"`layers_per_block` must be an integer >= 1, got 1.5"),
        ({"sample_size": -8}, r"`sample_size` must be an integer >= 1 or a pair"),
        ({"norm_num_groups": 0}, r"`norm_num_groups` must be an integer >= 1, got 0"),
        ({"num_class_embeds": -2}, r"`num_class_embeds` must be None or an integer >= 1, got -2"),
    ],
)
def test_bad_unet_sizes_are_refused_before_building(overrides, message):
    with pytest.raises(ValueError, match=r"`preset` 'tiny': " + message):
        build_unet("tiny", **overrides)


def test_bad_sizes_in_a_json_config_and_a_pipeline_folder_name_the_file(tmp_path):
    config = {**unet_config("tiny"), "block_out_channels": [8, -16]}
    (tmp_path / "unet.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unet.json'?: `block_out_channels` must be .* got \[8, -16\]"):
        unet_config(tmp_path / "unet.json")
    make_pipe().save_pretrained(tmp_path / "pipe")
    (tmp_path / "pipe" / "unet" / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match=r"unet/config.json: `block_out_channels` must be .* got \[8, -16\]"):
        DDPMExtPipeline.from_pretrained(tmp_path / "pipe")


@pytest.mark.parametrize("file", ["model_index.json", "unet/config.json", "scheduler/scheduler_config.json"])
def test_invalid_json_in_a_pipeline_folder_names_the_file(file, tmp_path):
    make_pipe().save_pretrained(tmp_path)
    (tmp_path / file).write_text('{"_class_name": ')
    with pytest.raises(ValueError, match=rf"{file} is not valid JSON: Expecting value at line 1, column 17"):
        DDPMExtPipeline.from_pretrained(tmp_path)
    (tmp_path / file).write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"{file} must hold a JSON object, got list"):
        DDPMExtPipeline.from_pretrained(tmp_path)


def test_bad_json_preset(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"is not valid JSON"):
        unet_config(tmp_path / "bad.json")


# --------------------------------------------------------------------------------------------------
# Checkpoints: ddpm_ext <-> vanilla diffusers
# --------------------------------------------------------------------------------------------------
EXPRESSIBLE = [
    (DDPMExtScheduler, {"beta_schedule": "cosine", "variance_type": "fixed_large"}),
    (DDPMExtScheduler, {"beta_schedule": "quadratic", "beta_end": 0.012, "prediction_type": "v_prediction"}),
    (DDIMExtScheduler, {"beta_schedule": "linear", "timestep_spacing": "leading"}),
]


@pytest.mark.parametrize("cls, kwargs", EXPRESSIBLE)
def test_saved_pipeline_loads_in_vanilla_diffusers(cls, kwargs, tmp_path):
    pipe = make_pipe(cls(**kwargs))
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(tmp_path.rglob("*.bin"))
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    ref = sample(pipe, num_inference_steps=20)
    for loader in (DiffusionPipeline, DDPMPipeline):
        vanilla = loader.from_pretrained(tmp_path)
        assert type(vanilla) is DDPMPipeline
        assert type(vanilla.scheduler).__name__ == {"DDPMExtScheduler": "DDPMScheduler",
                                                    "DDIMExtScheduler": "DDIMScheduler"}[cls.__name__]
        vanilla.set_progress_bar_config(disable=True)
        np.testing.assert_allclose(sample(vanilla, num_inference_steps=20), ref, atol=1e-4)


def test_ddpm_ext_round_trip_keeps_every_setting(tmp_path):
    scheduler = DDPMExtScheduler(beta_schedule="cosine", cosine_s=0.02, max_beta=0.5, variance_type="learned_range",
                                 clip_sample=False, timestep_spacing="trailing")
    pipe = make_pipe(scheduler, out_channels=2)
    pipe.save_pretrained(tmp_path)
    loaded = DDPMExtPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is DDPMExtScheduler
    public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(scheduler.config)
    for a, b in zip(loaded.unet.state_dict().values(), pipe.unet.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # exact by construction: same weights, shapes, process and thread count; weights reloaded bit for bit
    np.testing.assert_array_equal(sample(loaded), sample(pipe))


def test_inexpressible_schedule_still_samples_the_same_in_diffusers(tmp_path):
    """A cosine offset diffusers does not know travels as trained_betas for diffusers only."""
    pipe = make_pipe(DDPMExtScheduler(beta_schedule="cosine", cosine_s=0.02))
    pipe.save_pretrained(tmp_path)
    vanilla = DDPMPipeline.from_pretrained(tmp_path)
    vanilla.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(vanilla.scheduler.alphas_cumprod, pipe.scheduler.alphas_cumprod, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(sample(vanilla), sample(pipe), atol=1e-4)
    # ddpm_ext recomputes β from `cosine_s` (the stored β are a flagged stand-in for diffusers)
    loaded = DDPMExtPipeline.from_pretrained(tmp_path).scheduler
    assert loaded.config._ddpm_ext_betas_for_diffusers and loaded.config._ddpm_ext_config["cosine_s"] == 0.02
    assert not np.array_equal(DDPMExtScheduler.from_config(loaded.config, cosine_s=0.008)._betas64, loaded._betas64)


def test_loads_diffusers_own_ddpm_pipeline(tmp_path):
    unet = tiny_unet()
    theirs = DDPMPipeline(unet=unet,
                          scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="fixed_large"))
    theirs.set_progress_bar_config(disable=True)
    theirs.save_pretrained(tmp_path)
    ours = DDPMExtPipeline.from_pretrained(tmp_path)
    ours.set_progress_bar_config(disable=True)
    assert type(ours.scheduler) is DDPMExtScheduler and ours.scheduler.config.variance_type == "fixed_large"
    np.testing.assert_allclose(sample(ours, num_inference_steps=20), sample(theirs, num_inference_steps=20), atol=1e-4)


def test_pickle_only_checkpoint_is_refused_unless_allowed(tmp_path):
    unet = tiny_unet()
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(ValueError, match=r"no safetensors weights \(only the pickle file\(s\) "
                                         r"\['diffusion_pytorch_model.bin'\]\).*allow_pickle=True"):
        DDPMExtPipeline.from_pretrained(tmp_path)
    loaded = DDPMExtPipeline.from_pretrained(tmp_path, allow_pickle=True)
    torch.testing.assert_close(loaded.unet.conv_in.weight, unet.conv_in.weight)


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------
def test_not_a_pipeline(tmp_path):
    with pytest.raises(ValueError, match=r"is not a pipeline: it has no model_index.json"):
        DDPMExtPipeline.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"neither an existing folder nor a Hub repo id"):
        DDPMExtPipeline.from_pretrained(str(tmp_path / "does" / "not" / "exist"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match=r"is a file, not a pipeline folder"):
        DDPMExtPipeline.from_pretrained(tmp_path / "file.txt")


def test_missing_component(tmp_path):
    make_pipe().save_pretrained(tmp_path)
    (tmp_path / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(ValueError, match=r"missing the `scheduler` component"):
        DDPMExtPipeline.from_pretrained(tmp_path)


def test_channel_mismatch_with_learned_range():
    with pytest.raises(ValueError,
                       match=r"`variance_type`='learned_range' needs a UNet with out_channels = 2 x in_channels = 2"):
        DDPMExtPipeline(unet=tiny_unet(), scheduler=DDPMExtScheduler(variance_type="learned_range"))
    with pytest.raises(ValueError, match=r"out_channels=2.*must be equal"):
        DDPMExtPipeline(unet=tiny_unet(out_channels=2), scheduler=DDPMExtScheduler())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, r"`batch_size` must be an integer >= 1, got 0"),
        ({"batch_size": -2}, r"`batch_size` must be an integer >= 1, got -2"),
        ({"num_inference_steps": 0}, r"`num_inference_steps` must be an integer in \[1, 1000\].*got 0"),
        ({"num_inference_steps": 1001}, r"`num_inference_steps` must be an integer in \[1, 1000\].*got 1001"),
        ({"output_type": "jpeg"}, r"`output_type` must be one of \['pil', 'np', 'pt', 'latent', 'numpy'\], got 'jpeg'"),
        ({"eta": 0.5}, r"`eta`=0.5 needs a DDIM scheduler"),
        ({"eta": 2.0}, r"`eta` must be a number in \[0, 1\], got 2.0"),
        ({"batch_size": 2, "generator": [torch.Generator()]}, r"list of 1 generators but `batch_size` is 2"),
    ],
)
def test_bad_call(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_pipe()(**kwargs)


def test_without_z_needs_ddpm_ext_scheduler():
    pipe = make_pipe(DDPMScheduler())
    with pytest.raises(ValueError, match=r"`stochastic`=False needs a ddpm_ext scheduler"):
        pipe(stochastic=False, num_inference_steps=2)


def test_save_refuses_pickle(tmp_path):
    with pytest.raises(ValueError, match=r"safetensors weights only"):
        make_pipe().save_pretrained(tmp_path, safe_serialization=False)


# --------------------------------------------------------------------------------------------------
# Hub repo ids: through a real local Hub server (olah serving git mirrors), and through the cache offline
# --------------------------------------------------------------------------------------------------
def test_hub_round_trip_through_local_server(olah_hub, tmp_path):
    pipe = make_pipe(DDPMExtScheduler(beta_schedule="cosine", cosine_s=0.02, variance_type="fixed_large"))
    pipe.save_pretrained(tmp_path / "pipe")
    publish_folder(olah_hub.mirrors_root, "ddpm-ext-tests/hub-round-trip", tmp_path / "pipe")
    ref = sample(pipe, num_inference_steps=20)

    ours = DDPMExtPipeline.from_pretrained("ddpm-ext-tests/hub-round-trip")
    ours.set_progress_bar_config(disable=True)
    assert type(ours.scheduler) is DDPMExtScheduler and ours.scheduler.config._ddpm_ext_config["cosine_s"] == 0.02
    # exact by construction: same weights, shapes, process and thread count; weights from the Hub, bit for bit
    np.testing.assert_array_equal(sample(ours, num_inference_steps=20), ref)

    vanilla = DDPMPipeline.from_pretrained("ddpm-ext-tests/hub-round-trip", revision="main")
    vanilla.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(sample(vanilla, num_inference_steps=20), ref, atol=1e-4)

    generic = DiffusionPipeline.from_pretrained("ddpm-ext-tests/hub-round-trip", revision="main")
    assert type(generic) is DDPMPipeline


@pytest.mark.slow  # starts the local Hub server (olah) and loads through it twice
def test_hub_diffusers_checkpoint_and_offline_cache(olah_hub, tmp_path):
    """A checkpoint saved by diffusers' own DDPMPipeline (google/ddpm-cifar10-32 layout), by repo id, then offline."""
    unet = tiny_unet(seed=3)
    theirs = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(variance_type="fixed_large", clip_sample=True))
    theirs.save_pretrained(tmp_path / "theirs")
    publish_folder(olah_hub.mirrors_root, "ddpm-ext-tests/diffusers-layout", tmp_path / "theirs")
    theirs.set_progress_bar_config(disable=True)
    ref = sample(theirs, num_inference_steps=20)

    ours = DDPMExtPipeline.from_pretrained("ddpm-ext-tests/diffusers-layout", revision="main")
    ours.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(sample(ours, num_inference_steps=20), ref, atol=1e-4)

    # Offline, from the Hub cache filled above (HF_HUB_OFFLINE is read at import: a fresh process).
    np.save(tmp_path / "ref.npy", ref)
    code = (
        "import numpy as np, torch\n"
        "from ddpm_ext import DDPMExtPipeline\n"
        "p = DDPMExtPipeline.from_pretrained('ddpm-ext-tests/diffusers-layout')\n"
        "p.set_progress_bar_config(disable=True)\n"
        "x = p(batch_size=2, num_inference_steps=20, output_type='np', generator=torch.Generator().manual_seed(0),\n"
        "      timestep_spacing='leading').images\n"
        f"np.testing.assert_allclose(x, np.load({str(tmp_path / 'ref.npy')!r}), atol=1e-4)\n"
        "print('offline ok')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "offline ok" in result.stdout


def test_hub_unknown_repo_is_a_clear_error(olah_hub):
    with pytest.raises(ValueError, match=r"Could not fetch the pipeline 'ddpm-ext-tests/does-not-exist'"):
        DDPMExtPipeline.from_pretrained("ddpm-ext-tests/does-not-exist")


# ---------------------------------------------------------------------------------------------------------------
# Inputs and results that are never silently wrong (issue 31)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"generator": 5}, r"`generator` must be a torch.Generator, .* got int .*manual_seed\(5\)"),
        ({"generator": "0"}, r"`generator` must be a torch.Generator, a list of them or None, got str"),
        ({"generator": [5, 6], "batch_size": 2}, r"`generator` must be a list of torch.Generator, .* holding int"),
        ({"latents": torch.full((1, 1, 8, 8), float("nan"))}, r"`latents` holds 64 NaN and 0 infinite value\(s\)"),
        ({"latents": torch.zeros(1, 1, 8, 8).index_fill_(2, torch.tensor([0]), float("inf"))},
         r"`latents` holds 0 NaN and 8 infinite value\(s\) of 64"),
    ],
)
def test_bad_generator_and_non_finite_latents_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_pipe()(num_inference_steps=2, **kwargs)


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
def test_non_finite_weights_give_no_images(output_type):
    pipe = make_pipe()
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"non-finite value\(s\) of 64: the weights of `unet` hold NaN"):
        pipe(num_inference_steps=2, output_type=output_type)


def test_a_diverging_callback_is_named_as_the_cause():
    def blow_up(pipe, i, t, tensors):
        return {"latents": tensors["latents"] * float("inf")}

    with pytest.raises(ValueError, match=r"non-finite .* the chain diverged"):
        make_pipe()(num_inference_steps=2, callback_on_step_end=blow_up)
