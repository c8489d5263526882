"""Noise schedules and option checks shared by the DDPM and DDIM schedulers.

Legend (Ho et al. 2020; code indexes timesteps 0..T-1, the paper's t = 1..T is code t-1):

    betas[t]             β_t, the forward-process variance of q(x_t | x_{t-1})
    alphas[t]            α_t = 1 - β_t
    alphas_cumprod[t]    ᾱ_t = Π_{i<=t} α_i  (ᾱ of "t = -1" is 1)

Every schedule is computed in float64; the schedulers store float32 copies under the
diffusers attribute names and keep the float64 arrays for their coefficient tables.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Sequence, get_args

import diffusers
import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..files import atomic_write_text
from ..memory import check_fits, schedule_bytes
from ..validation import check_choice, check_int, check_positive

BetaSchedule = Literal["linear", "quadratic", "cosine", "sigmoid", "scaled_linear", "squaredcos_cap_v2"]
VarianceType = Literal["fixed_small", "fixed_large", "learned_range", "fixed_small_log", "fixed_large_log", "learned"]
PredictionType = Literal["epsilon", "sample", "v_prediction"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]

BETA_SCHEDULES: tuple[str, ...] = get_args(BetaSchedule)
VARIANCE_TYPES: tuple[str, ...] = get_args(VarianceType)
PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)
TIMESTEP_SPACINGS: tuple[str, ...] = get_args(TimestepSpacing)
# The spacing ddpm_ext samples with: new models save it in their scheduler config, and `DDPMExtPipeline` uses it
# for a loaded config that says diffusers' default "leading" (unless the call names a spacing). "leading" with
# S < T steps starts the chain at t = (S - 1)·T/S, e.g. 900 of 1000 for 10 steps, feeding x_T ~ N(0, I) in as
# x_900; "trailing" starts at T - 1 (Lin et al. 2023, "Common diffusion noise schedules and sample steps are
# flawed", table 2). The schedulers' own default stays diffusers' "leading" (drop-in equality with diffusers).
SAMPLING_TIMESTEP_SPACING: TimestepSpacing = "trailing"
# The number of (respaced, trailing) DDPM steps that `ddpm-ext sample`, the training script's sample grid and the
# model card's snippet use: the fewest whose samples are within noise of DDPM-1000 on every measure of the sampler
# study (docs/results/samplers.md has the numbers and the command).
DEFAULT_SAMPLING_STEPS: int = 50

# The lecture's schedule names -> the names diffusers stores in its configs. We store the diffusers
# name so a config moves to diffusers' DDPMScheduler / DDIMScheduler with `from_config` unchanged.
_LECTURE_TO_DIFFUSERS = {"quadratic": "scaled_linear", "cosine": "squaredcos_cap_v2"}
_DIFFUSERS_TO_LECTURE = {v: k for k, v in _LECTURE_TO_DIFFUSERS.items()}

# diffusers' variance names that are numerically the same choice as one of the lecture's.
_VARIANCE_SYNONYMS = {"fixed_small_log": "fixed_small", "fixed_large_log": "fixed_large"}


def canonical_beta_schedule(beta_schedule: str) -> str:
    """The diffusers name of a schedule given by either its lecture or its diffusers name."""
    check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    return _LECTURE_TO_DIFFUSERS.get(beta_schedule, beta_schedule)


def lecture_beta_schedule(beta_schedule: str) -> str:
    """The lecture's name of a schedule (`linear`, `quadratic`, `cosine`, `sigmoid`)."""
    return _DIFFUSERS_TO_LECTURE.get(canonical_beta_schedule(beta_schedule), beta_schedule)


def canonical_variance_type(variance_type: str) -> str:
    """`fixed_small`, `fixed_large`, `learned_range` or `learned` for any accepted variance name."""
    check_choice("variance_type", variance_type, VARIANCE_TYPES)
    return _VARIANCE_SYNONYMS.get(variance_type, variance_type)


