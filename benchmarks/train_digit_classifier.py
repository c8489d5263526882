"""Train the digit classifier "judge" shipped as ddpm_ext/evaluation/digit_classifier.safetensors.

Trains `DigitClassifier` with `train_digit_classifier` (its defaults are the shipped settings) on the 4,500
mnist-5k "train" digits, on the CPU with 1 thread (about a minute; deterministic from --seed), then scores the
500 held-out "test" digits and the training digits: accuracy, classifier Inception Score and class coverage.
These numbers go into the file's metadata, so `DigitClassifier.pretrained().metadata` reports them.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/train_digit_classifier.py
    python benchmarks/train_digit_classifier.py --output /tmp/judge.safetensors --seed 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the package, without installing

from ddpm_ext.evaluation.class_scores import class_coverage, classifier_inception_score  # noqa: E402
from ddpm_ext.evaluation.digit_classifier import PRETRAINED_PATH  # noqa: E402
from ddpm_ext.evaluation.train_digit_classifier import load_mnist_5k_arrays, train_digit_classifier  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0, help="Seed of the weights, shuffling, augmentation and dropout.")
    p.add_argument("--epochs", type=int, default=None,
                   help="Passes over the training digits (default: the shipped setting).")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads while training (bit-identical results need the same count).")
    p.add_argument("--output", type=Path, default=PRETRAINED_PATH,
                   help="Where to write the safetensors file (default: the package's).")
    return p.parse_args(argv)


def score(judge, split: str) -> dict:
    """Accuracy, classifier IS and class coverage of the real mnist-5k digits of `split`."""
    pixels, labels = load_mnist_5k_arrays(split)
    probs = judge.predict_proba(pixels)
    coverage = class_coverage(probs)
    return {
        "num_images": int(labels.shape[0]),
        "accuracy": float((probs.argmax(dim=1) == labels).double().mean()),
        "classifier_inception_score": classifier_inception_score(probs),
        "num_classes_present": coverage.num_present,
        "normalized_entropy": coverage.normalized_entropy,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    kwargs = {"seed": args.seed, "num_threads": args.threads, "progress": True}
    if args.epochs is not None:
        kwargs["epochs"] = args.epochs
    start = time.perf_counter()
    judge = train_digit_classifier(**kwargs)
    seconds = time.perf_counter() - start
    results = {"test": score(judge, "test"), "train": score(judge, "train")}
    metadata = {**judge.metadata, "heldout_test": results["test"], "train_split": results["train"]}
    path = judge.save(args.output, metadata)
    size = path.stat().st_size
    print(f"\nwrote {path} ({size / 1024:.1f} KiB), trained in {seconds:.1f} s with {args.threads} thread(s)\n")
    print("| mnist-5k split | digits | accuracy | classifier IS | classes present | normalized entropy |")
    print("|---|---|---|---|---|---|")
    for split, r in results.items():
        print(f"| {split} | {r['num_images']} | {r['accuracy']:.4f} | {r['classifier_inception_score']:.3f} | "
              f"{r['num_classes_present']} | {r['normalized_entropy']:.4f} |")
    return {"seconds": seconds, "bytes": size, **results, "settings": json.loads(judge.metadata["training"])}


if __name__ == "__main__":
    main()
