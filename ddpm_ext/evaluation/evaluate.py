"""Evaluate a trained pipeline: bits/dim on held-out images and FID/KID of samples for chosen samplers.

Run it as `ddpm-ext evaluate` (the command line is in `ddpm_ext/commands/evaluate.py`), or from Python with an
[`EvaluationConfig`]: `evaluate(EvaluationConfig("outputs/mnist", num_samples=100))`. [`evaluate`] is five
named steps that can also be called one by one: [`load_evaluation`] (pipeline, data and every check, before
any long work), [`score_likelihood`] (bits/dim), [`sample_images`] and [`score_samples`] (FID/KID per sampler),
[`write_results`] (results.json, results.md, one grid per sampler).

```bash
# bits/dim under σ² = β̃ and β on 100 held-out digits; FID/KID of 500 samples of DDIM-50 (η = 0) and of
# 1000-step DDPM, against the 500 test digits of mnist-5k; JSON, markdown and one sample grid per sampler
ddpm-ext evaluate outputs/mnist --dataset mnist-5k --num_bpd_images 100 \
    --variance_types fixed_small fixed_large --num_samples 500 --samplers ddim:50:0 ddpm:1000 \
    --output_dir outputs/mnist/eval

# a quick look: 2-3 min on two busy CPU cores for the 0.64 M mnist-small model, most of it the features
# of the 500 reference digits, which are cached for the next run (then under a minute)
ddpm-ext evaluate outputs/mnist --num_bpd_images 4 --num_samples 50 --kid_subset_size 25 \
    --samplers ddim:10:0 --output_dir /tmp/eval

# the same numbers plus precision/recall/density/coverage with k = 5 (the default), the digit judge's columns
# (auto: a grayscale model) and the table written into outputs/mnist/README.md between its metrics markers
ddpm-ext evaluate outputs/mnist --num_samples 500 --samplers ddpm:1000 ddim:50:0 --nearest_k 5 --update_model_card
```

Sampler specs: `ddpm:STEPS[:VARIANCE]` (ancestral DDPM, σ² of the pipeline or VARIANCE = fixed_small /
fixed_large / learned_range), `ddpm-noz:STEPS` (DDPM's mean only, without the added noise z), `ddim:STEPS[:ETA]`
(DDIM with η in [0, 1], default 0), `dpmpp:STEPS` (DPM-Solver++(2M)) and `unipc:STEPS` (UniPC), diffusers' solvers
with the model's x̂_0 clipping ([`ddpm_ext.fast_sampler`]). Optional suffixes: `:spacing=leading|trailing|linspace`
(default: the pipeline's, "trailing" for a "leading" config) and, for DDIM, `:eps=consistent|model` (default:
consistent, ε̂ recomputed from the clipped x̂_0; `model` is diffusers' DDIMPipeline). Each results row records the
spacing, the ε̂ and the x̂_0 clipping actually used. Every sampler is built from the pipeline's scheduler config
([`DDPMExtScheduler`] / [`DDIMExtScheduler`]`.from_config`, [`ddpm_ext.fast_sampler`]) and starts from the same x_T per image (image i
has its own generator, [`ddpm_ext.seeding.image_generators`], the rule of every command), so rows differ only
by the sampler.

Each sampler's row also has precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et
al. 2020) on the same features as FID/KID (k = `--nearest_k`, default 5; skipped with the reason, and a
warning, when the samples or the real images number fewer than k + 2), and the mean pixel value in [0, 1] (a
cheap check of grey backgrounds). For MNIST-like data the digit judge
([`ddpm_ext.evaluation.digit_classifier`], images resized to 28×28) adds its classifier Inception Score, the
digits present and the normalized entropy of the predicted digits, per sampler and for the real reference
images (the ceiling). The rule, `--digit_judge`: `auto` (default) turns it on for 1-channel (grayscale)
models, `on` requires one, `off` skips it. `--update_model_card` writes a compact table of the results, the
command and the date between the metrics markers of `<pipeline folder>/README.md`
([`ddpm_ext.evaluation.report`]).

A class-conditional pipeline (classifier-free guidance, [`ddpm_ext.pipelines.guidance`]) gets one row per sampler
and guidance scale w (`--guidance_scales`, default 1: p(x | y)). Image i keeps its x_T and is asked for class
i mod K ([`~pipelines.guidance.balanced_class_labels`]), so every class is asked for equally often and the rows
differ only by the sampler and w; DDIM samplers recompute ε̂ from the clipped x̂_0 (`use_clipped_model_output=True`), without which
guidance loses the class. When the K classes are the digits '0'..'9' the digit judge adds the **class accuracy**,
the fraction of samples it reads as their requested digit (otherwise the row says why it is skipped). Bits/dim
is scored under the null class ∅ (id K): the unconditional p(x) that label dropout trains.

```bash
# class accuracy, FID/KID and the judge's scores of 500 samples (50 per digit) at w = 0, 1, 2, 4
ddpm-ext evaluate outputs/mnist-cond --num_samples 500 --samplers ddim:50:1 --guidance_scales 0 1 2 4
```

FID and KID use [`ddpm_ext.metrics`]: EfficientNet-Lite0 features by default (offline; **not comparable to
published Inception FIDs**, and labelled so everywhere), or Inception-v3 with `--feature_extractor inception`
when torch-fidelity and its weights are available. The features of the real images are cached per data set,
split, extractor and image size (see `--stats_cache_dir`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import time
import warnings
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..files import atomic_write_text
from ..images import normalize, save_image_grid, to_uint8
from ..pipelines.guidance import balanced_class_labels
from ..seeding import image_generators
from ..cpu_threads import AdaptiveThreads, parse_cpu_threads
from ..validation import check_choice, check_int, check_number, learns_variance, resolve_device
from .report import evaluation_command, update_model_card

__all__ = [
    "DIGIT_JUDGE_CHOICES",
    "PRDC_KEYS",
    "SAMPLER_KINDS",
    "EvaluationConfig",
    "EvaluationRun",
    "SampledImages",
    "SamplerSpec",
    "draw_samples",
    "evaluate",
    "judge_scores",
    "load_evaluation",
    "mean_pixel",
    "parse_sampler",
    "reference_features",
    "results_markdown",
    "sample_images",
    "score_likelihood",
    "score_reference",
    "score_samples",
    "write_results",
]

SAMPLER_KINDS = ("ddpm", "ddpm-noz", "ddim", "dpmpp", "unipc")
_SAMPLER_GRAMMAR = (
    "ddpm:STEPS[:VARIANCE], ddpm-noz:STEPS, ddim:STEPS[:ETA], dpmpp:STEPS or unipc:STEPS, each optionally followed "
    "by :spacing=leading|trailing|linspace, (ddim) :eps=consistent|model and :ag=W (autoguidance scale W >= 1 "
    "with the pipeline's guide; default: the pipeline's own) "
    "(e.g. ddpm:1000, ddpm-noz:100, ddim:50:0, ddim:10:0:spacing=leading:eps=model, dpmpp:20, ddpm:50:ag=1)"
)
_SAMPLER_OPTIONS = {"spacing": ("leading", "trailing", "linspace"), "eps": ("consistent", "model"), "ag": None}


# ----------------------------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler to evaluate: `kind` in [`SAMPLER_KINDS`], `steps`, DDIM's `eta`, DDPM's `variance_type`, and
    the pipeline options `timestep_spacing`, (DDIM) `clipped_eps` (`use_clipped_model_output`) and
    `autoguidance_scale`; `None` leaves the pipeline's default ("trailing" for a "leading" config, the consistent
    ε̂, the guide's saved w). `dpmpp` is DPM-Solver++(2M) and
    `unipc` UniPC, diffusers' solvers swapped in with the model's x̂_0 clipping ([`ddpm_ext.fast_sampler`])."""

    kind: str
    steps: int
    eta: float = 0.0
    variance_type: str | None = None
    timestep_spacing: str | None = field(default=None, repr=False)
    clipped_eps: bool | None = field(default=None, repr=False)
    autoguidance_scale: float | None = field(default=None, repr=False)

    def _options(self) -> list[tuple[str, str]]:
        options = [("spacing", self.timestep_spacing)] if self.timestep_spacing else []
        if self.clipped_eps is not None:
            options.append(("eps", "consistent" if self.clipped_eps else "model"))
        if self.autoguidance_scale is not None:
            options.append(("ag", f"{self.autoguidance_scale:g}"))
        return options

    @property
    def spec(self) -> str:
        """The canonical spec string, e.g. `"ddim:50:0"` or `"ddim:10:0:spacing=leading:eps=model"`."""
        if self.kind == "ddim":
            head = f"ddim:{self.steps}:{self.eta:g}"
        else:
            head = f"{self.kind}:{self.steps}" + (f":{self.variance_type}" if self.variance_type else "")
        return head + "".join(f":{k}={v}" for k, v in self._options())

    @property
    def slug(self) -> str:
        """A file-name-safe form of the spec, e.g. `"ddim-50-eta0"` or `"ddim-10-eta0-leading-modeleps"`."""
        if self.kind == "ddim":
            head = f"ddim-{self.steps}-eta{self.eta:g}".replace(".", "p")
        else:
            head = f"{self.kind}-{self.steps}" + (f"-{self.variance_type}" if self.variance_type else "")
        suffix = {"spacing": "{v}", "eps": "{v}eps", "ag": "ag{v}"}
        return head + "".join("-" + suffix[k].format(v=v).replace(".", "p") for k, v in self._options())

    def build(self, scheduler_config: Any):
        """The scheduler for this sampler, from a pipeline's scheduler config."""
        from ..schedulers.fast_samplers import fast_sampler
        from ..schedulers.scheduling_ddim_ext import DDIMExtScheduler
        from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler

        if self.kind == "ddim":
            return DDIMExtScheduler.from_config(scheduler_config)
        if self.kind in ("dpmpp", "unipc"):
            return fast_sampler(self.kind, scheduler_config)
        overrides = {"variance_type": self.variance_type} if self.variance_type else {}
        return DDPMExtScheduler.from_config(scheduler_config, **overrides)

    def call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of [`DDPMExtPipeline.__call__`] for this sampler."""
        kwargs: dict[str, Any] = {"num_inference_steps": self.steps, "eta": self.eta, "stochastic": self.kind != "ddpm-noz"}
        if self.timestep_spacing is not None:
            kwargs["timestep_spacing"] = self.timestep_spacing
        if self.clipped_eps is not None:
            kwargs["use_clipped_model_output"] = self.clipped_eps
        if self.autoguidance_scale is not None:
            kwargs["autoguidance_scale"] = self.autoguidance_scale
        return kwargs

    def describe(self, scheduler) -> dict[str, Any]:
        """What this sampler does with `scheduler` (the one [`build`] made), as a results row records it: `kind`,
        `steps`, `eta`, `adds_noise`, `variance_type`, and the choices actually used: `timestep_spacing` (the
        pipeline's rule applied, [`resolve_timestep_spacing`]), `use_clipped_model_output` (DDIM's ε̂; None for
        the others) and `x0_clipping` (how x̂_0 is clipped)."""
        from ..pipelines.pipeline_ddpm_ext import resolve_timestep_spacing

        cfg = scheduler.config
        if cfg.get("thresholding"):
            max_value = float(cfg.get("sample_max_value", 1.0))
            clipping = ("clip ±1 (thresholding, sample_max_value 1)" if max_value == 1.0 else
                        f"dynamic thresholding (ratio {cfg.get('dynamic_thresholding_ratio')}, max {max_value:g})")
        elif cfg.get("clip_sample"):
            clipping = f"clip ±{float(cfg.get('clip_sample_range', 1.0)):g}"
        else:
            clipping = "none"
        ddpm = self.kind in ("ddpm", "ddpm-noz")
        return {
            "kind": self.kind, "steps": self.steps, "eta": self.eta if self.kind == "ddim" else None,
            "adds_noise": self.kind == "ddpm" or (self.kind == "ddim" and self.eta > 0),
            "variance_type": cfg.get("variance_type") if ddpm else None,
            "timestep_spacing": resolve_timestep_spacing(scheduler, self.timestep_spacing),
            "use_clipped_model_output": (True if self.clipped_eps is None else self.clipped_eps) if self.kind == "ddim" else None,
            "x0_clipping": clipping,
        }  # fmt: skip


def parse_sampler(spec: str | SamplerSpec) -> SamplerSpec:
    """Parse `KIND:STEPS[:ARG][:OPTION=VALUE...]`: `ddpm:STEPS[:VARIANCE]`, `ddpm-noz:STEPS`, `ddim:STEPS[:ETA]`,
    `dpmpp:STEPS`, `unipc:STEPS`; options `spacing=leading|trailing|linspace` (any kind), `eps=consistent|model`
    (DDIM's ε̂: recomputed from the clipped x̂_0, or the model's) and `ag=W` (autoguidance scale, a number >= 1),
    each at most once.

    Raises:
        `ValueError`: For any other form (the spec and the grammar are given).
    """
    if isinstance(spec, SamplerSpec):
        return spec
    from ..schedulers.scheduling_common import VARIANCE_TYPES

    def bad(why: str) -> ValueError:
        return ValueError(f"Bad sampler spec `--samplers` {spec!r}: {why}. Allowed: {_SAMPLER_GRAMMAR}.")

    if not isinstance(spec, str) or not spec.strip():
        raise bad("empty")
    fields_ = spec.strip().split(":")
    kind = fields_[0].strip().lower()
    if kind not in SAMPLER_KINDS:
        raise bad(f"unknown kind {fields_[0]!r} (allowed kinds: {list(SAMPLER_KINDS)})")
    n_positional = next((i for i, f in enumerate(fields_) if "=" in f), len(fields_))
    parts, option_fields = fields_[:n_positional], fields_[n_positional:]
    if len(parts) < 2 or len(parts) > (3 if kind in ("ddpm", "ddim") else 2):
        raise bad(f"wrong number of fields for {kind!r}")
    options: dict[str, str] = {}
    for f in option_fields:
        name, _, value = f.partition("=")
        name, value = name.strip().lower(), value.strip().lower()
        if name not in _SAMPLER_OPTIONS:
            raise bad(f"unknown option {f!r} (allowed: spacing=..., eps=..., ag=...; options come after the positional fields)")
        if name in options:
            raise bad(f"option {name!r} given twice")
        if name == "ag":
            try:
                check_number("ag", float(value), 1)
            except ValueError:
                raise bad(f"ag must be a number >= 1 (the autoguidance scale), got {value!r}") from None
        elif value not in _SAMPLER_OPTIONS[name]:
            raise bad(f"{name} must be one of {list(_SAMPLER_OPTIONS[name])}, got {value!r}")
        if name == "eps" and kind != "ddim":
            raise bad(f"eps=... applies to ddim only (the consistent ε̂ of a DDIM step), not to {kind!r}")
        options[name] = value
    try:
        steps = int(parts[1])
    except ValueError:
        raise bad(f"STEPS must be an integer >= 1, got {parts[1]!r}") from None
    if steps < 1:
        raise bad(f"STEPS must be an integer >= 1, got {steps}")
    extra = {"timestep_spacing": options.get("spacing"),
             "clipped_eps": None if "eps" not in options else options["eps"] == "consistent",
             "autoguidance_scale": None if "ag" not in options else float(options["ag"])}  # fmt: skip
    if kind == "ddim":
        try:
            eta = float(parts[2]) if len(parts) == 3 else 0.0
        except ValueError:
            raise bad(f"ETA must be a number in [0, 1], got {parts[2]!r}") from None
        if not 0.0 <= eta <= 1.0:
            raise bad(f"ETA must be a number in [0, 1], got {eta:g}")
        return SamplerSpec("ddim", steps, eta=eta, **extra)
    variance = parts[2] if len(parts) == 3 else None
    if variance is not None and variance not in VARIANCE_TYPES:
        raise bad(f"VARIANCE must be one of {list(VARIANCE_TYPES)}, got {variance!r}")
    return SamplerSpec(kind, steps, variance_type=variance, **extra)


# ----------------------------------------------------------------------------------------------------------
# The configuration
# ----------------------------------------------------------------------------------------------------------

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
    num_bpd_images: int = 100  # enough for a ±0.05 bits/dim standard error on mnist-5k in minutes on a CPU
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
    guidance_scales: list[float] | None = None  # conditional models only; None: [1.0], p(x | y) as `ddpm-ext sample`
    cpu_threads: str | int = "auto"  # "auto": fewer threads while other processes need the cores; N: exactly N

    def __post_init__(self) -> None:
        from ..schedulers.scheduling_common import VARIANCE_TYPES
        from .metrics import FEATURE_EXTRACTORS

        if not isinstance(self.pipeline, (str, os.PathLike)) or not str(self.pipeline).strip():
            raise ValueError(f"`pipeline` must be a folder or a Hub repo id, got {self.pipeline!r}.")
        if self.max_real_images is not None:
            check_int("max_real_images", self.max_real_images, 2)
        for name, low in (("num_bpd_images", 0), ("num_samples", 0), ("kid_subset_size", 2), ("kid_subsets", 1),
                          ("batch_size", 1), ("seed", 0), ("num_grid_images", 0), ("nearest_k", 0)):
            setattr(self, name, check_int(name, getattr(self, name), low))
        if self.variance_types is not None:
            self.variance_types = [check_choice("variance_types", v, VARIANCE_TYPES) for v in self.variance_types]
        if isinstance(self.clip_denoised, bool):
            self.clip_denoised = str(self.clip_denoised).lower()
        check_choice("clip_denoised", self.clip_denoised, CLIP_DENOISED_CHOICES)
        check_choice("feature_extractor", self.feature_extractor, FEATURE_EXTRACTORS)
        check_choice("digit_judge", self.digit_judge, DIGIT_JUDGE_CHOICES)
        self.cpu_threads = parse_cpu_threads(self.cpu_threads)
        if not isinstance(self.update_model_card, bool):
            raise ValueError(f"`update_model_card` must be True or False, got {self.update_model_card!r}.")
        self.samplers = [parse_sampler(s) for s in (self.samplers or [])]
        if len({s.spec for s in self.samplers}) != len(self.samplers):
            raise ValueError(f"`--samplers` lists a sampler twice: {[s.spec for s in self.samplers]}.")
        if self.guidance_scales is not None:
            if isinstance(self.guidance_scales, (str, bytes)) or not isinstance(self.guidance_scales, (list, tuple)) \
                    or not self.guidance_scales:
                raise ValueError(
                    f"`guidance_scales` must be a non-empty list of finite numbers >= 0 (or None), got "
                    f"{self.guidance_scales!r}."
                )
            self.guidance_scales = [check_number("guidance_scales", w, 0) for w in self.guidance_scales]
            if len(set(self.guidance_scales)) != len(self.guidance_scales):
                raise ValueError(f"`--guidance_scales` lists a scale twice: {self.guidance_scales}.")

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "EvaluationConfig":
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


# ----------------------------------------------------------------------------------------------------------
# The steps: load, score likelihood, sample, score samples, write
# ----------------------------------------------------------------------------------------------------------


def _load_data(config: EvaluationConfig):
    """(data set, its identity for the cache key, split)."""
    from ..data import BUILTIN_DATASETS, load_image_dataset, validate_image_folder

    name = str(config.dataset)
    is_folder = os.path.isdir(os.path.expanduser(name)) or name.startswith(("/", ".", "~"))
    if is_folder:
        split = config.split or "train"
        files = validate_image_folder(name)  # raises for a missing folder, no images, unreadable files
        root = Path(name).expanduser().resolve()
        listing = "\n".join(f"{p.relative_to(root)}\t{p.stat().st_size}\t{p.stat().st_mtime_ns}" for p in files)
        identity = f"folder:{root}:{hashlib.sha256(listing.encode()).hexdigest()[:16]}"
        ds = load_image_dataset(train_data_dir=root, split=split, image_column=config.image_column)
    else:
        builtin = BUILTIN_DATASETS.get(name)
        split = config.split or ("test" if builtin is not None and "test" in builtin.splits else "train")
        ds = load_image_dataset(name, split=split, image_column=config.image_column)
        identity = name if builtin is not None else f"hub:{name}:{getattr(ds, '_fingerprint', '')}"
    return ds, identity, split


def _mean_sem(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    sem = float(v.std(unbiased=True) / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")
    return float(v.mean()), sem


@dataclass
class EvaluationRun:
    """What [`load_evaluation`] prepared: the pipeline, the checked samplers, the real data and the extractor.

    Attributes:
        config ([`EvaluationConfig`]): The configuration.
        pipe ([`DDPMExtPipeline`]): The pipeline, on `device`, with its own scheduler.
        schedulers (`dict[str, SchedulerMixin]`): One scheduler per sampler spec.
        variance_types (`list[str]`): σ² choices scored for bits/dim.
        dataset (`datasets.Dataset`), column (`str`), split (`str`), data_identity (`str`): The real images.
        num_real (`int`): Real images in the reference statistics.
        order (`np.ndarray`): The seeded permutation of the data set's rows (bits/dim images first).
        transform ([`ImageTransform`]): Real image -> uint8 `(C, size, size)`, as in training (centre crop).
        extractor ([`FeatureExtractor`], *optional*): The FID/KID features (when samples are scored).
        judge ([`DigitClassifier`], *optional*): The digit judge, when `digit_judge` turns it on.
        prdc_skip_reason (`str`, *optional*): Why precision/recall/density/coverage are skipped (`nearest_k` is 0,
            or too few images for it), else None.
        model_card (`pathlib.Path`, *optional*): The card to update (`update_model_card`), checked.
        device (`torch.device`), started (`float`): Where it runs, and when the evaluation began.
        class_names (`list[str]`, *optional*): The K class names of a class-conditional pipeline (ids 0..K−1;
            id K is the null class ∅), else None.
        guidance_scales (`list[float | None]`): The guidance scales w sampled for each sampler (`[None]` for an
            unconditional pipeline).
        class_accuracy_skip_reason (`str`, *optional*): Why a conditional pipeline's samples get no class accuracy
            (the judge is off, or the classes are not the digits 0-9), else None.
    """

    config: EvaluationConfig
    pipe: Any
    schedulers: dict[str, Any]
    variance_types: list[str]
    dataset: Any
    column: str
    split: str
    data_identity: str
    num_real: int
    order: np.ndarray
    transform: Any
    extractor: Any
    device: torch.device
    started: float
    judge: Any = None
    threads: Any = None  # the AdaptiveThreads of the sampling loops (config.cpu_threads)
    prdc_skip_reason: str | None = None
    model_card: Path | None = None
    class_names: list[str] | None = None
    guidance_scales: list[float | None] = field(default_factory=lambda: [None])
    class_accuracy_skip_reason: str | None = None

    @property
    def num_classes(self) -> int | None:
        """K, the number of classes of a class-conditional pipeline (None when unconditional)."""
        return None if self.class_names is None else len(self.class_names)

    @property
    def null_class(self) -> int | None:
        """The id of the null class ∅ (K): the label under which bits/dim scores the unconditional p(x)."""
        return self.num_classes

    @property
    def image_size(self) -> int:
        return self.transform.resolution

    @property
    def channels(self) -> int:
        return self.transform.channels

    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipe.scheduler.config.num_train_timesteps)

    def pixels(self, rows: np.ndarray) -> torch.Tensor:
        """uint8 `(N, C, size, size)` real images of the data set's `rows`."""
        return torch.stack([self.transform.to_uint8(self.dataset[int(r)][self.column]) for r in rows])

    @property
    def real_rows(self) -> np.ndarray:
        """The rows of the reference images (all, or a seeded subset of `max_real_images`), sorted."""
        n_data = len(self.dataset)
        return np.sort(self.order[: self.num_real]) if self.num_real < n_data else np.arange(n_data)


