"""Evaluate a trained pipeline: bits/dim on held-out images and FID/KID of samples for chosen samplers.

Run it as `ddpm-ext evaluate` (the command line is in `ddpm_ext/commands/evaluate.py`), or call [`evaluate`]:

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
```

Sampler specs: `ddpm:STEPS[:VARIANCE]` (ancestral DDPM, σ² of the pipeline or VARIANCE = fixed_small /
fixed_large / learned_range), `ddpm-noz:STEPS` (DDPM's mean only, without the added noise z), `ddim:STEPS[:ETA]`
(DDIM with η in [0, 1], default 0). Every sampler is built from the pipeline's scheduler config
([`DDPMExtScheduler`] / [`DDIMExtScheduler`]`.from_config`) and starts from the same x_T per image (image i
has its own generator seeded from `(seed, i)`), so rows differ only by the sampler.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


__all__ = ["SAMPLER_KINDS", "SamplerSpec", "evaluate", "parse_sampler", "results_markdown"]

SAMPLER_KINDS = ("ddpm", "ddpm-noz", "ddim")
_SAMPLER_GRAMMAR = "ddpm:STEPS[:VARIANCE], ddpm-noz:STEPS or ddim:STEPS[:ETA] (e.g. ddpm:1000, ddpm-noz:100, ddim:50:0)"
_SAMPLE_STREAM = 0x5A3D1E  # domain tag of the per-image sampling seeds (distinct from other users of `seed`)


# ----------------------------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler to evaluate: `kind` in [`SAMPLER_KINDS`], `steps`, DDIM's `eta`, DDPM's `variance_type`."""

    kind: str
    steps: int
    eta: float = 0.0
    variance_type: str | None = None

    @property
    def spec(self) -> str:
        """The canonical spec string, e.g. `"ddim:50:0"`."""
        if self.kind == "ddim":
            return f"ddim:{self.steps}:{self.eta:g}"
        return f"{self.kind}:{self.steps}" + (f":{self.variance_type}" if self.variance_type else "")

    @property
    def slug(self) -> str:
        """A file-name-safe form of the spec, e.g. `"ddim-50-eta0"`."""
        if self.kind == "ddim":
            return f"ddim-{self.steps}-eta{self.eta:g}".replace(".", "p")
        return f"{self.kind}-{self.steps}" + (f"-{self.variance_type}" if self.variance_type else "")

    def build(self, scheduler_config: Any):
        """The scheduler for this sampler, from a pipeline's scheduler config."""
        from ..schedulers.scheduling_ddim_ext import DDIMExtScheduler
        from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler

        if self.kind == "ddim":
            return DDIMExtScheduler.from_config(scheduler_config)
        overrides = {"variance_type": self.variance_type} if self.variance_type else {}
        return DDPMExtScheduler.from_config(scheduler_config, **overrides)

    def call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of [`DDPMExtPipeline.__call__`] for this sampler."""
        return {"num_inference_steps": self.steps, "eta": self.eta, "stochastic": self.kind != "ddpm-noz"}


def parse_sampler(spec: str | SamplerSpec) -> SamplerSpec:
    """Parse `ddpm:STEPS[:VARIANCE]`, `ddpm-noz:STEPS` or `ddim:STEPS[:ETA]`.

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
    parts = spec.strip().split(":")
    kind = parts[0].strip().lower()
    if kind not in SAMPLER_KINDS:
        raise bad(f"unknown kind {parts[0]!r} (allowed kinds: {list(SAMPLER_KINDS)})")
    if len(parts) < 2 or len(parts) > (2 if kind == "ddpm-noz" else 3):
        raise bad(f"wrong number of fields for {kind!r}")
    try:
        steps = int(parts[1])
    except ValueError:
        raise bad(f"STEPS must be an integer >= 1, got {parts[1]!r}") from None
    if steps < 1:
        raise bad(f"STEPS must be an integer >= 1, got {steps}")
    if kind == "ddim":
        try:
            eta = float(parts[2]) if len(parts) == 3 else 0.0
        except ValueError:
            raise bad(f"ETA must be a number in [0, 1], got {parts[2]!r}") from None
        if not 0.0 <= eta <= 1.0:
            raise bad(f"ETA must be a number in [0, 1], got {eta:g}")
        return SamplerSpec("ddim", steps, eta=eta)
    variance = parts[2] if len(parts) == 3 else None
    if variance is not None and variance not in VARIANCE_TYPES:
        raise bad(f"VARIANCE must be one of {list(VARIANCE_TYPES)}, got {variance!r}")
    return SamplerSpec(kind, steps, variance_type=variance)


# ----------------------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------------------


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"`--device` {name!r} is not a torch device ('auto', 'cpu', 'cuda', 'cuda:0', ...).") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`--device` {name!r}: CUDA is not available here; use 'cpu' or 'auto'.")
    return device


