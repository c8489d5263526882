"""`ddpm-ext evaluate`: the command line of [`ddpm_ext.evaluation.evaluate`]."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..evaluation.config import CLIP_DENOISED_CHOICES, DIGIT_JUDGE_CHOICES, EvaluationConfig
from ..evaluation.evaluate import evaluate
from ..evaluation.features import FEATURE_EXTRACTORS
from ..evaluation.samplers import SAMPLER_GRAMMAR, SamplerSpec, parse_sampler
from ..schedulers import VARIANCE_TYPES
from .cli import add_cpu_threads_argument, int_at_least, nonempty_path, seed_int

__all__ = ["add_arguments", "run", "main"]


def _argparse_sampler(spec: str) -> SamplerSpec:
    try:
        return parse_sampler(spec)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the evaluation options to `parser` (`ddpm-ext evaluate`); the defaults are [`EvaluationConfig`]'s."""
    d = EvaluationConfig.defaults()

    def a(*names, **kwargs):
        if "default" not in kwargs and names[0].startswith("--") and kwargs.get("action") != "store_true":
            kwargs["default"] = d[names[0][2:]]
        return parser.add_argument(*names, **kwargs)

    a("pipeline",
      help="A pipeline folder (DDPMExtPipeline / diffusers DDPMPipeline layout) or a Hub repo id 'org/name'.")
    a("--revision", help="Hub revision of the pipeline (branch, tag or commit); default 'main'.")
    a("--dataset",
      help="Real images: a built-in data set (mnist-5k, openmoji-32), a folder of images, or a Hub data set "
      "'owner/name'.")
    a("--split",
      help="Split of --dataset; default 'test' for built-in data sets that have one (mnist-5k: 500 held-out digits), "
      "else 'train'.")
    a("--image_column", help="Image column of a Hub data set (found automatically by default).")
    a("--max_real_images", type=int_at_least(2),
      help="Use at most this many real images for the reference statistics (a seeded random subset); default all.")
    a("--num_bpd_images", type=int_at_least(0),
      help="Held-out images for bits/dim (a seeded random subset of the split); 0 skips bits/dim.")
    a("--variance_types", nargs="+", choices=list(VARIANCE_TYPES), metavar="VARIANCE",
      help="σ² choices for bits/dim, from " + ", ".join(VARIANCE_TYPES) + "; default fixed_small fixed_large "
      "(plus learned_range first for a model that learns its variance).")
    a("--clip_denoised", choices=CLIP_DENOISED_CHOICES,
      help="Clip x̂_0 to [-1, 1] in the mean of p_θ for bits/dim; auto (default) follows the scheduler's clip_sample, "
           "i.e. scores p_θ as the sampler draws from it (improved DDPM's image_nll.py clips).")
    a("--num_samples", type=int_at_least(0), help="Samples per sampler for FID/KID; 0 skips them.")
    a("--samplers", nargs="+", type=_argparse_sampler, metavar="SPEC",
      help=f"Samplers to evaluate: {SAMPLER_GRAMMAR}. Default ddim:50:0.")
    a("--kid_subset_size", type=int_at_least(2),
      help="Images per KID subset; at most --num_samples and the number of real images.")
    a("--kid_subsets", type=int_at_least(1), help="Number of KID subsets.")
    a("--feature_extractor", choices=list(FEATURE_EXTRACTORS),
      help="Features for FID/KID: efficientnet-lite0 (offline; NOT comparable to published FIDs) or inception "
      "(standard FID; needs torch-fidelity and its weights).")
    a("--inception_weights",
      help="Local file of the Inception weights (pt_inception-2015-12-05-6726825d.pth) for --feature_extractor "
      "inception.")
    a("--stats_cache_dir",
      help="Cache of real-image features; default $DDPM_EXT_FID_STATS_DIR, else ~/.cache/ddpm_ext/fid_stats.")
    a("--no_stats_cache", action="store_true", help="Neither read nor write cached real-image features.")
    a("--batch_size", type=int_at_least(1),
      help="Images per sampling call; (image, timestep) pairs per UNet call for bits/dim; images per feature batch.")
    a("--seed", type=seed_int, help="Seed of the data subsets, the bits/dim noise, the samples and KID.")
    a("--num_grid_images", type=int_at_least(0), help="Samples shown in each sampler's grid.")
    a("--device", help="'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:1', ...")
    a("--output_dir", type=nonempty_path,
      help="Write results.json, results.md and samples_<sampler>.png here (created; earlier results there are kept "
      "unless --overwrite); default: print only.")
    a("--overwrite", action="store_true",
      help="Replace results.json, results.md and samples_*.png already in --output_dir (default: refuse, writing "
      "nothing).")
    a("--nearest_k", type=int_at_least(0),
      help="k of precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020) on the FID "
           "features; each of the samples and the real images needs >= k + 2 images, else they are skipped with the "
           "reason; 0 skips them.")
    a("--digit_judge", choices=DIGIT_JUDGE_CHOICES,
      help="Score samples and real images with ddpm_ext's digit classifier (classifier IS, digits present, class "
           "entropy; images resized to 28x28): auto (default) = on for 1-channel (grayscale) models, on, off.")
    a("--guidance_scales", nargs="+", type=float, metavar="W",
      help="Class-conditional pipelines only: the classifier-free guidance scales w >= 0 to sample with (0 "
           "unconditional, 1 conditional, > 1 guided); one results row per sampler and w. Image i is asked for class "
           "i mod K, and the digit judge adds the class accuracy when the classes are the digits 0-9. Default: 1.")
    a("--update_model_card", action="store_true",
      help="Replace the metrics section (between the ddpm_ext:metrics markers) of the pipeline folder's README.md "
           "with these results, the command and the date.")
    a("--no_progress", action="store_true", help="Hide the progress bars.")
    add_cpu_threads_argument(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm-ext evaluate",
        description="Bits/dim on held-out images and FID/KID of samples of a trained DDPM pipeline.",
    )
    return add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """The `ddpm-ext evaluate` command: [`evaluate`], then print the markdown table; return the exit status."""
    results = evaluate(EvaluationConfig.from_namespace(args))
    print(results["markdown"])
    if "model_card" in results["files"]:
        print(f"Model card updated: {results['files']['model_card']}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and [`run`]. Bad input exits with status 2 and the message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as err:
        parser.error(str(err))


if __name__ == "__main__":
    sys.exit(main())
