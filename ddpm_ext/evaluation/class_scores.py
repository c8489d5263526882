"""Scores computed from class probabilities or labels: classifier Inception Score, class coverage, class accuracy.

All are pure functions of probabilities or labels (NumPy arrays or torch tensors), whichever classifier gave them
(in ddpm_ext, the digit judge of [`ddpm_ext.evaluation.digit_classifier`]):

- [`classifier_inception_score`]: exp(E_x KL(p(y|x) ‖ p(y))), the Inception Score of Salimans et al. (2016)
  with a classifier (the digit judge) in place of Inception-v3 (10 = every image confidently one digit, all digits
  equally often); [`classifier_inception_score_std`] its bootstrap spread;
- [`class_coverage`]: which classes the predictions hit, and how evenly (normalized entropy);
- [`class_accuracy`]: the fraction of images recognised as the class that was requested (class-conditional
  sampling).

Legend: `probs` p(y|x) of shape (N, K); `labels` argmax_y p(y|x) of shape (N,); K = `num_classes` (10 by default,
the digits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..validation import check_int

__all__ = [
    "ClassCoverage",
    "class_accuracy",
    "class_coverage",
    "classifier_inception_score",
    "classifier_inception_score_std",
]

NUM_CLASSES = 10  # the default K: the ten digits the judge tells apart
_PROBS_SUM_TOL = 1e-4  # rows of float32 softmax outputs sum to 1 within ~1e-6


def _as_numpy(name: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").numpy()
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)):
        try:
            return np.asarray(value)
        except ValueError as e:  # ragged nested lists
            raise ValueError(f"`{name}` must be a rectangular array, got a ragged {type(value).__name__}.") from e
    raise ValueError(f"`{name}` must be a NumPy array, a torch tensor or a list, got {type(value).__name__}.")


def _check_probs(name: str, probs: Any, num_classes: int | None = None) -> np.ndarray:
    """`probs` as float64 (N, K): finite, >= 0, rows summing to 1 (within 1e-4), N >= 1, K >= 2."""
    p = _as_numpy(name, probs)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 2:
        raise ValueError(f"`{name}` must be probabilities of shape (N, K) with N >= 1 and K >= 2, got shape {p.shape}.")
    if num_classes is not None and p.shape[1] != num_classes:
        raise ValueError(f"`{name}` has {p.shape[1]} columns but `num_classes` is {num_classes}.")
    if p.dtype == np.bool_ or not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)):
        raise ValueError(f"`{name}` must hold numbers (probabilities), got dtype {p.dtype}.")
    p = p.astype(np.float64)
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"`{name}` must hold finite probabilities >= 0, got values in [{p.min()}, {p.max()}].")
    sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1)))
    if abs(sums[worst] - 1) > _PROBS_SUM_TOL:
        raise ValueError(
            f"Each row of `{name}` must sum to 1 (probabilities, e.g. a softmax; not logits), but row {worst} sums "
            f"to {sums[worst]:.6g}."
        )
    return p


def _check_labels(name: str, labels: Any, num_classes: int) -> np.ndarray:
    """`labels` as int64 (N,) in [0, num_classes), N >= 1."""
    y = _as_numpy(name, labels)
    if y.ndim != 1 or y.shape[0] < 1:
        raise ValueError(f"`{name}` must be class labels of shape (N,) with N >= 1, got shape {y.shape}.")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integer class labels, got dtype {y.dtype}.")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"`{name}` must hold class labels in [0, {num_classes - 1}], got values in [{y.min()}, {y.max()}]."
        )
    return y.astype(np.int64)


def _labels_of(name: str, labels_or_probs: Any, num_classes: int) -> np.ndarray:
    """Labels (N,) given labels (N,) or probabilities (N, num_classes) (their argmax)."""
    arr = _as_numpy(name, labels_or_probs)
    if arr.ndim == 2:
        return _check_probs(name, arr, num_classes).argmax(axis=1)
    if arr.ndim == 1:
        return _check_labels(name, arr, num_classes)
    raise ValueError(
        f"`{name}` must be labels of shape (N,) or probabilities of shape (N, {num_classes}), got shape {arr.shape}."
    )


def classifier_inception_score(probs: torch.Tensor | np.ndarray) -> float:
    r"""The Inception Score of the judge's predictions: exp(E_x KL(p(y|x) ‖ p(y))), with p(y) = E_x p(y|x).

    Salimans et al. (2016), "Improved Techniques for Training GANs", with a digit classifier instead of
    Inception-v3 and a single split over all N images (no 10-split averaging). It lies in [1, min(N, K)]:
    K (10) when every image is classified with certainty and every class is equally frequent, 1 when every
    image gets the same distribution. Terms with p(y|x) = 0 count as 0 (0 log 0 = 0). Computed in float64.

    Args:
        probs: p(y|x), shape (N, K): finite, >= 0, each row summing to 1 (within 1e-4).

    Returns:
        `float`: The score.

    Raises:
        `ValueError`: For a bad shape (not 2-D, N < 1, K < 2), negative, non-finite or non-normalized rows.

    Example:

    ```py
    >>> import numpy as np
    >>> round(classifier_inception_score(np.eye(10)), 12)
    10.0
    >>> classifier_inception_score(np.full((5, 10), 0.1))
    1.0
    >>> round(classifier_inception_score([[1.0, 0.0], [0.5, 0.5]]), 6)  # (4/3) ** 0.75
    1.240806

    ```
    """
    p = _check_probs("probs", probs)
    return float(_inception_scores(p, np.arange(len(p))[None])[0])


def _inception_scores(p: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The score of each image set `p[index[r]]`, r = 0..R-1 (`index` (R, N) of row numbers)."""
    sets = p[index]  # (R, N, K)
    marginal = sets.mean(axis=1, keepdims=True)  # p(y) of each set, (R, 1, K)
    safe = np.where(sets > 0, sets, 1.0)  # log(1) = 0 where p(y|x) = 0
    kl = (sets * (np.log(safe) - np.log(np.where(sets > 0, marginal, 1.0)))).sum(axis=2)  # (R, N) in nats
    return np.exp(kl.mean(axis=1))