def _load_data(args: argparse.Namespace):
    """(data set, its identity for the cache key, split)."""
    from ..data import BUILTIN_DATASETS, load_image_dataset, validate_image_folder

    name = str(args.dataset)
    is_folder = os.path.isdir(os.path.expanduser(name)) or name.startswith(("/", ".", "~"))
    if is_folder:
        split = args.split or "train"
        files = validate_image_folder(name)  # raises for a missing folder, no images, unreadable files
        root = Path(name).expanduser().resolve()
        listing = "\n".join(f"{p.relative_to(root)}\t{p.stat().st_size}\t{p.stat().st_mtime_ns}" for p in files)
        identity = f"folder:{root}:{hashlib.sha256(listing.encode()).hexdigest()[:16]}"
        ds = load_image_dataset(train_data_dir=root, split=split, image_column=args.image_column)
    else:
        builtin = BUILTIN_DATASETS.get(name)
        split = args.split or ("test" if builtin is not None and "test" in builtin.splits else "train")
        ds = load_image_dataset(name, split=split, image_column=args.image_column)
        identity = name if builtin is not None else f"hub:{name}:{getattr(ds, '_fingerprint', '')}"
    return ds, identity, split


def _per_image_generators(seed: int, start: int, count: int) -> list[torch.Generator]:
    """Image i's own generator, seeded from (seed, i): samples do not depend on the batch size."""
    return [
        torch.Generator().manual_seed(
            int(np.random.SeedSequence(seed, spawn_key=(_SAMPLE_STREAM, i)).generate_state(1, np.uint64)[0] >> 1)
        )
        for i in range(start, start + count)
    ]


