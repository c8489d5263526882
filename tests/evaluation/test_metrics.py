"""FID / KID on features (closed forms, torchmetrics' metrics) and the scores of samples against a reference."""

from __future__ import annotations

import doctest
import math
import warnings

import numpy as np
import pytest
import torch
from projection_features import ProjectionFeatures
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from ddpm_ext.evaluation import metrics as metrics_module
from ddpm_ext.evaluation.features import extract_features
from ddpm_ext.evaluation.metrics import (
    feature_statistics,
    fid_from_features,
    frechet_distance,
    kid_from_features,
    sample_quality,
)
from ddpm_ext.evaluation.reference_stats import reference_statistics


def random_spd(n: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.standard_normal((n, n))
    return a @ a.T + 0.1 * np.eye(n)


def sqrtm_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid_closed_form(mu1, s1, mu2, s2) -> float:
    # Tr((Σ1 Σ2)^½) = Tr((Σ1^½ Σ2 Σ1^½)^½): the symmetric form, computed with eigen-decompositions only
    r1 = sqrtm_psd(s1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(sqrtm_psd(r1 @ s2 @ r1)))


def kid_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (aᵀb / d + 1)³, written out from the definition."""
    m, d = x.shape
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = ~np.eye(m, dtype=bool)
    return float(kxx[off].sum() / (m * (m - 1)) + kyy[off].sum() / (m * (m - 1)) - 2 * kxy.sum() / m**2)


# ----------------------------------------------------------------------------------------------------------
# FID
# ----------------------------------------------------------------------------------------------------------


def test_fid_of_identical_feature_sets_is_zero():
    f = torch.randn(50, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs(fid_from_features(f, f.clone())) < 1e-9
    assert abs(fid_from_features(f, f[torch.randperm(50)])) < 1e-9  # order does not matter


@pytest.mark.parametrize("dim", [1, 3, 7])
def test_frechet_distance_matches_the_closed_form(dim):
    rng = np.random.default_rng(dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    s1, s2 = random_spd(dim, rng), random_spd(dim, rng)
    expected = fid_closed_form(mu1, s1, mu2, s2)
    got = frechet_distance(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2)))
    assert got == pytest.approx(expected, rel=1e-8, abs=1e-9)
    assert expected > 0


def test_frechet_distance_of_diagonal_gaussians():
    # commuting covariances: ‖μ1 − μ2‖² + Σ_i (√a_i − √b_i)²
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    got = frechet_distance(*(torch.from_numpy(x) for x in (mu1, np.diag(a), mu2, np.diag(b))))
    assert got == pytest.approx(1.0 + 4.0 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2, rel=1e-12)


def test_fid_from_features_uses_the_unbiased_statistics():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 4, generator=g, dtype=torch.float64)
    y = 0.5 + 2 * torch.randn(30, 4, generator=g, dtype=torch.float64)
    mean, cov = feature_statistics(x)
    assert torch.allclose(mean, x.mean(0)) and torch.allclose(cov, torch.cov(x.T), atol=1e-12)
    xs, ys = x.numpy(), y.numpy()
    expected = fid_closed_form(xs.mean(0), np.cov(xs.T), ys.mean(0), np.cov(ys.T))
    assert fid_from_features(x, y) == pytest.approx(expected, rel=1e-8)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_fid_and_kid_equal_torchmetrics_metrics_with_the_same_extractor():
    extractor = ProjectionFeatures()
    g = torch.Generator().manual_seed(3)
    real = torch.randint(0, 256, (24, 3, 8, 8), dtype=torch.uint8, generator=g)
    fake = torch.randint(0, 128, (20, 3, 8, 8), dtype=torch.uint8, generator=g)
    fid = FrechetInceptionDistance(feature=extractor)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    ours = fid_from_features(extractor(real), extractor(fake))
    assert ours == pytest.approx(float(fid.compute()), rel=1e-9)

    kid = KernelInceptionDistance(feature=extractor, subsets=5, subset_size=10)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    torch.manual_seed(11)  # torchmetrics draws its subsets from the global generator
    tm_mean, tm_std = (float(v) for v in kid.compute())
    mean, std = kid_from_features(extractor(real), extractor(fake), subset_size=10, num_subsets=5,
                                  generator=torch.Generator().manual_seed(11))
    assert mean == pytest.approx(tm_mean, rel=1e-9) and std == pytest.approx(tm_std, rel=1e-9)


# ----------------------------------------------------------------------------------------------------------
# KID
# ----------------------------------------------------------------------------------------------------------


def test_kid_with_full_subsets_is_the_unbiased_mmd():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    y = 0.3 + torch.randn(12, 5, generator=g, dtype=torch.float64)
    mean, std = kid_from_features(x, y, subset_size=12, num_subsets=3, generator=torch.Generator().manual_seed(0))
    assert mean == pytest.approx(kid_numpy(x.numpy(), y.numpy()), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)  # every subset is a permutation of all rows


def test_kid_subsets_follow_the_generator():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 3, generator=g, dtype=torch.float64)
    y = torch.randn(7, 3, generator=g, dtype=torch.float64) * 1.5
    mean, std = kid_from_features(x, y, subset_size=4, num_subsets=6, generator=torch.Generator().manual_seed(7))
    rg = torch.Generator().manual_seed(7)
    values = []
    for _ in range(6):
        ix, iy = torch.randperm(9, generator=rg)[:4], torch.randperm(7, generator=rg)[:4]
        values.append(kid_numpy(x[ix].numpy(), y[iy].numpy()))
    assert mean == pytest.approx(np.mean(values), rel=1e-10)
    assert std == pytest.approx(np.std(values), rel=1e-8)


def test_kid_rejects_too_few_samples():
    x, y = torch.randn(10, 3), torch.randn(8, 3)
    with pytest.raises(ValueError, match=r"subset_size`=9 .*10 real and 8 generated.*<= 8"):
        kid_from_features(x, y, subset_size=9)
    with pytest.raises(ValueError, match="num_subsets"):
        kid_from_features(x, y, subset_size=4, num_subsets=0)
    with pytest.raises(ValueError, match="3 features per image but `fake` has 2"):
        kid_from_features(x, torch.randn(8, 2), subset_size=4)
    with pytest.raises(ValueError, match="at least 2 rows"):
        fid_from_features(x, torch.randn(1, 3))


# ----------------------------------------------------------------------------------------------------------
# Scores of samples against reference statistics
# ----------------------------------------------------------------------------------------------------------


def test_sample_quality_reports_label_and_values():
    extractor = ProjectionFeatures()
    g = torch.Generator().manual_seed(6)
    real = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=g)
    ref = reference_statistics(lambda: real, extractor, key={"d": 1}, use_cache=False)
    same = sample_quality(extract_features(extractor, real, batch_size=5), ref, extractor, kid_subset_size=6,
                          kid_subsets=4, generator=torch.Generator().manual_seed(0))
    dark = sample_quality(extractor(real // 4), ref, extractor, kid_subset_size=6, kid_subsets=4)
    assert abs(same["fid"]) < 1e-7 and dark["fid"] > 0.1 and dark["kid_mean"] > same["kid_mean"]
    assert same["label"] == "projection FID — NOT comparable to published (Inception) FIDs"
    assert same["num_real"] == 12 and same["num_fake"] == 12 and same["comparable_to_published"] is False


def test_fid_from_very_few_images_warns_with_the_number_needed():
    """2 + 2 images of 8 features: FID is computed but a warning says it is not meaningful and what is needed."""
    g = torch.Generator().manual_seed(0)
    real, fake = (torch.randn(2, 8, generator=g, dtype=torch.float64),
                  torch.randn(2, 8, generator=g, dtype=torch.float64))
    with pytest.warns(UserWarning, match=r"FID from 2 real and 2 generated images is not a meaningful number.*"
                                         r"fewer images than the 8 features.*at least 8 images on each side"):
        fid = fid_from_features(real, fake)
    assert math.isfinite(fid) and fid > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough images: no warning
        fid_from_features(torch.randn(20, 8, generator=g, dtype=torch.float64),
                          torch.randn(20, 8, generator=g, dtype=torch.float64))


def test_docstring_examples():
    # FID/KID carry no examples today; any added later run here
    result = doctest.testmod(metrics_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
