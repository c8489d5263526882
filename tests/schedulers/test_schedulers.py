"""Scheduler math against the lecture's closed forms, against diffusers, and every bad option."""

from __future__ import annotations

import contextlib
import logging
import math

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ddpm_ext import DDIMExtScheduler, DDPMExtScheduler
from ddpm_ext.schedulers import COMPATIBLE_DIFFUSERS_SCHEDULERS

SCHEDULERS = [DDPMExtScheduler, DDIMExtScheduler]


def fake_eps(x: torch.Tensor, t) -> torch.Tensor:
    """A deterministic stand-in for ε_θ(x_t, t) that depends on both arguments.

    Its slope in x is small: a steep one makes the 20-step loop chaotic, and float32 rounding
    differences between two correct implementations then grow past any fixed tolerance.
    """
    return 0.5 * torch.sin(x + float(t) / 100.0)


def sample_loop(scheduler, steps=20, shape=(2, 3, 8, 8), seed=0, **step_kwargs):
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    for t in scheduler.timesteps:
        x = scheduler.step(fake_eps(x, t), t, x, generator=g, **step_kwargs).prev_sample
    return x


# --------------------------------------------------------------------------------------------------
# β schedules against their definitions (DESIGN.md §2)
# --------------------------------------------------------------------------------------------------
class TestSchedules:
    T = 1000

    def test_linear(self):
        s = DDPMExtScheduler(beta_schedule="linear")
        expected = [1e-4 + (0.02 - 1e-4) * i / (self.T - 1) for i in range(self.T)]
        np.testing.assert_allclose(s._betas64, expected, rtol=0, atol=1e-15)
        assert s.betas.dtype == torch.float32

    def test_quadratic(self):
        s = DDPMExtScheduler(beta_schedule="quadratic", beta_start=1e-4, beta_end=0.02)
        a, b = math.sqrt(1e-4), math.sqrt(0.02)
        expected = [(a + (b - a) * i / (self.T - 1)) ** 2 for i in range(self.T)]
        np.testing.assert_allclose(s._betas64, expected, rtol=1e-13)
        assert s.config.beta_schedule == "scaled_linear"

    @pytest.mark.parametrize("s_off, cap", [(0.008, 0.999), (0.02, 0.5)])
    def test_cosine(self, s_off, cap):
        s = DDPMExtScheduler(beta_schedule="cosine", cosine_s=s_off, max_beta=cap)

        def f(t):
            return math.cos(((t / self.T) + s_off) / (1 + s_off) * math.pi / 2) ** 2

        expected = [min(1 - f(t + 1) / f(t), cap) for t in range(self.T)]
        np.testing.assert_allclose(s._betas64, expected, rtol=1e-12)
        assert s._betas64.max() <= cap
        assert s.config.beta_schedule == "squaredcos_cap_v2"

    def test_sigmoid(self):
        s = DDPMExtScheduler(beta_schedule="sigmoid")
        x = np.linspace(-6, 6, self.T)
        np.testing.assert_allclose(s._betas64, 1 / (1 + np.exp(-x)) * (0.02 - 1e-4) + 1e-4, rtol=1e-13)

    def test_trained_betas(self):
        betas = np.linspace(0.001, 0.05, 10)
        s = DDPMExtScheduler(num_train_timesteps=10, trained_betas=betas)
        np.testing.assert_array_equal(s._betas64, betas)
        assert s.config.trained_betas == pytest.approx(betas.tolist())

    @pytest.mark.parametrize("schedule", ["linear", "quadratic", "cosine", "sigmoid"])
    def test_alphas_cumprod_is_the_product(self, schedule):
        s = DDPMExtScheduler(beta_schedule=schedule)
        prod = 1.0
        for t in range(0, self.T, 97):
            prod = float(np.prod(1 - s._betas64[: t + 1]))
            assert s._alphas_cumprod64[t] == pytest.approx(prod, rel=1e-12)
            assert float(s.alphas_cumprod[t]) == pytest.approx(prod, rel=1e-6)

    @pytest.mark.parametrize(
        "ours, theirs",
        [("linear", "linear"), ("quadratic", "scaled_linear"), ("cosine", "squaredcos_cap_v2"), ("sigmoid", "sigmoid")],
    )
    def test_same_betas_as_diffusers(self, ours, theirs):
        np.testing.assert_allclose(
            DDPMExtScheduler(beta_schedule=ours).betas, DDPMScheduler(beta_schedule=theirs).betas, rtol=1e-5, atol=1e-9
        )

    def test_zero_terminal_snr(self):
        s = DDPMExtScheduler(rescale_betas_zero_snr=True)
        assert s._alphas_cumprod64[-1] == pytest.approx(0.0, abs=1e-12)
        d = DDPMScheduler(rescale_betas_zero_snr=True)
        np.testing.assert_allclose(s.alphas_cumprod, d.alphas_cumprod, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Forward process
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", SCHEDULERS)
def test_add_noise_is_q_xt_given_x0(cls):
    s = cls(beta_schedule="cosine")
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    xt = s.add_noise(x0, eps, t)
    for i, ti in enumerate(t.tolist()):
        ab = float(np.prod(1 - s._betas64[: ti + 1]))
        torch.testing.assert_close(xt[i], math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * eps[i], rtol=1e-5, atol=1e-6)
    v = s.get_velocity(x0, eps, t)
    ab = torch.from_numpy(s._alphas_cumprod64[t.numpy()]).reshape(-1, 1, 1, 1)  # float64 reference
    torch.testing.assert_close(v, (ab.sqrt() * eps - (1 - ab).sqrt() * x0).float(), rtol=1e-5, atol=1e-6)


def test_add_noise_matches_diffusers():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(8, 1, 4, 4, generator=g), torch.randn(8, 1, 4, 4, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    torch.testing.assert_close(
        DDPMExtScheduler().add_noise(x0, eps, t), DDPMScheduler().add_noise(x0, eps, t), rtol=1e-5, atol=1e-6
    )


def test_forward_marginal_statistics():
    """x_t of a constant x_0 has mean √ᾱ_t x_0 and variance 1 - ᾱ_t over a large tensor."""
    s = DDPMExtScheduler()
    g = torch.Generator().manual_seed(2)
    x0 = torch.full((1, 1, 400, 400), 0.7)
    t = 300
    xt = s.add_noise(x0, torch.randn(x0.shape, generator=g), torch.tensor([t]))
    ab = s._alphas_cumprod64[t]
    assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=0.01)
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.02)