def cosine_alpha_bar(t: np.ndarray, s: float) -> np.ndarray:
    """ᾱ(t) = cos²(((t + s) / (1 + s)) · π/2) for t in [0, 1] (Nichol & Dhariwal 2021, eq. 17), unnormalised."""
    return np.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def make_betas(
    num_train_timesteps: int,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    trained_betas: Sequence[float] | np.ndarray | None = None,
    cosine_s: float = 0.008,
    max_beta: float = 0.999,
) -> np.ndarray:
    """The β_t schedule in float64, shape `(num_train_timesteps,)`, after checking every argument.

    - `linear`: β_t evenly spaced from `beta_start` to `beta_end` (DDPM).
    - `quadratic` (`scaled_linear`): √β_t evenly spaced from √beta_start to √beta_end, then squared.
    - `cosine` (`squaredcos_cap_v2`): β_t = min(1 - ᾱ((t+1)/T) / ᾱ(t/T), max_beta) with
      ᾱ(t) = cos²(((t + s)/(1 + s)) π/2), s = `cosine_s` (improved DDPM).
    - `sigmoid`: β_t = sigmoid(x_t) (beta_end - beta_start) + beta_start, x_t evenly spaced on [-6, 6] (GeoDiff).
    - `trained_betas`: taken as given (length `num_train_timesteps`, every value in (0, 1)).

    Raises:
        ValueError: for an unknown schedule, `num_train_timesteps` < 1, β outside (0, 1),
            `beta_start` > `beta_end`, or `trained_betas` of the wrong length or out of range.
    """
    T = check_int("num_train_timesteps", num_train_timesteps, 1)
    check_fits(schedule_bytes(T), "cpu", f"`num_train_timesteps`={T}", "DDPM uses T = 1000")

    if trained_betas is not None:
        betas = np.asarray(trained_betas, dtype=np.float64).reshape(-1)
        if betas.shape[0] != T:
            raise ValueError(
                f"`trained_betas` must have `num_train_timesteps`={T} values, got {betas.shape[0]}."
            )
        bad = ~((betas > 0) & (betas < 1))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"`trained_betas` must lie in the open interval (0, 1); trained_betas[{i}] = {float(betas[i])!r}."
            )
        return betas

    schedule = canonical_beta_schedule(beta_schedule)
    if schedule == "squaredcos_cap_v2":
        if not (0 <= cosine_s < 1):
            raise ValueError(f"`cosine_s` must be in [0, 1), got {cosine_s!r}.")
        if not (0 < max_beta < 1):
            raise ValueError(f"`max_beta` must be in the open interval (0, 1), got {max_beta!r}.")
        t = np.arange(T + 1, dtype=np.float64) / T
        alpha_bar = cosine_alpha_bar(t, cosine_s)
        return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], max_beta)

    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not (isinstance(value, (int, float)) and 0 < value < 1):
            raise ValueError(f"`{name}` must be in the open interval (0, 1), got {value!r}.")
    if beta_start > beta_end:
        raise ValueError(f"`beta_start` ({beta_start}) must not exceed `beta_end` ({beta_end}).")

    if schedule == "linear":
        return np.linspace(beta_start, beta_end, T, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    # sigmoid
    x = np.linspace(-6, 6, T, dtype=np.float64)
    return 1 / (1 + np.exp(-x)) * (beta_end - beta_start) + beta_start


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale β so that ᾱ_{T-1} = 0 (Lin et al. 2023, Algorithm 1), in float64."""
    sqrt_ab = np.sqrt(np.cumprod(1 - betas))
    first, last = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alpha_bar = sqrt_ab**2
    alphas = np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def draw_noise(
    like: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None
) -> torch.Tensor:
    """z ~ N(0, I) of `like`'s shape, device and dtype, the same numbers diffusers' `randn_tensor` draws.

    With no generator, or one generator on `like`'s device, this is the single `torch.randn` call that
    `randn_tensor` makes, without its per-call checks. A list of generators (one per image), or a CPU generator
    for an accelerator tensor, goes through `randn_tensor` itself.
    """
    device = like.device
    if device.type != "neuron" and (
        generator is None or (isinstance(generator, torch.Generator) and generator.device.type == device.type)
    ):
        return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype)
    return randn_tensor(like.shape, generator=generator, device=device, dtype=like.dtype)


def broadcast_to(coef: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a per-sample coefficient of shape (B,) as (B, 1, ..., 1) with `ndim` dimensions."""
    return coef.reshape(coef.shape[0], *([1] * (ndim - 1)))


# diffusers' schedulers that `DDPMExtPipeline`'s loop samples correctly from a DDPM-trained ε-model (each is
# tested with an exact-ε Gaussian model in tests/pipelines/test_scheduler_swaps.py). Left out: Heun and KDPM2
# (/Ancestral), whose samples came out too wide at 50 and 200 steps in that test; DPMSolverSDE (needs
# torchsde); EDMEuler (feeds the model EDM's c_noise, not a DDPM timestep); DDIMInverse, LCM, TCD and the
# flow-matching schedulers (other parameterisations or no step from noise to data).
COMPATIBLE_DIFFUSERS_SCHEDULERS: tuple[str, ...] = (
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
)

# Private keys of a scheduler config (see `to_diffusers_config`).
_EXT_CLASS_KEY = "_ddpm_ext_class_name"
_EXT_CONFIG_KEY = "_ddpm_ext_config"
_BETAS_FOR_DIFFUSERS_KEY = "_ddpm_ext_betas_for_diffusers"
# ddpm_ext's options that no diffusers scheduler takes. They live in the private dict `_ddpm_ext_config` of the
# config, in memory as on disk: diffusers' `from_config` drops private keys silently (and keeps them as hidden
# keys of the new scheduler's config), so `AnyDiffusersScheduler.from_config(scheduler.config)` prints no
# "not expected and will be ignored" warning, and swapping back to ddpm_ext's scheduler restores them.
EXT_ONLY_OPTIONS: tuple[str, ...] = ("cosine_s", "max_beta")
# Keys that describe where a saved config came from, not the scheduler: a loaded scheduler's config drops them,
# so that `save_config` -> `from_pretrained` -> `config` equals the original config.
_PROVENANCE_KEYS = ("_class_name", "_diffusers_version", _EXT_CLASS_KEY)


def _diffusers_computes(beta_schedule: str, cosine_s: float, max_beta: float) -> bool:
    """Whether every diffusers scheduler computes the same β from the config's keys (cosine: its s and cap)."""
    if beta_schedule == "squaredcos_cap_v2":
        return cosine_s == 0.008 and max_beta == 0.999
    return beta_schedule in ("linear", "scaled_linear")


def from_saved_config(config: dict[str, Any], kwargs: dict[str, Any] | None = None) -> tuple[dict, dict, dict]:
    """Undo `to_diffusers_config`: split a config (saved or in memory) into what diffusers' `extract_init_dict`
    handles, ddpm_ext's own options ([`EXT_ONLY_OPTIONS`]) and the remaining `kwargs` of a `from_config` call.

    The private dict's other keys (options diffusers' DDIM lacks, e.g. `variance_type`) go back to the top level,
    diffusers' stand-in β (`trained_betas` flagged by `_ddpm_ext_betas_for_diffusers`) is dropped (the options
    recompute β), and `cosine_s` / `max_beta` are taken from the private dict, from the top level (a hand-written
    dict) or from `kwargs`, later ones winning. A config without those keys (diffusers' own) comes back unchanged.

    Returns:
        `(config, ext_options, kwargs)`: new dicts; the inputs are not modified.
    """
    config, kwargs = dict(config), dict(kwargs or {})
    if config.pop(_BETAS_FOR_DIFFUSERS_KEY, False):
        config["trained_betas"] = None
        config["_use_default_values"] = [k for k in config.get("_use_default_values", []) if k != "trained_betas"]
    private = dict(config.pop(_EXT_CONFIG_KEY, None) or {})
    ext_options = {k: private.pop(k) for k in EXT_ONLY_OPTIONS if k in private}
    config.update(private)
    for source in (config, kwargs):
        ext_options.update({k: source.pop(k) for k in EXT_ONLY_OPTIONS if k in source})
    return config, ext_options, kwargs


@dataclass
class StepOutput(BaseOutput):
    """The fields both schedulers' `step` returns (diffusers' `DDPMSchedulerOutput` / `DDIMSchedulerOutput`).

    Args:
        prev_sample (`torch.Tensor` of shape `(B, C, H, W)`): x_prev, the input of the next step (x_0 after the last).
        pred_original_sample (`torch.Tensor` of shape `(B, C, H, W)`, *optional*): x̂_0 predicted from x_t.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # BaseOutput.__post_init__ fills the same entries after introspecting the dataclass fields on every call;
        # these two fields are known.
        for name, value in (("prev_sample", self.prev_sample), ("pred_original_sample", self.pred_original_sample)):
            if value is not None:
                OrderedDict.__setitem__(self, name, value)


class ScheduleMixin(SchedulerMixin):
    """What the DDPM and DDIM schedulers share: the β schedule, the timestep grid, x̂_0 and the forward process.

    Subclasses call `_init_schedule()` from their `@register_to_config` `__init__`, and name the diffusers class
    that vanilla diffusers loads in their place (`_diffusers_class_name`).
    """

    order = 1
    init_noise_sigma = 1.0
    _diffusers_class_name: str = ""
    _compatibles = list(COMPATIBLE_DIFFUSERS_SCHEDULERS)
    _ext_classes: dict[str, type] = {}  # every ddpm_ext scheduler class, by name (filled by __init_subclass__)
    ignore_for_config = list(EXT_ONLY_OPTIONS)  # registered under the private `_ddpm_ext_config` instead

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls._diffusers_class_name:
            ScheduleMixin._ext_classes[cls.__name__] = cls

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        """ddpm_ext's schedulers and the diffusers schedulers that `DDPMExtPipeline` samples correctly with."""
        theirs = [getattr(diffusers, name) for name in cls._compatibles if hasattr(diffusers, name)]
        return list(ScheduleMixin._ext_classes.values()) + theirs

    # ----------------------------------------------------------------------------------------------
    # Config on disk: the one translation to diffusers' class (used by `save_pretrained` and the pipeline's save)
    # ----------------------------------------------------------------------------------------------
    def to_diffusers_config(self) -> dict[str, Any]:
        """The config as written to disk, loadable by diffusers' own class with the same β.

        `_class_name` is diffusers' class (`DDPMScheduler` / `DDIMScheduler`) and ddpm_ext's class goes in a private
        key; options diffusers' class does not know (`cosine_s`, `max_beta`, ...) go into a private dict, so
        diffusers loads without warnings. When diffusers would compute other β from the remaining keys (a cosine
        offset or cap it does not know), the β are also written as `trained_betas`, flagged so that ddpm_ext drops
        them again on load (`from_saved_config`).
        """
        config = {k: v for k, v in dict(self.config).items() if k not in ("_use_default_values", *_PROVENANCE_KEYS)}
        theirs = getattr(diffusers, self._diffusers_class_name)
        config["_class_name"] = theirs.__name__
        config[_EXT_CLASS_KEY] = type(self).__name__
        known = set(inspect.signature(theirs.__init__).parameters)
        private = dict(config.pop(_EXT_CONFIG_KEY, None) or {})
        private.update({k: config.pop(k) for k in list(config) if not k.startswith("_") and k not in known})
        config[_EXT_CONFIG_KEY] = private
        vanilla = theirs.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        if not torch.allclose(vanilla.betas.double(), torch.from_numpy(self._betas64), rtol=1e-6, atol=1e-9):
            config["trained_betas"] = [float(b) for b in self._betas64]
            config[_BETAS_FOR_DIFFUSERS_KEY] = True
        return config

    def save_config(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write `scheduler_config.json` (see `to_diffusers_config`) atomically; diffusers' class loads it too.

        Example:

        ```py
        >>> import tempfile
        >>> from diffusers import DDPMScheduler
        >>> from ddpm_ext import DDPMExtScheduler
        >>> folder = tempfile.mkdtemp()
        >>> DDPMExtScheduler(beta_schedule="cosine", cosine_s=0.02).save_pretrained(folder)
        >>> bool((DDPMScheduler.from_pretrained(folder).betas == DDPMExtScheduler.from_pretrained(folder).betas).all())
        True

        ```
        """
        if push_to_hub:
            raise ValueError("`push_to_hub` is not handled by `save_pretrained`; save, then upload the folder.")
        if os.path.isfile(save_directory):
            raise ValueError(f"`save_directory` {os.fspath(save_directory)!r} is a file, not a folder.")
        text = json.dumps(self.to_diffusers_config(), indent=2, sort_keys=True) + "\n"
        atomic_write_text(Path(save_directory) / self.config_name, text)

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> tuple[dict, dict, dict]:
        """diffusers' `extract_init_dict` (the heart of `from_config` / `from_pretrained`), after undoing the
        on-disk translation of `to_diffusers_config` ([`from_saved_config`]); ddpm_ext's own options go to
        `__init__` from the private `_ddpm_ext_config`, and the provenance keys of a saved file (`_class_name`,
        `_diffusers_version`, `_ddpm_ext_class_name`) are not kept in the new config."""
        config_dict, ext_options, kwargs = from_saved_config(config_dict, kwargs)
        init_dict, unused_kwargs, hidden = super().extract_init_dict(config_dict, **kwargs)
        init_dict.update(ext_options)
        hidden = {k: v for k, v in hidden.items() if k not in _PROVENANCE_KEYS and k not in EXT_ONLY_OPTIONS}
        return init_dict, unused_kwargs, hidden

    def _init_schedule(self, *, cosine_s: float, max_beta: float) -> None:
        # ddpm_ext's own options, in the private dict that diffusers' schedulers ignore silently (EXT_ONLY_OPTIONS)
        self.register_to_config(**{_EXT_CONFIG_KEY: {"cosine_s": cosine_s, "max_beta": max_beta}})
        cfg = self.config
        canonical = canonical_beta_schedule(cfg.beta_schedule)
        variance = canonical_variance_type(getattr(cfg, "variance_type", "fixed_small"))
        check_choice("prediction_type", cfg.prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", cfg.timestep_spacing, TIMESTEP_SPACINGS)
        check_positive("clip_sample_range", cfg.clip_sample_range)
        check_positive("sample_max_value", cfg.sample_max_value)
        check_positive("dynamic_thresholding_ratio", cfg.dynamic_thresholding_ratio, upper=1.0)
        check_int("steps_offset", cfg.steps_offset, 0)

        betas = make_betas(
            cfg.num_train_timesteps,
            cfg.beta_schedule,
            cfg.beta_start,
            cfg.beta_end,
            cfg.trained_betas,
            cosine_s,
            max_beta,
        )
        # Store diffusers' names so configs move to diffusers' schedulers with `from_config`.
        if canonical != cfg.beta_schedule:
            self.register_to_config(beta_schedule=canonical)
        # diffusers' schedulers know neither `cosine_s` / `max_beta` nor (most of them) "sigmoid": for such a
        # schedule the config also carries β as `trained_betas`, flagged as a stand-in, so that
        # `AnyDiffusersScheduler.from_config(scheduler.config)` samples with this very schedule; ddpm_ext's
        # `from_config` drops the stand-in and recomputes β from the options (which may have been changed).
        if cfg.trained_betas is None and not _diffusers_computes(canonical, cosine_s, max_beta):
            # (diffusers' `from_config` resets keys listed as defaults in `_use_default_values`: unlist β)
            unlisted = {}
            if "_use_default_values" in cfg:
                unlisted["_use_default_values"] = [k for k in cfg["_use_default_values"] if k != "trained_betas"]
            self.register_to_config(
                trained_betas=[float(b) for b in betas], **unlisted, **{_BETAS_FOR_DIFFUSERS_KEY: True}
            )
        if cfg.rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        if cfg.trained_betas is not None and not isinstance(cfg.trained_betas, list):
            self.register_to_config(trained_betas=[float(b) for b in np.asarray(cfg.trained_betas).reshape(-1)])
        self.variance_kind = variance  # the lecture's choice behind diffusers' name

        self._betas64 = betas
        self._alphas_cumprod64 = np.cumprod(1.0 - betas)
        self.betas = torch.from_numpy(betas).float()
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.from_numpy(self._alphas_cumprod64).float()
        self._tables: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

        self.num_inference_steps: int | None = None
        self.custom_timesteps = False
        self._set_grid(np.arange(cfg.num_train_timesteps)[::-1].copy())

    # ----------------------------------------------------------------------------------------------
    # Timestep grid
    # ----------------------------------------------------------------------------------------------
    def _spaced_timesteps(self, num_inference_steps: int) -> np.ndarray:
        """Timesteps for `num_inference_steps` steps with the configured spacing, descending."""
        T, S = self.config.num_train_timesteps, num_inference_steps
        spacing = self.config.timestep_spacing
        if spacing == "linspace":
            return np.linspace(0, T - 1, S).round()[::-1].astype(np.int64)
        if spacing == "leading":
            return (np.arange(0, S) * (T // S))[::-1].astype(np.int64) + self.config.steps_offset
        # trailing
        return np.round(np.arange(T, 0, -T / S)).astype(np.int64) - 1

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Set the timesteps used for sampling (run before the sampling loop).

        Args:
            num_inference_steps (`int`, *optional*):
                Number of sampling steps S, 1 <= S <= `num_train_timesteps`, spaced by `timestep_spacing`.
            device (`str` or `torch.device`, *optional*):
                Device for `self.timesteps`.
            timesteps (`list[int]`, *optional*):
                Custom strictly descending timesteps in [0, `num_train_timesteps`); excludes `num_inference_steps`.

        Every step goes from a kept timestep to the next kept one (x_0 after the last), and every
        coefficient of that step, variance included, is computed from the kept ᾱ values (improved
        DDPM's respacing): β'_t = 1 - ᾱ_t / ᾱ_prev.

        Raises:
            ValueError: for a count < 1 or above `num_train_timesteps`, both or neither argument,
                or custom timesteps that are not strictly descending in range.
        """
        T = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("Pass exactly one of `num_inference_steps` or `timesteps`.")
        if timesteps is not None:
            grid = np.asarray([int(t) for t in timesteps], dtype=np.int64)
            if grid.ndim != 1 or grid.size == 0:
                raise ValueError(f"`timesteps` must be a non-empty list of integers, got {timesteps!r}.")
            if (np.diff(grid) >= 0).any():
                raise ValueError(f"`timesteps` must be strictly descending, got {grid.tolist()}.")
            if grid[0] >= T or grid[-1] < 0:
                raise ValueError(f"`timesteps` must lie in [0, {T}) (`num_train_timesteps`), got {grid.tolist()}.")
            self.custom_timesteps = True
            self.num_inference_steps = len(grid)
        else:
            check_int("num_inference_steps", num_inference_steps, 1, T)
            grid = self._spaced_timesteps(int(num_inference_steps))
            if grid[0] >= T or grid[-1] < 0 or (np.diff(grid) >= 0).any():
                raise ValueError(
                    f"`timestep_spacing`={self.config.timestep_spacing!r} with `steps_offset`="
                    f"{self.config.steps_offset} gives invalid timesteps {grid.tolist()} for "
                    f"`num_inference_steps`={num_inference_steps} and `num_train_timesteps`={T}."
                )
            self.custom_timesteps = False
            self.num_inference_steps = int(num_inference_steps)
        self._set_grid(grid, device)

    def _set_grid(self, grid: np.ndarray, device: str | torch.device | None = None) -> None:
        """Store the descending timestep grid and precompute every per-step coefficient in float64."""
        self.timesteps = torch.from_numpy(grid.copy()).to(device)
        self._index_of = {int(t): i for i, t in enumerate(grid)}
        self._scalar_cache: dict[tuple, tuple[torch.Tensor, ...]] = {}
        ab = self._alphas_cumprod64
        ab_t = ab[grid]
        ab_prev = np.concatenate([ab[grid[1:]], [self._final_alpha_cumprod()]])
        self._prev_timesteps = np.concatenate([grid[1:], [-1]])
        self._step_coefficients(ab_t, ab_prev)

    def _final_alpha_cumprod(self) -> float:
        """ᾱ of the timestep after the last kept one (1: the step lands on x_0)."""
        return 1.0

    def _step_coefficients(self, ab_t: np.ndarray, ab_prev: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _step_index(self, timestep: int | torch.Tensor) -> int:
        """Position of `timestep` in `self.timesteps`."""
        t = int(timestep)
        try:
            return self._index_of[t]
        except KeyError:
            raise ValueError(
                f"`timestep` {t} is not one of the scheduler's timesteps {self.timesteps.tolist()[:8]}...; "
                "call `set_timesteps` first or pass a timestep from `scheduler.timesteps`."
            ) from None

    def previous_timestep(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """The timestep the step from `timestep` lands on, as a 0-dim tensor like diffusers' (-1 means x_0)."""
        return torch.tensor(int(self._prev_timesteps[self._step_index(timestep)]))

    # ----------------------------------------------------------------------------------------------
    # Model output -> x̂_0, and the forward process
    # ----------------------------------------------------------------------------------------------
    def _as_scalars(self, key: tuple, floats: NamedTuple, like: torch.Tensor) -> NamedTuple:
        """`floats` (one step's coefficients) with every float as a 0-dim CPU tensor of `like`'s dtype; cached.

        A Python number in `x * c` is wrapped into a new tensor on every call; a ready 0-dim CPU tensor of
        `like`'s dtype is passed to the kernel the same way (as a host-side scalar, also for CUDA tensors: no copy,
        no sync) and gives the same bits. That holds for
        float32 and float64; for other dtypes (float16, bfloat16: PyTorch computes them in float32, and a
        float32 0-dim tensor would be rounded to the sample's dtype on the CPU) the Python floats are kept.
        Non-float fields (flags) are kept as they are. `key` names the step; `set_timesteps` clears the cache.
        """
        dtype = like.dtype
        hit = self._scalar_cache.get((key, dtype))
        if hit is None:
            exact = dtype in (torch.float32, torch.float64)
            hit = type(floats)(*(torch.tensor(v, dtype=dtype) if exact and type(v) is float else v for v in floats))
            self._scalar_cache[(key, dtype)] = hit
        return hit

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """Identity: DDPM and DDIM feed x_t to the model unscaled (kept for scheduler interchangeability)."""
        return sample

    def _pred_x0_eps(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        ab_t: float | torch.Tensor,
        roots: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x̂_0 and ε̂ from the model output at ᾱ_t = `ab_t` (Ho et al. eq. 15; Salimans & Ho for v).

        `ab_t` is a float for one sampling step, or a tensor broadcastable to `sample` for per-image timesteps.
        `roots` are (√ᾱ_t, √(1 - ᾱ_t)) when the caller has them ready (see `_as_scalars`).
        """
        pt = self.config.prediction_type
        sa, sb = roots if roots is not None else (ab_t**0.5, (1.0 - ab_t) ** 0.5)
        if pt == "epsilon":
            return (sample - sb * model_output) / sa, model_output
        if pt == "sample":
            return model_output, (sample - sa * model_output) / sb
        return sa * sample - sb * model_output, sa * model_output + sb * sample  # v_prediction

    def _clip_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding (Saharia et al. 2022) or clipping of x̂_0 to ±`clip_sample_range`."""
        if self.config.thresholding:
            return self._threshold_sample(x0)
        if self.config.clip_sample:
            r = self.config.clip_sample_range
            return x0.clamp(-r, r)
        return x0

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """Per image, s = quantile(|x̂_0|, ratio) clamped to [1, sample_max_value]; x̂_0 -> clamp(x̂_0, -s, s) / s."""
        dtype = sample.dtype
        b = sample.shape[0]
        flat = sample.reshape(b, -1)
        if dtype not in (torch.float32, torch.float64):
            flat = flat.float()
        s = torch.quantile(flat.abs(), self.config.dynamic_thresholding_ratio, dim=1)
        s = s.clamp(min=1, max=self.config.sample_max_value).unsqueeze(1)
        return (torch.clamp(flat, -s, s) / s).reshape(sample.shape).to(dtype)

    def _table(self, name: str, values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        """A float64-computed per-timestep table, cast once to `like`'s device and dtype and cached."""
        key = (name, like.device, like.dtype)
        table = self._tables.get(key)
        if table is None:
            table = torch.from_numpy(values).to(device=like.device, dtype=like.dtype)
            self._tables[key] = table
        return table

    def _timestep_indices(self, timesteps: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """`timesteps` as a (B,) long tensor on `like`'s device, after checking that every t is in [0, T).

        Indexing a table with t = -1 would silently read ᾱ_{T-1}; the check costs one host sync per call.
        """
        t = torch.as_tensor(timesteps, device=like.device).long().reshape(-1)
        T = self.config.num_train_timesteps
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= T):
            raise ValueError(
                f"`timesteps` must lie in [0, {T - 1}] (`num_train_timesteps`={T}), got "
                f"{t.tolist()[:8]}{'...' if t.numel() > 8 else ''}."
            )
        if t.numel() == 1 and like.shape[0] != 1:
            t = t.expand(like.shape[0])
        return t

    def _per_sample(self, name: str, values: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """`values[t]` broadcast against `like` (B, ...); `t` comes from `_timestep_indices`."""
        return broadcast_to(self._table(name, values, like)[t], like.ndim)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor
    ) -> torch.Tensor:
        """Sample q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I): x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε.

        Args:
            original_samples (`torch.Tensor`): x_0, shape (B, C, H, W).
            noise (`torch.Tensor`): ε ~ N(0, I), same shape.
            timesteps (`torch.IntTensor`): t per sample, shape (B,) (or one value for all), in [0, T).

        Raises:
            ValueError: for a timestep outside [0, `num_train_timesteps`) (t = -1 would wrap to T - 1).
        """
        ab = self._alphas_cumprod64
        t = self._timestep_indices(timesteps, original_samples)
        a = self._per_sample("sqrt_alphas_cumprod", np.sqrt(ab), t, original_samples)
        b = self._per_sample("sqrt_one_minus_alphas_cumprod", np.sqrt(1 - ab), t, original_samples)
        return a * original_samples + b * noise

    def q_mean_variance(
        self, x_start: torch.Tensor, timesteps: torch.IntTensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean √ᾱ_t x_0, variance 1 - ᾱ_t and log-variance of q(x_t | x_0) (Ho et al. eq. 4).

        Args:
            x_start (`torch.Tensor`): x_0, shape (B, C, H, W).
            timesteps (`torch.IntTensor`): t per sample on the full chain 0..T-1, shape (B,) (or one value for all).

        Returns:
            `(mean, variance, log_variance)`; the variances have shape (B, 1, ..., 1).
        """
        ab = self._alphas_cumprod64
        t = self._timestep_indices(timesteps, x_start)
        mean = self._per_sample("sqrt_alphas_cumprod", np.sqrt(ab), t, x_start) * x_start
        var = self._per_sample("one_minus_alphas_cumprod", 1.0 - ab, t, x_start)
        log_var = self._per_sample("log_one_minus_alphas_cumprod", np.log(1.0 - ab), t, x_start)
        return mean, var, log_var

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        """The v-prediction target v = √ᾱ_t ε - √(1 - ᾱ_t) x_0 (Salimans & Ho 2022); `sample` is x_0."""
        ab = self._alphas_cumprod64
        t = self._timestep_indices(timesteps, sample)
        a = self._per_sample("sqrt_alphas_cumprod", np.sqrt(ab), t, sample)
        b = self._per_sample("sqrt_one_minus_alphas_cumprod", np.sqrt(1 - ab), t, sample)
        return a * noise - b * sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps
