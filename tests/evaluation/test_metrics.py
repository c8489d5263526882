"""FID / KID on features (closed forms, torchmetrics' metrics), the feature extractors, cached reference statistics."""

from __future__ import annotations

import doctest
import math
import warnings

import numpy as np
import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

from ddpm_ext.data import build_transform, load_image_dataset
from ddpm_ext.evaluation import features as features_module
from ddpm_ext.evaluation import metrics as metrics_module
from ddpm_ext.evaluation import reference_stats as reference_stats_module
from ddpm_ext.evaluation.features import (
    EfficientNetLite0Features,
    FeatureExtractor,
    build_feature_extractor,
    extract_features,
    to_uint8_rgb,
)
from ddpm_ext.evaluation.metrics import (
    feature_statistics,
    fid_from_features,
    frechet_distance,
    kid_from_features,
    sample_quality,
)
from ddpm_ext.evaluation.reference_stats import reference_statistics


class ProjectionFeatures(FeatureExtractor):
    """A cheap deterministic extractor for the tests: a fixed random projection of the pixels, counting calls."""

    name = "projection"
    num_features = 6

    def __init__(self, pixels: int = 3 * 8 * 8):
        super().__init__()
        self.proj = torch.nn.Linear(pixels, self.num_features, bias=False)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))
        self.calls = 0

    def _features(self, pixels):
        self.calls += 1
        return torch.tanh(self.proj(pixels.flatten(1).float() / 255.0))


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
# Feature extractors
# ----------------------------------------------------------------------------------------------------------


def test_to_uint8_rgb_inverts_the_pipeline_scaling_and_checks_input():
    u = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = u.float() / 127.5 - 1
    out = to_uint8_rgb(x)
    assert out.shape == (2, 3, 4, 4) and out.dtype == torch.uint8
    assert torch.equal(out, u.expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match=r"\[-1, 1\].*\[1.5, 1.5\]"):
        to_uint8_rgb(torch.full((1, 3, 2, 2), 1.5))
    with pytest.raises(ValueError, match=r"C = 1 .* or 3 .*\(1, 2, 4, 4\)"):
        to_uint8_rgb(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="dtype torch.int64"):
        to_uint8_rgb(torch.zeros(1, 3, 4, 4, dtype=torch.int64))


@pytest.fixture(scope="module")
def efficientnet():
    return EfficientNetLite0Features()


def test_efficientnet_features_shape_determinism_and_label(efficientnet):
    g = torch.Generator().manual_seed(0)
    gray = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=g)
    f = efficientnet(gray)
    assert f.shape == (3, 1280) and f.dtype == torch.float64 and torch.isfinite(f).all()
    assert torch.equal(f, efficientnet(gray))  # deterministic (evaluation mode, no dropout)
    assert torch.allclose(efficientnet(gray[1:2]), f[1:2], atol=1e-5)  # no dependence on the rest of the batch
    assert torch.allclose(efficientnet(gray.expand(-1, 3, -1, -1)), f, atol=1e-6)  # gray = RGB with equal channels
    assert torch.allclose(efficientnet(gray.float() / 127.5 - 1), f, atol=1e-6)  # [-1, 1] = uint8
    assert (f >= 0).all() and (f <= 6).all()  # pooled ReLU6 activations
    assert not torch.allclose(f[0], f[1])  # different images, different features
    efficientnet.train()
    assert not efficientnet.training and not efficientnet.net.training
    assert efficientnet.comparable_to_published is False
    assert efficientnet.label == "EfficientNet-Lite0 FID — NOT comparable to published (Inception) FIDs"
    assert efficientnet.identity.startswith("efficientnet-lite0/efficientnet-lite0-57934424.pth/")


def test_efficientnet_features_separate_digits_from_noise(efficientnet):
    """The pretrained features see structure: real digits sit closer to each other than to noise."""
    ds = load_image_dataset("mnist-5k", split="test", max_train_samples=8, seed=0)
    t = build_transform(28, center_crop=True, channels=1)
    digits = torch.stack([t.to_uint8(im) for im in ds["image"]])
    noise = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fd, fn = efficientnet(digits), efficientnet(noise)
    kid = lambda a, b: kid_from_features(a, b, subset_size=4, num_subsets=1)[0]  # noqa: E731
    assert 5 * kid(fd[:4], fd[4:]) < kid(fd[:4], fn[:4])  # measured: 0.068 vs 0.73
    assert fid_from_features(fd[:4], fd[4:]) < fid_from_features(fd[:4], fn[:4])


def test_build_feature_extractor_names_and_inception_errors(tmp_path):
    with pytest.raises(ValueError,
                       match=r"`feature_extractor` must be one of \['efficientnet-lite0', 'inception'\], got 'vgg'"):
        build_feature_extractor("vgg")
    with pytest.raises(ValueError, match="`inception_weights` .*nope.pt.* is not a file"):
        build_feature_extractor("inception", inception_weights=tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="only used with feature_extractor='inception'"):
        build_feature_extractor("efficientnet-lite0", inception_weights=tmp_path / "w.pth")
    if not _TORCH_FIDELITY_AVAILABLE:  # the usual case here: a clear message on what to install, no fake Inception
        weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
        weights.write_bytes(b"not used")
        with pytest.raises(ValueError, match="needs the package torch-fidelity.*pip install torch-fidelity"):
            build_feature_extractor("inception", inception_weights=weights)


# ----------------------------------------------------------------------------------------------------------
# Reference statistics
# ----------------------------------------------------------------------------------------------------------


def test_reference_statistics_are_cached_and_a_hit_skips_extraction(tmp_path):
    extractor = ProjectionFeatures()
    loads = []
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def load():
        loads.append(1)
        return images

    key = {"dataset": "demo", "split": "test", "image_size": 8}
    first = reference_statistics(load, extractor, key=key, cache_dir=tmp_path, batch_size=4)
    assert not first.cache_hit and len(loads) == 1 and extractor.calls == 3  # 10 images in batches of 4
    assert first.path.parent == tmp_path and first.path.suffix == ".safetensors"
    # batches of 4 vs one of 10: float32 matrix products of other shapes may differ in the last bits
    assert torch.allclose(first.mean, extractor(images).mean(0), rtol=1e-5, atol=1e-6) and first.num_images == 10
    calls = extractor.calls

    again = reference_statistics(load, extractor, key=dict(key), cache_dir=tmp_path)
    assert again.cache_hit and len(loads) == 1 and extractor.calls == calls  # nothing loaded, nothing extracted
    # read back from the file: float64, bit for bit
    assert torch.equal(again.features, first.features) and torch.equal(again.cov, first.cov)
    assert again.key["extractor"] == extractor.identity

    other = reference_statistics(load, extractor, key={**key, "split": "train"}, cache_dir=tmp_path)
    assert not other.cache_hit and other.path != first.path and len(loads) == 2

    first.path.write_bytes(b"garbage")  # a corrupt file is recomputed and rewritten
    redo = reference_statistics(load, extractor, key=key, cache_dir=tmp_path)
    assert not redo.cache_hit and len(loads) == 3
    # extracted again, in batches of 64 rather than 4: float32 features in (-1, 1), equal up to rounding on any CPU
    torch.testing.assert_close(redo.features, first.features, rtol=0, atol=1e-5)
    assert reference_statistics(load, extractor, key=key, cache_dir=tmp_path).cache_hit


def test_reference_statistics_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_EXT_FID_STATS_DIR", str(tmp_path / "stats"))
    stats = reference_statistics(lambda: torch.zeros(3, 3, 8, 8, dtype=torch.uint8), ProjectionFeatures(),
                                 key={"dataset": "zeros"})
    assert stats.path.parent == tmp_path / "stats" and stats.path.is_file()
    nocache = reference_statistics(lambda: torch.zeros(3, 3, 8, 8, dtype=torch.uint8), ProjectionFeatures(),
                                   key={"dataset": "zeros"}, use_cache=False)
    assert not nocache.cache_hit and nocache.path is None


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
    results = [doctest.testmod(m, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
               for m in (features_module, metrics_module, reference_stats_module)]
    assert all(r.failed == 0 for r in results) and sum(r.attempted for r in results) > 0