def _mean_sem(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    sem = float(v.std(unbiased=True) / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")
    return float(v.mean()), sem


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate the pipeline as the arguments say (see [`add_arguments`]); return the results.

    Returns:
        `dict`: `bits_per_dim` (one row per variance type), `samples` (one row per sampler, FID/KID with the
        extractor's label), `reference` (the cached real-image statistics), `config`, `environment`,
        `markdown` (the table), and `files` (what was written to `--output_dir`).

    Raises:
        `ValueError`: For a pipeline that cannot be loaded, an unknown data set or split, a channel mismatch
            between the data and the model, a sampler spec that does not fit the model (steps > T, a
            variance the UNet cannot give), too few images for KID's subset size or for bits/dim, or a feature
            extractor that cannot be built; the argument, the value and what is allowed are named.
    """
    from ..data import ImageTransform, infer_channels
    from ..likelihood import bits_per_dim_variances
    from .metrics import build_feature_extractor, extract_features, reference_statistics, sample_quality
    from ..pipelines.checkpoint_io import check_components, square_sample_size
    from ..pipelines.pipeline_ddpm_ext import DDPMExtPipeline
    from ..images import save_image_grid

    started = time.perf_counter()
    progress = not getattr(args, "no_progress", False)
    samplers = [parse_sampler(s) for s in (args.samplers or [])]
    if len({s.spec for s in samplers}) != len(samplers):
        raise ValueError(f"`--samplers` lists a sampler twice: {[s.spec for s in samplers]}.")
    device = _resolve_device(args.device)

    # 1. the pipeline and the checks that need it (before any long computation)
    pipe = DDPMExtPipeline.from_pretrained(args.pipeline, revision=args.revision)
    unet, base_scheduler = pipe.unet, pipe.scheduler
    T = int(base_scheduler.config.num_train_timesteps)
    size = square_sample_size(unet, "Evaluation's images")
    channels = int(unet.config.in_channels)
    learns_variance = int(unet.config.out_channels) == 2 * channels
    variance_types = list(args.variance_types) if args.variance_types else (
        ["learned_range", "fixed_small", "fixed_large"] if learns_variance else ["fixed_small", "fixed_large"]
    )
    if not learns_variance and any(v in ("learned_range", "learned") for v in variance_types):
        raise ValueError(
            f"`--variance_types` {variance_types} includes a learned variance, but the UNet has out_channels="
            f"{unet.config.out_channels} = in_channels (it does not learn σ²); allowed: fixed_small, fixed_large."
        )
    do_samples = bool(samplers) and args.num_samples > 0
    schedulers = {}
    for s in samplers if do_samples else []:
        if s.steps > T:
            raise ValueError(
                f"`--samplers` {s.spec!r}: {s.steps} steps is more than the pipeline's num_train_timesteps={T}; "
                f"allowed STEPS: 1..{T}."
            )
        schedulers[s.spec] = s.build(base_scheduler.config)
        try:
            check_components(unet, schedulers[s.spec])
        except ValueError as err:
            raise ValueError(f"`--samplers` {s.spec!r} does not fit this pipeline: {err}") from err

    # 2. the real images, at the model's size and channels
    ds, data_identity, split = _load_data(args)
    from ..data import find_image_column

    column = find_image_column(ds, args.image_column)
    data_channels = infer_channels(ds, column)
    if data_channels != channels:
        kinds = {1: "grayscale", 3: "RGB"}
        raise ValueError(
            f"Channel mismatch: `--dataset` {args.dataset!r} has {kinds[data_channels]} images ({data_channels} "
            f"channel(s)) but the model {args.pipeline!r} takes {channels} channel(s); evaluate it on a "
            f"{kinds.get(channels, str(channels) + '-channel')} data set."
        )
    n_data = len(ds)
    n_real = n_data if args.max_real_images is None else min(args.max_real_images, n_data)
    if do_samples:
        if n_real < 2:
            raise ValueError(f"`--dataset` {args.dataset!r} (split {split!r}) has {n_data} image(s); FID needs >= 2.")
        if args.kid_subset_size > min(args.num_samples, n_real):
            raise ValueError(
                f"`--kid_subset_size` {args.kid_subset_size} is larger than the number of images: --num_samples "
                f"{args.num_samples} and {n_real} real images ({args.dataset!r}, split {split!r}); allowed: "
                f"2..{min(args.num_samples, n_real)}, or raise --num_samples."
            )
    if args.num_bpd_images > n_data:
        raise ValueError(
            f"`--num_bpd_images` {args.num_bpd_images} is more than the {n_data} images of {args.dataset!r} "
            f"(split {split!r}); allowed: 0..{n_data}."
        )
    extractor = None
    if do_samples:  # built before any long computation: a missing backend fails fast
        extractor = build_feature_extractor(args.feature_extractor, inception_weights=args.inception_weights,
                                            device=device)
    order = np.random.default_rng(args.seed).permutation(n_data)
    transform = ImageTransform(size, center_crop=True, channels=channels)

    def pixels(rows: np.ndarray) -> torch.Tensor:  # uint8 (N, C, size, size)
        return torch.stack([transform.to_uint8(ds[int(r)][column]) for r in rows])

    pipe.to(device)
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    results: dict[str, Any] = {
        "pipeline": str(args.pipeline),
        "dataset": str(args.dataset),
        "split": split,
        "image_size": size,
        "channels": channels,
        "num_train_timesteps": T,
        "bits_per_dim": [],
        "samples": [],
        "reference": None,
    }

    # 3. bits/dim on held-out images, every σ² choice from one set of UNet calls
    if args.num_bpd_images > 0:
        x0 = ImageTransform.normalize(pixels(order[: args.num_bpd_images]))
        t0 = time.perf_counter()
        clip = {"auto": bool(base_scheduler.config.clip_sample), "true": True, "false": False}[args.clip_denoised]
        outs = bits_per_dim_variances(
            unet, base_scheduler, x0.to(device), variance_types, generator=torch.Generator().manual_seed(args.seed),
            batch_size=args.batch_size, progress=progress, clip_denoised=clip,
        )
        seconds = time.perf_counter() - t0
        for name, out in outs.items():
            mean, sem = _mean_sem(out.total)
            results["bits_per_dim"].append({
                "variance_type": name,
                "bits_per_dim": mean,
                "sem": sem,
                "prior": float(out.prior.mean()),
                "decoder": float(out.decoder.mean()),
                "num_images": int(out.total.numel()),
                "clip_denoised": clip,
                "wall_time_s": seconds,
                "wall_time_shared_by": list(outs),
            })

    # 4. FID / KID of each sampler against the cached reference statistics
    grids: dict[str, torch.Tensor] = {}
    if do_samples:
        real_rows = np.sort(order[:n_real]) if n_real < n_data else np.arange(n_data)
        key = {
            "dataset": data_identity, "split": split, "image_size": size, "channels": channels,
            "num_images": int(n_real), "subset_seed": args.seed if n_real < n_data else None,
            "transform": "resize-shorter-bilinear+center-crop",
        }

        class RealBatches:  # loaded lazily, and only on a cache miss; sized, for the progress bar
            def __len__(self) -> int:
                return -(-len(real_rows) // args.batch_size)

            def __iter__(self):
                for i in range(0, len(real_rows), args.batch_size):
                    yield pixels(real_rows[i : i + args.batch_size])

        reference = reference_statistics(
            RealBatches, extractor, key=key, cache_dir=args.stats_cache_dir,
            use_cache=not getattr(args, "no_stats_cache", False), batch_size=args.batch_size, progress=progress,
        )
        results["reference"] = {
            "num_images": reference.num_images, "cache_hit": reference.cache_hit,
            "cache_file": None if reference.path is None else str(reference.path), "seconds": reference.seconds,
            "key": reference.key,
        }
        for spec in samplers:
            pipe.scheduler = schedulers[spec.spec]
            feats, shown, t_sample, t_feat = [], [], 0.0, 0.0
            batches = range(0, args.num_samples, args.batch_size)
            if progress:
                from tqdm.auto import tqdm

                batches = tqdm(batches, desc=f"samples {spec.spec}", unit="batch")
            for start in batches:
                count = min(args.batch_size, args.num_samples - start)
                t0 = time.perf_counter()
                images = pipe(batch_size=count, generator=_per_image_generators(args.seed, start, count),
                              output_type="pt", **spec.call_kwargs()).images  # (B, C, H, W) in [0, 1]
                u8 = (images.float() * 255).round().clamp(0, 255).to(torch.uint8).cpu()  # as a PNG would store it
                t1 = time.perf_counter()
                feats.append(extract_features(extractor, u8, batch_size=args.batch_size))
                t_sample, t_feat = t_sample + t1 - t0, t_feat + time.perf_counter() - t1
                if sum(len(s) for s in shown) < args.num_grid_images:
                    shown.append(u8[: args.num_grid_images - sum(len(s) for s in shown)])
            row = {"sampler": spec.spec, "kind": spec.kind, "steps": spec.steps,
                   "eta": spec.eta if spec.kind == "ddim" else None,
                   "adds_noise": spec.kind == "ddpm" or (spec.kind == "ddim" and spec.eta > 0),
                   "variance_type": None if spec.kind == "ddim" else pipe.scheduler.config.variance_type}
            row.update(sample_quality(torch.cat(feats), reference, extractor, kid_subset_size=args.kid_subset_size,
                                      kid_subsets=args.kid_subsets,
                                      generator=torch.Generator().manual_seed(args.seed)))
            row.update({"sampling_time_s": t_sample, "feature_time_s": t_feat, "wall_time_s": t_sample + t_feat})
            results["samples"].append(row)
            if shown:
                grids[spec.slug] = torch.cat(shown)
        pipe.scheduler = base_scheduler
        results["feature_extractor"] = {"name": extractor.name, "identity": extractor.identity,
                                        "comparable_to_published": extractor.comparable_to_published,
                                        "label": extractor.label}

    results["config"] = {k: ([s.spec for s in v] if k == "samplers" else v) for k, v in vars(args).items()}
    results["config"]["variance_types"] = variance_types
    results["environment"] = {
        "device": str(device), "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    results["total_time_s"] = time.perf_counter() - started
    results["markdown"] = results_markdown(results)

    # 5. files
    results["files"] = {}
    if args.output_dir is not None:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for row in results["samples"]:
            slug = parse_sampler(row["sampler"]).slug
            if slug in grids:
                path = out / f"samples_{slug}.png"
                save_image_grid(grids[slug], path, nrow=math.ceil(math.sqrt(len(grids[slug]))))
                row["grid"] = path.name
        results["markdown"] = results_markdown(results)
        (out / "results.md").write_text(results["markdown"])
        results["files"] = {"json": str(out / "results.json"), "markdown": str(out / "results.md"),
                            "grids": [str(out / r["grid"]) for r in results["samples"] if "grid" in r]}
        saved = {k: v for k, v in results.items() if k != "markdown"}
        (out / "results.json").write_text(json.dumps(saved, indent=2, default=_json_default) + "\n")
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
    if results["bits_per_dim"]:
        n = results["bits_per_dim"][0]["num_images"]
        clipped = "x̂₀ clipped to [−1, 1]" if results["bits_per_dim"][0].get("clip_denoised") else "x̂₀ not clipped"
        lines += [
            "",
            f"## Bits/dim ({n} held-out images, {clipped}; upper bound on −log₂ p(x₀) per dimension, ± standard error)",
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
        lines += [
            "",
            f"## Sample quality: {fe['label']}",
            "",
            f"Reference: {ref['num_images']} real images ({'cached' if ref['cache_hit'] else 'computed'}); KID "
            f"(×10³) over {results['samples'][0]['kid_subsets']} subsets of {results['samples'][0]['kid_subset_size']}.",
            "",
            "| sampler | steps | η | noise z | samples | FID | KID ×10³ | ± std | wall time (s) | grid |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["samples"]:
            grid = f"[{r['grid']}]({r['grid']})" if r.get("grid") else "–"
            eta = _fmt(r["eta"]) if r["eta"] is not None else "–"
            lines.append(
                f"| {r['sampler']} | {r['steps']} | {eta} | {'yes' if r['adds_noise'] else 'no'} | {r['num_fake']} | "
                f"{r['fid']:.2f} | {1e3 * r['kid_mean']:.2f} | {1e3 * r['kid_std']:.2f} | {r['wall_time_s']:.1f} | {grid} |"
            )
    return "\n".join(lines) + "\n"

