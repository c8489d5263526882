"""The digit judge: a small CNN that classifies MNIST-like digits, its shipped weights and its input conventions.

The judge (29 k parameters, 117 KiB of float32 safetensors shipped inside the package) was trained on the 4,500
digits of the built-in mnist-5k `"train"` split with
[`ddpm_ext.evaluation.train_digit_classifier.train_digit_classifier`] (deterministic from its seed;
`python benchmarks/train_digit_classifier.py` rebuilds the shipped file). The 500 digits of the `"test"` split are
held out: the shipped judge's accuracy and the classifier Inception Score of those real digits are stored in the
file's metadata (`DigitClassifier.pretrained().metadata`). The scores computed from its probabilities (classifier
Inception Score, class coverage, class accuracy) are in [`ddpm_ext.evaluation.class_scores`].

Images given to the judge follow the conventions of `ddpm_ext.images`: tensors `(B, 1, H, W)` (or `(B, H, W)`)
float in [-1, 1] or uint8; NumPy arrays `(B, H, W)` / `(B, H, W, 1)` (or uint8 `(B, 1, H, W)`) float in [0, 1]
(diffusers' `output_type="np"`) or uint8; lists of grayscale PIL images. Floats are quantized to 0..255 first
(the judge scores the image a user would save), then mapped to [-1, 1]; images that are not 28×28 are resized
to 28×28 with bilinear interpolation (`torch.nn.functional.interpolate`, `align_corners=False`, antialiased),
so 32×32 samples of a model trained on padded or resized digits can be scored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..files import atomic_path
from ..images import images_to_uint8, normalize
from ..validation import check_int, check_number
from .class_scores import NUM_CLASSES  # the ten digits: one owner, the scores' default K

__all__ = ["DigitClassifier", "PRETRAINED_PATH"]

PRETRAINED_PATH = Path(__file__).resolve().parent / "digit_classifier.safetensors"
IMAGE_SIZE = 28  # MNIST's resolution: what the judge was trained on
_ARCHITECTURE = "digit-cnn-v1"  # bump when the layers below change: stored in (and checked against) the weights

ImageInput = torch.Tensor | np.ndarray | Sequence[Image.Image]


# ----------------------------------------------------------------------------------------------------------
# Images -> the judge's input
# ----------------------------------------------------------------------------------------------------------


def _images_to_model_input(images: ImageInput) -> torch.Tensor:
    """Any accepted image input -> float32 tensor (B, 1, 28, 28) in [-1, 1] (see the module docstring)."""
    if isinstance(images, torch.Tensor):
        t = images.detach().to("cpu")
        if t.ndim == 3:
            t = t.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
        if t.ndim != 4 or t.shape[1] != 1:
            raise ValueError(
                f"A tensor of `images` must have shape (B, 1, H, W) or (B, H, W) (grayscale digits), got "
                f"{tuple(images.shape)}."
            )
        if t.dtype != torch.uint8:
            if not t.is_floating_point():
                raise ValueError(f"A tensor of `images` must be float in [-1, 1] or uint8, got dtype {t.dtype}.")
            _check_float_range(t.double().numpy(), -1.0, 1.0, "tensor", "images.clamp(-1, 1)")
    elif isinstance(images, np.ndarray):
        t = images
        if t.ndim == 4 and t.shape[1] == 1 and t.shape[-1] != 1:
            t = t.transpose(0, 2, 3, 1)  # (B, 1, H, W) -> (B, H, W, 1)
        if t.ndim == 3:
            t = t[..., None]
        if t.ndim != 4 or t.shape[-1] != 1:
            raise ValueError(
                f"An array of `images` must have shape (B, H, W), (B, H, W, 1) or (B, 1, H, W) (grayscale digits), "
                f"got {images.shape}."
            )
        if t.dtype != np.uint8:
            if not np.issubdtype(t.dtype, np.floating):
                raise ValueError(f"An array of `images` must be float in [0, 1] or uint8, got dtype {t.dtype}.")
            _check_float_range(t.astype(np.float64), 0.0, 1.0, "array", "np.clip(images, 0, 1)")
    elif isinstance(images, (list, tuple)):
        if images and all(isinstance(im, Image.Image) for im in images):
            modes = sorted({im.mode for im in images} - {"1", "L"})
            if modes:
                raise ValueError(
                    f"PIL `images` must be grayscale (mode 'L' or '1'), got modes {modes}; convert them with "
                    f"`image.convert('L')`."
                )
        t = images
    else:
        raise ValueError(
            f"`images` must be a torch tensor (B, 1, H, W), a NumPy array (B, H, W) or a list of PIL images, "
            f"got {type(images).__name__}."
        )
    arr = images_to_uint8(t)  # (B, H, W, 1) uint8; also checks emptiness and the list case
    if arr.shape[-1] != 1:
        raise ValueError(f"`images` must be grayscale (one channel), got {arr.shape[-1]} channels.")
    x = normalize(torch.from_numpy(arr[..., 0])).unsqueeze(1)  # (B, 1, H, W) in [-1, 1]
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp(-1.0, 1.0)
    return x


def _check_float_range(values: np.ndarray, low: float, high: float, kind: str, fix: str) -> None:
    if values.size == 0:
        raise ValueError("`images` is empty; there is nothing to classify.")
    if not np.isfinite(values).all():
        raise ValueError(f"A float {kind} of `images` must be finite, got NaN or infinite values.")
    lo, hi = float(values.min()), float(values.max())
    if lo < low - 1e-6 or hi > high + 1e-6:
        raise ValueError(
            f"A float {kind} of `images` must lie in [{low:g}, {high:g}] (ddpm_ext.images conventions), got values "
            f"in [{lo:.4g}, {hi:.4g}]; clip it first (`{fix}`) or pass uint8 pixels."
        )


# ----------------------------------------------------------------------------------------------------------
# The judge
# ----------------------------------------------------------------------------------------------------------


class DigitClassifier(nn.Module):
    r"""A small CNN that classifies 28×28 grayscale digits: the judge of generated MNIST-like samples.

    Layers (`digit-cnn-v1`, 29,178 parameters): three 3×3 convolutions of 16, 32 and 64 channels, each followed
    by batch norm, ReLU and 2×2 max pooling (28 → 14 → 7 → 3), then dropout and a linear layer from the
    576 features to the 10 logits.

    Use [`DigitClassifier.pretrained`] for the shipped judge; [`train_digit_classifier`] trains a new one.

    Example:

    ```py
    >>> import torch
    >>> from ddpm_ext.evaluation.digit_classifier import DigitClassifier
    >>> judge = DigitClassifier.pretrained()
    >>> probs = judge.predict_proba(torch.zeros(4, 1, 28, 28) - 1)  # four black images
    >>> probs.shape, probs.dtype
    (torch.Size([4, 10]), torch.float64)
    >>> judge.predict(torch.full((2, 32, 32), 255, dtype=torch.uint8)).shape  # resized to 28x28
    torch.Size([2])

    ```
    """

    num_features = 64 * 3 * 3

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        self.dropout_p = check_number("dropout", dropout, 0.0, 1.0)
        if self.dropout_p >= 1.0:
            raise ValueError(f"`dropout` must be a number in [0, 1), got {dropout!r}.")

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)
            )

        self.body = nn.Sequential(block(1, 16), block(16, 32), block(32, 64), nn.Flatten())  # (B, 576)
        self.head = nn.Sequential(nn.Dropout(self.dropout_p), nn.Linear(self.num_features, NUM_CLASSES))
        self.metadata: dict[str, str] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 10) of images already in the judge's input space: float (B, 1, 28, 28) in [-1, 1]."""
        return self.head(self.body(x))

    # -- loading and saving --------------------------------------------------------------------------------

    @classmethod
    def pretrained(
        cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
    ) -> "DigitClassifier":
        """The judge shipped with ddpm_ext (or the one saved at `path` by [`DigitClassifier.save`]), in eval mode.

        Its metadata (training settings, held-out accuracy and classifier IS of the 500 mnist-5k test digits)
        is in `.metadata`, a dict of strings.

        Raises:
            `ValueError`: When the file is missing or does not hold a `digit-cnn-v1` judge.
        """
        file = Path(path) if path is not None else PRETRAINED_PATH
        if not file.is_file():
            hint = (" It is rebuilt by `python benchmarks/train_digit_classifier.py`." if path is None else "")
            raise ValueError(f"`path` of the digit classifier does not exist: {str(file)!r}.{hint}")
        with safe_open(str(file), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
        if metadata.get("architecture") != _ARCHITECTURE:
            raise ValueError(
                f"{str(file)!r} does not hold a {_ARCHITECTURE!r} digit classifier "
                f"(architecture in its metadata: {metadata.get('architecture')!r})."
            )
        model = cls()
        model.load_state_dict(state)
        model.metadata = metadata
        return model.to(device).eval()

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """Write the weights to `path` as safetensors (atomically), with `metadata` (values JSON-encoded unless
        strings) and the architecture name."""
        meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
        meta["architecture"] = _ARCHITECTURE
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata=meta)
        self.metadata = meta
        return Path(path)

    # -- prediction ------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def _run(self, images: ImageInput, batch_size: int, features: bool) -> torch.Tensor:
        batch_size = check_int("batch_size", batch_size, 1)
        x = _images_to_model_input(images)  # (B, 1, 28, 28), all checks before any work
        was_training = self.training
        self.eval()
        try:
            outs = []
            for i in range(0, x.shape[0], batch_size):
                xb = x[i : i + batch_size].to(self.device)
                h = self.body(xb)
                outs.append((h if features else self.head(h)).double().cpu())
        finally:
            self.train(was_training)
        return torch.cat(outs)

    def predict_proba(self, images: ImageInput, batch_size: int = 256) -> torch.Tensor:
        """p(y|x): float64 tensor (B, 10) on the CPU, rows summing to 1 (softmax of the logits, in eval mode).

        Args:
            images: See the module docstring (tensor (B, 1, H, W) in [-1, 1] or uint8, arrays, PIL images).
            batch_size (`int`, defaults to 256): Images per forward pass.
        """
        return self._run(images, batch_size, features=False).softmax(dim=-1)

    def predict(self, images: ImageInput, batch_size: int = 256) -> torch.Tensor:
        """The most likely digit of each image: int64 tensor (B,)."""
        return self.predict_proba(images, batch_size).argmax(dim=-1)

    def features(self, images: ImageInput, batch_size: int = 256) -> torch.Tensor:
        """The judge's penultimate features, float64 tensor (B, 576) (e.g. for precision/recall of digits)."""
        return self._run(images, batch_size, features=True)