def load_evaluation(config: EvaluationConfig) -> EvaluationRun:
    """Step 1: load the pipeline and the real data, and check everything that needs them, before any long work.

    Raises:
        `ValueError`: For a pipeline that cannot be loaded, an unknown data set or split, a channel mismatch
            between the data and the model, a sampler that does not fit the model (steps > T, a variance the UNet
            cannot give), too few images for KID's subset size or for bits/dim, a feature extractor that
            cannot be built, `digit_judge="on"` for a model that is not 1-channel, `guidance_scales` for an
            unconditional pipeline (or a class embedding without ddpm_ext's null class), or `update_model_card`
            for a pipeline that is not a local folder with a README.md holding the metrics markers.
    """
    from ..data import ImageTransform, find_image_column, infer_channels
    from ..pipelines.checkpoint_io import check_components, square_sample_size
    from ..pipelines.pipeline_ddpm_ext import DDPMExtPipeline
    from .metrics import build_feature_extractor

    started = time.perf_counter()
    device = resolve_device(config.device)
    card = None
    if config.update_model_card:  # before loading anything: the card is checked first, the write comes last
        from .report import check_model_card

        card = check_model_card(config.pipeline)

    # the pipeline and the checks that need it
    pipe = DDPMExtPipeline.from_pretrained(config.pipeline, revision=config.revision)
    unet, base_scheduler = pipe.unet, pipe.scheduler
    names, scales = _conditioning(config, unet)  # before any data or feature work
    T = int(base_scheduler.config.num_train_timesteps)
    size = square_sample_size(unet, "Evaluation's images")
    channels = int(unet.config.in_channels)
    learned = int(unet.config.out_channels) == 2 * channels
    use_judge = config.digit_judge == "on" or (config.digit_judge == "auto" and channels == 1)
    if config.digit_judge == "on" and channels != 1:
        raise ValueError(
            f"`--digit_judge` 'on' needs a 1-channel (grayscale) model, the judge's domain (MNIST digits), but "
            f"{str(config.pipeline)!r} makes {channels}-channel images; allowed for it: auto, off."
        )
    variance_types = list(config.variance_types) if config.variance_types else (
        ["learned_range", "fixed_small", "fixed_large"] if learned else ["fixed_small", "fixed_large"]
    )
    if not learned and any(learns_variance(v) for v in variance_types):
        raise ValueError(
            f"`--variance_types` {variance_types} includes a learned variance, but the UNet has out_channels="
            f"{unet.config.out_channels} = in_channels (it does not learn σ²); allowed: fixed_small, fixed_large."
        )
    schedulers = {}
    for s in config.samplers if config.do_samples else []:
        if s.steps > T:
            raise ValueError(
                f"`--samplers` {s.spec!r}: {s.steps} steps is more than the pipeline's num_train_timesteps={T}; "
                f"allowed STEPS: 1..{T}."
            )
        try:
            schedulers[s.spec] = s.build(base_scheduler.config)
            check_components(unet, schedulers[s.spec])
            pipe.resolve_autoguidance_scale(s.autoguidance_scale)  # ag=W > 1 needs the pipeline's guide
        except ValueError as err:
            raise ValueError(f"`--samplers` {s.spec!r} does not fit this pipeline: {err}") from err

    # the real images, at the model's size and channels
    ds, data_identity, split = _load_data(config)
    column = find_image_column(ds, config.image_column)
    data_channels = infer_channels(ds, column)
    if data_channels != channels:
        kinds = {1: "grayscale", 3: "RGB"}
        raise ValueError(
            f"Channel mismatch: `--dataset` {config.dataset!r} has {kinds[data_channels]} images ({data_channels} "
            f"channel(s)) but the model {str(config.pipeline)!r} takes {channels} channel(s); evaluate it on a "
            f"{kinds.get(channels, str(channels) + '-channel')} data set."
        )
    n_data = len(ds)
    n_real = n_data if config.max_real_images is None else min(config.max_real_images, n_data)
    if config.do_samples:
        if n_real < 2:
            raise ValueError(f"`--dataset` {config.dataset!r} (split {split!r}) has {n_data} image(s); FID needs >= 2.")
        if config.kid_subset_size > min(config.num_samples, n_real):
            raise ValueError(
                f"`--kid_subset_size` {config.kid_subset_size} is larger than the number of images: --num_samples "
                f"{config.num_samples} and {n_real} real images ({config.dataset!r}, split {split!r}); allowed: "
                f"2..{min(config.num_samples, n_real)}, or raise --num_samples."
            )
    if config.num_bpd_images > n_data:
        raise ValueError(
            f"`--num_bpd_images` {config.num_bpd_images} is more than the {n_data} images of {config.dataset!r} "
            f"(split {split!r}); allowed: 0..{n_data}."
        )
    extractor = judge = skip = accuracy_skip = None
    if config.do_samples:  # built before any long computation: a missing backend fails fast
        extractor = build_feature_extractor(config.feature_extractor, inception_weights=config.inception_weights,
                                            device=device)
        if use_judge:
            from .digit_classifier import DigitClassifier

            judge = DigitClassifier.pretrained(device=device)
        if names is not None:
            accuracy_skip = _class_accuracy_skip_reason(names, judge is not None, config.digit_judge, channels)
        fewest = min(config.num_samples, n_real)
        if config.nearest_k == 0:
            skip = "nearest_k = 0"
        elif fewest < config.nearest_k + 2:
            skip = (f"too few images for nearest_k={config.nearest_k}: {config.num_samples} samples and {n_real} "
                    f"real images, each set needs >= {config.nearest_k + 2}; lower --nearest_k or raise --num_samples")
            warnings.warn(f"Precision/recall/density/coverage skipped: {skip}.", UserWarning, stacklevel=2)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=config.no_progress, leave=False)
    return EvaluationRun(
        config=config, pipe=pipe, schedulers=schedulers, variance_types=variance_types, dataset=ds, column=column,
        split=split, data_identity=data_identity, num_real=n_real,
        order=np.random.default_rng(config.seed).permutation(n_data),
        transform=ImageTransform(size, center_crop=True, channels=channels), extractor=extractor, device=device,
        started=started, judge=judge, threads=AdaptiveThreads.from_option(config.cpu_threads, device), prdc_skip_reason=skip, model_card=card, class_names=names,
        guidance_scales=scales, class_accuracy_skip_reason=accuracy_skip,
    )


