"""The feature extractors: pixel conversion, EfficientNet-Lite0 features, building an extractor by name."""

from __future__ import annotations

import doctest

import pytest
import torch
from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

from ddpm_ext.data import build_transform, load_image_dataset
from ddpm_ext.evaluation import features as features_module
from ddpm_ext.evaluation.features import EfficientNetLite0Features, build_feature_extractor, to_uint8_rgb
from ddpm_ext.evaluation.metrics import fid_from_features, kid_from_features


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


def test_docstring_examples():
    result = doctest.testmod(features_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
