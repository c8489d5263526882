"""Loss math: KL, the discretized decoder, L_simple and the hybrid loss."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_ext import DDPMExtScheduler
from ddpm_ext.losses import (
    diffusion_loss,
    discretized_gaussian_log_likelihood,
    importance_scale,
    min_snr_weight,
    normal_kl,
    timestep_proposal,
    vlb_terms,
)
from ddpm_ext.training.train import training_step


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
    logp = discretized_gaussian_log_likelihood(x, means=torch.full_like(x, mean),
                                               log_scales=torch.full_like(x, log_scale))
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
    weighted = diffusion_loss(scheduler, model_output=output, x_start=x0, noise=noise, x_t=x_t, timesteps=t,
                              snr_gamma=gamma)
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


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_timestep_proposal_is_the_normalised_min_snr_weight(prediction_type):
    scheduler = DDPMExtScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    p = timestep_proposal(scheduler, 5.0)
    weight = min_snr_weight(scheduler, torch.arange(1000), 5.0)
    assert p.shape == (1000,) and p.dtype == torch.float64 and float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    # exact by construction: the same float64 weights summed by the same kernel in the same process
    torch.testing.assert_close(p, weight / weight.sum(), rtol=0, atol=0)
    t = torch.tensor([0, 250, 999])
    torch.testing.assert_close(importance_scale(p, t), 1 / (1000 * p[t]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="snr_gamma"):
        timestep_proposal(scheduler, 0.0)


def test_importance_sampled_training_loss_is_unbiased_with_less_variance():
    # The training step's loss with a zero model: the v-target's mean square is ᾱ_t + (1 − ᾱ_t) mean(x_0²) in
    # expectation over ε, so the min-SNR-5 objective over t ~ U{0..T−1} has a closed form. Both estimators must
    # average to it; the importance-sampled one must scatter less.
    scheduler = DDPMExtScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False)

    class Zero(torch.nn.Module):
        def forward(self, x, t, class_labels=None):
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(16, 1, 4, 4, generator=g) * 2 - 1
    ab = torch.from_numpy(scheduler._alphas_cumprod64)
    weight = min_snr_weight(scheduler, torch.arange(1000), 5.0)
    exact = float((weight * (ab + (1 - ab) * (x0.double() ** 2).mean())).mean())
    proposal = timestep_proposal(scheduler, 5.0)
    draws = {}
    for name, prop in (("uniform", None), ("importance", proposal)):
        gen = torch.Generator().manual_seed(1)
        draws[name] = torch.tensor([float(training_step(Zero(), scheduler, x0, gen, loss_type="simple", snr_gamma=5.0,
                                                        timestep_proposal=prop)) for _ in range(1500)])
    for name, values in draws.items():
        sem = float(values.std()) / len(values) ** 0.5
        assert abs(float(values.mean()) - exact) < 4 * sem, (name, float(values.mean()), exact, sem)
    assert float(draws["importance"].std()) < 0.5 * float(draws["uniform"].std())
