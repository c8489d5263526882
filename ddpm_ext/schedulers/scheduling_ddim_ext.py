"""DDIM sampling (Song et al. 2021) from a model trained with the DDPM objective.

Legend (code name -> symbol of Song et al. eq. 12):

    alpha_bar, alpha_bar_prev   α_t, α_{t-1} of the paper (= ᾱ_t, ᾱ_prev of DDPM)
    sigma                       σ_t(η) = η √((1 - ᾱ_prev)/(1 - ᾱ_t)) √(1 - ᾱ_t/ᾱ_prev)
    x_prev                      √ᾱ_prev x̂_0 + √(1 - ᾱ_prev - σ_t²) ε̂ + σ_t z

η = 0 is the deterministic DDIM; η = 1 is DDPM's ancestral step with σ_t² = β̃_t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config

from ..validation import check_number, learns_variance
from .scheduling_common import (
    BetaSchedule,
    PredictionType,
    ScheduleMixin,
    StepOutput,
    TimestepSpacing,
    VarianceType,
    draw_noise,
)


@dataclass
class DDIMExtSchedulerOutput(StepOutput):
    """Output of [`DDIMExtScheduler.step`].

    Args:
        prev_sample (`torch.Tensor` of shape `(B, C, H, W)`): x_prev, the input of the next step.
        pred_original_sample (`torch.Tensor` of shape `(B, C, H, W)`): x̂_0 predicted from x_t.
    """


class _Step(NamedTuple):
    """The coefficients of one DDIM step x_t -> x_prev at one η (Song et al. eq. 12), made on first use."""

    alpha_bar: float  # ᾱ_t
    sqrt_alpha_bar: float  # √ᾱ_t
    sqrt_one_minus_alpha_bar: float  # √(1 - ᾱ_t)
    eps_per_x0: float  # √ᾱ_t / √(1 - ᾱ_t): how much ε̂ moves per unit that clipping moves x̂_0
    sqrt_alpha_bar_prev: float  # √ᾱ_prev
    direction: float  # √(1 - ᾱ_prev - σ_t²), the weight of ε̂ ("direction pointing to x_t")
    sigma: float  # σ_t(η)
    noisy: bool  # σ_t > 0: noise is added


class DDIMExtScheduler(ScheduleMixin, ConfigMixin):
    r"""DDIM (Song et al. 2021): fast, optionally deterministic sampling from a DDPM-trained model.

    Shares the β schedules, checks, timestep spacings and x̂_0 computation of [`DDPMExtScheduler`], and swaps
    with it and with diffusers' [`DDIMScheduler`] / [`DDPMScheduler`] through `from_config` both ways.
    Unlike diffusers' DDIMScheduler (which steps to t - T // S), every step lands on the timestep actually
    used next, for every `timestep_spacing`.

    `num_train_timesteps`, `beta_start`, `beta_end`, `beta_schedule`, `trained_betas`, `clip_sample`,
    `prediction_type`, `thresholding`, `dynamic_thresholding_ratio`, `clip_sample_range`, `sample_max_value`,
    `timestep_spacing`, `steps_offset`, `rescale_betas_zero_snr`, `cosine_s` and `max_beta` are as in
    [`DDPMExtScheduler`].

    Args:
        set_alpha_to_one (`bool`, defaults to `True`): ᾱ after the last step is 1 (the step lands on x_0);
            `False` uses ᾱ_0, as diffusers' option of that name.
        variance_type (`str`, defaults to `"fixed_small"`): kept so that configs survive a swap with
            [`DDPMExtScheduler`]; DDIM uses only the mean channels of a model that learns its variance.

    Example:

    ```py
    >>> import torch
    >>> from ddpm_ext import DDIMExtScheduler, DDPMExtScheduler
    >>> ddim = DDIMExtScheduler.from_config(DDPMExtScheduler(beta_schedule="cosine").config)
    >>> ddim.set_timesteps(10)
    >>> x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> for t in ddim.timesteps:
    ...     x = ddim.step(torch.zeros_like(x), t, x, eta=0.0).prev_sample
    >>> ddim.config.beta_schedule
    'squaredcos_cap_v2'

    ```
    """

    _diffusers_class_name = "DDIMScheduler"

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: TimestepSpacing = "leading",
        rescale_betas_zero_snr: bool = False,
        variance_type: VarianceType = "fixed_small",
        cosine_s: float = 0.008,
        max_beta: float = 0.999,
    ):
        self._init_schedule(cosine_s=cosine_s, max_beta=max_beta)

    def _set_grid(self, grid: np.ndarray, device: str | torch.device | None = None) -> None:
        self._step_cache: dict[tuple[int, float], _Step] = {}
        super()._set_grid(grid, device)

    def _final_alpha_cumprod(self) -> float:
        return 1.0 if self.config.set_alpha_to_one else float(self._alphas_cumprod64[0])

    def _step_coefficients(self, ab_t: np.ndarray, ab_prev: np.ndarray) -> None:
        # (ᾱ_t, ᾱ_prev, σ_t(η)² / η²) per step, from the kept ᾱ values (Song et al. eq. 16); the η-dependent
        # coefficients are made by `_coefficients` on first use.
        base_var = (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
        self._steps = [(float(a), float(p), float(v)) for a, p, v in zip(ab_t, ab_prev, base_var)]

    def _coefficients(self, i: int, eta: float) -> _Step:
        """The coefficients of step `i` at η = `eta` (checked here, once per step and η value)."""
        check_number("eta", eta, 0, 1)
        ab_t, ab_prev, base_var = self._steps[i]
        sigma = eta * math.sqrt(base_var)  # σ_t(η), eq. 16
        return _Step(
            alpha_bar=ab_t,
            sqrt_alpha_bar=ab_t**0.5,
            sqrt_one_minus_alpha_bar=(1.0 - ab_t) ** 0.5,
            eps_per_x0=(ab_t / (1.0 - ab_t)) ** 0.5,
            sqrt_alpha_bar_prev=math.sqrt(ab_prev),
            direction=math.sqrt(max(1 - ab_prev - sigma**2, 0.0)),
            sigma=sigma,
            noisy=sigma > 0,
        )

    def _get_variance(self, timestep: int | torch.Tensor, prev_timestep: int | torch.Tensor) -> torch.Tensor:
        """σ_t(1)² = (1 - ᾱ_prev)/(1 - ᾱ_t) · (1 - ᾱ_t/ᾱ_prev) between any two timesteps, as diffusers'
        `DDIMScheduler._get_variance` (used by pipelines such as LEDITS++ and CycleDiffusion); `prev_timestep` < 0
        means x_0 (ᾱ = 1, or ᾱ_0 with `set_alpha_to_one=False`). Accepts ints or tensors of timesteps."""
        ab = torch.from_numpy(self._alphas_cumprod64)
        t = torch.as_tensor(timestep).long().cpu()
        prev = torch.as_tensor(prev_timestep).long().cpu()
        ab_t = ab[t]
        ab_prev = torch.where(
            prev >= 0, ab[prev.clamp(min=0)], torch.tensor(self._final_alpha_cumprod(), dtype=ab.dtype)
        )
        variance = (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
        device = timestep.device if isinstance(timestep, torch.Tensor) else None
        return variance.float().to(device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
        *,
        stochastic: bool = True,
    ) -> DDIMExtSchedulerOutput | tuple:
        """One DDIM step x_t -> x_prev (Song et al. eq. 12).

        Args:
            model_output (`torch.Tensor`): the model's output at (x_t, t); with a learned variance only the first
                C channels are used.
            timestep (`int` or `torch.Tensor`): t, one of `self.timesteps`.
            sample (`torch.Tensor`): x_t, (B, C, H, W).
            eta (`float`, defaults to 0.0): η in [0, 1]; 0 is deterministic DDIM, 1 is DDPM with σ² = β̃.
            use_clipped_model_output (`bool`, defaults to `False`, diffusers' default): use the ε̂ consistent with
                the x̂_0 actually used (clipped to ±`clip_sample_range` or dynamically thresholded),
                ε̂ = (x_t − √ᾱ_t x̂_0) / √(1 − ᾱ_t), as improved-diffusion's `ddim_sample` does. Computed as
                ε̂ + √ᾱ_t/√(1 − ᾱ_t) (x̂_0^raw − x̂_0), which is the same formula and leaves ε̂ bit for bit unchanged
                where clipping did not move x̂_0. [`DDPMExtPipeline`] passes `True` by default.
            generator (`torch.Generator` or a list of them, *optional*): for the noise z when η > 0.
            variance_noise (`torch.Tensor`, *optional*): z itself; excludes `generator`.
            return_dict (`bool`, defaults to `True`): return a [`DDIMExtSchedulerOutput`] or a tuple.
            stochastic (`bool`, defaults to `True`): add σ_t z; `False` drops it (the lecture's "without z").

        Returns:
            [`DDIMExtSchedulerOutput`] or `(prev_sample, pred_original_sample)`.
        """
        if variance_noise is not None and generator is not None:
            raise ValueError("Pass either `generator` or `variance_noise`, not both.")
        i = self._step_index(timestep)
        key = (i, eta)
        s = self._step_cache.get(key)
        if s is None:
            s = self._step_cache[key] = self._coefficients(i, eta)  # Python floats
        c = self._as_scalars(key, s, sample)  # as 0-dim tensors of the sample's dtype (same bits)
        channels = sample.shape[1]
        if model_output.shape[1] == 2 * channels and learns_variance(self.variance_kind):
            model_output = model_output[:, :channels]  # DDIM uses the mean channels only
        elif model_output.shape[1] != channels:
            raise ValueError(f"`model_output` has {model_output.shape[1]} channels but `sample` has {channels}.")

        # 1. x̂_0 and ε̂ from the model output ("predicted x_0" of eq. 12), then clip or threshold x̂_0
        raw_x0, eps = self._pred_x0_eps(
            model_output, sample, s.alpha_bar, roots=(c.sqrt_alpha_bar, c.sqrt_one_minus_alpha_bar)
        )
        x0 = self._clip_x0(raw_x0)
        if use_clipped_model_output and x0 is not raw_x0:
            # ε̂ = (x_t - √ᾱ_t x̂_0)/√(1 - ᾱ_t) for the x̂_0 actually used; since x_t = √ᾱ_t x̂_0^raw + √(1 - ᾱ_t) ε̂
            # for every prediction type, that is ε̂ + √ᾱ_t/√(1 - ᾱ_t) (x̂_0^raw - x̂_0): exact where nothing moved
            eps = eps + c.eps_per_x0 * (raw_x0 - x0)

        # 2. x_prev = √ᾱ_prev x̂_0 + √(1 - ᾱ_prev - σ_t²) ε̂ (eq. 12)
        prev_sample = c.sqrt_alpha_bar_prev * x0
        prev_sample += c.direction * eps  # in place on the new tensor: the same sum, one allocation less

        # 3. + σ_t z, z ~ N(0, I) (eq. 12)
        if s.noisy and stochastic:
            if variance_noise is None:
                variance_noise = draw_noise(model_output, generator)
            prev_sample += c.sigma * variance_noise

        if not return_dict:
            return (prev_sample, x0)
        return DDIMExtSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
