"""DDIM sampling (Song et al. 2021) from a model trained with the DDPM objective.

Legend (code name -> symbol of Song et al. eq. 12):

    alpha_bar, alpha_bar_prev   α_t, α_{t-1} of the paper (= ᾱ_t, ᾱ_prev of DDPM)
    sigma                       σ_t(η) = η √((1 - ᾱ_prev)/(1 - ᾱ_t)) √(1 - ᾱ_t/ᾱ_prev)
    x_prev                      √ᾱ_prev x̂_0 + √(1 - ᾱ_prev - σ_t²) ε̂ + σ_t z

η = 0 is the deterministic DDIM; η = 1 is DDPM's ancestral step with σ_t² = β̃_t.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput

from .scheduling_common import (
    BetaSchedule,
    PredictionType,
    ScheduleMixin,
    TimestepSpacing,
    VarianceType,
    draw_noise,
)


@dataclass
class DDIMExtSchedulerOutput(BaseOutput):
    """Output of [`DDIMExtScheduler.step`].

    Args:
        prev_sample (`torch.Tensor` of shape `(B, C, H, W)`): x_prev, the input of the next step.
        pred_original_sample (`torch.Tensor` of shape `(B, C, H, W)`): x̂_0 predicted from x_t.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # as DDPMExtSchedulerOutput: BaseOutput's entries without introspecting the dataclass on every step
        for name, value in (("prev_sample", self.prev_sample), ("pred_original_sample", self.pred_original_sample)):
            if value is not None:
                OrderedDict.__setitem__(self, name, value)


class DDIMExtScheduler(ScheduleMixin, ConfigMixin):
    r"""DDIM (Song et al. 2021): fast, optionally deterministic sampling from a DDPM-trained model.

    Shares the β schedules, checks, timestep spacings and x̂_0 computation of [`DDPMExtScheduler`], and swaps
    with it and with diffusers' [`DDIMScheduler`] / [`DDPMScheduler`] through `from_config` both ways.
    Unlike diffusers' DDIMScheduler (which steps to t - T // S), every step lands on the timestep actually
    used next, for every `timestep_spacing`.

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, clip_sample, prediction_type,
        thresholding, dynamic_thresholding_ratio, clip_sample_range, sample_max_value, timestep_spacing,
        steps_offset, rescale_betas_zero_snr, cosine_s, max_beta:
            as in [`DDPMExtScheduler`].
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

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]

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
        self._init_schedule()

    def _final_alpha_cumprod(self) -> float:
        return 1.0 if self.config.set_alpha_to_one else float(self._alphas_cumprod64[0])

    def _step_coefficients(self, ab_t: np.ndarray, ab_prev: np.ndarray) -> None:
        # σ_t(η)² / η², from the kept ᾱ values (Song et al. eq. 16)
        base_var = (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
        self._steps = [(float(a), float(p), float(v)) for a, p, v in zip(ab_t, ab_prev, base_var)]

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
            use_clipped_model_output (`bool`, defaults to `False`): recompute ε̂ from the clipped x̂_0.
            generator (`torch.Generator` or a list of them, *optional*): for the noise z when η > 0.
            variance_noise (`torch.Tensor`, *optional*): z itself; excludes `generator`.
            return_dict (`bool`, defaults to `True`): return a [`DDIMExtSchedulerOutput`] or a tuple.
            stochastic (`bool`, defaults to `True`): add σ_t z; `False` drops it (the lecture's "without z").

        Returns:
            [`DDIMExtSchedulerOutput`] or `(prev_sample, pred_original_sample)`.
        """
        if not (isinstance(eta, (int, float)) and 0.0 <= eta <= 1.0):
            raise ValueError(f"`eta` must be a number in [0, 1], got {eta!r}.")
        if variance_noise is not None and generator is not None:
            raise ValueError("Pass either `generator` or `variance_noise`, not both.")
        i = self._step_index(timestep)
        ab_t, ab_prev, base_var = self._steps[i]
        c = sample.shape[1]
        if model_output.shape[1] == 2 * c and self.variance_kind in ("learned_range", "learned"):
            model_output = model_output[:, :c]
        elif model_output.shape[1] != c:
            raise ValueError(f"`model_output` has {model_output.shape[1]} channels but `sample` has {c}.")
        sigma = eta * math.sqrt(base_var)  # σ_t(η)

        def coefficients() -> tuple[float, ...]:
            direction = math.sqrt(max(1 - ab_prev - sigma**2, 0.0))
            return ab_t**0.5, (1.0 - ab_t) ** 0.5, math.sqrt(ab_t), math.sqrt(1 - ab_t), math.sqrt(ab_prev), direction, sigma

        sa, sb, sa_clip, sb_clip, sa_prev, c_dir, sigma_t = self._scalars((i, sigma), sample, coefficients)

        # 1. x̂_0 and ε̂ from the model output, then clip or threshold x̂_0
        x0, eps = self._pred_x0_eps(model_output, sample, ab_t, roots=(sa, sb))
        x0 = self._clip_x0(x0)
        if use_clipped_model_output:
            eps = (sample - sa_clip * x0) / sb_clip

        # 2. the direction pointing to x_t (eq. 12)
        prev_sample = sa_prev * x0 + c_dir * eps

        # 3. + σ_t z
        if sigma > 0 and stochastic:
            if variance_noise is None:
                variance_noise = draw_noise(model_output, generator)
            prev_sample = prev_sample + sigma_t * variance_noise

        if not return_dict:
            return (prev_sample, x0)
        return DDIMExtSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
