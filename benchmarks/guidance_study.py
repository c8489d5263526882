"""Classifier-free guidance trade-off: class accuracy and FID/KID of a class-conditional pipeline for several w.

For each guidance scale w, `--num_per_class` images of every class are drawn (DDIM with `--eta` and the consistent
ε̂ of `use_clipped_model_output=True`, `--steps` steps;
image i has its own generator by the package's seeding rule, `ddpm_ext.seeding.image_generators(--seed, i, 1)`,
so every w starts from the same x_T), then:

- **class accuracy**: the fraction that a digit classifier (`ddpm_ext.evaluation.digit_classifier`, trained on
  mnist-5k's train split) recognises as the requested class;
- **FID / KID** against the real images of `--dataset` / `--split` (default: mnist-5k's 500 test digits), with
  the features `evaluate` uses (EfficientNet-Lite0 by default: not comparable to published Inception FIDs);
- wall time of sampling.

The digit classifier's held-out accuracy on real test digits is printed with the table (its `.metadata`).

`ddpm-ext evaluate PIPELINE --guidance_scales 0 1 2 4 --samplers ddim:50:1` measures the same class accuracy and
FID/KID (plus precision/recall, the judge's other scores and bits/dim), sampling with the same code
(`ddpm_ext.evaluation.evaluate.draw_samples`, DDIM with `use_clipped_model_output=True`); it asks image i for class
i mod K, where this study asks the first `--num_per_class` images for class 0, the next for class 1, and so on,
so the two give the same statistics from different (image, class) pairs. This script stays for the table of
docs/results/guidance.md and its stand-in judge and features (tests).

It prints a markdown table (and writes JSON with `--output`):

    python benchmarks/guidance_study.py outputs/mnist-cond --num_per_class 50 \
        --guidance_scales 0 1 2 4 --steps 50 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Sequence

import torch

from ddpm_ext import DDIMExtScheduler, DDPMExtPipeline
from ddpm_ext.data import ImageTransform, find_image_column, load_image_dataset
from ddpm_ext.evaluation.class_scores import class_accuracy
from ddpm_ext.evaluation.digit_classifier import DigitClassifier
from ddpm_ext.evaluation.evaluate import draw_samples
from ddpm_ext.evaluation.features import build_feature_extractor, extract_features
from ddpm_ext.evaluation.metrics import fid_from_features, kid_from_features
from ddpm_ext.evaluation.reference_stats import reference_statistics
from ddpm_ext.pipelines.guidance import num_classes

Judge = Callable[[torch.Tensor], torch.Tensor]  # images (B, C, H, W) in [-1, 1] -> probabilities (B, K)
Features = Callable[[torch.Tensor], torch.Tensor]  # uint8 images (B, C, H, W) -> features (B, F)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pipeline", help="A class-conditional pipeline folder or Hub repo id.")
    p.add_argument("--num_per_class", type=int, default=50, help="Images per class and guidance scale (default: 50).")
    p.add_argument("--guidance_scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0], help="The w to compare.")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default: 50).")
    p.add_argument("--eta", type=float, default=1.0,
                   help="DDIM's η in [0, 1] (default: 1, the respaced DDPM with σ² = β̃; η = 0 leaves grey "
                        "backgrounds on briefly trained CPU models). ε̂ is recomputed from the clipped x̂_0 "
                        "(use_clipped_model_output=True): with the raw guided ε̂ the DDIM update mixes it with a "
                        "clipped x̂_0 and the requested class is lost at w ≥ 2.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the images (the package's per-image rule; default: 0).")
    p.add_argument("--dataset", default="mnist-5k", help="Real images for FID/KID (default: mnist-5k).")
    p.add_argument("--split", default="test", help="Their split (default: test, the 500 held-out digits).")
    p.add_argument("--feature_extractor", default="efficientnet-lite0",
                   help="FID/KID features, as `ddpm-ext evaluate`.")
    p.add_argument("--kid_subset_size", type=int, default=100, help="KID subset size (default: 100).")
    p.add_argument("--batch_size", type=int, default=100, help="Images per pipeline call (default: 100).")
    p.add_argument("--output", default=None, help="Also write the results as JSON here.")
    args = p.parse_args(argv)
    for name in ("num_per_class", "steps", "kid_subset_size", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 0.0 <= args.eta <= 1.0:
        p.error(f"--eta must be in [0, 1], got {args.eta}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    for w in args.guidance_scales:
        if not (w >= 0 and w != float("inf")):
            p.error(f"--guidance_scales must be finite numbers >= 0, got {w}")
    return args


def study(
    pipe: Any,
    judge: Judge,
    features: Features,
    real_features: torch.Tensor,
    *,
    guidance_scales: Sequence[float],
    num_per_class: int,
    steps: int,
    seed: int,
    eta: float = 1.0,
    kid_subset_size: int,
    batch_size: int = 100,
) -> list[dict[str, Any]]:
    """One row per w: class accuracy, FID, KID and sampling wall time."""
    k = num_classes(pipe.unet)  # refuses an unconditional pipeline
    pipe.scheduler = DDIMExtScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    requested = torch.arange(k).repeat_interleave(num_per_class)  # (K * n,)
    n = len(requested)
    subset = min(kid_subset_size, n, len(real_features))
    rows = []
    for w in guidance_scales:
        # image i from image_generators(seed, i, 1), uint8 as a PNG stores it: evaluate's sampling step
        u8, seconds = draw_samples(pipe, n, seed=seed, batch_size=batch_size, class_labels=requested,
                                   guidance_scale=float(w), num_inference_steps=steps, eta=eta,
                                   use_clipped_model_output=True)  # (N, C, H, W)
        probs = judge(u8.float() / 127.5 - 1)
        accuracy = class_accuracy(probs.cpu(), requested, num_classes=k)
        fake = features(u8)
        kid_mean, kid_std = kid_from_features(real_features, fake, subset_size=subset,
                                              generator=torch.Generator().manual_seed(seed))
        rows.append({
            "guidance_scale": float(w), "class_accuracy": accuracy, "fid": fid_from_features(real_features, fake),
            "kid_mean": kid_mean, "kid_std": kid_std, "num_images": n, "sampling_time_s": seconds,
        })
    return rows


def markdown(rows: list[dict[str, Any]], feature_label: str) -> str:
    lines = [
        f"| w | class accuracy | FID ({feature_label}) | KID × 10³ | sampling time (s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['guidance_scale']:g} | {r['class_accuracy']:.3f} | {r['fid']:.2f} | "
                     f"{1e3 * r['kid_mean']:.2f} ± {1e3 * r['kid_std']:.2f} | {r['sampling_time_s']:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, judge: Judge | None = None,
         features: Features | None = None, real_features: torch.Tensor | None = None,
         feature_label: str | None = None) -> int:
    """Run the study; `judge`, `features` and `real_features` replace the digit classifier and the FID features
    (for tests)."""
    args = parse_args(argv)
    started = time.perf_counter()
    pipe = DDPMExtPipeline.from_pretrained(args.pipeline)
    if judge is None:
        classifier = DigitClassifier.pretrained()
        judge = classifier.predict_proba
        print(f"digit classifier: {dict(classifier.metadata)}", file=sys.stderr)
    if features is None or real_features is None:
        extractor = build_feature_extractor(args.feature_extractor)
        ds = load_image_dataset(args.dataset, split=args.split)
        column = find_image_column(ds)
        size = pipe.unet.config.sample_size
        transform = ImageTransform(size if isinstance(size, int) else size[0], center_crop=True,
                                   channels=pipe.unet.config.in_channels)
        key = {"dataset": args.dataset, "split": args.split, "image_size": transform.resolution,
               "channels": transform.channels, "num_images": len(ds),
               "transform": "resize-shorter-bilinear+center-crop", "by": "guidance_study"}
        real_features = reference_statistics(  # cached: the real digits' features are computed once
            lambda: torch.stack([transform.to_uint8(im) for im in ds[column]]), extractor, key=key,
            batch_size=args.batch_size,
        ).features
        features = lambda u8: extract_features(extractor, u8, batch_size=args.batch_size)  # noqa: E731
        feature_label = extractor.label
    rows = study(pipe, judge, features, real_features, guidance_scales=args.guidance_scales,
                 num_per_class=args.num_per_class, steps=args.steps, seed=args.seed, eta=args.eta,
                 kid_subset_size=args.kid_subset_size, batch_size=args.batch_size)
    table = markdown(rows, feature_label or "features")
    print(table)
    print(f"\n{len(rows)} guidance scales, {rows[0]['num_images']} images each, DDIM-{args.steps} (η = {args.eta:g}); "
          f"total wall time {time.perf_counter() - started:.0f} s; real images: {args.dataset} ({args.split}, "
          f"{len(real_features)}).")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
