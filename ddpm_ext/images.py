"""Image conventions shared by the whole package, in one place.

Three value conventions, and the functions that move between them:

    uint8 pixels  u ∈ {0, …, 255}     files, PIL images, feature extractors, grids
    model space   x ∈ [-1, 1]         x = u / 127.5 - 1 (the data transform; the UNet and schedulers)
    unit range    y ∈ [0, 1]          y = x / 2 + 0.5 (the pipeline's `output_type="pt"/"np"`, as diffusers)

- [`to_8bit`] / [`convert_image`]: any PIL image -> 8-bit `"L"` / `"RGB"` (16-bit and float modes scaled, not
  clipped; transparency composited on white). Every image the package reads goes through them, unless the
  training data keeps its precision: then [`to_unit_float`] reads a 16-bit or float image ([`HIGH_PRECISION_MODES`])
  as float32 `y ∈ [0, 1]` at its full precision (`v / 65535` for 16-bit samples), and [`from_unit`] gives `x`,
  which is then not on the 8-bit grid.
- [`normalize`] (u -> x), [`to_unit`] (x -> y), [`from_unit`] (y -> x), [`to_uint8`] (x or y -> u, rounded).
- [`tensor_to_numpy`] / [`to_pil`]: `(B, C, H, W)` tensors -> `(B, H, W, C)` arrays -> PIL images.
- [`images_to_uint8`], [`make_grid`], [`save_image_grid`]: any of the above -> one uint8 grid.

Float -> uint8 is one rule everywhere: `round((clip(v, low, high) - low) * 255 / (high - low))`, computed in
the input's precision (float32 unless it is float64), so `to_uint8(normalize(u)) == u` exactly and the
pipeline's PIL output, `ddpm-ext sample`'s files and the evaluation's samples hold the same pixels.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .files import write_with
from .validation import check_int

__all__ = [
    "GRAY_MODES",
    "HIGH_PRECISION_MODES",
    "convert_image",
    "from_unit",
    "images_to_uint8",
    "make_grid",
    "normalize",
    "save_image_grid",
    "tensor_to_numpy",
    "to_8bit",
    "to_pil",
    "to_uint8",
    "to_unit",
    "to_unit_float",
]

# Pillow modes with one colour channel (with or without alpha); everything else counts as colour.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_INT16_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# Pillow modes with more than 8 bits per sample (all grayscale: Pillow opens 16-bit colour files as 8-bit "RGB").
HIGH_PRECISION_MODES = _INT16_MODES | frozenset({"F"})

Images = torch.Tensor | np.ndarray


# ----------------------------------------------------------------------------------------------------------
# PIL images of any bit depth -> 8 bits
# ----------------------------------------------------------------------------------------------------------


def to_8bit(image: Image.Image) -> Image.Image:
    """A PIL image with more than 8 bits per sample -> mode `"L"`, scaled over the full range (not clipped).

    Pillow's own `convert("L")` clips `"I;16"` / `"I"` values at 255 (a 16-bit image comes out almost all
    white). Here:

    - `"I;16"`, `"I;16B"`, `"I;16L"`, `"I;16N"` and `"I"` (how Pillow opens 16-bit grayscale PNG/TIFF) are read
      as 16-bit samples `v` in 0..65535 (`"I"` is clipped to that range) and mapped to `v >> 8`, the high
      byte: 0 -> 0, 65535 -> 255, and an 8-bit image stored as 16 bits (`v = 257 u`) gives back `u`. This is
      what Pillow itself does when it opens 16-bit RGB(A) files as `"RGB"`, so grayscale and colour agree.
    - `"F"` (32-bit float) is read as [0, 1] (the float convention of diffusers and this package),
      clipped, and mapped to `round(255 v)`.

    Every other mode is returned unchanged (8-bit modes need no scaling; see [`convert_image`]).

    Example:

    ```py
    >>> import numpy as np
    >>> from PIL import Image
    >>> sixteen = Image.fromarray(np.array([[0, 257 * 128, 65535]], dtype=np.uint16))
    >>> sixteen.mode, np.asarray(to_8bit(sixteen)).tolist()
    ('I;16', [[0, 128, 255]])

    ```
    """
    if image.mode in _INT16_MODES:
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)  # (H, W); "I;16B" arrives big-endian
        return Image.fromarray((values >> 8).astype(np.uint8), mode="L")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("A float (mode 'F') image holds NaN or infinite values; allowed are values in [0, 1].")
        return Image.fromarray(np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8), mode="L")
    return image


def convert_image(image: Image.Image, mode: str) -> Image.Image:
    """Any PIL image -> 8-bit `mode` (`"L"` or `"RGB"`): high bit depths scaled ([`to_8bit`]), transparent
    pixels composited on white (Pillow would use black), then Pillow's conversion.
    """
    if mode not in ("L", "RGB"):
        raise ValueError(f"`mode` must be 'L' or 'RGB', got {mode!r}.")
    image = to_8bit(image)
    if image.mode == mode:
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert(mode)


def to_unit_float(image: Image.Image) -> np.ndarray:
    """A 16-bit or float PIL image -> float32 array `(H, W)` in [0, 1], keeping its precision (no 8-bit step).

    - `"I;16"`, `"I;16B"`, `"I;16L"`, `"I;16N"` and `"I"`: 16-bit samples `v` in 0..65535 (`"I"` clipped to that
      range, as in [`to_8bit`]) -> `v / 65535`, so 0 -> 0, 65535 -> 1 and an 8-bit image stored as 16 bits
      (`v = 257 u`) gives `u / 255`.
    - `"F"`: the values themselves, which must lie in [0, 1] (the float convention of diffusers and this
      package); other values are refused rather than clipped, since they would not be what the image means.

    This is the input of training with preserved precision (`ImageTransform(..., preserve_precision=True)`,
    the training script's `--preserve_input_precision`); everywhere else images go through [`convert_image`].

    Raises:
        `ValueError`: For a mode outside [`HIGH_PRECISION_MODES`] (8-bit images have nothing more to keep; use
            [`convert_image`]) or a `"F"` image with values outside [0, 1] (NaN and infinities included).

    Example:

    ```py
    >>> import numpy as np
    >>> from PIL import Image
    >>> sixteen = Image.fromarray(np.array([[0, 1, 257 * 128, 65535]], dtype=np.uint16))
    >>> (to_unit_float(sixteen) * 65535).round().astype(int).tolist()
    [[0, 1, 32896, 65535]]

    ```
    """
    if image.mode in _INT16_MODES:
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)  # (H, W); "I;16B" arrives big-endian
        return (values.astype(np.float64) / 65535).astype(np.float32)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)  # (H, W)
        if not (np.isfinite(values).all() and values.min(initial=0.0) >= 0 and values.max(initial=0.0) <= 1):
            low, high = float(np.nanmin(values)), float(np.nanmax(values))
            raise ValueError(
                f"A float (mode 'F') image must hold values in [0, 1] to keep its precision; got values from {low} "
                f"to {high}{' and NaN or infinite ones' if not np.isfinite(values).all() else ''}."
            )
        return np.array(values, dtype=np.float32)
    raise ValueError(
        f"`image` must have one of the modes {sorted(HIGH_PRECISION_MODES)} (more than 8 bits per sample) to be "
        f"read at full precision, got mode {image.mode!r}; 8-bit images go through `convert_image`."
    )


# ----------------------------------------------------------------------------------------------------------
# Value conventions
# ----------------------------------------------------------------------------------------------------------


def normalize(pixels: Images, dtype: torch.dtype = torch.float32) -> Images:
    """uint8 pixels `u` -> `x = u / 127.5 - 1` in [-1, 1] (torchvision's `ToTensor` + `Normalize([0.5], [0.5])`).

    Tensors come back as `dtype` (float32 by default), NumPy arrays as float32; the layout is unchanged.
    """
    if isinstance(pixels, np.ndarray):
        return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return pixels.to(dtype).div_(127.5).sub_(1.0)


def to_unit(images: Images) -> Images:
    """Model space [-1, 1] -> [0, 1], clipped: `y = x / 2 + 0.5` (diffusers' pipeline postprocessing)."""
    if isinstance(images, np.ndarray):
        return np.clip(images / 2 + 0.5, 0, 1)
    return (images / 2 + 0.5).clamp(0, 1)


def from_unit(images: Images) -> Images:
    """[0, 1] -> model space [-1, 1]: `x = 2 y - 1` (not clipped)."""
    return images * 2 - 1


def _check_range(value_range: Any) -> tuple[float, float]:
    ok = isinstance(value_range, (tuple, list)) and len(value_range) == 2
    ok = ok and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value_range)
    if not ok or not value_range[1] > value_range[0]:
        raise ValueError(f"`value_range` must be (low, high) with high > low, got {value_range!r}.")
    return float(value_range[0]), float(value_range[1])


def to_uint8(images: Images, value_range: tuple[float, float] = (-1.0, 1.0)) -> Images:
    """Float images in `value_range` -> uint8 pixels, same layout and container (tensor or NumPy array).

    `u = round((clip(v, low, high) - low) * 255 / (high - low))`, in float64 for float64 input, else float32;
    uint8 input is returned as is.

    Example:

    ```py
    >>> import torch
    >>> u = torch.arange(256, dtype=torch.uint8)
    >>> bool((to_uint8(normalize(u)) == u).all()), bool((to_uint8(to_unit(normalize(u)), (0, 1)) == u).all())
    (True, True)

    ```
    """
    low, high = _check_range(value_range)
    scale = 255.0 / (high - low)
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8:
            return images
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"`images` must be uint8 or floating point, got dtype {images.dtype}.")
        x = images if images.dtype == np.float64 else images.astype(np.float32)
        return np.round((np.clip(x, low, high) - x.dtype.type(low)) * x.dtype.type(scale)).astype(np.uint8)
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"`images` must be uint8 or floating point, got dtype {images.dtype}.")
    x = images.detach()
    x = x if x.dtype == torch.float64 else x.float()
    return ((x.clamp(low, high) - low) * scale).round_().to(torch.uint8)


