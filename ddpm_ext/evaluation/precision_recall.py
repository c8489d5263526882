"""Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020) of two feature sets.

A thin, checked wrapper of the `prdc` package (NAVER's reference implementation of Naeem et al.; install with
`pip install prdc` or `pip install ddpm_ext[metrics]`). With B(x, r) the open ball of radius r around x and
NND_k(x) the distance from a real feature x to its k-th nearest other real feature (for fakes: other fakes):

- precision = fraction of fake features inside ∪_i B(real_i, NND_k(real_i)) (fidelity: samples look real);
- recall = fraction of real features inside ∪_j B(fake_j, NND_k(fake_j)) (diversity: the real data is covered);
- density = (1 / k) · mean over fakes of the number of real balls that contain it (can exceed 1);
- coverage = fraction of real features whose ball B(real_i, NND_k(real_i)) contains at least one fake.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch

from ..validation import check_int

__all__ = ["PRDC_KEYS", "precision_recall_density_coverage"]

PRDC_KEYS = ("precision", "recall", "density", "coverage")  # the keys of [`precision_recall_density_coverage`]


def _as_features(name: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu").double().numpy()
    elif not isinstance(value, np.ndarray):
        raise ValueError(
            f"`{name}` must be a NumPy array or a torch tensor of shape (N, D), got {type(value).__name__}."
        )
    if value.ndim != 2 or value.shape[1] < 1:
        raise ValueError(f"`{name}` must have shape (N, D) (one feature vector per row), got {value.shape}.")
    if value.dtype == np.bool_ or not (
        np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)
    ):
        raise ValueError(f"`{name}` must hold numbers, got dtype {value.dtype}.")
    value = value.astype(np.float64)
    if not np.isfinite(value).all():
        raise ValueError(f"`{name}` must be finite, got NaN or infinite values.")
    return value


def precision_recall_density_coverage(
    real_features: torch.Tensor | np.ndarray, fake_features: torch.Tensor | np.ndarray, nearest_k: int = 5
) -> dict[str, float]:
    r"""Precision, recall, density and coverage of generated features against real ones (k-NN manifolds).

    Precision and recall: Kynkäänniemi et al. (2019), "Improved Precision and Recall Metric for Assessing
    Generative Models" (NeurIPS). Density and coverage: Naeem et al. (2020), "Reliable Fidelity and Diversity
    Metrics for Generative Models" (ICML), which recommends k = 5. Computed by `prdc.compute_prdc` (Euclidean
    distances, strict `<` against the k-NN radius, so a point exactly on a ball's surface is outside), in
    float64; its progress print is silenced.

    Args:
        real_features: Features of real images, shape (N_real, D) (NumPy or torch; e.g. EfficientNet or the
            digit judge's `features`).
        fake_features: Features of generated images, shape (N_fake, D).
        nearest_k (`int`, defaults to 5): k of the k-NN radii; each set needs at least k + 2 rows (prdc's
            partial sort of the distances counts the point itself).

    Returns:
        `dict[str, float]`: `"precision"`, `"recall"`, `"coverage"` in [0, 1] and `"density"` (>= 0; about 1
        when fakes are distributed like the reals).

    Raises:
        `ValueError`: For non-2-D, non-finite or non-numeric features, different D, too few rows or a bad
            `nearest_k`; `ImportError` naming the package when `prdc` is not installed.

    Example:

    ```py
    >>> import numpy as np
    >>> real = np.array([[0.0], [1.0], [3.0], [7.0]])
    >>> fake = np.array([[0.5], [2.6], [12.0], [13.0]])
    >>> precision_recall_density_coverage(real, fake, nearest_k=1)
    {'precision': 0.5, 'recall': 0.75, 'density': 0.75, 'coverage': 0.75}

    ```
    """
    nearest_k = check_int("nearest_k", nearest_k, 1)
    real = _as_features("real_features", real_features)
    fake = _as_features("fake_features", fake_features)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"`real_features` and `fake_features` must have the same feature size D, got {real.shape[1]} and "
            f"{fake.shape[1]}."
        )
    for name, feats in (("real_features", real), ("fake_features", fake)):
        if feats.shape[0] < nearest_k + 2:
            raise ValueError(
                f"`{name}` has {feats.shape[0]} rows; `nearest_k`={nearest_k} needs at least {nearest_k + 2} "
                f"(the k-th nearest neighbour of each point besides itself)."
            )
    try:
        from prdc import compute_prdc  # noqa: PLC0415  optional dependency (the metrics extra), needed only here
    except ImportError as e:
        raise ImportError(
            "precision/recall/density/coverage need the package `prdc`: `pip install prdc` "
            "(or `pip install ddpm_ext[metrics]`)."
        ) from e
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints "Num real: ... Num fake: ..."
        result = compute_prdc(real_features=real, fake_features=fake, nearest_k=nearest_k)
    return {key: float(result[key]) for key in PRDC_KEYS}