# --------------------------------------------------------------------------------------------------
# The reverse step against Algorithm 2
# --------------------------------------------------------------------------------------------------
class TestDDPMStep:
    def setup_method(self):
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(2, 3, 64, 64, generator=g)
        self.eps = torch.randn(2, 3, 64, 64, generator=g)

    def algorithm2_mean(self, s, t):
        beta, ab = s._betas64[t], s._alphas_cumprod64[t]
        return (self.x - beta / math.sqrt(1 - ab) * self.eps) / math.sqrt(1 - beta)

    @pytest.mark.parametrize("t", [999, 500, 1])
    @pytest.mark.parametrize("schedule", ["linear", "cosine"])
    def test_mean_is_algorithm_2(self, t, schedule):
        s = DDPMExtScheduler(beta_schedule=schedule, clip_sample=False)
        out = s.step(self.eps, t, self.x, stochastic=False)
        torch.testing.assert_close(out.prev_sample, self.algorithm2_mean(s, t), rtol=1e-4, atol=1e-4)
        ab = s._alphas_cumprod64[t]
        torch.testing.assert_close(
            out.pred_original_sample, (self.x - math.sqrt(1 - ab) * self.eps) / math.sqrt(ab), rtol=1e-4, atol=1e-4
        )

    @pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
    def test_standardized_residual(self, variance_type):
        s = DDPMExtScheduler(variance_type=variance_type, clip_sample=False)
        t = 400
        beta, ab, ab_prev = s._betas64[t], s._alphas_cumprod64[t], s._alphas_cumprod64[t - 1]
        var = beta if variance_type == "fixed_large" else (1 - ab_prev) / (1 - ab) * beta
        g = torch.Generator().manual_seed(4)
        x = torch.randn(4, 3, 128, 128, generator=g)
        eps = torch.randn(4, 3, 128, 128, generator=g)
        mean = s.step(eps, t, x, stochastic=False).prev_sample
        prev = s.step(eps, t, x, generator=g).prev_sample
        z = (prev - mean) / math.sqrt(var)
        assert abs(z.mean().item()) < 0.01
        assert z.std().item() == pytest.approx(1.0, abs=0.01)

    def test_variance_noise_is_sigma_z(self):
        s = DDPMExtScheduler(variance_type="fixed_large", clip_sample=False)
        z = torch.ones_like(self.x)
        prev = s.step(self.eps, 10, self.x, variance_noise=z).prev_sample
        torch.testing.assert_close(prev, self.algorithm2_mean(s, 10) + math.sqrt(s._betas64[10]), rtol=1e-4, atol=1e-4)

    @pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
    def test_no_noise_at_the_last_step(self, variance_type):
        s = DDPMExtScheduler(variance_type=variance_type)
        out = self.eps if variance_type != "learned_range" else torch.cat([self.eps, self.eps.clamp(-1, 1)], 1)
        a = s.step(out, 0, self.x, generator=torch.Generator().manual_seed(0)).prev_sample
        b = s.step(out, 0, self.x, generator=torch.Generator().manual_seed(1)).prev_sample
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, s.step(out, 0, self.x).pred_original_sample, rtol=1e-5, atol=1e-5)

    def test_without_z_is_deterministic(self):
        s = DDPMExtScheduler()
        a = sample_loop(s, seed=0, stochastic=False)
        b = sample_loop(DDPMExtScheduler(), seed=0, stochastic=False)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not torch.allclose(a, sample_loop(DDPMExtScheduler(), seed=0))

    def test_learned_range_interpolates_logs(self):
        s = DDPMExtScheduler(variance_type="learned_range", clip_sample=False)
        t = 300
        beta, ab, ab_prev = s._betas64[t], s._alphas_cumprod64[t], s._alphas_cumprod64[t - 1]
        small = (1 - ab_prev) / (1 - ab) * beta
        for v, var in [(-1.0, small), (1.0, beta), (0.0, math.sqrt(small * beta))]:
            out = torch.cat([self.eps, torch.full_like(self.eps, v)], 1)
            prev = s.step(out, t, self.x, variance_noise=torch.ones_like(self.x)).prev_sample
            mean = s.step(out, t, self.x, stochastic=False).prev_sample
            torch.testing.assert_close(prev - mean, torch.full_like(mean, math.sqrt(var)), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Respacing: the previous timestep is the next one used, the variance comes from the kept ᾱ
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 20, 1000])
def test_respaced_steps(spacing, steps):
    s = DDPMExtScheduler(timestep_spacing=spacing, variance_type="fixed_small", clip_sample=False)
    s.set_timesteps(steps)
    grid = s.timesteps.tolist()
    assert len(grid) == steps and len(set(grid)) == steps and grid == sorted(grid, reverse=True)
    assert all(0 <= t < 1000 for t in grid)
    g = torch.Generator().manual_seed(5)
    x, eps = torch.randn(1, 1, 200, 200, generator=g), torch.randn(1, 1, 200, 200, generator=g)
    for i, t in enumerate(grid[: min(steps, 3)]):
        prev = grid[i + 1] if i + 1 < steps else -1
        assert s.previous_timestep(t) == prev
        ab = s._alphas_cumprod64[t]
        ab_prev = s._alphas_cumprod64[prev] if prev >= 0 else 1.0
        beta = 1 - ab / ab_prev
        # mean: μ̃ with x̂_0 from ε, i.e. Algorithm 2 with the respaced β'
        mean = s.step(eps, t, x, stochastic=False).prev_sample
        torch.testing.assert_close(mean, (x - beta / math.sqrt(1 - ab) * eps) / math.sqrt(1 - beta),
                                   rtol=1e-4, atol=1e-4)
        if prev >= 0:
            var = (1 - ab_prev) / (1 - ab) * beta
            z = s.step(eps, t, x, variance_noise=torch.ones_like(x)).prev_sample - mean
            assert z.mean().item() == pytest.approx(math.sqrt(var), rel=1e-4)


