"""A digit classifier "judge" for MNIST-like samples, and the scores computed from its predictions.

The judge is a small CNN (29 k parameters, 117 KiB of float32 safetensors shipped inside the package)
trained on the 4,500 digits of the built-in mnist-5k `"train"` split with [`train_digit_classifier`]
(deterministic from its seed; `python benchmarks/train_digit_classifier.py` rebuilds the shipped file). The
500 digits of the `"test"` split are held out: the shipped judge's accuracy and the classifier Inception
Score of those real digits are stored in the file's metadata (`DigitClassifier.pretrained().metadata`).

Scores, all pure functions of probabilities or labels (NumPy arrays or torch tensors):

- [`classifier_inception_score`]: exp(E_x KL(p(y|x) ‖ p(y))), the Inception Score of Salimans et al. (2016)
  with the judge in place of Inception-v3 (10 = every image confidently one digit, all digits equally often);
- [`class_coverage`]: which classes the predictions hit, and how evenly (normalized entropy);
- [`class_accuracy`]: the fraction of images recognised as the class that was requested (class-conditional
  sampling).

Images given to the judge follow the conventions of `ddpm_ext.images`: tensors `(B, 1, H, W)` (or `(B, H, W)`)
float in [-1, 1] or uint8; NumPy arrays `(B, H, W)` / `(B, H, W, 1)` (or uint8 `(B, 1, H, W)`) float in [0, 1]
(diffusers' `output_type="np"`) or uint8; lists of grayscale PIL images. Floats are quantized to 0..255 first
(the judge scores the image a user would save), then mapped to [-1, 1]; images that are not 28×28 are resized
to 28×28 with bilinear interpolation (`torch.nn.functional.interpolate`, `align_corners=False`, antialiased),
so 32×32 samples of a model trained on padded or resized digits can be scored.

Legend: `probs` p(y|x) of shape (N, K); `labels` argmax_y p(y|x) of shape (N,); K = `num_classes` (10).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..data import load_mnist_5k
from ..files import atomic_path
from ..images import images_to_uint8, normalize
from ..validation import check_int, check_number

__all__ = [
    "ClassCoverage",
    "DigitClassifier",
    "PRETRAINED_PATH",
    "class_accuracy",
    "class_coverage",
    "classifier_inception_score",
    "classifier_inception_score_std",
    "load_mnist_5k_arrays",
    "train_digit_classifier",
]

PRETRAINED_PATH = Path(__file__).resolve().parent / "digit_classifier.safetensors"
IMAGE_SIZE = 28  # MNIST's resolution: what the judge was trained on
NUM_CLASSES = 10
_ARCHITECTURE = "digit-cnn-v1"  # bump when the layers below change: stored in (and checked against) the weights
_PROBS_SUM_TOL = 1e-4  # rows of float32 softmax outputs sum to 1 within ~1e-6

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
    >>> from ddpm_ext.evaluation.digit_classifier import DigitClassifier, classifier_inception_score
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


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


def load_mnist_5k_arrays(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """mnist-5k `split` as (uint8 tensor (N, 1, 28, 28), int64 labels (N,)), in the data set's order."""
    ds = load_mnist_5k(split=split)
    pixels = np.stack([np.asarray(im, dtype=np.uint8) for im in ds["image"]])  # (N, 28, 28)
    return torch.from_numpy(pixels).unsqueeze(1), torch.tensor(ds["label"], dtype=torch.int64)


def _augment(x: torch.Tensor, generator: torch.Generator, max_shift: float, max_rotation: float,
             max_scale: float) -> torch.Tensor:
    """Random affine jitter of a batch (B, 1, 28, 28) in [-1, 1]: shift (pixels), rotation (degrees), scale;
    the background (-1) fills what moves in."""
    b = x.shape[0]
    u = torch.rand(b, 4, generator=generator, dtype=torch.float64) * 2 - 1  # (B, 4) in [-1, 1)
    angle = u[:, 0] * math.radians(max_rotation)
    scale = 1 + u[:, 1] * max_scale
    shift = u[:, 2:] * (2 * max_shift / IMAGE_SIZE)  # pixels -> normalized coordinates ([-1, 1] spans 28 px)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.float(), list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