DIGIT_NAMES = [str(d) for d in range(10)]  # the digit judge's classes, in its order


def _conditioning(config: EvaluationConfig, unet: Any) -> tuple[list[str] | None, list[float | None]]:
    """(class names, guidance scales) of a class-conditional UNet; (None, [None]) for an unconditional one, which
    takes no `guidance_scales`."""
    from ..pipelines.guidance import class_names, is_class_conditional, num_classes

    if not is_class_conditional(unet):
        if config.guidance_scales is not None:
            raise ValueError(
                f"`--guidance_scales` {config.guidance_scales} needs a class-conditional pipeline, but "
                f"{str(config.pipeline)!r} is unconditional (its UNet has no `num_class_embeds`); drop --guidance_scales."
            )
        return None, [None]
    try:
        num_classes(unet)  # a class embedding that is not ddpm_ext's (no null class) is refused here
    except ValueError as err:
        raise ValueError(f"{str(config.pipeline)!r} cannot be evaluated: {err}") from None
    return class_names(unet), list(config.guidance_scales) if config.guidance_scales is not None else [1.0]


def _class_accuracy_skip_reason(names: list[str], judge_on: bool, digit_judge: str, channels: int) -> str | None:
    """Why the class accuracy of a conditional model's samples cannot be measured, or None when it can."""
    if not judge_on:
        why = "`digit_judge` is 'off'" if digit_judge == "off" else f"the model makes {channels}-channel images"
        return f"no class judge: the digit judge is off ({why})"
    if names != DIGIT_NAMES:
        shown = ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")
        return (f"the model's {len(names)} classes ({shown}) are not the digits '0'..'9', the digit judge's classes; "
                "the judge's scores (classifier IS, digits present) are still given")
    return None