def test_custom_timesteps():
    s = DDPMExtScheduler()
    s.set_timesteps(timesteps=[900, 450, 100, 3])
    assert s.timesteps.tolist() == [900, 450, 100, 3]
    assert [s.previous_timestep(t) for t in (900, 450, 100, 3)] == [450, 100, 3, -1]


# --------------------------------------------------------------------------------------------------
# Equality with diffusers where diffusers computes the same thing
# --------------------------------------------------------------------------------------------------
EXPRESSIBLE = [
    {},
    {"variance_type": "fixed_large"},
    {"variance_type": "fixed_small_log"},
    {"beta_schedule": "scaled_linear", "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "sigmoid"},
    {"prediction_type": "v_prediction", "clip_sample": False},
    {"prediction_type": "sample"},
    {"thresholding": True, "sample_max_value": 1.5},
    {"clip_sample_range": 0.5},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "linspace"},
    {"steps_offset": 1, "variance_type": "fixed_small"},
]


@pytest.mark.parametrize("kwargs", EXPRESSIBLE, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
def test_ddpm_sampling_equals_diffusers(kwargs):
    ours = sample_loop(DDPMExtScheduler(**kwargs))
    theirs = sample_loop(DDPMScheduler(**kwargs))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_ddpm_learned_range_equals_diffusers():
    def loop(s):
        s.set_timesteps(20)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, 8, 8, generator=g)
        for t in s.timesteps:
            out = torch.cat([fake_eps(x, t), torch.tanh(x)], 1)
            x = s.step(out, t, x, generator=g).prev_sample
        return x

    kw = {"variance_type": "learned_range", "beta_schedule": "squaredcos_cap_v2"}
    torch.testing.assert_close(loop(DDPMExtScheduler(**kw)), loop(DDPMScheduler(**kw)), rtol=0, atol=1e-4)


