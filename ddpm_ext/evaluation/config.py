"""What an evaluation does: [`EvaluationConfig`], its defaults, and the checks that need no pipeline or data.

[`ddpm_ext.evaluation.evaluate.evaluate`] runs a config; `ddpm-ext evaluate` builds one from its options (same names,
`--name`) and takes its defaults from [`EvaluationConfig.defaults`]. The checks that need the pipeline or the data
run in [`ddpm_ext.evaluation.evaluate.load_evaluation`], still before any long computation.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from ..cpu_threads import parse_cpu_threads
from ..schedulers import VARIANCE_TYPES
from ..validation import check_choice, check_int, check_number, check_path, check_seed
from .features import FEATURE_EXTRACTORS
from .samplers import SamplerSpec, parse_sampler

__all__ = ["CLIP_DENOISED_CHOICES", "DIGIT_JUDGE_CHOICES", "EvaluationConfig"]

CLIP_DENOISED_CHOICES = ("auto", "true", "false")
DIGIT_JUDGE_CHOICES = ("auto", "on", "off")


@dataclass
class EvaluationConfig:
    """What [`evaluate`] does; `ddpm-ext evaluate` builds one from its options (same names, `--name`).

    Cheap checks run here, on construction (types, ranges, sampler specs); checks that need the pipeline or the
    data run in [`load_evaluation`], still before any long computation.

    Example:

    ```py
    >>> EvaluationConfig("outputs/mnist", num_samples=50, samplers=["ddim:10:0"]).samplers
    [SamplerSpec(kind='ddim', steps=10, eta=0.0, variance_type=None)]
    >>> EvaluationConfig("outputs/mnist", num_bpd_images=-1)
    Traceback (most recent call last):
    ...
    ValueError: `num_bpd_images` must be an integer >= 0, got -1.

    ```
    """

    pipeline: str | os.PathLike  # a pipeline folder or a Hub repo id: what is evaluated
    revision: str | None = None  # Hub revision; None is "main" (a folder has none)
    dataset: str = "mnist-5k"  # real images: mnist-5k ships offline and has a held-out test split
    split: str | None = None  # None: "test" where the built-in data set has one (held out), else "train"
    image_column: str | None = None  # found automatically in a Hub data set
    max_real_images: int | None = None  # None: every real image of the split (the reference is cached once)
    num_bpd_images: int = 100  # a seeded subset; each bits/dim row gives its standard error
    variance_types: list[str] | None = None  # None: fixed_small, fixed_large (+ learned_range when learned)
    clip_denoised: str = "auto"  # "auto" scores p_θ as the sampler draws from it (the scheduler's clip_sample)
    num_samples: int = 500  # the size of mnist-5k's test split: FID against it is not starved on one side
    samplers: list[SamplerSpec | str] = field(default_factory=lambda: ["ddim:50:0"])  # fast and deterministic
    kid_subset_size: int = 100  # torchmetrics' usual subset size; must fit num_samples and the real images
    kid_subsets: int = 100  # enough subsets for a stable mean and a meaningful spread
    feature_extractor: str = "efficientnet-lite0"  # the extractor that works offline (not comparable to papers)
    inception_weights: str | None = None  # local Inception weights for feature_extractor="inception"
    stats_cache_dir: str | None = None  # None: $DDPM_EXT_FID_STATS_DIR, else ~/.cache/ddpm_ext/fid_stats
    no_stats_cache: bool = False  # the cache is keyed by data, split, size and extractor: safe to reuse
    batch_size: int = 100  # images per sampling call: fits a CPU's memory for 32x32 models
    seed: int = 0  # data subsets, bits/dim noise, samples (image i as `ddpm-ext sample --seed`) and KID
    num_grid_images: int = 64  # an 8x8 grid per sampler
    device: str = "auto"  # CUDA when available, else the CPU
    output_dir: str | os.PathLike | None = None  # None: return (and print) the results only
    no_progress: bool = False  # progress bars on by default: sampling takes minutes
    nearest_k: int = 5  # k of precision/recall/density/coverage, Naeem et al.'s recommendation; 0 skips them
    digit_judge: str = "auto"  # "auto": on for 1-channel (grayscale) models, the judge's domain; "on" / "off"
    update_model_card: bool = False  # the card is the user's file: rewrite its metrics section only when asked
    overwrite: bool = False  # results already in output_dir are the user's: replaced only when asked
    guidance_scales: list[float] | None = None  # conditional only; None: [1.0], p(x | y) as `ddpm-ext sample`
    cpu_threads: str | int = "auto"  # "auto": fewer threads while other processes need the cores; N: exactly N

    def __post_init__(self) -> None:
        if not isinstance(self.pipeline, (str, os.PathLike)) or not str(self.pipeline).strip():
            raise ValueError(f"`pipeline` must be a folder or a Hub repo id, got {self.pipeline!r}.")
        if self.max_real_images is not None:
            check_int("max_real_images", self.max_real_images, 2)
        for name, low in (("num_bpd_images", 0), ("num_samples", 0), ("kid_subset_size", 2), ("kid_subsets", 1),
                          ("batch_size", 1), ("num_grid_images", 0), ("nearest_k", 0)):
            setattr(self, name, check_int(name, getattr(self, name), low))
        self.seed = check_seed("seed", self.seed)
        if self.output_dir is not None:
            check_path("output_dir", self.output_dir)
        if self.variance_types is not None:
            self.variance_types = [check_choice("variance_types", v, VARIANCE_TYPES) for v in self.variance_types]
        if isinstance(self.clip_denoised, bool):
            self.clip_denoised = str(self.clip_denoised).lower()
        check_choice("clip_denoised", self.clip_denoised, CLIP_DENOISED_CHOICES)
        check_choice("feature_extractor", self.feature_extractor, FEATURE_EXTRACTORS)
        check_choice("digit_judge", self.digit_judge, DIGIT_JUDGE_CHOICES)
        self.cpu_threads = parse_cpu_threads(self.cpu_threads)
        for name in ("update_model_card", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        self.samplers = [parse_sampler(s) for s in (self.samplers or [])]
        if len({s.spec for s in self.samplers}) != len(self.samplers):
            raise ValueError(f"`--samplers` lists a sampler twice: {[s.spec for s in self.samplers]}.")
        if self.guidance_scales is not None:
            scales = self.guidance_scales
            if isinstance(scales, (str, bytes)) or not isinstance(scales, (list, tuple)) or not scales:
                raise ValueError(
                    f"`guidance_scales` must be a non-empty list of finite numbers >= 0 (or None), got "
                    f"{self.guidance_scales!r}."
                )
            self.guidance_scales = [check_number("guidance_scales", w, 0) for w in self.guidance_scales]
            if len(set(self.guidance_scales)) != len(self.guidance_scales):
                raise ValueError(f"`--guidance_scales` lists a scale twice: {self.guidance_scales}.")

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> EvaluationConfig:
        """The config of `ddpm-ext evaluate`'s parsed options (other attributes, e.g. `command`, are ignored)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every option's default (the command line takes its defaults from here)."""
        return {f.name: f.default_factory() if f.default is MISSING else f.default for f in fields(cls)
                if f.default is not MISSING or f.default_factory is not MISSING}

    @property
    def do_samples(self) -> bool:
        """Whether FID/KID are computed (some sampler and `num_samples` > 0)."""
        return bool(self.samplers) and self.num_samples > 0
