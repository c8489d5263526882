"""Training losses of DDPM and improved DDPM, as small pure functions.

Legend (Ho et al. 2020 eqs. 5, 12, 14; Nichol & Dhariwal 2021 eq. 16):

    L_simple   E_{t, x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖²             (Algorithm 1)
    L_{t-1}    D_KL(q(x_{t-1} | x_t, x_0) ‖ p_θ(x_{t-1} | x_t))                   t > 0 in code
    L_0        −log p_θ(x_0 | x_1), a Gaussian discretized into 256 bins          t = 0 in code
    L_hybrid   L_simple + λ L_vlb, with the mean's gradient stopped in L_vlb      (λ = 0.001)

Every function returns values per image, in nats unless it says bits/dim.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from .validation import check_choice, check_positive

# The one definition of the loss options: the signature's type, the check and the training script's `choices=`.
LossType = Literal["simple", "hybrid"]
LOSS_TYPES: tuple[str, ...] = get_args(LossType)
# How the training step draws t: uniform (Algorithm 1) or in proportion to the min-SNR-γ weight ([`timestep_proposal`]).
TimestepSampling = Literal["uniform", "importance"]
TIMESTEP_SAMPLINGS: tuple[str, ...] = get_args(TimestepSampling)


def normal_kl(
    *, mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) per element, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x), the standard normal CDF, via the tanh approximation used by DDPM and improved DDPM."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log p(x) per element, in nats, for x on the 8-bit grid in [−1, 1] under N(means, e^{2 log_scales}).

    Each value owns a bin of width 2/255 around it; the outermost bins are open (to −∞ below −1 and +∞
    above 1), so the 256 probabilities sum to one (Ho et al. 2020, eq. 13).
    """
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: (B, ...) -> (B,)."""
    return x.mean(dim=list(range(1, x.ndim)))


def vlb_terms(
    scheduler,
    *,
    model_output: torch.Tensor,
    x_start: torch.Tensor,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    clip_denoised: bool | None = False,
    variance_type: str | None = None,
) -> torch.Tensor:
    """L_{t-1} (t > 0) or L_0 (t = 0) for each image, in bits/dim.

    Args:
        scheduler ([`DDPMExtScheduler`]): gives q(x_{t-1} | x_t, x_0) and p_θ(x_{t-1} | x_t).
        model_output (`torch.Tensor`): the model's output at (x_t, t), (B, C or 2C, H, W).
        x_start (`torch.Tensor`): x_0 on the 8-bit grid in [−1, 1], (B, C, H, W).
        x_t (`torch.Tensor`): x_t, (B, C, H, W).
        timesteps (`torch.Tensor`): t per image, (B,).
        clip_denoised (`bool`, defaults to `False`): clip x̂_0 to [−1, 1] before computing the model mean; `None`
            follows the scheduler's `clip_sample`.
        variance_type (`str`, *optional*): σ_t² of p_θ, overriding the scheduler's `variance_type` (see
            [`DDPMExtScheduler.p_mean_variance`]).

    Returns:
        `torch.Tensor` of shape (B,): the term for each image, in bits/dim.
    """
    true_mean, _, true_logvar = scheduler.q_posterior_mean_variance(x_start=x_start, x_t=x_t, timesteps=timesteps)
    p = scheduler.p_mean_variance(
        model_output=model_output, x_t=x_t, timesteps=timesteps, clip_denoised=clip_denoised,
        variance_type=variance_type,
    )
    kl = mean_flat(
        normal_kl(mean1=true_mean, logvar1=true_logvar, mean2=p["mean"], logvar2=p["log_variance"])
    ) / math.log(2.0)
    nll = -mean_flat(
        discretized_gaussian_log_likelihood(x_start, means=p["mean"], log_scales=0.5 * p["log_variance"])
    ) / math.log(2.0)
    return torch.where(timesteps.to(kl.device) == 0, nll, kl)


def min_snr_weight(scheduler, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    """min-SNR-γ weight per image for the scheduler's prediction type (Hang et al. 2023), in float64, shape (B,).

    Example:

    ```py
    >>> import torch
    >>> from ddpm_ext import DDPMExtScheduler
    >>> s = DDPMExtScheduler()
    >>> t = torch.tensor([0, 999])  # SNR ≈ 1e4 (clipped to γ) and ≈ 4e-5 (below γ: weight 1 for ε)
    >>> min_snr_weight(s, t, 5.0).tolist()[1]
    1.0

    ```
    """
    table = getattr(scheduler, "_alphas_cumprod64", None)  # ddpm_ext's float64 ᾱ; else the float32 one
    ab = torch.as_tensor(
        scheduler.alphas_cumprod if table is None else table, dtype=torch.float64
    )[timesteps.cpu().long()]
    snr = ab / (1 - ab)
    clipped = snr.clamp(max=float(snr_gamma))
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return clipped / snr
    if kind == "v_prediction":
        return clipped / (snr + 1)
    return clipped


def timestep_proposal(scheduler, snr_gamma: float) -> torch.Tensor:
    """Importance-sampling proposal p(t) ∝ the min-SNR-γ weight of each t (t = 0..T−1), in float64, shape (T,).

    Drawing t ~ p(t) and scaling each image's loss by 1 / (T p(t)) ([`importance_scale`]) estimates exactly the
    same min-SNR-γ objective as t ~ U{0..T−1}, with less variance: the weight is nearly zero at both ends of the
    schedule (pure noise, and almost no noise), so a uniform draw spends much of each batch on images that add
    almost nothing to the loss. Each image's weighted loss becomes Z / T times its unweighted loss, Z = Σ_t w(t).
    Less variance in the loss is not necessarily faster training: `training/recipe_study.py` compares this proposal
    with uniform t on the same recipe.

    Example:

    ```py
    >>> import torch
    >>> from ddpm_ext import DDPMExtScheduler
    >>> p = timestep_proposal(DDPMExtScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"), 5.0)
    >>> round(float(p.sum()), 6), bool(p[500] > 10 * p[999])
    (1.0, True)

    ```
    """
    check_positive("snr_gamma", snr_gamma)
    weight = min_snr_weight(scheduler, torch.arange(len(scheduler)), snr_gamma)
    return weight / weight.sum()


def importance_scale(proposal: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """1 / (T p(t)) per image, float64, shape (B,): the factor that makes a loss at t ~ p(t) an unbiased
    estimate of its mean over t ~ U{0..T−1} (see [`timestep_proposal`])."""
    return 1.0 / (len(proposal) * proposal[timesteps.cpu().long()])


def diffusion_loss(
    scheduler,
    *,
    model_output: torch.Tensor,
    x_start: torch.Tensor,
    noise: torch.Tensor,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    loss_type: LossType = "simple",
    vlb_weight: float = 0.001,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """The training loss per image: L_simple, or improved DDPM's L_hybrid = L_simple + λ L_vlb.

    The regression target follows the scheduler's `prediction_type` (ε, x_0 or v). With `"hybrid"` the model
    must output 2C channels (`variance_type="learned_range"`); L_vlb sees the mean with its gradient stopped,
    so only the variance channels learn from it, and it is scaled by T as in improved DDPM.

    With `snr_gamma` = γ the regression term is weighted by min-SNR-γ (Hang et al. 2023, eq. 9): with
    SNR(t) = ᾱ_t / (1 − ᾱ_t), the x_0-space weight min(SNR, γ) becomes min(SNR, γ) / SNR for ε-prediction,
    min(SNR, γ) / (SNR + 1) for v-prediction and min(SNR, γ) for x_0-prediction, so that the loss is
    min(SNR, γ) · ‖x_0 − x̂_0‖² whatever the model predicts. `None` keeps L_simple's uniform weight (Ho et al.).

    Returns:
        `torch.Tensor` of shape (B,).
    """
    check_choice("loss_type", loss_type, LOSS_TYPES)
    if snr_gamma is not None:
        check_positive("snr_gamma", snr_gamma)
    c = x_start.shape[1]
    learned = model_output.shape[1] == 2 * c
    if loss_type == "hybrid" and not learned:
        raise ValueError(
            "`loss_type`='hybrid' needs a model with 2 x C output channels and `variance_type`='learned_range'."
        )
    mean_output = model_output[:, :c]
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "sample":
        target = x_start
    else:
        target = scheduler.get_velocity(x_start, noise, timesteps)
    loss = mean_flat(F.mse_loss(mean_output.float(), target.float(), reduction="none"))
    if snr_gamma is not None:
        loss = loss * min_snr_weight(scheduler, timesteps, snr_gamma).to(loss)
    if loss_type == "hybrid":
        frozen = torch.cat([mean_output.detach(), model_output[:, c:]], dim=1).float()
        vlb = vlb_terms(scheduler, model_output=frozen, x_start=x_start.float(), x_t=x_t.float(), timesteps=timesteps)
        # λ L_vlb = λ T E_t[L_t], with L_t in bits/dim as in improved DDPM (its RESCALED_MSE: vb * T / 1000)
        loss = loss + vlb_weight * len(scheduler) * vlb
    return loss
