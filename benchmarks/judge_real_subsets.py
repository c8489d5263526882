"""The digit judge's classifier IS of real held-out digits in small sets: what a perfect generator would score.

A 64-image grid cannot hold the ten digits in equal numbers, so even real digits score below the 500-image
reference (9.55): this draws `--draws` random subsets of `--sizes` images from the 500 held-out mnist-5k digits
(seeded) and prints the mean and spread of their classifier IS, the yardstick for a sample grid's score.

    python benchmarks/judge_real_subsets.py --sizes 64 256 500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the package, without installing

from ddpm_ext.evaluation.digit_classifier import DigitClassifier, classifier_inception_score, load_mnist_5k_arrays  # noqa: E402


def subset_scores(probs: torch.Tensor, size: int, draws: int, seed: int) -> np.ndarray:
    """Classifier IS of `draws` subsets of `size` rows of `probs`, each drawn without replacement (seeded)."""
    if not 2 <= size <= len(probs):
        raise ValueError(f"`size` must be in [2, {len(probs)}] (the held-out digits), got {size}.")
    g = torch.Generator().manual_seed(seed)
    return np.array([classifier_inception_score(probs[torch.randperm(len(probs), generator=g)[:size]]) for _ in range(draws)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 256, 500], help="Subset sizes (default: 64 256 500).")
    p.add_argument("--draws", type=int, default=200, help="Subsets per size (default: 200).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the draws (default: 0).")
    args = p.parse_args(argv)
    images, _ = load_mnist_5k_arrays("test")
    probs = DigitClassifier.pretrained().predict_proba(images)
    print("| images | classifier IS, mean over draws | ± std | draws |\n|---|---|---|---|")
    for size in args.sizes:
        try:
            scores = subset_scores(probs, size, args.draws if size < len(probs) else 1, args.seed)
        except ValueError as e:
            p.error(str(e))
        print(f"| {size} | {scores.mean():.2f} | {scores.std():.2f} | {len(scores)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