def score_likelihood(run: EvaluationRun) -> list[dict[str, Any]]:
    """Step 2: bits/dim of `num_bpd_images` held-out images, every σ² choice from one set of UNet calls.

    A class-conditional UNet is scored under the null class ∅ (id K): the bound on the unconditional p(x) that
    label dropout trains, comparable with an unconditional model's (the held-out images' own labels are not used).

    Returns:
        `list[dict]`: One row per variance type (`bits_per_dim`, `sem`, `prior`, `decoder`, ..., and `class_label`:
        the id the UNet was given, K for a conditional model, None for an unconditional one); empty when
        `num_bpd_images` is 0.
    """
    from ..likelihood import bits_per_dim_variances

    config, scheduler = run.config, run.pipe.scheduler
    if config.num_bpd_images == 0:
        return []
    x0 = normalize(run.pixels(run.order[: config.num_bpd_images]))
    t0 = time.perf_counter()
    clip = {"auto": bool(scheduler.config.clip_sample), "true": True, "false": False}[config.clip_denoised]
    outs = bits_per_dim_variances(
        run.pipe.unet, scheduler, x0.to(run.device), run.variance_types,
        generator=torch.Generator().manual_seed(config.seed), batch_size=config.batch_size,
        progress=not config.no_progress, clip_denoised=clip, class_labels=run.null_class,
    )
    seconds = time.perf_counter() - t0
    rows = []
    for name, out in outs.items():
        mean, sem = _mean_sem(out.total)
        rows.append({
            "variance_type": name,
            "bits_per_dim": mean,
            "sem": sem,
            "prior": float(out.prior.mean()),
            "decoder": float(out.decoder.mean()),
            "num_images": int(out.total.numel()),
            "clip_denoised": clip,
            "class_label": run.null_class,
            "wall_time_s": seconds,
            "wall_time_shared_by": list(outs),
        })
    return rows


