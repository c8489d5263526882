"""Image conventions shared by the whole package: uint8 / [0, 1] / [-1, 1] images as PIL, NumPy or tensors, and grids."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["images_to_uint8", "make_grid", "save_image_grid"]


def images_to_uint8(
    images: torch.Tensor | np.ndarray | Sequence[Image.Image],
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Images in any of the usual layouts -> uint8 array `(B, H, W, C)` with C = 1 or 3.

    Accepted:

    - a torch tensor `(B, C, H, W)`, by default in [-1, 1] (the model's / scheduler's space);
    - a NumPy array `(B, H, W, C)` or `(B, H, W)`, floats by default in [0, 1]
      (diffusers' `output_type="np"`), or uint8 taken as is;
    - a list of PIL images (converted to RGB when any is not grayscale, else to `"L"`; all the same size).

    Values are clipped to `value_range`, scaled to 0..255 and rounded (as diffusers' `numpy_to_pil`).

    Args:
        images: The images.
        value_range (`tuple[float, float]`, *optional*): `(low, high)` of float inputs; defaults to (-1, 1)
            for tensors and (0, 1) for arrays.

    Raises:
        `ValueError`: For an empty input, a bad shape, a channel count other than 1, 3 or 4 (alpha is
            dropped), PIL images of different sizes or a bad `value_range`.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("`images` is empty; there is nothing to put in a grid.")
        if not all(isinstance(im, Image.Image) for im in images):
            kinds = sorted({type(im).__name__ for im in images})
            raise ValueError(f"A list of `images` must hold PIL images only, got {kinds}.")
        sizes = {im.size for im in images}
        if len(sizes) > 1:
            raise ValueError(f"All `images` must have the same size, got sizes {sorted(sizes)}.")
        mode = "L" if all(im.mode in ("1", "L") for im in images) else "RGB"
        arr = np.stack([np.asarray(im.convert(mode), dtype=np.uint8) for im in images])
        return arr[..., None] if arr.ndim == 3 else arr

    if isinstance(images, torch.Tensor):
        t = images.detach().to("cpu")
        if t.ndim != 4:
            raise ValueError(f"A tensor of `images` must have shape (B, C, H, W), got {tuple(images.shape)}.")
        arr = t.permute(0, 2, 3, 1).numpy() if t.dtype == torch.uint8 else t.float().permute(0, 2, 3, 1).numpy()
        default_range = (-1.0, 1.0)
    elif isinstance(images, np.ndarray):
        arr = images
        if arr.ndim == 3:
            arr = arr[..., None]  # (B, H, W) grayscale
        if arr.ndim != 4:
            raise ValueError(f"An array of `images` must have shape (B, H, W, C) or (B, H, W), got {images.shape}.")
        default_range = (0.0, 1.0)
    else:
        raise ValueError(
            f"`images` must be a torch tensor (B, C, H, W), a NumPy array (B, H, W, C) or a list of PIL images, "
            f"got {type(images).__name__}."
        )
    if arr.shape[0] == 0:
        raise ValueError("`images` is empty; there is nothing to put in a grid.")
    if arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"`images` must have 1, 3 or 4 channels, got {arr.shape[-1]} (shape {tuple(arr.shape)}).")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    low, high = value_range if value_range is not None else default_range
    if not high > low:
        raise ValueError(f"`value_range` must be (low, high) with high > low, got {value_range!r}.")
    scaled = (np.clip(arr.astype(np.float64), low, high) - low) / (high - low)
    return np.round(scaled * 255).astype(np.uint8)


def make_grid(
    images: torch.Tensor | np.ndarray | Sequence[Image.Image],
    nrow: int | None = None,
    *,
    padding: int = 2,
    pad_value: int = 255,
    value_range: tuple[float, float] | None = None,
    scale: int = 1,
) -> Image.Image:
    r"""Tile images into one PIL image, row by row, like `torchvision.utils.make_grid` (without torchvision).

    Args:
        images: A tensor `(B, C, H, W)` in [-1, 1], an array `(B, H, W, C)` in [0, 1] (or uint8), or a list of
            PIL images; see [`images_to_uint8`].
        nrow (`int`, *optional*): Images per row; defaults to `ceil(sqrt(B))`.
        padding (`int`, defaults to 2): Pixels between images and around the grid.
        pad_value (`int`, defaults to 255): Gray level of the padding (0..255).
        value_range (`tuple[float, float]`, *optional*): Range of float inputs (see [`images_to_uint8`]).
        scale (`int`, defaults to 1): Enlarge every image `scale` times by nearest-neighbour repetition (each
            pixel becomes a `scale` x `scale` block, so 28x28 digits stay sharp when shown large); the padding
            is not scaled.

    Returns:
        `PIL.Image.Image`: Mode `"L"` or `"RGB"`, of width `ncol * (scale * W + padding) + padding` and height
        `nrows * (scale * H + padding) + padding`, with `ncol = min(nrow, B)` and `nrows = ceil(B / nrow)`.

    Example:

    ```py
    >>> import torch
    >>> from ddpm_ext.images import make_grid
    >>> make_grid(torch.zeros(10, 3, 28, 28), nrow=5, padding=0).size
    (140, 56)
    >>> make_grid(torch.zeros(10, 1, 28, 28), nrow=5, padding=2, scale=3).size
    (432, 174)

    ```
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"`scale` must be an integer >= 1 (nearest-neighbour enlargement), got {scale!r}.")
    arr = images_to_uint8(images, value_range)
    if scale > 1:
        arr = arr.repeat(int(scale), axis=1).repeat(int(scale), axis=2)  # (B, scale*H, scale*W, C)
    b, h, w, c = arr.shape
    if nrow is None:
        nrow = math.ceil(math.sqrt(b))
    if isinstance(nrow, bool) or not isinstance(nrow, (int, np.integer)) or nrow < 1:
        raise ValueError(f"`nrow` must be an integer >= 1 (images per row), got {nrow!r}.")
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"`padding` must be an integer >= 0, got {padding!r}.")
    if not 0 <= pad_value <= 255:
        raise ValueError(f"`pad_value` must be a gray level in 0..255, got {pad_value!r}.")
    ncol, nrows = min(int(nrow), b), math.ceil(b / nrow)
    grid = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, c), pad_value, np.uint8)
    for i in range(b):
        r, q = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[y : y + h, x : x + w] = arr[i]
    return Image.fromarray(grid[..., 0] if c == 1 else grid, mode="L" if c == 1 else "RGB")


def save_image_grid(
    images: torch.Tensor | np.ndarray | Sequence[Image.Image],
    path: str | os.PathLike,
    nrow: int | None = None,
    **kwargs: Any,
) -> Image.Image:
    """[`make_grid`] and save it to `path` (format from the extension; parent folders are created).

    Returns:
        `PIL.Image.Image`: The grid.
    """
    grid = make_grid(images, nrow, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return grid
