"""bits/dim: every term against an independent float64 closed form, and the contract of the API.

The closed forms use a model that returns the TRUE noise of a known x_0: then x̂_0 = x_0, the model mean equals
the posterior mean μ̃_t(x_t, x_0) for every draw of x_t, and every term of the bound is deterministic:

    L_{t-1} (code t ≥ 1) = ½ (log σ_t² − log β̃_t + β̃_t / σ_t² − 1) / ln 2
    L_0                  = −mean_pixels log P(bin of x_0 | N(x_0, σ_0²)), bins of width 2/255 open at ±1
    L_T                  = mean_pixels ½ (−1 − log(1 − ᾱ_T) + (1 − ᾱ_T) + ᾱ_T x_0²) / ln 2

with σ_0² the clipped first-step variance β̃ of code step 1 (improved DDPM) for both fixed choices.
The schedules and coefficients here are recomputed with NumPy from the lecture's formulas, not taken from ddpm_ext.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from ddpm_ext import (
    BitsPerDimOutput,
    DDIMExtScheduler,
    DDPMExtPipeline,
    DDPMExtScheduler,
    bits_per_dim,
    bits_per_dim_variances,
    build_unet,
)

LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------------
# Independent float64 reference
# --------------------------------------------------------------------------------------------------
def reference_betas(schedule: str, T: int, beta_end: float) -> np.ndarray:
    if schedule == "linear":
        return np.linspace(1e-4, beta_end, T)
    s = 0.008  # cosine (improved DDPM eq. 17)
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    return np.minimum(1 - f[1:] / f[:-1], 0.999)


def phi_exact(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def phi_tanh(x: np.ndarray) -> np.ndarray:  # the approximation DDPM's code uses
    return 0.5 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def decoder_bpd(x0: np.ndarray, var: float, phi) -> float:
    """−log P(bin of x_0) under N(x_0, var) per dim, in bits: the bin is [x − 1/255, x + 1/255], open at ±1."""
    half = (1 / 255) / math.sqrt(var)
    upper = np.where(x0 > 0.999, 1.0, phi(np.full_like(x0, half)))
    lower = np.where(x0 < -0.999, 0.0, phi(np.full_like(x0, -half)))
    return float(-np.mean(np.log(upper - lower)) / LN2)


def reference_bound(x0: np.ndarray, betas: np.ndarray, log_var) -> dict[str, np.ndarray]:
    """Terms of the bound when the model mean is the posterior mean; `log_var(t)` gives log σ_t²."""
    ab = np.cumprod(1 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    post_var = (1 - ab_prev) / (1 - ab) * betas
    T = len(betas)
    terms = np.zeros(T)
    for t in range(1, T):
        lv = log_var(t)
        terms[t] = 0.5 * (lv - np.log(post_var[t]) + post_var[t] / np.exp(lv) - 1) / LN2
    var0 = float(np.exp(log_var(0)))
    terms[0] = decoder_bpd(x0, var0, phi_tanh)
    prior = float(np.mean(0.5 * (-1 - np.log(1 - ab[-1]) + (1 - ab[-1]) + ab[-1] * x0**2)) / LN2)
    return {"terms": terms, "prior": prior, "decoder_exact": decoder_bpd(x0, var0, phi_exact), "post_var": post_var}


class TrueNoiseModel:
    """Returns ε = (x_t − √ᾱ_t x_0) / √(1 − ᾱ_t) for a known x_0 (and constant v channels when `v` is set)."""

    def __init__(self, x0: torch.Tensor, betas: np.ndarray, v: float | None = None):
        self.x0 = x0.double()
        self.ab = torch.from_numpy(np.cumprod(1 - betas))
        self.v = v
        self.calls = 0

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor) -> SimpleNamespace:
        self.calls += 1
        ab = self.ab[timestep.long()].reshape(-1, 1, 1, 1)
        eps = (sample.double() - ab.sqrt() * self.x0) / (1 - ab).sqrt()
        out = eps.float()
        if self.v is not None:
            out = torch.cat([out, torch.full_like(out, self.v)], dim=1)
        return SimpleNamespace(sample=out)


def grid_image(seed: int, shape=(1, 2, 4, 4)) -> torch.Tensor:
    u = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))
    u.view(-1)[0], u.view(-1)[1] = 0, 255  # both open bins occur
    return u / 127.5 - 1


CASES = [("linear", 20, 0.2), ("cosine", 30, None)]


@pytest.mark.parametrize("schedule,T,beta_end", CASES)
def test_fixed_variances_match_closed_form(schedule, T, beta_end):
    x0 = grid_image(1)
    betas = reference_betas(schedule, T, beta_end or 0.02)
    kwargs = {"beta_end": beta_end} if beta_end else {}
    scheduler = DDPMExtScheduler(num_train_timesteps=T, beta_schedule=schedule, **kwargs)
    out = bits_per_dim_variances(TrueNoiseModel(x0, betas), scheduler, x0, generator=torch.manual_seed(0))
    x0_np = x0.double().numpy()
    post = reference_bound(x0_np, betas, lambda t: 0.0)["post_var"]
    first = np.log(post[1])  # clipped first-step variance, used by both fixed choices
    refs = {
        "fixed_small": reference_bound(x0_np, betas, lambda t: first if t == 0 else np.log(post[t])),
        "fixed_large": reference_bound(x0_np, betas, lambda t: first if t == 0 else np.log(betas[t])),
    }
    for name, ref in refs.items():
        got = out[name]
        assert isinstance(got, BitsPerDimOutput)
        assert got.terms.shape == (1, T) and got.total.shape == got.prior.shape == got.decoder.shape == (1,)
        np.testing.assert_allclose(got.terms[0, 1:].numpy(), ref["terms"][1:], rtol=1e-4, atol=2e-6)
        np.testing.assert_allclose(got.prior.numpy(), [ref["prior"]], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got.decoder.numpy(), [ref["terms"][0]], rtol=1e-5)
        # the tanh form of Φ is within 1e-3 of the exact discretized Gaussian
        np.testing.assert_allclose(got.decoder.numpy(), [ref["decoder_exact"]], rtol=1e-3)
        torch.testing.assert_close(got.decoder, got.terms[:, 0])
        torch.testing.assert_close(got.total, got.prior + got.terms.sum(1))
    # σ² = β̃: every KL vanishes; σ² = β: every KL is positive
    assert out["fixed_small"].terms[0, 1:].abs().max() < 2e-6
    assert (out["fixed_large"].terms[0, 1:] > 0).all()
    assert out["fixed_large"].total.item() > out["fixed_small"].total.item()


def test_learned_range_matches_closed_form():
    schedule, T, beta_end = CASES[0]
    x0 = grid_image(2)
    betas = reference_betas(schedule, T, beta_end)
    v = 0.3
    frac = (v + 1) / 2
    post = reference_bound(x0.double().numpy(), betas, lambda t: 0.0)["post_var"]
    clipped = np.concatenate([[post[1]], post[1:]])
    ref = reference_bound(x0.double().numpy(), betas,
                          lambda t: frac * np.log(betas[t]) + (1 - frac) * np.log(clipped[t]))
    scheduler = DDPMExtScheduler(num_train_timesteps=T, beta_end=beta_end, variance_type="learned_range")
    model = TrueNoiseModel(x0, betas, v=v)
    got = bits_per_dim(model, scheduler, x0, generator=torch.manual_seed(0))
    np.testing.assert_allclose(got.terms[0].numpy(), ref["terms"], rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(got.prior.numpy(), [ref["prior"]], rtol=1e-5, atol=1e-7)
    # the same 2C model under a fixed variance uses its mean channels only
    small = bits_per_dim(model, scheduler, x0, generator=torch.manual_seed(0), variance_type="fixed_small")
    assert small.terms[0, 1:].abs().max() < 2e-6


# --------------------------------------------------------------------------------------------------
# Contract with a real (tiny, untrained) UNet
# --------------------------------------------------------------------------------------------------
T_SMALL = 10


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    torch.manual_seed(0)
    return build_unet("tiny").eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(3)) / 127.5 - 1


def scheduler(**kwargs) -> DDPMExtScheduler:
    return DDPMExtScheduler(num_train_timesteps=T_SMALL, beta_schedule="cosine", **kwargs)


def test_batch_size_does_not_change_the_result(unet, images):
    ref = bits_per_dim(unet, scheduler(), images, generator=torch.manual_seed(5))
    for bs in (1, 4, 3 * T_SMALL, 1000):
        got = bits_per_dim(unet, scheduler(), images, generator=torch.manual_seed(5), batch_size=bs)
        torch.testing.assert_close(got.terms, ref.terms, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.total, ref.total, rtol=1e-5, atol=1e-5)


def test_deterministic_given_generator(unet, images):
    a = bits_per_dim(unet, scheduler(), images, generator=torch.manual_seed(7))
    b = bits_per_dim(unet, scheduler(), images, generator=torch.manual_seed(7))
    c = bits_per_dim(unet, scheduler(), images, generator=torch.manual_seed(8))
    # exact by construction: same weights, shapes, process and thread count (same kernels)
    assert torch.equal(a.terms, b.terms) and torch.equal(a.total, b.total)
    assert not torch.allclose(a.terms[:, 1:], c.terms[:, 1:])
    assert torch.equal(a.prior, c.prior) and torch.isfinite(a.total).all()
    # per-image generators: an image's result does not depend on the other images
    gen = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731 (torch.manual_seed is one global generator)
    both = bits_per_dim(unet, scheduler(), images[:2], generator=[gen(1), gen(2)])
    alone = bits_per_dim(unet, scheduler(), images[1:2], generator=[gen(2)])
    torch.testing.assert_close(both.terms[1:], alone.terms, rtol=1e-5, atol=1e-5)


def test_shared_forwards_equal_separate_calls(unet, images):
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = unet
            self.config = unet.config

        def forward(self, sample, timestep):
            calls.append(sample.shape[0])
            return self.inner(sample, timestep)

    model = Counting()
    shared = bits_per_dim_variances(model, scheduler(), images, generator=torch.manual_seed(4), batch_size=8)
    assert len(calls) == math.ceil(3 * T_SMALL / 8) and sum(calls) == 3 * T_SMALL  # one forward per pair
    for name in ("fixed_small", "fixed_large"):
        alone = bits_per_dim(unet, scheduler(), images, generator=torch.manual_seed(4), variance_type=name,
                             batch_size=8)
        # exact by construction: same weights, shapes, process and thread count (same kernels); one forward per pair
        torch.testing.assert_close(shared[name].terms, alone.terms, rtol=0, atol=0)
    # the scheduler's own variance_type is the default
    default = bits_per_dim(unet, scheduler(variance_type="fixed_large"), images, generator=torch.manual_seed(4),
                           batch_size=8)
    torch.testing.assert_close(default.total, shared["fixed_large"].total, rtol=0, atol=0)
    torch.testing.assert_close(shared["fixed_small"].prior, shared["fixed_large"].prior)


def test_learned_range_with_real_unet_and_other_schedulers(unet, images):
    unet2 = build_unet("tiny", out_channels=2).eval()
    out = bits_per_dim_variances(
        unet2, scheduler(variance_type="learned_range"), images, ("learned_range", "fixed_small"),
        generator=torch.manual_seed(0),
    )
    assert torch.isfinite(out["learned_range"].total).all() and torch.isfinite(out["fixed_small"].total).all()
    # diffusers' DDPMScheduler and DDIMExtScheduler describe the same chain: same result
    ref = bits_per_dim(unet, scheduler(), images, generator=torch.manual_seed(0))
    for other in (DDPMScheduler.from_config(scheduler().config), DDIMExtScheduler.from_config(scheduler().config)):
        got = bits_per_dim(unet, other, images, generator=torch.manual_seed(0))
        # exact: bits_per_dim rebuilds the same DDPMExtScheduler from either config; the same UNet calls
        torch.testing.assert_close(got.total, ref.total, rtol=0, atol=0)


def test_pipeline_method_equals_function(unet, images):
    pipe = DDPMExtPipeline(unet=unet, scheduler=scheduler())
    ref = bits_per_dim(unet, scheduler(), images, generator=torch.manual_seed(9))
    u = ((images + 1) * 127.5).round().to(torch.uint8)  # (N, 1, 8, 8)
    inputs = {
        "float tensor": images,
        "uint8 tensor": u,
        "uint8 array NHW": u[:, 0].numpy(),
        "uint8 array NHWC": u.permute(0, 2, 3, 1).numpy(),
        "PIL": [Image.fromarray(a, mode="L") for a in u[:, 0].numpy()],
    }
    for kind, x in inputs.items():
        got = pipe.bits_per_dim(x, generator=torch.manual_seed(9))
        # exact: every input form becomes the same float tensor (uint8 / 127.5 - 1), then the same calls
        torch.testing.assert_close(got.total, ref.total, rtol=0, atol=0, msg=kind)
    # whichever sampler the pipeline holds, the bound uses the training chain
    pipe.scheduler = DDIMExtScheduler.from_config(pipe.scheduler.config)
    torch.testing.assert_close(pipe.bits_per_dim(images, generator=torch.manual_seed(9)).total, ref.total,
                               rtol=0, atol=0)


def test_bad_inputs_raise(unet, images):
    s = scheduler()
    bad = {
        "[-1, 1]": images * 1.1,
        "8-bit grid": images * 0.5,  # u / 2 + 63.75: a quarter bin off
        "ndim": images[0],
        "in_channels=1": images.repeat(1, 3, 1, 1),
        "float tensor": ((images + 1) * 127.5).to(torch.uint8),
    }
    for match, x in bad.items():
        with pytest.raises(ValueError, match=match.replace("[", r"\[").replace("]", r"\]")):
            bits_per_dim(unet, s, x)
    with pytest.raises(ValueError, match="out_channels = 2 x 1"):
        bits_per_dim(unet, s, images, variance_type="learned_range")
    with pytest.raises(ValueError, match="out_channels = 2 x 1"):
        bits_per_dim(unet, scheduler(variance_type="learned_range"), images)
    for bs in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            bits_per_dim(unet, s, images, batch_size=bs)
    with pytest.raises(ValueError, match="variance_type.*'nope'"):
        bits_per_dim(unet, s, images, variance_type="nope")
    with pytest.raises(ValueError, match="variance_types"):
        bits_per_dim_variances(unet, s, images, "fixed_small")
    with pytest.raises(ValueError, match="prediction_type.*'nope'"):
        bits_per_dim(unet, DDPMScheduler(num_train_timesteps=T_SMALL, prediction_type="nope"), images)
    with pytest.raises(ValueError, match="list of 2 generators but there are 3 images"):
        bits_per_dim(unet, s, images, generator=[torch.manual_seed(0)] * 2)
    pipe = DDPMExtPipeline(unet=unet, scheduler=s)
    with pytest.raises(ValueError, match="uint8 pixels"):
        pipe.bits_per_dim(images.permute(0, 2, 3, 1).numpy())
    with pytest.raises(ValueError, match="list of PIL images"):
        pipe.bits_per_dim([1, 2])


def test_clip_denoised_defaults_to_the_schedulers_clip_sample(images):
    """By default p_θ is scored as the sampler draws from it: x̂_0 clipped when the config's `clip_sample` is set.

    A model whose ε is far off makes x̂_0 leave [-1, 1], so clipping changes the terms; at the last step of a
    cosine chain (√ᾱ_T ≈ 0) unclipped x̂_0 = (x_T − √(1−ᾱ_T) ε̂) / √ᾱ_T amplifies the error and the KL grows.
    """
    betas = reference_betas("cosine", T_SMALL, 0.02)

    class Off(TrueNoiseModel):
        def __call__(self, sample, timestep):
            out = super().__call__(sample, timestep)
            return SimpleNamespace(sample=out.sample + 0.5)

    x0 = images
    model = Off(x0, betas)
    runs = {}
    for clip_sample in (True, False):
        s = scheduler(clip_sample=clip_sample)
        runs[clip_sample] = bits_per_dim(model, s, x0, generator=torch.manual_seed(0))
        for explicit in (True, False):
            got = bits_per_dim(model, s, x0, generator=torch.manual_seed(0), clip_denoised=explicit)
            if explicit == clip_sample:
                # exact by construction: same weights, shapes, process and thread count (same kernels)
                assert torch.equal(got.terms, runs[clip_sample].terms)
    assert torch.equal(runs[True].prior, runs[False].prior)
    # the last step's KL is where the unclipped x̂_0 blows up
    assert runs[False].terms[:, -1].min() > 10 * runs[True].terms[:, -1].max()
    assert (runs[False].total > runs[True].total).all()


def test_pil_images_need_a_square_unet():
    unet = build_unet("tiny", sample_size=(8, 16))
    pipe = DDPMExtPipeline(unet=unet, scheduler=scheduler())
    with pytest.raises(ValueError, match=r"PIL `images` need a square UNet `sample_size`, got \(8, 16\)"):
        pipe.bits_per_dim([Image.new("L", (8, 16))])


# --------------------------------------------------------------------------------------------------
# Class-conditional UNets: bits/dim under a given class, or the null class ∅ (the unconditional p(x))
# --------------------------------------------------------------------------------------------------
class FixedLabels(torch.nn.Module):
    """A conditional UNet called with fixed labels, seen by `bits_per_dim` as an unconditional model (no config).
    With `batch_size` = N every call holds the N images of one timestep in order, so `labels` (N,) match them."""

    def __init__(self, unet, labels: torch.Tensor):
        super().__init__()
        self.unet, self.labels = unet, labels

    def forward(self, sample, timestep):
        return self.unet(sample, timestep, class_labels=self.labels)


def test_class_labels_reach_a_conditional_unet(images):
    torch.manual_seed(0)
    unet = build_unet("tiny", num_class_embeds=4).eval()  # K = 3 classes, id 3 is the null class
    n = images.shape[0]
    null = bits_per_dim(unet, scheduler(), images, generator=torch.manual_seed(2), batch_size=n, class_labels=3)
    direct = bits_per_dim(FixedLabels(unet, torch.full((n,), 3)), scheduler(), images, generator=torch.manual_seed(2),
                          batch_size=n)
    # exact by construction: same weights, shapes, process and thread count; batch_size = N
    torch.testing.assert_close(null.terms, direct.terms, rtol=0, atol=0)
    assert torch.equal(null.total, direct.total) and torch.isfinite(null.total).all()
    # the same ids as a list and a tensor; another class gives other numbers (the labels do reach the UNet)
    as_list = bits_per_dim(unet, scheduler(), images, generator=torch.manual_seed(2), batch_size=n,
                           class_labels=[3] * n)
    assert torch.equal(as_list.total, null.total)
    per_image = torch.tensor([0, 1, 2])
    mixed = bits_per_dim(unet, scheduler(), images, generator=torch.manual_seed(2), batch_size=n,
                         class_labels=per_image)
    direct_mixed = bits_per_dim(FixedLabels(unet, per_image), scheduler(), images, generator=torch.manual_seed(2),
                                batch_size=n)
    torch.testing.assert_close(mixed.terms, direct_mixed.terms, rtol=0, atol=0)
    assert not torch.allclose(mixed.terms[:, 1:], null.terms[:, 1:])
    # per-image labels follow their image whatever the batch size (pairs are split across calls)
    odd = bits_per_dim(unet, scheduler(), images, generator=torch.manual_seed(2), batch_size=7, class_labels=per_image)
    torch.testing.assert_close(odd.terms, mixed.terms, rtol=1e-5, atol=1e-5)
    # the pipeline's method passes them on
    pipe = DDPMExtPipeline(unet=unet, scheduler=scheduler())
    via_pipe = pipe.bits_per_dim(images, generator=torch.manual_seed(2), batch_size=n, class_labels=3)
    assert torch.equal(via_pipe.total, null.total)


@pytest.mark.parametrize(
    "conditional, labels, message",
    [
        (True, None, r"class-conditional \(num_class_embeds=4\): pass `class_labels`, the null class id 3"),
        (False, 0, r"`class_labels` were given \(0\), but the model is unconditional"),
        (True, 4, r"`class_labels` holds 4, outside the model's class ids; allowed: 0..3 \(id 3 is the null class\)"),
        (True, -1, r"`class_labels` holds -1, outside"),
        (True, [0, 1], r"`class_labels` must be one int id, or 3 int ids"),
        (True, [0.0, 1.0, 2.0], r"`class_labels` must be one int id, or 3 int ids"),
    ],
)
def test_bad_class_labels_raise_before_any_model_call(images, conditional, labels, message):
    unet = build_unet("tiny", **({"num_class_embeds": 4} if conditional else {})).eval()
    calls = []
    unet.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=message):
        bits_per_dim(unet, scheduler(), images, class_labels=labels)
    assert calls == []
