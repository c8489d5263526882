"""The lecture's figures: files of the expected size, and the numbers behind them checked against closed forms."""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import inspect
import math
import pkgutil

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from tiny_pipeline import TINY_SIZE, TINY_T, make_tiny_pipeline

from ddpm_ext import DDIMExtScheduler, DDPMExtPipeline, DDPMExtScheduler, figures
from ddpm_ext.figures import (
    ddpm_vs_ddim_figure,
    forward_process_figure,
    noise_comparison_figure,
    reverse_trajectory_figure,
    schedule_figure,
)
from ddpm_ext.seeding import image_seed

PAD = 2  # grid padding of the figures

# each figure function and the dataclass it returns
SEVEN_FIGURES = {
    "forward_process_figure": "ForwardProcessFigure",
    "schedule_figure": "ScheduleFigure",
    "reverse_trajectory_figure": "ReverseTrajectoryFigure",
    "noise_comparison_figure": "NoiseComparisonFigure",
    "ddpm_vs_ddim_figure": "SamplerComparisonFigure",
    "inpainting_figure": "InpaintingFigure",
    "class_grid_figure": "ClassGridFigure",
}


def closed_form_betas(name: str, T: int) -> np.ndarray:
    """β_t of the lecture's schedules, written out again here (DDPM; improved DDPM's cosine, s = 0.008)."""
    if name == "linear":
        return np.linspace(1e-4, 0.02, T)
    if name == "quadratic":
        return np.linspace(1e-4**0.5, 0.02**0.5, T) ** 2
    f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.minimum(1 - f[1:] / f[:-1], 0.999)


def strip_width(num_columns: int, tile: int) -> int:
    """Pixel width of a strip figure: 150 px of row labels, the grid, 20 px right margin; at least 640."""
    return max(150 + num_columns * (tile + PAD) + PAD + 20, 640)


@pytest.fixture(scope="module")
def pipe() -> DDPMExtPipeline:
    return make_tiny_pipeline()


def manual_generators(seeds):
    """Generators of the package's seeding rule: seeds[i] = image_seed(seed, i)."""
    return [torch.Generator().manual_seed(s) for s in seeds]


# --------------------------------------------------------------------------------------------------
# Forward process and schedules (no model)
# --------------------------------------------------------------------------------------------------
def test_forward_strip_noise_level_matches_alpha_bar(tmp_path):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
    x0 = ((xx**2 + yy**2).sqrt() < 0.6).float()[None] * 2 - 1  # a disc, (1, 28, 28) in [-1, 1]
    fig = forward_process_figure(x0, tmp_path / "forward.png", seed=1)

    assert fig.timesteps == [49, 99, 199, 299, 499, 699, 999]  # paper t = 50 ... 1000 = T
    eps = fig.noise.double()
    for name in ("linear", "quadratic", "cosine"):
        ab = np.cumprod(1 - closed_form_betas(name, 1000))[fig.timesteps]
        np.testing.assert_allclose(fig.alphas_cumprod[name], ab, rtol=1e-12)
        # x_t - √ᾱ_t x_0 is √(1 - ᾱ_t) ε: exactly in ratio to ε's std, and close to √(1 - ᾱ_t) itself
        residual = fig.images[name].double() - torch.from_numpy(np.sqrt(ab))[:, None, None, None] * x0.double()
        measured = residual.flatten(1).std(dim=1, unbiased=False).numpy()
        np.testing.assert_allclose(measured / eps.std(unbiased=False).item(), np.sqrt(1 - ab), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fig.noise_std[name], np.sqrt(1 - ab), rtol=0.06)
    # cosine keeps more signal mid-chain than linear (improved DDPM's motivation), and both end near pure noise
    assert fig.alphas_cumprod["cosine"][4] > fig.alphas_cumprod["linear"][4] * 5
    assert fig.alphas_cumprod["cosine"][-1] < 1e-4 and fig.alphas_cumprod["linear"][-1] < 1e-4

    png = Image.open(fig.path)
    assert png.size == fig.size
    assert fig.size[0] == strip_width(8, 3 * 28)  # x_0 + 7 timesteps, 28x28 shown 3x
    assert fig.size[1] > 3 * (3 * 28 + 2 * PAD)  # three rows of 84-px tiles


def test_forward_process_bad_input(tmp_path):
    x0 = torch.zeros(1, 8, 8)
    with pytest.raises(ValueError, match=r"`timesteps` must .* \[0, 1000\)"):
        forward_process_figure(x0, tmp_path / "f.png", timesteps=[10, 1000])
    with pytest.raises(ValueError, match="`beta_schedule` must be one of"):
        forward_process_figure(x0, tmp_path / "f.png", schedules=["linear", "cubic"])
    with pytest.raises(ValueError, match="`image` must be one image"):
        forward_process_figure(torch.zeros(2, 1, 8, 8), tmp_path / "f.png")
    assert not list(tmp_path.iterdir())