@dataclass
class SampledImages:
    """What [`sample_images`] returns: `images` uint8 `(N, C, H, W)` (as a PNG would store them), `seconds`;
    for a class-conditional pipeline also `guidance_scale` (w) and `class_labels`, the requested class of each
    image, int64 `(N,)`."""

    spec: SamplerSpec
    images: torch.Tensor
    seconds: float
    guidance_scale: float | None = None
    class_labels: torch.Tensor | None = None

    @property
    def key(self) -> str:
        """A file-name-safe name of the row: the sampler's slug, plus `-w<w>` for a conditional pipeline."""
        return _row_key(self.spec.slug, self.guidance_scale)


def _row_key(slug: str, guidance_scale: float | None) -> str:
    return slug if guidance_scale is None else f"{slug}-w{guidance_scale:g}".replace(".", "p")


def sample_images(run: EvaluationRun, spec: SamplerSpec | str, guidance_scale: float | None = None) -> SampledImages:
    """Step 3: `num_samples` images of one sampler, image i from [`ddpm_ext.seeding.image_generators`]`(seed, i, 1)`
    (the same x_T for every sampler and guidance scale, and the image `ddpm-ext sample --seed` gives), in batches
    of `batch_size`.

    For a class-conditional pipeline image i is asked for class i mod K ([`balanced_class_labels`]: every class
    equally often, whatever the batch size) with classifier-free guidance `guidance_scale` (w; default the first
    of `run.guidance_scales`). DDIM samplers recompute ε̂ from the clipped x̂_0 (`use_clipped_model_output=True`,
    the pipeline's default, as `benchmarks/guidance_study.py`; a spec's `:eps=model` turns it off): with the raw
    guided ε̂ the requested class is lost at w >= 2 (README, "DDIM with guidance needs the consistent ε̂").

    Raises:
        `ValueError`: For a sampler that was not configured, or a `guidance_scale` for an unconditional pipeline
            (or one that is negative or not finite).
    """
    config, spec = run.config, parse_sampler(spec)
    if spec.spec not in run.schedulers:
        raise ValueError(f"`spec` {spec.spec!r} is not one of the configured samplers {list(run.schedulers)}.")
    k = run.num_classes
    if k is None and guidance_scale is not None:
        raise ValueError(f"`guidance_scale` {guidance_scale!r} needs a class-conditional pipeline; this one is unconditional.")
    if k is not None:
        guidance_scale = run.guidance_scales[0] if guidance_scale is None else check_number("guidance_scale", guidance_scale, 0)
    # (DDIM's consistent ε̂ is the pipeline's default; a spec's `:eps=model` asks for the raw one)
    conditioning = {} if k is None else {"guidance_scale": guidance_scale}
    pipe, base_scheduler = run.pipe, run.pipe.scheduler
    pipe.scheduler = run.schedulers[spec.spec]
    requested = None if k is None else torch.tensor(balanced_class_labels(config.num_samples, k), dtype=torch.long)
    w = "" if k is None else f" w={guidance_scale:g}"
    try:
        images, seconds = draw_samples(
            pipe, config.num_samples, seed=config.seed, batch_size=config.batch_size,
            class_labels=None if requested is None else requested.tolist(),
            progress=None if config.no_progress else f"samples {spec.spec}{w}", **spec.call_kwargs(), **conditioning,
            **({} if run.threads is None else {"callback_on_step_end": run.threads.callback()}),
        )
    finally:
        pipe.scheduler = base_scheduler
    return SampledImages(spec, images, seconds, guidance_scale, requested)