def test_full_chain_equals_diffusers():
    torch.testing.assert_close(
        sample_loop(DDPMExtScheduler(), steps=1000, shape=(1, 1, 4, 4)),
        sample_loop(DDPMScheduler(), steps=1000, shape=(1, 1, 4, 4)),
        rtol=0,
        atol=1e-4,
    )


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("kwargs", [{}, {"beta_schedule": "squaredcos_cap_v2"}, {"set_alpha_to_one": False}])
def test_ddim_equals_diffusers(eta, kwargs):
    # diffusers' DDIMScheduler steps to t - T // S, which is the next kept timestep only for "leading"
    ours = sample_loop(DDIMExtScheduler(**kwargs), eta=eta)
    theirs = sample_loop(DDIMScheduler(**kwargs), eta=eta)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_ddim_eta_one_is_ddpm_with_posterior_variance():
    g = torch.Generator().manual_seed(6)
    x, eps, z = (torch.randn(2, 3, 16, 16, generator=g) for _ in range(3))
    ddpm = DDPMExtScheduler(variance_type="fixed_small", clip_sample=False)
    ddim = DDIMExtScheduler.from_config(ddpm.config)
    for s in (ddpm, ddim):
        s.set_timesteps(25)
    for t in ddpm.timesteps[:-1]:
        a = ddpm.step(eps, t, x, variance_noise=z).prev_sample
        b = ddim.step(eps, t, x, eta=1.0, variance_noise=z).prev_sample
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_ddim_eta_zero_is_deterministic_and_inverts_add_noise():
    """With ε̂ = the true noise, one DDIM η=0 step from x_t lands exactly on q's x_prev of the same ε."""
    s = DDIMExtScheduler(clip_sample=False)
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(7)
    x0, eps = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    t, prev = int(s.timesteps[2]), int(s.timesteps[3])
    xt = s.add_noise(x0, eps, torch.tensor([t]))
    out = s.step(eps, t, xt, eta=0.0)
    torch.testing.assert_close(out.prev_sample, s.add_noise(x0, eps, torch.tensor([prev])), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.pred_original_sample, x0, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Configs: save / load, from_config both ways
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"beta_schedule": "cosine", "cosine_s": 0.01, "max_beta": 0.99,
                                          "prediction_type": "v_prediction", "timestep_spacing": "trailing"}])
