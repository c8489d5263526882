"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) with every variance choice of the paper and its successors.

Legend (code name -> symbol; code t is the paper's t + 1, ᾱ of "t = -1" is 1):

    alphas_cumprod[t]           ᾱ_t
    prev                        the timestep a step lands on (t - 1 on the full chain, the next kept one when respaced)
    beta_t (per step)           β'_t = 1 - ᾱ_t / ᾱ_prev           (= β_t on the full chain)
    posterior variance          β̃_t = (1 - ᾱ_prev) / (1 - ᾱ_t) · β'_t
    coef_x0, coef_xt            μ̃_t(x_t, x_0) = coef_x0 · x_0 + coef_xt · x_t   (eq. 7)
    fixed_large / fixed_small   σ_t² = β_t / σ_t² = β̃_t
    learned_range               log σ_t² = v log β_t + (1 - v) log β̃_t, v = (model's extra channels + 1) / 2
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config

from ..validation import learns_variance
from .scheduling_common import (
    BetaSchedule,
    PredictionType,
    ScheduleMixin,
    StepOutput,
    TimestepSpacing,
    VarianceType,
    canonical_variance_type,
    draw_noise,
)


@dataclass
class DDPMExtSchedulerOutput(StepOutput):
    """Output of [`DDPMExtScheduler.step`].

    Args:
        prev_sample (`torch.Tensor` of shape `(B, C, H, W)`):
            x_{t-1}, the input of the next step (x_0 after the last step).
        pred_original_sample (`torch.Tensor` of shape `(B, C, H, W)`):
            x̂_0 predicted from x_t (after clipping or thresholding), for previews and trajectory figures.
    """


def posterior_coefficients(ab_t: np.ndarray, ab_prev: np.ndarray) -> dict[str, np.ndarray]:
    """Per-step coefficients of q(x_prev | x_t, x_0) and of the fixed model variances, in float64.

    The arrays are in chain order: element 0 is the step that lands on x_0 (ᾱ_prev = 1), element k the
    step from the k-th kept timestep. Following improved DDPM, the log of β̃ is clipped by using β̃ of the
    second step at the first (where β̃ = 0), and `fixed_large` uses that value at the first step too.

    Args:
        ab_t (`np.ndarray`): ᾱ at each step's timestep.
        ab_prev (`np.ndarray`): ᾱ at the timestep each step lands on.

    Returns:
        `dict` with `beta` (β'_t), `coef_x0`, `coef_xt` (posterior mean), `posterior_variance` (β̃_t),
        `posterior_log_variance_clipped`, `large_log_variance` (log of σ² = β at t > 0).
    """
    alpha = ab_t / ab_prev
    beta = 1.0 - alpha
    posterior_variance = (1.0 - ab_prev) / (1.0 - ab_t) * beta
    first = posterior_variance[1] if len(beta) > 1 else beta[0]
    clipped = np.concatenate([[first], posterior_variance[1:]])
    large = np.concatenate([[first], beta[1:]])
    return {
        "beta": beta,
        "coef_x0": np.sqrt(ab_prev) * beta / (1.0 - ab_t),
        "coef_xt": np.sqrt(alpha) * (1.0 - ab_prev) / (1.0 - ab_t),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(clipped),
        "large_log_variance": np.log(large),
    }


class _Step(NamedTuple):
    """The coefficients of one sampling step x_t -> x_prev, computed once per `set_timesteps` (float64 -> float)."""

    alpha_bar: float  # ᾱ_t
    sqrt_alpha_bar: float  # √ᾱ_t
    sqrt_one_minus_alpha_bar: float  # √(1 - ᾱ_t)
    coef_x0: float  # μ̃ = coef_x0 · x̂_0 + coef_xt · x_t   (eq. 7)
    coef_xt: float
    std: float  # σ_t of the configured fixed variance (NaN when the variance is learned)
    small_log_var: float  # log β̃_t (clipped at the last step, as improved DDPM)
    large_log_var: float  # log β_t (β̃ of the second-to-last step at the last, as improved DDPM)
    log_beta: float  # log β'_t, the upper end of `learned_range`
    last: bool  # lands on x_0: no noise is added


class DDPMExtScheduler(ScheduleMixin, ConfigMixin):
    r"""DDPM (Ho et al. 2020) with the β schedules and variance choices of the lecture, exact and validated.

    A drop-in for diffusers' [`DDPMScheduler`]: it accepts every keyword of `DDPMScheduler.__init__`, stores
    diffusers' names in its config (so `DDPMScheduler.from_config(s.config)` and back both work), and gives the
    same samples for the same generator wherever diffusers computes the same thing. It adds the lecture's names,
    strict checks of every option, exact respacing, sampling without the added noise z, and the
    distributions the likelihood needs.

    Args:
        num_train_timesteps (`int`, defaults to 1000): T, the length of the forward chain.
        beta_start (`float`, defaults to 1e-4): β_1 of `linear` / `quadratic` / `sigmoid`.
        beta_end (`float`, defaults to 0.02): β_T of `linear` / `quadratic` / `sigmoid`.
        beta_schedule (`str`, defaults to `"linear"`):
            `"linear"` (DDPM), `"quadratic"` (√β evenly spaced; diffusers: `"scaled_linear"`), `"cosine"`
            (improved DDPM; diffusers: `"squaredcos_cap_v2"`) or `"sigmoid"`. Stored under diffusers' name.
        trained_betas (`list[float]`, *optional*): explicit β_t, T values in (0, 1); overrides `beta_schedule`.
        variance_type (`str`, defaults to `"fixed_small"`):
            σ_t² of p_θ(x_{t-1} | x_t) = N(μ_θ, σ_t² I): `"fixed_small"` σ_t² = β̃_t (the posterior variance),
            `"fixed_large"` σ_t² = β_t, `"learned_range"` log σ_t² = v log β_t + (1 - v) log β̃_t with
            v = (o + 1) / 2 from the model's extra C output channels (improved DDPM). diffusers' names
            `"fixed_small_log"` and `"fixed_large_log"` are accepted as the same choices; `"learned"` takes the
            extra channels as σ_t² itself, as diffusers does.
        clip_sample (`bool`, defaults to `True`): clip x̂_0 to ±`clip_sample_range` before computing μ̃.
        prediction_type (`str`, defaults to `"epsilon"`): the model predicts ε (`"epsilon"`), x_0 (`"sample"`)
            or v = √ᾱ ε - √(1 - ᾱ) x_0 (`"v_prediction"`).
        thresholding (`bool`, defaults to `False`): dynamic thresholding of x̂_0 (Saharia et al. 2022).
        dynamic_thresholding_ratio (`float`, defaults to 0.995): the percentile of |x̂_0| used by thresholding.
        clip_sample_range (`float`, defaults to 1.0): the clipping bound of x̂_0.
        sample_max_value (`float`, defaults to 1.0): the largest threshold of dynamic thresholding.
        timestep_spacing (`str`, defaults to `"leading"`): `"leading"`, `"trailing"` or `"linspace"`
            (Lin et al. 2023, Table 2) for sampling with fewer steps than T.
        steps_offset (`int`, defaults to 0): added to every `"leading"` timestep.
        rescale_betas_zero_snr (`bool`, defaults to `False`): rescale β so that ᾱ_{T-1} = 0 (Lin et al. 2023).
        cosine_s (`float`, defaults to 0.008): the offset s of the cosine schedule.
        max_beta (`float`, defaults to 0.999): the cap on β_t of the cosine schedule.

    Example:

    ```py
    >>> import torch
    >>> from ddpm_ext import DDPMExtScheduler
    >>> scheduler = DDPMExtScheduler(beta_schedule="cosine", variance_type="fixed_large")
    >>> scheduler.set_timesteps(50)
    >>> x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> for t in scheduler.timesteps:
    ...     eps = torch.zeros_like(x)  # a UNet2DModel's `unet(x, t).sample` in real use
    ...     x = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(int(t))).prev_sample
    >>> x.shape
    torch.Size([1, 3, 8, 8])

    ```
    """

    _diffusers_class_name = "DDPMScheduler"

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: VarianceType = "fixed_small",
        clip_sample: bool = True,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: TimestepSpacing = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        cosine_s: float = 0.008,
        max_beta: float = 0.999,
    ):
        self._init_schedule(cosine_s=cosine_s, max_beta=max_beta)
        # The full forward chain (t = 0..T-1, ascending) for training losses and the likelihood.
        ab = self._alphas_cumprod64
        self._chain = posterior_coefficients(ab, np.concatenate([[1.0], ab[:-1]]))

    @property
    def variance_type(self) -> str:
        """diffusers' attribute: the configured variance name."""
        return self.config.variance_type

    @property
    def learns_variance(self) -> bool:
        """Whether the model outputs 2C channels (C for the mean, C for the variance)."""
        return learns_variance(self.variance_kind)

    # ----------------------------------------------------------------------------------------------
    # Sampling
    # ----------------------------------------------------------------------------------------------
    def _step_coefficients(self, ab_t: np.ndarray, ab_prev: np.ndarray) -> None:
        # Coefficients are computed in chain order (first = lands on x_0), then stored in step order.
        c = posterior_coefficients(ab_t[::-1], ab_prev[::-1])
        std_of = {"fixed_small": "posterior_log_variance_clipped", "fixed_large": "large_log_variance"}
        n = len(ab_t)
        self._steps = []
        for i in range(n):
            k = n - 1 - i
            log_var = std_of.get(self.variance_kind)
            self._steps.append(
                _Step(
                    alpha_bar=float(ab_t[i]),
                    sqrt_alpha_bar=float(ab_t[i]) ** 0.5,
                    sqrt_one_minus_alpha_bar=(1.0 - float(ab_t[i])) ** 0.5,
                    coef_x0=float(c["coef_x0"][k]),
                    coef_xt=float(c["coef_xt"][k]),
                    std=float(np.exp(0.5 * float(c[log_var][k]))) if log_var else math.nan,
                    small_log_var=float(c["posterior_log_variance_clipped"][k]),
                    large_log_var=float(c["large_log_variance"][k]),
                    log_beta=float(np.log(float(c["beta"][k]))),
                    last=i == n - 1,
                )
            )

    def _split_output(
        self, model_output: torch.Tensor, sample: torch.Tensor, variance_kind: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Split a (B, 2C, H, W) output into the mean part and the variance part when the variance is learned.

        `variance_kind` (a canonical variance name) overrides the configured one; a fixed variance given
        explicitly also accepts a 2C-channel output and uses its mean channels only (scoring a model that
        learned its variance under σ² = β or β̃).
        """
        c = sample.shape[1]
        kind = self.variance_kind if variance_kind is None else variance_kind
        if learns_variance(kind):
            if model_output.shape[1] != 2 * c:
                raise ValueError(
                    f"`variance_type`={variance_kind or self.config.variance_type!r} needs a model output with "
                    f"2 x {c} = {2 * c} "
                    f"channels (mean and variance), got {model_output.shape[1]}."
                )
            return model_output[:, :c], model_output[:, c:]
        if variance_kind is not None and model_output.shape[1] == 2 * c:  # a learned-σ² model scored at a fixed σ²
            return model_output[:, :c], None
        if model_output.shape[1] != c:
            raise ValueError(
                f"`model_output` has {model_output.shape[1]} channels but `sample` has {c}; a model with 2C "
                "output channels needs `variance_type='learned_range'`."
            )
        return model_output, None

    def _learned_log_variance(self, s: _Step, var_output: torch.Tensor) -> torch.Tensor:
        """log σ_t² from the model's variance channels: `learned_range` interpolates log β̃_t and log β_t
        (Nichol & Dhariwal eq. 15); `learned` takes the channels as σ_t² itself (diffusers)."""
        if self.variance_kind == "learned_range":
            frac = (var_output + 1) / 2
            return frac * s.log_beta + (1 - frac) * s.small_log_var
        return torch.log(var_output.clamp(min=1e-20))

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        *,
        variance_noise: torch.Tensor | None = None,
        stochastic: bool = True,
    ) -> DDPMExtSchedulerOutput | tuple:
        """One step of ancestral sampling, x_t -> x_prev ~ p_θ(x_prev | x_t) (Ho et al. Algorithm 2, line 4).

        Args:
            model_output (`torch.Tensor`): the model's output at (x_t, t), (B, C, H, W) or (B, 2C, H, W)
                when the variance is learned.
            timestep (`int` or `torch.Tensor`): t, one of `self.timesteps`.
            sample (`torch.Tensor`): x_t, (B, C, H, W).
            generator (`torch.Generator` or a list of them, *optional*): for the noise z.
            return_dict (`bool`, defaults to `True`): return a [`DDPMExtSchedulerOutput`] or a tuple.
            variance_noise (`torch.Tensor`, *optional*): z itself, instead of drawing it with `generator`.
            stochastic (`bool`, defaults to `True`): add σ_t z. `False` returns the mean μ_θ(x_t, t): the lecture's
                sampling "without z" (deterministic, and known to give blurry, averaged images).

        Returns:
            [`DDPMExtSchedulerOutput`] or `(prev_sample, pred_original_sample)`.
        """
        i = self._step_index(timestep)
        s = self._steps[i]  # this step's coefficients (Python floats)
        c = self._as_scalars((i,), s, sample)  # as 0-dim tensors of the sample's dtype (same bits)
        model_output, var_output = self._split_output(model_output, sample)

        # 1. x̂_0 from the model output (eq. 15 for ε: x̂_0 = (x_t - √(1-ᾱ_t) ε_θ) / √ᾱ_t), clipped or thresholded
        x0, _ = self._pred_x0_eps(
            model_output, sample, s.alpha_bar, roots=(c.sqrt_alpha_bar, c.sqrt_one_minus_alpha_bar)
        )
        x0 = self._clip_x0(x0)

        # 2. μ_θ(x_t, t) = μ̃_t(x_t, x̂_0) = coef_x0 · x̂_0 + coef_xt · x_t (eq. 7); for ε-prediction without clipping
        #    this is Algorithm 2's 1/√α_t (x_t - β_t/√(1-ᾱ_t) ε_θ)
        prev_sample = c.coef_x0 * x0
        prev_sample += c.coef_xt * sample  # in place on the new tensor: the same sum, one allocation less

        # 3. x_prev = μ_θ + σ_t z, z ~ N(0, I), except at the step that lands on x_0 (Algorithm 2: z = 0 if t = 1)
        if stochastic and not s.last:
            if variance_noise is None:
                variance_noise = draw_noise(model_output, generator)
            std = c.std if var_output is None else torch.exp(0.5 * self._learned_log_variance(s, var_output))
            prev_sample += std * variance_noise

        if not return_dict:
            return (prev_sample, x0)
        return DDPMExtSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def _get_variance(
        self,
        t: int | torch.Tensor,
        predicted_variance: torch.Tensor | None = None,
        variance_type: str | None = None,
    ) -> torch.Tensor:
        """σ_t² of the sampling step from `t` (one of `self.timesteps`), as diffusers' `DDPMScheduler._get_variance`.

        `fixed_small`: β̃_t (at least 1e-20); `fixed_large`: β'_t; `learned_range`: exp of the interpolated log
        (needs `predicted_variance`, the model's variance channels); `learned`: `predicted_variance` itself. Unlike
        diffusers, the `*_log` names give the same variance as their plain names (diffusers returns a standard
        deviation for `fixed_small_log` and a log-variance for `fixed_large_log`).
        """
        kind = self.variance_kind if variance_type is None else canonical_variance_type(variance_type)
        i = self._step_index(t)
        ab_t = self._alphas_cumprod64[int(t)]
        prev = int(self._prev_timesteps[i])
        ab_prev = self._alphas_cumprod64[prev] if prev >= 0 else self._final_alpha_cumprod()
        beta = 1.0 - ab_t / ab_prev
        small = max((1.0 - ab_prev) / (1.0 - ab_t) * beta, 1e-20)
        if kind == "fixed_small":
            return torch.tensor(small, dtype=torch.float32)
        if kind == "fixed_large":
            return torch.tensor(beta, dtype=torch.float32)
        if predicted_variance is None:
            raise ValueError(f"`variance_type`={kind!r} needs `predicted_variance` (the model's variance channels).")
        if kind == "learned":
            return predicted_variance
        frac = (predicted_variance + 1) / 2
        return torch.exp(frac * math.log(beta) + (1 - frac) * math.log(small))

    # ----------------------------------------------------------------------------------------------
    # Distributions on the full training chain (for losses and the likelihood)
    # ----------------------------------------------------------------------------------------------
    def q_posterior_mean_variance(
        self, *, x_start: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance β̃_t and clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. eqs. 6-7).

        Args:
            x_start (`torch.Tensor`): x_0, (B, C, H, W).
            x_t (`torch.Tensor`): x_t, (B, C, H, W).
            timesteps (`torch.Tensor`): t per sample, (B,), on the full chain 0..T-1.

        Returns:
            `(mean, variance, log_variance_clipped)`, each broadcastable to (B, C, H, W).
        """
        c = self._chain
        t = self._timestep_indices(timesteps, x_t)
        mean = (
            self._per_sample("coef_x0", c["coef_x0"], t, x_t) * x_start
            + self._per_sample("coef_xt", c["coef_xt"], t, x_t) * x_t
        )
        var = self._per_sample("posterior_variance", c["posterior_variance"], t, x_t)
        log_var = self._per_sample("posterior_log_variance_clipped", c["posterior_log_variance_clipped"], t, x_t)
        return mean, var, log_var

    def p_mean_variance(
        self,
        *,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        timesteps: torch.Tensor,
        clip_denoised: bool | None = None,
        variance_type: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """The model's p_θ(x_{t-1} | x_t) = N(mean, exp(log_variance)) on the full chain.

        Follows improved DDPM: for t = 0 the log-variance of `fixed_small` is log β̃_1 (clipped), and
        `fixed_large` uses β̃_1 there too ("better decoder likelihood").

        Args:
            model_output (`torch.Tensor`): the model's output at (x_t, t), (B, C or 2C, H, W).
            x_t (`torch.Tensor`): x_t, (B, C, H, W).
            timesteps (`torch.Tensor`): t per sample, (B,).
            clip_denoised (`bool`, *optional*): clip x̂_0 as the sampler does (defaults to the config's
                `clip_sample` / `thresholding`).
            variance_type (`str`, *optional*): score under this σ_t² instead of the configured one (any name of
                `VARIANCE_TYPES`); a fixed choice also accepts a 2C-channel output and uses its mean channels.

        Returns:
            `dict` with `mean`, `log_variance` (natural log), `pred_original_sample` and `pred_epsilon`.
        """
        kind = self.variance_kind if variance_type is None else canonical_variance_type(variance_type)
        model_output, var_output = self._split_output(model_output, x_t, kind)
        t = self._timestep_indices(timesteps, x_t)
        ab = self._per_sample("alphas_cumprod", self._alphas_cumprod64, t, x_t)
        x0, _ = self._pred_x0_eps(model_output, x_t, ab)
        if clip_denoised is None:
            x0 = self._clip_x0(x0)
        elif clip_denoised:
            x0 = x0.clamp(-1, 1)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        mean, _, small_log = self.q_posterior_mean_variance(x_start=x0, x_t=x_t, timesteps=t)

        c = self._chain
        if kind == "fixed_small":
            log_var = small_log.expand_as(x_t)
        elif kind == "fixed_large":
            log_var = self._per_sample("large_log_variance", c["large_log_variance"], t, x_t).expand_as(x_t)
        elif kind == "learned_range":
            max_log = self._per_sample("log_beta", np.log(self._betas64), t, x_t)
            frac = (var_output + 1) / 2
            log_var = frac * max_log + (1 - frac) * small_log
        else:
            log_var = torch.log(var_output.clamp(min=1e-20))
        return {"mean": mean, "log_variance": log_var, "pred_original_sample": x0, "pred_epsilon": eps}
