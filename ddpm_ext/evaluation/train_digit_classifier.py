"""The digit judge's training recipe: the mnist-5k digits as tensors, the augmentation and the training loop.

[`train_digit_classifier`] trains a [`ddpm_ext.evaluation.digit_classifier.DigitClassifier`] on the 4,500 digits of
the built-in mnist-5k `"train"` split; its defaults are the settings of the shipped judge
(`python benchmarks/train_digit_classifier.py` rebuilds the shipped file with it).
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..data import load_mnist_5k
from ..images import normalize
from ..validation import check_int, check_number
from .digit_classifier import IMAGE_SIZE, DigitClassifier

__all__ = ["load_mnist_5k_arrays", "train_digit_classifier"]


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
    >>> from ddpm_ext.evaluation.train_digit_classifier import train_digit_classifier
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