def draw_samples(
    pipe: Any, num_images: int, *, seed: int, batch_size: int, class_labels: Sequence[int] | torch.Tensor | None = None,
    progress: str | None = None, **call_kwargs: Any,
) -> tuple[torch.Tensor, float]:
    """`num_images` samples of `pipe` as uint8 `(N, C, H, W)` (as a PNG stores them) and the seconds spent in the
    pipeline; image i from [`ddpm_ext.seeding.image_generators`]`(seed, i, 1)` (so it does not depend on
    `batch_size`) and, when given, with `class_labels[i]`. `call_kwargs` go to every pipeline call
    (`num_inference_steps`, `eta`, `guidance_scale`, ...); `progress` is the progress bar's title (None: no bar).
    The sampling step of [`sample_images`] and of `benchmarks/guidance_study.py`."""
    batches = range(0, num_images, batch_size)
    if progress is not None:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=progress, unit="batch")
    chunks, seconds = [], 0.0
    for start in batches:
        count = min(batch_size, num_images - start)
        labels = {} if class_labels is None else {"class_labels": class_labels[start : start + count]}
        t0 = time.perf_counter()
        images = pipe(batch_size=count, generator=image_generators(seed, start, count), output_type="pt",
                      **call_kwargs, **labels).images  # (B, C, H, W) in [0, 1]
        seconds += time.perf_counter() - t0
        chunks.append(to_uint8(images, (0, 1)).cpu())
    return torch.cat(chunks), seconds