def test_schedule_curves_equal_closed_forms(tmp_path):
    T = 50
    fig = schedule_figure(tmp_path / "schedules.png", num_train_timesteps=T)
    for name in ("linear", "quadratic", "cosine"):
        betas = closed_form_betas(name, T)
        ab = np.cumprod(1 - betas)
        ab_prev = np.concatenate([[1.0], ab[:-1]])
        np.testing.assert_allclose(fig.betas[name], betas, rtol=1e-12)
        np.testing.assert_allclose(fig.alphas_cumprod[name], ab, rtol=1e-12)
        np.testing.assert_allclose(fig.log_snr[name], np.log(ab / (1 - ab)), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(fig.posterior_variance[name], (1 - ab_prev) / (1 - ab) * betas,
                                   rtol=1e-9, atol=1e-15)
        assert fig.posterior_variance[name][0] == 0 and (fig.posterior_variance[name][1:] < betas[1:]).all()
    assert Image.open(fig.path).size == fig.size == (1500, 460)


# --------------------------------------------------------------------------------------------------
# Figures from a model
# --------------------------------------------------------------------------------------------------
# the figures sample with the pipeline's defaults: "trailing" for the tiny pipeline's "leading" config, and DDIM's
# ε̂ consistent with the clipped x̂_0
PIPELINE_SPACING = "trailing"


def test_reverse_trajectory_is_the_sampling_loop(pipe, tmp_path):
    steps, seeds = 10, [image_seed(3, 0), image_seed(3, 1)]
    fig = reverse_trajectory_figure(
        pipe, tmp_path / "rev.png", gif_path=tmp_path / "rev.gif",
        num_inference_steps=steps, num_images=2, num_columns=4, seed=3,
    )
    scheduler = DDPMExtScheduler.from_config(pipe.scheduler.config, timestep_spacing=PIPELINE_SPACING)
    scheduler.set_timesteps(steps)
    cols = [0, 3, 6, 9]  # evenly spread over the 10 steps, first and last included
    assert fig.timesteps == [int(scheduler.timesteps[i]) for i in cols]

    gens = manual_generators(seeds)
    x = randn_tensor((2, 1, TINY_SIZE, TINY_SIZE), generator=gens)
    xs, x0s = [], []
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = scheduler.step(pipe.unet(x, t).sample, t, x, generator=gens)
            xs.append(x)
            x0s.append(out.pred_original_sample)
            x = out.prev_sample
    for k, i in enumerate(cols):
        torch.testing.assert_close(fig.samples[:, k], xs[i], rtol=0, atol=1e-5)
        torch.testing.assert_close(fig.pred_original_samples[:, k], x0s[i], rtol=0, atol=1e-5)
    torch.testing.assert_close(fig.final, x, rtol=0, atol=1e-5)

    assert Image.open(fig.path).size == fig.size
    assert fig.size[0] == strip_width(4, 3 * TINY_SIZE)
    gif = Image.open(fig.gif_path)
    assert gif.n_frames == fig.num_frames == steps + 1  # x_T ... x_0
    assert gif.size[0] >= 2 * (2 * TINY_SIZE + PAD)  # two images side by side, shown 2x


def test_noise_comparison_without_z_is_the_mean_only_chain(pipe, tmp_path):
    steps, seeds = 8, [image_seed(5, i) for i in range(3)]
    fig = noise_comparison_figure(pipe, tmp_path / "z.png", num_inference_steps=steps, num_images=3, seed=5)
    assert fig.seeds == seeds

    # μ_θ written out from the closed-form cosine ᾱ: x̂_0 = (x_t - √(1-ᾱ_t) ε_θ)/√ᾱ_t clipped, then μ̃_t(x_t, x̂_0)
    ab = np.cumprod(1 - closed_form_betas("cosine", TINY_T))
    scheduler = DDPMExtScheduler.from_config(pipe.scheduler.config, timestep_spacing=PIPELINE_SPACING)
    scheduler.set_timesteps(steps)
    grid = scheduler.timesteps.tolist()
    x = randn_tensor((3, 1, TINY_SIZE, TINY_SIZE), generator=manual_generators(seeds)).double()
    with torch.no_grad():
        for i, t in enumerate(grid):
            a_t, a_prev = ab[t], (ab[grid[i + 1]] if i + 1 < len(grid) else 1.0)
            beta = 1 - a_t / a_prev
            eps = pipe.unet(x.float(), t).sample.double()
            x0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1, 1)
            x = math.sqrt(a_prev) * beta / (1 - a_t) * x0 + math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t) * x
    torch.testing.assert_close(fig.without_noise.double(), x.clamp(-1, 1), rtol=0, atol=2e-5)

    # with z: exactly the pipeline's ancestral samples from the same seeds, and not the mean-only ones
    with_z = pipe(batch_size=3, generator=manual_generators(seeds), num_inference_steps=steps, output_type="pt").images
    torch.testing.assert_close(fig.with_noise, with_z * 2 - 1, rtol=0, atol=1e-6)
    assert (fig.with_noise - fig.without_noise).abs().mean() > 0.05
    assert Image.open(fig.path).size == fig.size
    assert fig.size[0] == strip_width(3, 3 * TINY_SIZE)