@pytest.mark.parametrize("cls", SCHEDULERS)
def test_save_load_round_trip(cls, options, tmp_path):
    # the whole config, private keys included, as diffusers' own `test_from_pretrained` compares it
    s = cls(**options)
    s.save_pretrained(tmp_path)
    r = cls.from_pretrained(tmp_path)
    original = dict(s.config)
    del original["_use_default_values"]
    assert dict(r.config) == original
    torch.testing.assert_close(r.alphas_cumprod, s.alphas_cumprod, rtol=0, atol=0)


@contextlib.contextmanager
def diffusers_warnings():
    """The messages diffusers logs at WARNING or above inside the block (its logger does not propagate)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("options", [{}, {"beta_schedule": "cosine"}, {"beta_schedule": "cosine", "cosine_s": 0.02}])
@pytest.mark.parametrize("cls", SCHEDULERS)
def test_swaps_print_no_warning_and_come_back(cls, options, tmp_path):
    # a config read from disk names every option (none is "at its default"), the case where diffusers warned
    cls(**options).save_pretrained(tmp_path)
    ours = cls.from_pretrained(tmp_path)
    with diffusers_warnings() as records:
        for name in COMPATIBLE_DIFFUSERS_SCHEDULERS:
            theirs = getattr(diffusers, name).from_config(ours.config)
            torch.testing.assert_close(theirs.alphas_cumprod, ours.alphas_cumprod, rtol=1e-5, atol=1e-6)
            back = cls.from_config(theirs.config)  # ddpm_ext's options ride along as a hidden private key
            assert back.config._ddpm_ext_config == ours.config._ddpm_ext_config
            np.testing.assert_array_equal(back._betas64, ours._betas64)
    assert [r.getMessage() for r in records] == []


@pytest.mark.parametrize("ours, theirs", [(DDPMExtScheduler, DDPMScheduler), (DDIMExtScheduler, DDIMScheduler)])
def test_from_config_both_ways_with_diffusers(ours, theirs):
    a = ours(beta_schedule="quadratic", beta_end=0.012, prediction_type="v_prediction", timestep_spacing="trailing")
    d = theirs.from_config(a.config)
    assert d.config.beta_schedule == "scaled_linear"
    torch.testing.assert_close(d.alphas_cumprod, a.alphas_cumprod, rtol=1e-5, atol=1e-7)
    back = ours.from_config(d.config)
    for key in ("beta_schedule", "beta_end", "prediction_type", "timestep_spacing", "num_train_timesteps"):
        assert back.config[key] == a.config[key]
    # and from a plain diffusers config
    native = ours.from_config(theirs(beta_schedule="squaredcos_cap_v2").config)
    torch.testing.assert_close(native.alphas_cumprod, theirs(beta_schedule="squaredcos_cap_v2").alphas_cumprod,
                               rtol=1e-5, atol=1e-7)


def test_ddpm_ddim_swap_keeps_every_setting():
    a = DDPMExtScheduler(beta_schedule="cosine", variance_type="learned_range", cosine_s=0.02, clip_sample=False)
    ddim = DDIMExtScheduler.from_config(a.config)
    back = DDPMExtScheduler.from_config(ddim.config)
    assert back.config.variance_type == "learned_range" and back.config._ddpm_ext_config["cosine_s"] == 0.02
    assert not back.config.clip_sample
    np.testing.assert_array_equal(back._betas64, a._betas64)
    assert len(a) == len(ddim) == 1000


# --------------------------------------------------------------------------------------------------
# Distributions for the likelihood and the losses
# --------------------------------------------------------------------------------------------------
def test_posterior_mean_variance_closed_form():
    s = DDPMExtScheduler(beta_schedule="cosine")
    g = torch.Generator().manual_seed(8)
    x0, xt = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    t = torch.tensor([0, 1, 600])
    mean, var, log_var = s.q_posterior_mean_variance(x_start=x0, x_t=xt, timesteps=t)
    b, ab = s._betas64, s._alphas_cumprod64
    tilde1 = (1 - ab[0]) / (1 - ab[1]) * b[1]
    for i, ti in enumerate(t.tolist()):
        ab_prev = ab[ti - 1] if ti > 0 else 1.0
        mu = (math.sqrt(ab_prev) * b[ti] / (1 - ab[ti]) * x0[i]
              + math.sqrt(1 - b[ti]) * (1 - ab_prev) / (1 - ab[ti]) * xt[i])
        torch.testing.assert_close(mean[i], mu, rtol=1e-5, atol=1e-6)
        tilde = (1 - ab_prev) / (1 - ab[ti]) * b[ti]
        assert var[i].item() == pytest.approx(tilde, rel=1e-5, abs=1e-12)
        assert log_var[i].item() == pytest.approx(math.log(tilde if ti > 0 else tilde1), rel=1e-5)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_model_log_variance_clipped_at_first_step(variance_type):
    s = DDPMExtScheduler(variance_type=variance_type)
    x = torch.zeros(3, 1, 2, 2)
    out = s.p_mean_variance(model_output=torch.zeros_like(x), x_t=x, timesteps=torch.tensor([0, 1, 999]))
    b, ab = s._betas64, s._alphas_cumprod64
    tilde1 = (1 - ab[0]) / (1 - ab[1]) * b[1]
    if variance_type == "fixed_small":
        expected = [tilde1, tilde1, (1 - ab[998]) / (1 - ab[999]) * b[999]]
    else:
        expected = [tilde1, b[1], b[999]]
    np.testing.assert_allclose(out["log_variance"][:, 0, 0, 0].numpy(), np.log(expected), rtol=1e-5)


def test_p_mean_matches_step_mean():
    s = DDPMExtScheduler(clip_sample=False)
    g = torch.Generator().manual_seed(9)
    x, eps = torch.randn(1, 3, 8, 8, generator=g), torch.randn(1, 3, 8, 8, generator=g)
    out = s.p_mean_variance(model_output=eps, x_t=x, timesteps=torch.tensor([321]))
    torch.testing.assert_close(out["mean"], s.step(eps, 321, x, stochastic=False).prev_sample, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["pred_epsilon"], eps, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Bad input: a clear ValueError naming the argument, the value and what is allowed
# --------------------------------------------------------------------------------------------------
BAD_OPTIONS = [
    ({"beta_schedule": "exponential"}, r"`beta_schedule` must be one of .*'cosine'.*got 'exponential'"),
    ({"variance_type": "other"}, r"`variance_type` must be one of .*'fixed_large'.*got 'other'"),
    ({"prediction_type": "noise"}, r"`prediction_type` must be one of .*'epsilon'.*got 'noise'"),
    ({"timestep_spacing": "uniform"}, r"`timestep_spacing` must be one of .*'leading'.*got 'uniform'"),
    ({"num_train_timesteps": 0}, r"`num_train_timesteps` must be an integer >= 1, got 0"),
    ({"num_train_timesteps": 2.5}, r"`num_train_timesteps` must be an integer >= 1, got 2.5"),
    ({"beta_start": 0.0}, r"`beta_start` must be in the open interval \(0, 1\), got 0.0"),
    ({"beta_end": 1.5}, r"`beta_end` must be in the open interval \(0, 1\), got 1.5"),
    ({"beta_start": 0.03, "beta_end": 0.02}, r"`beta_start` \(0.03\) must not exceed `beta_end` \(0.02\)"),
    ({"beta_schedule": "cosine", "max_beta": 1.0}, r"`max_beta` must be in the open interval \(0, 1\), got 1.0"),
    ({"beta_schedule": "cosine", "cosine_s": -0.1}, r"`cosine_s` must be in \[0, 1\), got -0.1"),
    ({"num_train_timesteps": 3, "trained_betas": [0.1, 0.2]},
     r"`trained_betas` must have `num_train_timesteps`=3 values, got 2"),
    ({"num_train_timesteps": 2, "trained_betas": [0.1, 1.0]},
     r"`trained_betas` must lie in the open interval \(0, 1\); trained_betas\[1\] = 1.0"),
    ({"num_train_timesteps": 2, "trained_betas": [0.0, 0.1]}, r"trained_betas\[0\] = 0.0"),
    ({"clip_sample_range": 0}, r"`clip_sample_range` must be a number > 0, got 0"),
    ({"dynamic_thresholding_ratio": 1.5}, r"`dynamic_thresholding_ratio` must be a number in \(0, 1.0\], got 1.5"),
    ({"sample_max_value": -1}, r"`sample_max_value` must be a number > 0, got -1"),
    ({"steps_offset": -1}, r"`steps_offset` must be an integer >= 0, got -1"),
]


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("kwargs, message", BAD_OPTIONS, ids=[str(k) for k, _ in BAD_OPTIONS])
def test_bad_option_raises(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_inference_steps": 0}, r"`num_inference_steps` must be an integer in \[1, 1000\], got 0"),
        ({"num_inference_steps": -5}, r"`num_inference_steps` must be an integer in \[1, 1000\], got -5"),
        ({"num_inference_steps": 1001}, r"`num_inference_steps` must be an integer in \[1, 1000\], got 1001"),
        ({"num_inference_steps": 2.5}, r"`num_inference_steps` must be an integer in \[1, 1000\], got 2.5"),
        ({}, r"exactly one of `num_inference_steps` or `timesteps`"),
        ({"num_inference_steps": 10, "timesteps": [5, 1]}, r"exactly one of"),
        ({"timesteps": [5, 10]}, r"`timesteps` must be strictly descending, got \[5, 10\]"),
        ({"timesteps": [1000, 10]}, r"`timesteps` must lie in \[0, 1000\)"),
        ({"timesteps": []}, r"`timesteps` must be a non-empty list"),
    ],
)
def test_bad_set_timesteps(cls, kwargs, message):
    s = cls()
    with pytest.raises(ValueError, match=message):
        s.set_timesteps(**kwargs)
    assert len(s.timesteps) == 1000  # the scheduler is left as it was


def test_leading_offset_out_of_range():
    with pytest.raises(ValueError, match=r"`timestep_spacing`='leading' with `steps_offset`=1 gives invalid timesteps"):
        DDPMExtScheduler(steps_offset=1).set_timesteps(1000)


def test_step_with_unknown_timestep_and_bad_channels():
    s = DDPMExtScheduler()
    s.set_timesteps(10)
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"`timestep` 5 is not one of the scheduler's timesteps"):
        s.step(x, 5, x)
    with pytest.raises(ValueError, match=r"has 6 channels but `sample` has 3.*learned_range"):
        s.step(torch.zeros(1, 6, 4, 4), s.timesteps[0], x)
    lr = DDPMExtScheduler(variance_type="learned_range")
    with pytest.raises(ValueError,
                       match=r"`variance_type`='learned_range' needs a model output with 2 x 3 = 6 channels"):
        lr.step(x, 999, x)


def test_bad_eta():
    s = DDIMExtScheduler()
    s.set_timesteps(5)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"`eta` must be a number in \[0, 1\], got 1.5"):
        s.step(x, s.timesteps[0], x, eta=1.5)