def reference_features(run: EvaluationRun):
    """The real images' features and statistics ([`ddpm_ext.evaluation.metrics.reference_statistics`]), cached
    per data set, split, size, subset and extractor; the images are read only on a cache miss."""
    from .metrics import reference_statistics

    config, n_data = run.config, len(run.dataset)
    real_rows = run.real_rows
    key = {
        "dataset": run.data_identity, "split": run.split, "image_size": run.image_size, "channels": run.channels,
        "num_images": int(run.num_real), "subset_seed": config.seed if run.num_real < n_data else None,
        "transform": "resize-shorter-bilinear+center-crop",
    }

    class RealBatches:  # loaded lazily, and only on a cache miss; sized, for the progress bar
        def __len__(self) -> int:
            return -(-len(real_rows) // config.batch_size)

        def __iter__(self):
            for i in range(0, len(real_rows), config.batch_size):
                yield run.pixels(real_rows[i : i + config.batch_size])

    return reference_statistics(
        RealBatches, run.extractor, key=key, cache_dir=config.stats_cache_dir, use_cache=not config.no_stats_cache,
        batch_size=config.batch_size, progress=not config.no_progress,
    )


PRDC_KEYS = ("precision", "recall", "density", "coverage")


def mean_pixel(images: torch.Tensor) -> float:
    """The mean pixel value of uint8 images, in [0, 1] (real mnist digits ≈ 0.13; a grey background shows here)."""
    return float(images.double().mean() / 255.0)


def judge_scores(judge, images: torch.Tensor, batch_size: int = 256,
                 requested: torch.Tensor | None = None) -> dict[str, Any]:
    """The digit judge's scores of uint8 images `(N, 1, H, W)` (resized to 28×28 by the judge).

    Args:
        judge: Anything with `predict_proba(images, batch_size=...)` -> `(N, 10)` probabilities, as
            [`DigitClassifier`].
        images (`torch.Tensor`): uint8 `(N, 1, H, W)`.
        batch_size (`int`, defaults to 256): Images per judge call.
        requested (`torch.Tensor`, *optional*): The digit each image was asked for, int `(N,)` in 0..9 (a
            class-conditional model's labels); adds `class_accuracy`.

    Returns:
        `dict`: `classifier_is` ([`classifier_inception_score`] of p(y|x)), `classifier_is_std` (its bootstrap
        spread over image sets, [`classifier_inception_score_std`]), `classes_present` (digits predicted at
        least once, of 10), `class_entropy` (normalized entropy of the predicted-digit histogram, in [0, 1]) and
        `class_counts` (images per predicted digit), as [`class_coverage`] gives them; with `requested` also
        `class_accuracy`, the fraction of images whose predicted digit is the requested one ([`class_accuracy`]).

    Example:

    ```py
    >>> import torch
    >>> class Judge:  # sees digit 3 in every image
    ...     def predict_proba(self, images, batch_size):
    ...         return torch.nn.functional.one_hot(torch.full((len(images),), 3), 10).double()
    >>> scores = judge_scores(Judge(), torch.zeros(4, 1, 8, 8, dtype=torch.uint8), requested=torch.tensor([3, 3, 3, 7]))
    >>> scores["class_accuracy"], scores["classes_present"]
    (0.75, 1)

    ```
    """
    from .digit_classifier import (
        class_accuracy,
        class_coverage,
        classifier_inception_score,
        classifier_inception_score_std,
    )

    probs = judge.predict_proba(images, batch_size=batch_size)  # (N, 10) float64
    coverage = class_coverage(probs)
    scores = {"classifier_is": classifier_inception_score(probs),
              "classifier_is_std": classifier_inception_score_std(probs), "classes_present": coverage.num_present,
              "class_entropy": coverage.normalized_entropy, "class_counts": list(coverage.counts)}
    if requested is not None:
        scores["class_accuracy"] = class_accuracy(probs, requested, num_classes=probs.shape[1])
    return scores


def score_reference(run: EvaluationRun) -> dict[str, Any]:
    """The real reference images scored like the samples: the judge's numbers and the mean pixel (the ceiling
    each sampler's row is read against). Reads the images (no cache): called only when the judge is on."""
    if run.judge is None:
        raise ValueError("`run` has no digit judge (`digit_judge` is off, or the model is not 1-channel).")
    rows, batch = run.real_rows, run.config.batch_size
    images = torch.cat([run.pixels(rows[i : i + batch]) for i in range(0, len(rows), batch)])  # uint8 (N, 1, H, W)
    return {"num_images": int(images.shape[0]), "mean_pixel": mean_pixel(images),
            **judge_scores(run.judge, images, batch_size=batch)}


def score_samples(run: EvaluationRun, samples: SampledImages, reference) -> dict[str, Any]:
    """Step 4: one results row of a sampler's images: FID and KID against the reference statistics, precision,
    recall, density and coverage on the same features ([`precision_recall_density_coverage`], k = `nearest_k`;
    None with `prdc_skipped` saying why when there are too few images), the mean pixel value, and the digit
    judge's scores ([`judge_scores`]) when the judge is on, with the class accuracy of a conditional pipeline's
    samples when its classes are the digits (else `class_accuracy` None and `class_accuracy_skipped` says why)."""
    from .metrics import extract_features, sample_quality
    from .precision_recall import precision_recall_density_coverage

    config, spec = run.config, samples.spec
    t0 = time.perf_counter()
    feats = extract_features(run.extractor, samples.images, batch_size=config.batch_size)
    # the sampler's choices as used, incl. the spacing and DDIM's ε̂ (`use_clipped_model_output`)
    row = {"sampler": spec.spec, "guidance_scale": samples.guidance_scale, **spec.describe(run.schedulers[spec.spec]),
           "autoguidance_scale": run.pipe.resolve_autoguidance_scale(spec.autoguidance_scale)}
    row.update(sample_quality(feats, reference, run.extractor, kid_subset_size=config.kid_subset_size,
                              kid_subsets=config.kid_subsets, generator=torch.Generator().manual_seed(config.seed)))
    row.update({"nearest_k": config.nearest_k, "prdc_skipped": run.prdc_skip_reason})
    if run.prdc_skip_reason is None:
        row.update(precision_recall_density_coverage(reference.features, feats, nearest_k=config.nearest_k))
    else:
        row.update(dict.fromkeys(PRDC_KEYS))
    row["mean_pixel"] = mean_pixel(samples.images)
    conditional = samples.class_labels is not None
    accuracy = conditional and run.judge is not None and run.class_accuracy_skip_reason is None
    if run.judge is not None:
        row.update(judge_scores(run.judge, samples.images, batch_size=config.batch_size,
                                requested=samples.class_labels if accuracy else None))
    if conditional:
        if not accuracy:
            row.update({"class_accuracy": None, "class_accuracy_skipped": run.class_accuracy_skip_reason})
    t_feat = time.perf_counter() - t0
    row.update({"sampling_time_s": samples.seconds, "feature_time_s": t_feat, "wall_time_s": samples.seconds + t_feat})
    return row


def write_results(results: dict[str, Any], grids: dict[str, torch.Tensor], output_dir: str | os.PathLike) -> dict:
    """Step 5: one sample grid per sampler (and guidance scale: `samples_<sampler>-w<w>.png`, one class per
    column), `results.md` and `results.json` in `output_dir`, each written atomically; the rows get their grid's
    file name and `results` its `markdown` and `files`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    conditioning = results.get("conditioning")
    for row in results["samples"]:
        key = _row_key(parse_sampler(row["sampler"]).slug, row.get("guidance_scale"))
        if key in grids:
            path = out / f"samples_{key}.png"
            # conditional: image i is class i mod K, so K per row puts one class in each column
            nrow = conditioning["num_classes"] if conditioning else math.ceil(math.sqrt(len(grids[key])))
            save_image_grid(grids[key], path, nrow=nrow)
            row["grid"] = path.name
    results["markdown"] = results_markdown(results)
    atomic_write_text(out / "results.md", results["markdown"])
    results["files"] = {**results.get("files", {}), "json": str(out / "results.json"),
                        "markdown": str(out / "results.md"),
                        "grids": [str(out / r["grid"]) for r in results["samples"] if "grid" in r]}
    saved = {k: v for k, v in results.items() if k != "markdown"}
    atomic_write_text(out / "results.json", json.dumps(saved, indent=2, default=_json_default) + "\n")
    return results["files"]


def evaluate(config: EvaluationConfig | argparse.Namespace) -> dict[str, Any]:
    """Evaluate a pipeline as `config` says: [`load_evaluation`], [`score_likelihood`], then per sampler
    [`sample_images`] and [`score_samples`], then [`write_results`] when `output_dir` is set.

    Args:
        config ([`EvaluationConfig`]): What to evaluate (an `argparse.Namespace` of `ddpm-ext evaluate`'s options
            is accepted too).

    Returns:
        `dict`: `bits_per_dim` (one row per variance type), `samples` (one row per sampler, and per guidance
        scale `guidance_scale` for a conditional pipeline: FID/KID with the extractor's label,
        precision/recall/density/coverage, mean pixel, the judge's scores, the class accuracy), `conditioning`
        (a conditional pipeline's classes, label rule and the bits/dim label; else None), `reference` (the
        cached real-image statistics), `digit_judge` (when on: the real images' scores), `config`, `command`
        (the equivalent `ddpm-ext evaluate` line), `environment`, `markdown` (the table), and `files` (what was
        written: `output_dir`'s files, the model card).

    Raises:
        `ValueError`: For a bad option ([`EvaluationConfig`]) or one that does not fit the pipeline or the data
            ([`load_evaluation`]), before any long computation; the argument, the value and what is allowed are
            named.

    Example:

    ```py
    >>> from ddpm_ext.evaluation.evaluate import EvaluationConfig, evaluate
    >>> results = evaluate(EvaluationConfig("outputs/mnist", num_bpd_images=4, num_samples=0))  # doctest: +SKIP
    >>> results["bits_per_dim"][0]["bits_per_dim"]  # doctest: +SKIP
    1.9

    ```
    """
    if isinstance(config, argparse.Namespace):
        config = EvaluationConfig.from_namespace(config)
    if not isinstance(config, EvaluationConfig):
        raise ValueError(f"`config` must be an EvaluationConfig, got {type(config).__name__}.")
    run = load_evaluation(config)
    results: dict[str, Any] = {
        "pipeline": str(config.pipeline),
        "dataset": str(config.dataset),
        "split": run.split,
        "image_size": run.image_size,
        "channels": run.channels,
        "num_train_timesteps": run.num_train_timesteps,
        "bits_per_dim": score_likelihood(run),
        "samples": [],
        "reference": None,
        "conditioning": None if run.class_names is None else {
            "num_classes": run.num_classes,
            "class_names": run.class_names,
            "guidance_scales": run.guidance_scales,
            "sample_labels": "image i is asked for class i mod K (every class equally often)",
            "bits_per_dim_label": (f"the null class ∅ (id {run.null_class}): the unconditional p(x) that label "
                                   "dropout trains"),
            "class_accuracy_skipped": run.class_accuracy_skip_reason,
            "ddim": "use_clipped_model_output=True (ε̂ recomputed from the clipped x̂_0) unless the spec says :eps=model",
        },
    }
    grids: dict[str, torch.Tensor] = {}
    if config.do_samples:
        reference = reference_features(run)
        results["reference"] = {
            "num_images": reference.num_images, "cache_hit": reference.cache_hit,
            "cache_file": None if reference.path is None else str(reference.path), "seconds": reference.seconds,
            "key": reference.key,
        }
        try:
            for spec in config.samplers:
                for w in run.guidance_scales:  # [None] for an unconditional pipeline
                    samples = sample_images(run, spec, guidance_scale=w)
                    results["samples"].append(score_samples(run, samples, reference))
                    if config.num_grid_images > 0:
                        grids[samples.key] = samples.images[: config.num_grid_images]
        finally:
            if run.threads is not None:
                run.threads.restore()  # the caller's thread count back (evaluate is also a library call)
        extractor = run.extractor
        results["feature_extractor"] = {"name": extractor.name, "identity": extractor.identity,
                                        "comparable_to_published": extractor.comparable_to_published,
                                        "label": extractor.label}
        if run.judge is not None:
            heldout = json.loads(run.judge.metadata.get("heldout_test", "{}"))
            results["digit_judge"] = {
                "reference": score_reference(run),
                "heldout_accuracy": heldout.get("accuracy"),
                "rule": f"digit_judge={config.digit_judge!r}: " + (
                    "on for 1-channel (grayscale) models" if config.digit_judge == "auto" else "on"),
                "description": (
                    "Inception Score with ddpm_ext's digit classifier in place of Inception-v3 "
                    f"(ddpm_ext.evaluation.digit_classifier; {100 * heldout.get('accuracy', float('nan')):.1f}% "
                    "accuracy on the 500 held-out mnist-5k digits; max 10)"),
            }

    results["config"] = {k: ([s.spec for s in v] if k == "samplers" else v) for k, v in vars(config).items()}
    results["config"]["variance_types"] = run.variance_types
    results["environment"] = {
        "device": str(run.device), "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu_threads": torch.get_num_threads(),
        "cpu_threads_sampling": None if run.threads is None else run.threads.summary(),
        "gpu": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else None,
    }
    results["command"] = evaluation_command(config)
    results["total_time_s"] = time.perf_counter() - run.started
    results["markdown"] = results_markdown(results)
    results["files"] = {}
    if run.model_card is not None:
        results["files"]["model_card"] = str(update_model_card(config.pipeline, results))
    if config.output_dir is not None:
        write_results(results, grids, config.output_dir)
    return results


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, SamplerSpec):
        return value.spec
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"


def results_markdown(results: dict[str, Any]) -> str:
    """The results as markdown: a bits/dim table and a FID/KID table (headed by the extractor's label)."""
    env = results.get("environment", {})
    lines = [
        f"# Evaluation of `{results['pipeline']}`",
        "",
        f"Data: `{results['dataset']}` (split `{results['split']}`), {results['image_size']}×{results['image_size']}, "
        f"{results['channels']} channel(s); T = {results['num_train_timesteps']}; device {env.get('device', '?')}; "
        f"total {_fmt(results.get('total_time_s'), 3)} s.",
    ]
    cond = results.get("conditioning")
    if cond:
        names = ", ".join(cond["class_names"][:12]) + (", ..." if cond["num_classes"] > 12 else "")
        lines += [
            "",
            f"Class-conditional: {cond['num_classes']} classes ({names}); samples: {cond['sample_labels']}, "
            f"classifier-free guidance w per row (DDIM with {cond['ddim']}); bits/dim under {cond['bits_per_dim_label']}."
            + (f" Class accuracy skipped: {cond['class_accuracy_skipped']}." if cond["class_accuracy_skipped"] else ""),
        ]
    if results["bits_per_dim"]:
        n = results["bits_per_dim"][0]["num_images"]
        clipped = "x̂₀ clipped to [−1, 1]" if results["bits_per_dim"][0].get("clip_denoised") else "x̂₀ not clipped"
        lines += [
            "",
            f"## Bits/dim ({n} held-out images, {clipped}; upper bound on −log₂ p(x₀) per dimension, ± standard error"
            + (f"; class label ∅ = {cond['num_classes']}, the null class)" if cond else ")"),
            "",
            "| σ² (variance_type) | bits/dim | ± s.e. | L_T (prior) | L_0 (decoder) | wall time (s, shared) |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["bits_per_dim"]:
            lines.append(
                f"| {r['variance_type']} | {r['bits_per_dim']:.4f} | {_fmt(r['sem'], 2)} | {r['prior']:.2e} | "
                f"{r['decoder']:.4f} | {r['wall_time_s']:.1f} |"
            )
    if results["samples"]:
        fe = results["feature_extractor"]
        ref = results["reference"]
        judge = results.get("digit_judge")
        first = results["samples"][0]
        prdc = "PRDC skipped: " + first["prdc_skipped"] if first.get("prdc_skipped") else (
            f"precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020) on the same "
            f"features, k = {first.get('nearest_k')}")
        accuracy = bool(cond) and not cond["class_accuracy_skipped"] and bool(judge)
        lines += [
            "",
            f"## Sample quality: {fe['label']}",
            "",
            f"Reference: {ref['num_images']} real images ({'cached' if ref['cache_hit'] else 'computed'}); KID "
            f"(×10³) over {first['kid_subsets']} subsets of {first['kid_subset_size']}; {prdc}; mean pixel in [0, 1]."
            + (f" Classifier IS, digits present (of 10) and class entropy (normalized): {judge['description']}; "
               "the first row is the real reference images." if judge else "")
            + (" Class accuracy: the fraction of samples the judge reads as their requested digit." if accuracy else ""),
            "",
            "| sampler | " + ("w | " if cond else "") + "steps | η | noise z | samples | FID | KID ×10³ | ± std | "
            "precision | recall | density | coverage | mean pixel | "
            + ("class accuracy | " if accuracy else "")
            + ("classifier IS | digits present | class entropy | " if judge else "") + "wall time (s) | grid |",
            "|---|" + ("---|" if cond else "") + "---|---|---|---|---|---|---|---|---|---|---|---|"
            + ("---|" if accuracy else "") + ("---|---|---|" if judge else "") + "---|---|",
        ]
        if judge:
            real = judge["reference"]
            lines.append(
                "| real images | " + ("– | " if cond else "") + f"– | – | – | {real['num_images']} | – | – | – | – | "
                f"– | – | – | {real['mean_pixel']:.3f} | " + ("– | " if accuracy else "")
                + f"{real['classifier_is']:.2f} | {real['classes_present']} | {_fmt3(real['class_entropy'])} | – | – |"
            )
        for r in results["samples"]:
            grid = f"[{r['grid']}]({r['grid']})" if r.get("grid") else "–"
            eta = _fmt(r["eta"]) if r["eta"] is not None else "–"
            new = [_fmt3(r.get(k)) for k in PRDC_KEYS] + [_fmt3(r.get("mean_pixel"))]
            if accuracy:
                new.append(_fmt3(r.get("class_accuracy")))
            if judge:
                spread = f" ± {r['classifier_is_std']:.2f}" if r.get("classifier_is_std") is not None else ""
                new += [f"{r['classifier_is']:.2f}{spread}", str(r["classes_present"]), _fmt3(r["class_entropy"])]
            w = f"{r['guidance_scale']:g} | " if cond else ""
            ag = r.get("autoguidance_scale") or 1.0
            sampler = r["sampler"] + (f" (autoguidance {ag:g})" if ag != 1.0 and ":ag=" not in r["sampler"] else "")
            lines.append(
                f"| {sampler} | {w}{r['steps']} | {eta} | {'yes' if r['adds_noise'] else 'no'} | {r['num_fake']} | "
                f"{r['fid']:.2f} | {1e3 * r['kid_mean']:.2f} | {1e3 * r['kid_std']:.2f} | {' | '.join(new)} | "
                f"{r['wall_time_s']:.1f} | {grid} |"
            )
    return "\n".join(lines) + "\n"


def _fmt3(value: float | None) -> str:
    return "–" if value is None else f"{value + 0.0:.3f}"  # + 0.0: an entropy of -0.0 prints as 0.000

