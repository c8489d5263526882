"""FID and KID: the distances between two sets of image features (float64, torchmetrics' arithmetic).

Legend (code name -> symbol):

    features        f(x) ∈ R^F, one row per image, float64
    mean, cov       μ, Σ of the features (Σ with the unbiased 1/(N−1) normalisation)
    fid             ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^½)          (Heusel et al. 2017)
    kid             unbiased MMD² with the kernel k(x, y) = (xᵀy / F + 1)³, averaged over random subsets
                    of `subset_size` real and generated images                 (Bińkowski et al. 2018)

The arithmetic is torchmetrics' (`FrechetInceptionDistance`'s `_compute_fid`, `KernelInceptionDistance`'s
`poly_mmd`), applied here to precomputed float64 features so that the features of the real images can be
cached once per data set ([`ddpm_ext.evaluation.reference_stats.reference_statistics`]) and the subsets of KID
drawn from a seeded generator. The features come from [`ddpm_ext.evaluation.features`].
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from ..validation import check_int

if TYPE_CHECKING:  # annotations only: reference_stats imports feature_statistics from here
    from .features import FeatureExtractor
    from .reference_stats import ReferenceStatistics

__all__ = [
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "kid_from_features",
    "sample_quality",
    "warn_if_few_images",
]


def _check_features(features: torch.Tensor, name: str, min_rows: int = 2) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"`{name}` must be a 2-D tensor (N, F) of features, got {shape}.")
    if features.shape[0] < min_rows:
        raise ValueError(f"`{name}` needs at least {min_rows} rows (images), got {features.shape[0]}.")
    if not torch.isfinite(features).all():
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return features.to(torch.float64)


def _check_pair(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    real, fake = _check_features(real, "real"), _check_features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"`real` has {real.shape[1]} features per image but `fake` has {fake.shape[1]}.")
    return real, fake


def warn_if_few_images(num_real: int, num_fake: int, num_features: int) -> str | None:
    """Warn (`UserWarning`) when a FID comes from fewer images than features on either side; return the message.

    With N < F images the covariance of the F features has rank N − 1 < F, so FID is dominated by its bias
    (it falls as the number of images grows, e.g. from hundreds at 2 + 2 images): such a FID only ranks models
    scored with the same numbers of images, and must not be read as a quality level.
    """
    if min(num_real, num_fake) >= num_features:
        return None
    message = (
        f"FID from {num_real} real and {num_fake} generated images is not a meaningful number: with fewer images "
        f"than the {num_features} features the covariances are singular and FID is strongly biased upwards (the "
        f"fewer the images, the larger). Use at least {num_features} images on each side for a full-rank estimate "
        f"(published FIDs use 10,000-50,000); below that, compare only runs with the same numbers of images, and "
        f"prefer KID (unbiased; see its spread kid_std)."
    )
    warnings.warn(message, UserWarning, stacklevel=3)
    return message


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """μ `(F,)` and the unbiased covariance Σ `(F, F)` (divided by N − 1, as torchmetrics), in float64."""
    f = _check_features(features, "features")
    mean = f.mean(dim=0)
    centred = f - mean
    return mean, centred.T @ centred / (f.shape[0] - 1)


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½), the Fréchet distance of two Gaussians (torchmetrics' formula, float64).

    Tr((Σ₁Σ₂)^½) is the sum of the square roots of the eigenvalues of Σ₁Σ₂ (real and ≥ 0 for covariances;
    round-off imaginary parts are dropped).
    """
    from torchmetrics.image.fid import _compute_fid  # noqa: PLC0415  optional dependency (the metrics extra)

    mu1, mu2 = mu1.to(torch.float64), mu2.to(torch.float64)
    sigma1, sigma2 = sigma1.to(torch.float64), sigma2.to(torch.float64)
    if mu1.ndim != 1 or mu1.shape != mu2.shape or sigma1.shape != (mu1.shape[0],) * 2 or sigma2.shape != sigma1.shape:
        raise ValueError(
            f"Shapes do not match: mu1 {tuple(mu1.shape)}, sigma1 {tuple(sigma1.shape)}, mu2 {tuple(mu2.shape)}, "
            f"sigma2 {tuple(sigma2.shape)}; expected (F,), (F, F), (F,), (F, F)."
        )
    return float(_compute_fid(mu1, sigma1, mu2, sigma2))


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets `(N, F)`, `(M, F)` (N, M ≥ 2)."""
    real, fake = _check_pair(real, fake)
    warn_if_few_images(real.shape[0], fake.shape[0], real.shape[1])
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


def kid_from_features(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    subset_size: int = 100,
    num_subsets: int = 100,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """KID: mean and standard deviation over `num_subsets` of the unbiased MMD² with a polynomial kernel.

    Each subset takes `subset_size` real and `subset_size` generated rows without replacement (a random
    permutation from `generator`), as torchmetrics' `KernelInceptionDistance.compute` does, with
    k(x, y) = (γ xᵀy + coef)^degree, γ = 1/F by default, and the standard deviation over subsets
    (population, like torchmetrics).

    Raises:
        `ValueError`: When `subset_size` exceeds the number of real or generated rows (both are said), or a
            count is not a positive integer.
    """
    from torchmetrics.image.kid import poly_mmd  # noqa: PLC0415  optional dependency (the metrics extra)

    real, fake = _check_pair(real, fake)
    subset_size = check_int("subset_size", subset_size, 2)
    num_subsets, degree = check_int("num_subsets", num_subsets, 1), check_int("degree", degree, 1)
    if subset_size > min(real.shape[0], fake.shape[0]):
        raise ValueError(
            f"KID's `subset_size`={subset_size} is larger than the number of images: {real.shape[0]} real and "
            f"{fake.shape[0]} generated; use a subset size <= {min(real.shape[0], fake.shape[0])} or more images."
        )
    scores = []
    for _ in range(num_subsets):
        r = real[torch.randperm(real.shape[0], generator=generator)[:subset_size]]
        g = fake[torch.randperm(fake.shape[0], generator=generator)[:subset_size]]
        scores.append(poly_mmd(r, g, degree=degree, gamma=gamma, coef=coef))
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(unbiased=False))


def sample_quality(
    fake_features: torch.Tensor,
    reference: ReferenceStatistics,
    extractor: FeatureExtractor,
    *,
    kid_subset_size: int,
    kid_subsets: int = 100,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """FID and KID of generated-image features against the reference, with the extractor's label.

    Returns:
        `dict`: `fid`, `kid_mean`, `kid_std`, `kid_subset_size`, `kid_subsets`, `num_real`, `num_fake`,
        `feature_extractor`, `comparable_to_published`, `label`.
    """
    warn_if_few_images(reference.num_images, int(fake_features.shape[0]), int(reference.features.shape[1]))
    mean, cov = feature_statistics(fake_features)
    fid = frechet_distance(reference.mean, reference.cov, mean, cov)
    kid_mean, kid_std = kid_from_features(reference.features, fake_features, subset_size=kid_subset_size,
                                          num_subsets=kid_subsets, generator=generator)
    return {
        "fid": fid,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subset_size": kid_subset_size,
        "kid_subsets": kid_subsets,
        "num_real": reference.num_images,
        "num_fake": int(fake_features.shape[0]),
        "feature_extractor": extractor.name,
        "comparable_to_published": extractor.comparable_to_published,
        "label": extractor.label,
    }