def test_ddpm_vs_ddim_panels_equal_their_loops(pipe, tmp_path):
    seeds = [image_seed(0, 0), image_seed(0, 1)]
    fig = ddpm_vs_ddim_figure(pipe, tmp_path / "s.png", step_counts=(3, 6), num_images=2, seed=0)
    assert sorted(fig.samples) == [("ddim", 3), ("ddim", 6), ("ddpm", 3), ("ddpm", 6)]

    ddim = DDIMExtScheduler.from_config(pipe.scheduler.config, timestep_spacing=PIPELINE_SPACING)
    for steps in (3, 6):
        ddim.set_timesteps(steps)
        x = randn_tensor((2, 1, TINY_SIZE, TINY_SIZE), generator=manual_generators(seeds))
        with torch.no_grad():
            for t in ddim.timesteps:
                x = ddim.step(pipe.unet(x, t).sample, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        torch.testing.assert_close(fig.samples[("ddim", steps)], x.clamp(-1, 1), rtol=0, atol=1e-5)
        ddpm = pipe(batch_size=2, generator=manual_generators(seeds), num_inference_steps=steps,
                    output_type="pt").images
        torch.testing.assert_close(fig.samples[("ddpm", steps)], ddpm * 2 - 1, rtol=0, atol=1e-6)
    assert Image.open(fig.path).size == fig.size
    assert fig.size[0] == strip_width(2, 3 * TINY_SIZE)
    assert fig.size[1] > 4 * (3 * TINY_SIZE + 2 * PAD)  # four rows


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p, d: noise_comparison_figure(p, d / "a.png", num_inference_steps=TINY_T + 1), "at most"),
        (lambda p, d: noise_comparison_figure(p, d / "a.png", num_inference_steps=2, num_images=0),
         "`num_images` must be an integer >= 1"),
        (lambda p, d: ddpm_vs_ddim_figure(p, d / "a.png", step_counts=(0, 5)), "`step_counts` must be an integer"),
        (lambda p, d: ddpm_vs_ddim_figure(p, d / "a.png", step_counts=()), "at least one"),
        (lambda p, d: ddpm_vs_ddim_figure(p, d / "a.png", step_counts=(2,), eta=1.5),
         r"`eta` must be a number in \[0, 1\]"),
        (lambda p, d: reverse_trajectory_figure(p, d / "a.png", num_inference_steps=2, num_columns=0), "`num_columns`"),
        (lambda p, d: reverse_trajectory_figure(object(), d / "a.png", num_inference_steps=2), "DDPMExtPipeline"),
    ],
)
def test_model_figures_bad_input(pipe, tmp_path, call, message):
    with pytest.raises(ValueError, match=message):
        call(pipe, tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("module", sorted(m.name for m in pkgutil.iter_modules(figures.__path__)))
def test_docstring_examples(module):
    mod = importlib.import_module(f"ddpm_ext.figures.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_all_names_the_seven_figures_each_next_to_its_dataclass():
    assert sorted(figures.__all__) == sorted({*SEVEN_FIGURES, *SEVEN_FIGURES.values(), "LECTURE_SCHEDULES"})
    namespace: dict = {}
    exec("from ddpm_ext.figures import *", namespace)
    assert set(figures.__all__) <= set(namespace)
    for function_name, class_name in SEVEN_FIGURES.items():
        function, cls = getattr(figures, function_name), getattr(figures, class_name)
        assert dataclasses.is_dataclass(cls) and "path" in {f.name for f in dataclasses.fields(cls)}
        assert function.__module__ == cls.__module__ != "ddpm_ext.figures"  # in the same module of the package
        assert inspect.signature(function).return_annotation == class_name  # it returns that dataclass
        assert f"[`{function_name}`]" in figures.__doc__  # the package docstring lists it
    assert figures.__doc__.count("_figure`]") == 7 and "Seven figures" in figures.__doc__
