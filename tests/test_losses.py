"""Loss math: KL, the discretized decoder, L_simple and the hybrid loss."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_ext import DDPMExtScheduler
from ddpm_ext.losses import diffusion_loss, discretized_gaussian_log_likelihood, normal_kl, vlb_terms


def test_normal_kl_closed_form():
    m1, m2 = torch.tensor([0.3]), torch.tensor([-0.2])
    v1, v2 = 0.5, 2.0
    kl = normal_kl(mean1=m1, logvar1=torch.tensor([math.log(v1)]), mean2=m2, logvar2=torch.tensor([math.log(v2)]))
    expected = 0.5 * math.log(v2 / v1) + (v1 + 0.25) / (2 * v2) - 0.5
    assert kl.item() == pytest.approx(expected, rel=1e-6)
    zero = normal_kl(mean1=m1, logvar1=torch.zeros(1), mean2=m1, logvar2=torch.zeros(1))
    assert zero.item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("mean, log_scale", [(0.0, math.log(0.1)), (0.9, math.log(0.02)), (-1.3, 0.0)])
def test_discretized_likelihood_is_a_distribution_over_256_values(mean, log_scale):
    x = (torch.arange(256, dtype=torch.float64) / 255 * 2 - 1).float()
    logp = discretized_gaussian_log_likelihood(x, means=torch.full_like(x, mean), log_scales=torch.full_like(x, log_scale))
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=2e-3)  # tanh approximation of Φ


def test_discretized_likelihood_of_a_narrow_gaussian_is_one_bin():
    x = torch.tensor([2 * 100 / 255 - 1])
    logp = discretized_gaussian_log_likelihood(x, means=x.clone(), log_scales=torch.tensor([math.log(1e-4)]))
    assert logp.item() == pytest.approx(0.0, abs=1e-6)


def test_simple_loss_is_the_epsilon_mse():
    s = DDPMExtScheduler()
    g = torch.Generator().manual_seed(0)
    x0, eps, out = (torch.randn(3, 1, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([1, 50, 999])
    xt = s.add_noise(x0, eps, t)
    loss = diffusion_loss(s, model_output=out, x_start=x0, noise=eps, x_t=xt, timesteps=t)
    torch.testing.assert_close(loss, ((out - eps) ** 2).mean(dim=(1, 2, 3)))
    v = DDPMExtScheduler(prediction_type="v_prediction")
    loss_v = diffusion_loss(v, model_output=out, x_start=x0, noise=eps, x_t=xt, timesteps=t)
    torch.testing.assert_close(loss_v, ((out - v.get_velocity(x0, eps, t)) ** 2).mean(dim=(1, 2, 3)))


def test_vlb_terms_zero_for_the_true_posterior_mean_and_variance():
    """With ε̂ = the true ε, and the variance set to β̃ (v = -1 in learned_range), each L_{t-1} is 0."""
    s = DDPMExtScheduler(variance_type="learned_range", clip_sample=False)
    g = torch.Generator().manual_seed(1)
    x0 = (torch.randint(0, 256, (2, 1, 4, 4), generator=g).float() / 255) * 2 - 1
    eps = torch.randn(2, 1, 4, 4, generator=g)
    t = torch.tensor([10, 700])
    xt = s.add_noise(x0, eps, t)
    out = torch.cat([eps, -torch.ones_like(eps)], 1)
    terms = vlb_terms(s, model_output=out, x_start=x0, x_t=xt, timesteps=t)
    torch.testing.assert_close(terms, torch.zeros(2), atol=2e-4, rtol=0)


def test_hybrid_loss():
    s = DDPMExtScheduler(variance_type="learned_range")
    g = torch.Generator().manual_seed(2)
    x0 = (torch.randint(0, 256, (2, 1, 4, 4), generator=g).float() / 255) * 2 - 1
    eps = torch.randn(2, 1, 4, 4, generator=g)
    t = torch.tensor([0, 500])
    xt = s.add_noise(x0, eps, t)
    out = torch.randn(2, 2, 4, 4, generator=g, requires_grad=True)
    loss = diffusion_loss(s, model_output=out, x_start=x0, noise=eps, x_t=xt, timesteps=t, loss_type="hybrid")
    simple = ((out[:, :1] - eps) ** 2).mean(dim=(1, 2, 3))
    vlb = vlb_terms(s, model_output=out.detach(), x_start=x0, x_t=xt, timesteps=t)
    torch.testing.assert_close(loss, simple + 0.001 * 1000 * vlb, rtol=1e-5, atol=1e-6)
    # the mean channels learn only from L_simple
    loss.sum().backward()
    torch.testing.assert_close(out.grad[:, :1], 2 * (out[:, :1] - eps).detach() / 16)


def test_loss_bad_input():
    s = DDPMExtScheduler()
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"`loss_type` must be one of \['simple', 'hybrid'\], got 'kl'"):
        diffusion_loss(s, model_output=x, x_start=x, noise=x, x_t=x, timesteps=torch.tensor([0]), loss_type="kl")
    with pytest.raises(ValueError, match=r"`loss_type`='hybrid' needs a model with 2 x C output channels"):
        diffusion_loss(s, model_output=x, x_start=x, noise=x, x_t=x, timesteps=torch.tensor([0]), loss_type="hybrid")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_loss_is_min_snr_times_x0_error(prediction_type):
    # Hang et al. 2023: whatever the model predicts, the weighted loss is min(SNR, γ) ‖x_0 − x̂_0‖² per image.
    scheduler = DDPMExtScheduler(beta_schedule="cosine", prediction_type=prediction_type, clip_sample=False)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 100, 400, 800, 999])
    x_t = scheduler.add_noise(x0, noise, t)
    output = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    gamma = 5.0
    weighted = diffusion_loss(scheduler, model_output=output, x_start=x0, noise=noise, x_t=x_t, timesteps=t, snr_gamma=gamma)
    ab = torch.from_numpy(scheduler._alphas_cumprod64)[t].view(-1, 1, 1, 1)  # the float64 ᾱ add_noise uses
    if prediction_type == "epsilon":
        x0_hat = (x_t - (1 - ab).sqrt() * output) / ab.sqrt()
    elif prediction_type == "v_prediction":
        x0_hat = ab.sqrt() * x_t - (1 - ab).sqrt() * output
    else:
        x0_hat = output
    snr = (ab / (1 - ab)).flatten()
    expected = snr.clamp(max=gamma) * ((x0 - x0_hat) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(weighted.double(), expected, rtol=1e-5, atol=1e-7)
    unweighted = diffusion_loss(scheduler, model_output=output, x_start=x0, noise=noise, x_t=x_t, timesteps=t)
    assert not torch.allclose(weighted, unweighted)  # γ = 5 clips the small-t (high-SNR) terms


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), "5"])
def test_min_snr_gamma_bad_values(bad):
    scheduler = DDPMExtScheduler()
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="snr_gamma"):
        diffusion_loss(scheduler, model_output=x, x_start=x, noise=x, x_t=x, timesteps=torch.tensor([5]), snr_gamma=bad)
