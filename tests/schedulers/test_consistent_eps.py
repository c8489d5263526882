"""DDIM's consistent ε̂ (`use_clipped_model_output=True`): the step against a hand-written reference and diffusers.

The reference is Song et al. eq. 12 in plain torch, float64:

    x̂_0 = model's x̂_0, then clipped to ±clip_sample_range or dynamically thresholded (diffusers' `_threshold_sample`:
          s = quantile(|x̂_0|, ratio) per image clamped to [1, sample_max_value], x̂_0 -> clamp(x̂_0, -s, s) / s)
    ε̂   = (x_t − √ᾱ_t x̂_0) / √(1 − ᾱ_t)                     (recomputed from the x̂_0 actually used)
    x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z,  σ = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from ddpm_ext import DDIMExtScheduler

T = 1000
CLIPPING = {
    "clip": {"clip_sample": True},
    "no-clip": {"clip_sample": False},
    "clip-0.5": {"clip_sample": True, "clip_sample_range": 0.5},
    "threshold": {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.0},
}
PREDICTIONS = ("epsilon", "sample", "v_prediction")


def alphas_cumprod() -> np.ndarray:
    """ᾱ_t of the linear schedule (Ho et al.: β from 1e-4 to 0.02 over T = 1000), float64."""
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))


def reference_step(out, x, ab_t, ab_prev, eta, z, *, prediction_type, clip_sample=True, clip_sample_range=1.0,
                   thresholding=False, dynamic_thresholding_ratio=0.995, sample_max_value=1.0):  # fmt: skip
    sa, sb = math.sqrt(ab_t), math.sqrt(1 - ab_t)
    if prediction_type == "epsilon":
        x0 = (x - sb * out) / sa
    elif prediction_type == "sample":
        x0 = out
    else:  # v = √ᾱ ε − √(1 − ᾱ) x_0
        x0 = sa * x - sb * out
    if thresholding:
        flat = x0.reshape(x0.shape[0], -1)
        s = torch.quantile(flat.abs(), dynamic_thresholding_ratio, dim=1).clamp(1, sample_max_value)[:, None]
        x0 = (torch.clamp(flat, -s, s) / s).reshape(x0.shape)
    elif clip_sample:
        x0 = x0.clamp(-clip_sample_range, clip_sample_range)
    eps = (x - sa * x0) / sb
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_prev)
    return math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma**2) * eps + sigma * z


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    out = 2.5 * torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)  # large: x̂_0 leaves [-1, 1] somewhere
    z = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    return x, out, z


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("clipping", list(CLIPPING))
def test_consistent_eps_step_equals_the_hand_written_reference(clipping, prediction_type, eta):
    options = {**CLIPPING[clipping], "prediction_type": prediction_type}
    s = DDIMExtScheduler(**options)
    s.set_timesteps(10)
    ab = alphas_cumprod()
    grid = s.timesteps.tolist()
    x, out, z = inputs()
    for i, t in enumerate(grid):
        ab_prev = ab[grid[i + 1]] if i + 1 < len(grid) else 1.0
        got = s.step(out, t, x, eta=eta, use_clipped_model_output=True, variance_noise=z).prev_sample
        want = reference_step(out, x, ab[t], ab_prev, eta, z, **options)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("clipping", list(CLIPPING))
def test_consistent_eps_step_equals_diffusers(clipping, prediction_type, eta):
    """diffusers' DDIMScheduler with `use_clipped_model_output=True`, leading spacing (where its t − T // S is the
    next kept timestep), in float32."""
    options = {**CLIPPING[clipping], "prediction_type": prediction_type}
    ours, theirs = DDIMExtScheduler(**options), DDIMScheduler(**options)
    for s in (ours, theirs):
        s.set_timesteps(10)
    x, out, z = (v.float() for v in inputs(1))
    for t in theirs.timesteps:
        a = ours.step(out, int(t), x, eta=eta, use_clipped_model_output=True, variance_noise=z).prev_sample
        b = theirs.step(out, t, x, eta=eta, use_clipped_model_output=True, variance_noise=z).prev_sample
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5)


def test_consistent_eps_changes_only_the_pixels_whose_x0_was_clipped():
    s = DDIMExtScheduler(clip_sample=True)
    s.set_timesteps(10)
    x, out, _ = inputs(2)
    t = int(s.timesteps[3])
    ab = float(s.alphas_cumprod[t].double())
    x0_raw = (x - math.sqrt(1 - ab) * out) / math.sqrt(ab)
    clipped = x0_raw.abs() > 1
    assert 0 < int(clipped.sum()) < clipped.numel()
    a = s.step(out, t, x, use_clipped_model_output=True).prev_sample
    b = s.step(out, t, x, use_clipped_model_output=False).prev_sample
    assert torch.equal(a[~clipped], b[~clipped])  # bit for bit where clipping did not move x̂_0
    assert (a[clipped] != b[clipped]).all()


def test_consistent_eps_is_bit_exact_without_clipping():
    """With neither clipping nor thresholding x̂_0 is not moved, so ε̂ is the model's: `True` equals `False`."""
    s = DDIMExtScheduler(clip_sample=False)
    s.set_timesteps(10)
    x, out, z = inputs(3)
    for t in s.timesteps.tolist():
        a = s.step(out, t, x, eta=0.5, use_clipped_model_output=True, variance_noise=z).prev_sample
        b = s.step(out, t, x, eta=0.5, use_clipped_model_output=False, variance_noise=z).prev_sample
        assert torch.equal(a, b)


def test_scheduler_default_stays_diffusers():
    """The scheduler alone keeps diffusers' default (`False`): drop-in equality with DDIMScheduler."""
    ours, theirs = DDIMExtScheduler(), DDIMScheduler()
    for s in (ours, theirs):
        s.set_timesteps(10)
    x, out, _ = (v.float() for v in inputs(4))
    t = ours.timesteps[2]
    torch.testing.assert_close(ours.step(out, int(t), x).prev_sample, theirs.step(out, t, x).prev_sample,
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    raw = ours.step(out, int(t), x, use_clipped_model_output=False).prev_sample
    assert torch.equal(ours.step(out, int(t), x).prev_sample, raw)