def classifier_inception_score_std(probs: torch.Tensor | np.ndarray, num_resamples: int = 200, seed: int = 0) -> float:
    r"""The bootstrap standard deviation of [`classifier_inception_score`]: how much the score of N images would
    move with another N images of the same sampler (the score of `num_resamples` sets of N images drawn with
    replacement from the N; seeded, so the same probabilities give the same number).

    Args:
        probs: p(y|x), shape (N, K), as [`classifier_inception_score`] takes it.
        num_resamples (`int`, defaults to 200): bootstrap sets.
        seed (`int`, defaults to 0): seed of the resampling.

    Returns:
        `float`: the standard deviation (ddof 1) of the resampled scores; 0 for a single image.

    Example:

    ```py
    >>> import numpy as np
    >>> round(classifier_inception_score_std(np.full((50, 10), 0.1)), 12)  # every set scores 1
    0.0
    >>> std = classifier_inception_score_std(np.eye(10)[np.arange(500) % 10])
    >>> 0 < std < 0.1  # confident and balanced: only the class counts vary
    True

    ```
    """
    p = _check_probs("probs", probs)
    check_int("num_resamples", num_resamples, 2)
    if len(p) < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    scores = np.concatenate([_inception_scores(p, rng.integers(0, len(p), size=(min(50, num_resamples - done), len(p))))
                             for done in range(0, num_resamples, 50)])  # 50 sets at a time bounds the memory
    return float(scores.std(ddof=1))


@dataclass(frozen=True)
class ClassCoverage:
    """Which classes a set of predictions contains, and how evenly ([`class_coverage`]).

    Args:
        counts (`tuple[int, ...]`): Number of images predicted as each class 0..K-1.
        num_present (`int`): Classes predicted at least once.
        normalized_entropy (`float`): Entropy of the predicted-label histogram divided by log K, in [0, 1]:
            1 when every class is predicted equally often, 0 when all images get one class.
    """

    counts: tuple[int, ...]
    num_present: int
    normalized_entropy: float

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    @property
    def fraction_present(self) -> float:
        """`num_present / num_classes`."""
        return self.num_present / self.num_classes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: counts, num_present, num_classes, fraction_present, normalized_entropy."""
        return {"counts": list(self.counts), "num_present": self.num_present, "num_classes": self.num_classes,
                "fraction_present": self.fraction_present, "normalized_entropy": self.normalized_entropy}


def class_coverage(labels_or_probs: torch.Tensor | np.ndarray, num_classes: int = NUM_CLASSES) -> ClassCoverage:
    r"""Class coverage of predictions: how many of the `num_classes` classes occur, and how evenly.

    With c_k the number of images predicted as class k and f_k = c_k / N, `num_present` = #{k : c_k > 0} and
    `normalized_entropy` = −Σ_k f_k log f_k / log K (0 log 0 = 0).

    Args:
        labels_or_probs: Predicted labels, integers of shape (N,) in [0, K), or probabilities of shape (N, K)
            (their argmax is taken).
        num_classes (`int`, defaults to 10): K.

    Returns:
        [`ClassCoverage`]

    Example:

    ```py
    >>> cov = class_coverage(np.array([0, 0, 1, 3]), num_classes=4)
    >>> cov.counts, cov.num_present, cov.normalized_entropy  # entropy 1.5 log 2 over log 4
    ((2, 1, 0, 1), 3, 0.75)

    ```
    """
    num_classes = check_int("num_classes", num_classes, 2)
    labels = _labels_of("labels_or_probs", labels_or_probs, num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    f = counts[counts > 0] / labels.shape[0]
    entropy = float(-(f * np.log(f)).sum())
    return ClassCoverage(tuple(int(c) for c in counts), int((counts > 0).sum()), entropy / math.log(num_classes))


def class_accuracy(
    probs_or_labels: torch.Tensor | np.ndarray, requested: torch.Tensor | np.ndarray, num_classes: int = NUM_CLASSES
) -> float:
    r"""The fraction of images whose predicted class is the class that was requested for them.

    Args:
        probs_or_labels: Probabilities (N, K) (argmax taken) or predicted labels (N,) in [0, K).
        requested: The requested labels, integers of shape (N,) in [0, K).
        num_classes (`int`, defaults to 10): K.

    Returns:
        `float`: In [0, 1].

    Example:

    ```py
    >>> class_accuracy(np.array([3, 1, 4, 1]), np.array([3, 1, 4, 5]))
    0.75

    ```
    """
    num_classes = check_int("num_classes", num_classes, 2)
    predicted = _labels_of("probs_or_labels", probs_or_labels, num_classes)
    wanted = _check_labels("requested", requested, num_classes)
    if wanted.shape[0] != predicted.shape[0]:
        raise ValueError(
            f"`requested` has {wanted.shape[0]} labels but `probs_or_labels` has {predicted.shape[0]} rows; "
            "give one requested label per image."
        )
    return float((predicted == wanted).mean())
