"""Evaluate a trained pipeline: bits/dim on held-out images and FID/KID of samples for chosen samplers.

Run it as `ddpm-ext evaluate` (the command line is in `ddpm_ext/commands/evaluate.py`), or from Python with an
[`EvaluationConfig`] ([`ddpm_ext.evaluation.config`]): `evaluate(EvaluationConfig("outputs/mnist", num_samples=100))`.
[`evaluate`] is five named steps that can also be called one by one: [`load_evaluation`] (pipeline, data and every
check, before any long work), [`score_likelihood`] (bits/dim), [`sample_images`] and [`score_samples`] (FID/KID
per sampler), and [`ddpm_ext.evaluation.report.write_results`] (results.json, results.md, one grid per sampler).
The samplers are given as spec strings ([`ddpm_ext.evaluation.samplers`]).

```bash
# bits/dim under σ² = β̃ and β on 100 held-out digits; FID/KID of 500 samples of DDIM-50 (η = 0) and of
# 1000-step DDPM, against the 500 test digits of mnist-5k; JSON, markdown and one sample grid per sampler
ddpm-ext evaluate outputs/mnist --dataset mnist-5k --num_bpd_images 100 \
    --variance_types fixed_small fixed_large --num_samples 500 --samplers ddim:50:0 ddpm:1000 \
    --output_dir outputs/mnist/eval

# a quick look: few samples and one fast sampler; most of the first run's time goes to the features of the
# 500 reference digits, which are cached for the next run
ddpm-ext evaluate outputs/mnist --num_bpd_images 4 --num_samples 50 --kid_subset_size 25 \
    --samplers ddim:10:0 --output_dir /tmp/eval

# the same numbers plus precision/recall/density/coverage with k = 5 (the default), the digit judge's columns
# (auto: a grayscale model) and the table written into outputs/mnist/README.md between its metrics markers
ddpm-ext evaluate outputs/mnist --num_samples 500 --samplers ddpm:1000 ddim:50:0 --nearest_k 5 --update_model_card
```

Every sampler is built from the pipeline's scheduler config ([`SamplerSpec.build`]) and starts from the same x_T
per image (image i has its own generator, [`ddpm_ext.seeding.image_generators`], the rule of every command), so
rows differ only by the sampler.

Each sampler's row also has precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et
al. 2020) on the same features as FID/KID (k = `--nearest_k`, default 5; skipped with the reason, and a
warning, when the samples or the real images number fewer than k + 2), and the mean pixel value in [0, 1] (a
cheap check of grey backgrounds). For MNIST-like data the digit judge
([`ddpm_ext.evaluation.digit_classifier`], images resized to 28×28) adds its classifier Inception Score, the
digits present and the normalized entropy of the predicted digits ([`ddpm_ext.evaluation.class_scores`]), per
sampler and for the real reference images (the ceiling). The rule, `--digit_judge`: `auto` (default) turns it on
for 1-channel (grayscale) models, `on` requires one, `off` skips it. `--update_model_card` writes a compact table
of the results, the command and the date between the metrics markers of `<pipeline folder>/README.md`, and the
same numbers as the Hub's `model-index` block in the card's metadata ([`ddpm_ext.evaluation.report`]).

A class-conditional pipeline (classifier-free guidance, [`ddpm_ext.pipelines.guidance`]) gets one row per sampler
and guidance scale w (`--guidance_scales`, default 1: p(x | y)). Image i keeps its x_T and is asked for class
i mod K ([`~pipelines.guidance.balanced_class_labels`]), so every class is asked for equally often and the rows
differ only by the sampler and w; DDIM samplers recompute ε̂ from the clipped x̂_0
(`use_clipped_model_output=True`), without which guidance loses the class. When the K classes are the digits
'0'..'9' the digit judge adds the **class accuracy**, the fraction of samples it reads as their requested digit
(otherwise the row says why it is skipped). Bits/dim is scored under the null class ∅ (id K): the unconditional
p(x) that label dropout trains.

```bash
# class accuracy, FID/KID and the judge's scores of 500 samples (50 per digit) at w = 0, 1, 2, 4
ddpm-ext evaluate outputs/mnist-cond --num_samples 500 --samplers ddim:50:1 --guidance_scales 0 1 2 4
```

FID and KID use [`ddpm_ext.evaluation.metrics`]: EfficientNet-Lite0 features by default (offline; **not comparable to
published Inception FIDs**, and labelled so everywhere), or Inception-v3 with `--feature_extractor inception`
when torch-fidelity and its weights are available. The features of the real images are cached per data set,
split, extractor and image size (see `--stats_cache_dir`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm.auto import tqdm

from ..cpu_threads import AdaptiveThreads
from ..data import (
    BUILTIN_DATASETS,
    ImageTransform,
    find_image_column,
    held_out_split,
    infer_channels,
    load_image_dataset,
    validate_image_folder,
)
from ..data.loading import dataset_identity
from ..files import check_new_files
from ..images import normalize, to_uint8
from ..likelihood import bits_per_dim_variances
from ..pipelines.checkpoint_io import check_components, square_sample_size
from ..pipelines.guidance import balanced_class_labels, class_names, is_class_conditional, num_classes
from ..pipelines.pipeline_ddpm_ext import DDPMExtPipeline
from ..seeding import image_generators
from ..validation import check_number, learns_variance, nonfinite_parameters, resolve_device
from .class_scores import (
    class_accuracy,
    class_coverage,
    classifier_inception_score,
    classifier_inception_score_std,
)
from .config import EvaluationConfig
from .digit_classifier import DigitClassifier
from .features import build_feature_extractor, extract_features
from .metrics import sample_quality
from .precision_recall import PRDC_KEYS, precision_recall_density_coverage
from .reference_stats import ReferenceStatistics, reference_statistics
from .report import check_model_card, evaluation_command, results_markdown, update_model_card, write_results
from .samplers import SamplerSpec, parse_sampler, row_key

__all__ = [
    "EvaluationRun",
    "SampledImages",
    "draw_samples",
    "evaluate",
    "judge_scores",
    "load_evaluation",
    "mean_pixel",
    "reference_features",
    "sample_images",
    "score_likelihood",
    "score_reference",
    "score_samples",
]


# ----------------------------------------------------------------------------------------------------------
# The steps: load, score likelihood, sample, score samples, write
# ----------------------------------------------------------------------------------------------------------


def _load_data(config: EvaluationConfig) -> tuple[Any, str, str]:
    """(data set, its identity for the cache key, split)."""
    name = str(config.dataset)
    is_folder = os.path.isdir(os.path.expanduser(name)) or name.startswith(("/", ".", "~"))
    if is_folder:
        split = config.split or "train"
        validate_image_folder(name)  # raises for a missing folder, no images, unreadable files (named as given)
        root = Path(name).expanduser().resolve()
        ds = load_image_dataset(train_data_dir=root, split=split, image_column=config.image_column)
        # the cache key: the folder and its contents (the identity a training checkpoint records for it)
        identity = f"folder:{root}:{dataset_identity(ds, train_data_dir=root)['sha256'][:16]}"
    else:
        split = config.split or held_out_split(name)
        ds = load_image_dataset(name, split=split, image_column=config.image_column)
        identity = name if name in BUILTIN_DATASETS else f"hub:{name}:{getattr(ds, '_fingerprint', '')}"
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
    started = time.perf_counter()
    device = resolve_device(config.device)
    card = None
    if config.update_model_card:  # before loading anything: the card is checked first, the write comes last
        card = check_model_card(config.pipeline)

    # the pipeline and the checks that need it
    pipe = DDPMExtPipeline.from_pretrained(config.pipeline, revision=config.revision)
    unet = pipe.unet
    bad = nonfinite_parameters(unet)
    if bad:  # bits/dim would be NaN and every sample refused: say why before any work
        raise ValueError(f"The UNet of {str(config.pipeline)!r} has non-finite weights (NaN or ±inf) in {len(bad)} "
                         f"tensor(s), e.g. {bad[0]}; it cannot be evaluated.")
    names, scales = _conditioning(config, unet)  # before any data or feature work
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
    schedulers = _build_schedulers(config, pipe) if config.do_samples else {}

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
    _check_image_counts(config, n_data, n_real, split)
    extractor = judge = skip = accuracy_skip = None
    if config.do_samples:  # built before any long computation: a missing backend fails fast
        extractor = build_feature_extractor(config.feature_extractor, inception_weights=config.inception_weights,
                                            device=device)
        if use_judge:
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
        started=started, judge=judge, threads=AdaptiveThreads.from_option(config.cpu_threads, device),
        prdc_skip_reason=skip, model_card=card, class_names=names,
        guidance_scales=scales, class_accuracy_skip_reason=accuracy_skip,
    )


def _build_schedulers(config: EvaluationConfig, pipe: DDPMExtPipeline) -> dict[str, SchedulerMixin]:
    """One scheduler per sampler spec, each checked against the pipeline (steps <= T, a variance the UNet can give,
    a guide for `ag=W`)."""
    T = int(pipe.scheduler.config.num_train_timesteps)
    schedulers = {}
    for s in config.samplers:
        if s.steps > T:
            raise ValueError(
                f"`--samplers` {s.spec!r}: {s.steps} steps is more than the pipeline's num_train_timesteps={T}; "
                f"allowed STEPS: 1..{T}."
            )
        try:
            schedulers[s.spec] = s.build(pipe.scheduler.config)
            check_components(pipe.unet, schedulers[s.spec])
            pipe.resolve_autoguidance_scale(s.autoguidance_scale)  # ag=W > 1 needs the pipeline's guide
        except ValueError as err:
            raise ValueError(f"`--samplers` {s.spec!r} does not fit this pipeline: {err}") from err
    return schedulers


def _check_image_counts(config: EvaluationConfig, n_data: int, n_real: int, split: str) -> None:
    """Enough real images for FID, KID's subset size and bits/dim (`n_data` in the split, `n_real` of them in the
    reference statistics)."""
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


DIGIT_NAMES = [str(d) for d in range(10)]  # the digit judge's classes, in its order


def _conditioning(config: EvaluationConfig, unet: Any) -> tuple[list[str] | None, list[float | None]]:
    """(class names, guidance scales) of a class-conditional UNet; (None, [None]) for an unconditional one, which
    takes no `guidance_scales`."""
    if not is_class_conditional(unet):
        if config.guidance_scales is not None:
            raise ValueError(
                f"`--guidance_scales` {config.guidance_scales} needs a class-conditional pipeline, but "
                f"{str(config.pipeline)!r} is unconditional (its UNet has no `num_class_embeds`); "
                "drop --guidance_scales."
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
        return row_key(self.spec.slug, self.guidance_scale)


def sample_images(run: EvaluationRun, spec: SamplerSpec | str, guidance_scale: float | None = None) -> SampledImages:
    """Step 3: `num_samples` images of one sampler, image i from [`ddpm_ext.seeding.image_generators`]`(seed, i, 1)`
    (the same x_T for every sampler and guidance scale, and the image `ddpm-ext sample --seed` gives), in batches
    of `batch_size`.

    For a class-conditional pipeline image i is asked for class i mod K ([`balanced_class_labels`]: every class
    equally often, whatever the batch size) with classifier-free guidance `guidance_scale` (w; default the first
    of `run.guidance_scales`). DDIM samplers recompute ε̂ from the clipped x̂_0 (`use_clipped_model_output=True`,
    the pipeline's default, as `benchmarks/guidance_study.py`; a spec's `:eps=model` turns it off): the section
    "DDIM with guidance needs the consistent ε̂" of docs/results/guidance.md shows what the raw guided ε̂ does to
    the requested class.

    Raises:
        `ValueError`: For a sampler that was not configured, or a `guidance_scale` for an unconditional pipeline
            (or one that is negative or not finite).
    """
    config, spec = run.config, parse_sampler(spec)
    if spec.spec not in run.schedulers:
        raise ValueError(f"`spec` {spec.spec!r} is not one of the configured samplers {list(run.schedulers)}.")
    k = run.num_classes
    if k is None and guidance_scale is not None:
        raise ValueError(
            f"`guidance_scale` {guidance_scale!r} needs a class-conditional pipeline; this one is unconditional."
        )
    if k is not None:
        guidance_scale = (run.guidance_scales[0] if guidance_scale is None
                          else check_number("guidance_scale", guidance_scale, 0))
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


def reference_features(run: EvaluationRun) -> ReferenceStatistics:
    """The real images' features and statistics ([`ddpm_ext.evaluation.reference_stats.reference_statistics`]), cached
    per data set, split, size, subset and extractor; the images are read only on a cache miss."""
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


def mean_pixel(images: torch.Tensor) -> float:
    """The mean pixel value of uint8 images, in [0, 1] (a grey background raises it)."""
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


def score_samples(run: EvaluationRun, samples: SampledImages, reference: ReferenceStatistics) -> dict[str, Any]:
    """Step 4: one results row of a sampler's images: FID and KID against the reference statistics, precision,
    recall, density and coverage on the same features ([`precision_recall_density_coverage`], k = `nearest_k`;
    None with `prdc_skipped` saying why when there are too few images), the mean pixel value, and the digit
    judge's scores ([`judge_scores`]) when the judge is on, with the class accuracy of a conditional pipeline's
    samples when its classes are the digits (else `class_accuracy` None and `class_accuracy_skipped` says why)."""
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
    if config.output_dir is not None:  # earlier results are the user's: kept unless `overwrite`, checked first
        out = Path(config.output_dir)
        check_new_files([out / "results.json", out / "results.md", *sorted(out.glob("samples_*.png"))],
                        "--output_dir", config.overwrite)
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
        "conditioning": _conditioning_summary(run),
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
            results["digit_judge"] = _digit_judge_summary(run)

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


def _conditioning_summary(run: EvaluationRun) -> dict[str, Any] | None:
    """The results' `conditioning`: a conditional pipeline's classes and labelling rules (None when unconditional)."""
    if run.class_names is None:
        return None
    return {
        "num_classes": run.num_classes,
        "class_names": run.class_names,
        "guidance_scales": run.guidance_scales,
        "sample_labels": "image i is asked for class i mod K (every class equally often)",
        "bits_per_dim_label": (f"the null class ∅ (id {run.null_class}): the unconditional p(x) that label "
                               "dropout trains"),
        "class_accuracy_skipped": run.class_accuracy_skip_reason,
        "ddim": ("use_clipped_model_output=True (ε̂ recomputed from the clipped x̂_0) unless the spec says "
                 ":eps=model"),
    }


def _digit_judge_summary(run: EvaluationRun) -> dict[str, Any]:
    """The results' `digit_judge`: the real images scored ([`score_reference`]), the judge's held-out accuracy
    (from its metadata), the rule that turned it on and a description for the tables."""
    heldout = json.loads(run.judge.metadata.get("heldout_test", "{}"))
    digit_judge = run.config.digit_judge
    return {
        "reference": score_reference(run),
        "heldout_accuracy": heldout.get("accuracy"),
        "rule": f"digit_judge={digit_judge!r}: " + (
            "on for 1-channel (grayscale) models" if digit_judge == "auto" else "on"),
        "description": (
            "Inception Score with ddpm_ext's digit classifier in place of Inception-v3 "
            f"(ddpm_ext.evaluation.digit_classifier; {100 * heldout.get('accuracy', float('nan')):.1f}% "
            "accuracy on the 500 held-out mnist-5k digits; max 10)"),
    }