def tensor_to_numpy(images: torch.Tensor) -> np.ndarray:
    """`(B, C, H, W)` tensor -> `(B, H, W, C)` float32 NumPy array on the CPU (diffusers' `output_type="np"`)."""
    return images.detach().cpu().permute(0, 2, 3, 1).float().numpy()


def to_pil(images: torch.Tensor | np.ndarray, value_range: tuple[float, float] | None = None) -> list[Image.Image]:
    """Images -> one PIL image each (`"L"` for one channel, `"RGB"` for three); see [`images_to_uint8`] for the
    accepted layouts and default ranges (a `(B, H, W, C)` float array in [0, 1] as diffusers' `numpy_to_pil`)."""
    arr = images_to_uint8(images, value_range)
    return [Image.fromarray(a[..., 0], mode="L") if a.shape[-1] == 1 else Image.fromarray(a, mode="RGB") for a in arr]


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

    Float values go through [`to_uint8`] (clipped to `value_range`, scaled to 0..255, rounded, as diffusers'
    `numpy_to_pil`); PIL images through [`convert_image`] (16-bit and float modes scaled to 8 bits).

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
        mode = "L" if all(im.mode in GRAY_MODES for im in images) else "RGB"
        arr = np.stack([np.asarray(convert_image(im, mode), dtype=np.uint8) for im in images])
        return arr[..., None] if arr.ndim == 3 else arr

    if isinstance(images, torch.Tensor):
        t = images.detach().to("cpu")
        if t.ndim != 4:
            raise ValueError(f"A tensor of `images` must have shape (B, C, H, W), got {tuple(images.shape)}.")
        arr = t.permute(0, 2, 3, 1).numpy()  # (B, H, W, C)
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
    return np.ascontiguousarray(to_uint8(arr[..., :3], value_range if value_range is not None else default_range))


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
    scale = check_int("scale", scale, 1)
    padding = check_int("padding", padding, 0)
    pad_value = check_int("pad_value", pad_value, 0, 255)
    arr = images_to_uint8(images, value_range)
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)  # (B, scale*H, scale*W, C)
    b, h, w, c = arr.shape
    if nrow is None:
        nrow = math.ceil(math.sqrt(b))
    nrow = check_int("nrow", nrow, 1)
    ncol, nrows = min(nrow, b), math.ceil(b / nrow)
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
    """[`make_grid`] and save it to `path` atomically (format from the extension; parent folders are created).

    Returns:
        `PIL.Image.Image`: The grid.
    """
    grid = make_grid(images, nrow, **kwargs)
    write_with(path, grid.save)
    return grid