def train_digit_classifier(
    *,
    seed: int = 0,
    epochs: int = 12,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
    max_shift: float = 2.0,
    max_rotation: float = 10.0,
    max_scale: float = 0.1,
    num_threads: int | None = 1,
    progress: bool = False,
) -> DigitClassifier:
    r"""Train a [`DigitClassifier`] on the 4,500 digits of the mnist-5k `"train"` split, on the CPU.

    AdamW with a one-cycle learning-rate schedule, cross-entropy, each batch jittered by a random affine map
    (shift up to `max_shift` pixels, rotation up to `max_rotation` degrees, scale up to 1 ± `max_scale`).
    Deterministic: the initial weights, the shuffling, the jitter and dropout come from `seed` (the caller's
    global RNG state is restored afterwards); with the same PyTorch build, CPU and `num_threads` two runs give
    identical weights. The defaults are the settings of the shipped judge (about a minute with 1 thread).

    Args:
        seed (`int`, defaults to 0): Seed of every random choice.
        epochs (`int`, defaults to 12): Passes over the 4,500 digits.
        batch_size (`int`, defaults to 64): Digits per step.
        learning_rate (`float`, defaults to 3e-3): Peak learning rate of the one-cycle schedule.
        weight_decay (`float`, defaults to 1e-4): AdamW's decoupled weight decay.
        max_shift, max_rotation, max_scale (`float`): Augmentation bounds (0 turns each off).
        num_threads (`int`, *optional*, defaults to 1): `torch.set_num_threads` while training (restored after);
            None keeps the current setting. Results are bit-identical only for the same thread count.
        progress (`bool`, defaults to False): Print the mean loss of each epoch.

    Returns:
        [`DigitClassifier`]: The trained judge, in eval mode, with its training settings in `.metadata`.

    Example:

    ```py
    >>> from ddpm_ext.evaluation.digit_classifier import train_digit_classifier
    >>> judge = train_digit_classifier(seed=0, epochs=1)  # doctest: +SKIP
    ```
    """
    settings = {
        "seed": check_int("seed", seed, 0),
        "epochs": check_int("epochs", epochs, 1),
        "batch_size": check_int("batch_size", batch_size, 1),
        "learning_rate": check_number("learning_rate", learning_rate, 0, low_open=True),
        "weight_decay": check_number("weight_decay", weight_decay, 0),
        "max_shift": check_number("max_shift", max_shift, 0, IMAGE_SIZE / 2),
        "max_rotation": check_number("max_rotation", max_rotation, 0, 180),
        "max_scale": check_number("max_scale", max_scale, 0, 0.5),
    }
    if num_threads is not None:
        num_threads = check_int("num_threads", num_threads, 1)
    pixels, labels = load_mnist_5k_arrays("train")
    x_all = normalize(pixels)  # (4500, 1, 28, 28) in [-1, 1]
    n = x_all.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)

    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    start = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # initial weights and dropout
            gen = torch.Generator().manual_seed(seed + 1)  # shuffling and augmentation
            model = DigitClassifier().train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
            schedule = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=learning_rate, epochs=epochs, steps_per_epoch=steps_per_epoch
            )
            for epoch in range(epochs):
                order = torch.randperm(n, generator=gen)
                total = 0.0
                for i in range(0, n, batch_size):
                    idx = order[i : i + batch_size]
                    xb = _augment(x_all[idx], gen, max_shift, max_rotation, max_scale)
                    loss = F.cross_entropy(model(xb), labels[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    total += float(loss.detach()) * len(idx)
                if progress:
                    print(f"epoch {epoch + 1}/{epochs}: loss {total / n:.4f} ({time.perf_counter() - start:.1f} s)",
                          flush=True)
    finally:
        torch.set_num_threads(old_threads)
    model.eval()
    model.metadata = {
        "training": json.dumps({**settings, "data": "mnist-5k train (4,500 digits)", "optimizer": "AdamW one-cycle"}),
        "num_threads": json.dumps(num_threads),
        "train_seconds": f"{time.perf_counter() - start:.1f}",
        "torch_version": torch.__version__,
    }
    return model


# ----------------------------------------------------------------------------------------------------------
# Scores from probabilities / labels
# ----------------------------------------------------------------------------------------------------------


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
