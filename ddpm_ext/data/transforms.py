"""Preprocessing without torchvision: resize, crop, flip, [-1, 1] tensors; reproducible augmentation; batching."""


from typing import Any, Sequence

import datasets
import numpy as np
import torch
from PIL import Image

from ..images import GRAY_MODES, HIGH_PRECISION_MODES, convert_image, from_unit, normalize, to_unit_float
from ..validation import check_int
from .loading import find_image_column

# Kept for code that imported the former private helper (pipelines/pipeline_ddpm_ext_inpaint.py); use
# `ddpm_ext.images.convert_image`.

# Column added by `preprocess_dataset` when the transform is random: the row index that keys augmentation.
INDEX_COLUMN = "__ddpm_ext_index__"

# Domain-separation tag of the augmentation stream in `SeedSequence(seed, spawn_key=(tag, epoch, index))`,
# so that other users of the same seed (weights init, noise, data order) never draw correlated numbers.
_AUGMENTATION_STREAM = 0xA11C

# ----------------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------------


class ImageTransform:
    r"""PIL image -> float32 tensor `(C, H, W)` in [-1, 1]: torchvision's training transform of diffusers'
    `train_unconditional.py`, without torchvision.

    Steps: convert to 8-bit mode `"L"` (`channels=1`) or `"RGB"` (`channels=3`) with
    [`ddpm_ext.images.convert_image`] (16-bit and float images scaled to 8 bits, transparency composited on
    white); resize the shorter side to `resolution` (Pillow bilinear with antialiasing, which is what
    `torchvision.transforms.Resize` does to PIL images; skipped when it already has that size); crop
    `resolution x resolution` at the centre (`center_crop=True`, torchvision's rounding) or at a random
    offset; flip left-right with probability 1/2 (`random_flip=True`); scale to `x = u / 127.5 - 1`.
    Pixels stay uint8 until the last step, so the output is always on the 8-bit grid and
    `round((x + 1) * 127.5)` gives back the pixels ([`ImageTransform.to_uint8`] returns them directly).

    Preserved precision (`preserve_precision=True`, diffusers' `--preserve_input_precision`): a 16-bit
    (`"I;16*"`, `"I"`) or float (`"F"`, values in [0, 1]) image is not reduced to 8 bits but read as float32
    `v` in [0, 1] with [`ddpm_ext.images.to_unit_float`] (`v = sample / 65535` for 16 bits), resized as a mode
    `"F"` image (the same Pillow bilinear filter with antialiasing), cropped and flipped exactly as the 8-bit
    path (the same offsets and flips for the same `(seed, epoch, index)`), copied to 3 channels when
    `channels=3`, and scaled to `x = 2 v - 1`. That `x` is not on the 8-bit grid, so the discrete likelihood
    (bits/dim, whose bins are the 256 levels of 8-bit pixels) does not apply to models trained on such data.
    8-bit images give exactly the same tensors with and without the option.

    Randomness: with `index` given, the crop offset and the flip are a fixed function of
    `(seed, epoch, index)` (NumPy `SeedSequence(seed, spawn_key=(tag, epoch, index))`), which makes
    augmentation reproducible across resume, workers and batch sizes; set the epoch with [`set_epoch`]. Without
    `index`, they are drawn from `generator` (a `torch.Generator`) or torch's global generator, like torchvision.

    Args:
        resolution (`int`): Output height and width.
        center_crop (`bool`, defaults to `False`): Centre crop instead of a random crop.
        random_flip (`bool`, defaults to `False`): Random horizontal flips.
        channels (`int`, defaults to 3): 1 (grayscale) or 3 (RGB).
        seed (`int`, defaults to 0): Seed of the `(seed, epoch, index)` augmentation stream.
        preserve_precision (`bool`, defaults to `False`): Keep 16-bit and float images at their precision
            instead of converting them to 8 bits (see above).

    Example:

    ```py
    >>> from PIL import Image
    >>> from ddpm_ext.data import ImageTransform
    >>> t = ImageTransform(32, center_crop=True, random_flip=True, channels=3, seed=0)
    >>> x = t(Image.new("RGB", (64, 48), (255, 0, 0)), index=7)
    >>> x.shape, x.dtype, float(x.min()), float(x.max())
    (torch.Size([3, 32, 32]), torch.float32, -1.0, 1.0)

    ```
    """

    def __init__(
        self,
        resolution: int,
        *,
        center_crop: bool = False,
        random_flip: bool = False,
        channels: int = 3,
        seed: int = 0,
        preserve_precision: bool = False,
    ) -> None:
        resolution = check_int("resolution", resolution, 1)
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ValueError(f"`channels` must be 1 (grayscale, mode 'L') or 3 (RGB), got {channels!r}.")
        self.resolution = int(resolution)
        self.center_crop = bool(center_crop)
        self.random_flip = bool(random_flip)
        self.channels = int(channels)
        self.seed = check_int("seed", seed, 0)
        if not isinstance(preserve_precision, (bool, np.bool_)):
            raise ValueError(f"`preserve_precision` must be True or False, got {preserve_precision!r}.")
        self.preserve_precision = bool(preserve_precision)
        self.epoch = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(resolution={self.resolution}, center_crop={self.center_crop}, "
            f"random_flip={self.random_flip}, channels={self.channels}, seed={self.seed}, "
            f"preserve_precision={self.preserve_precision}, epoch={self.epoch})"
        )

    @property
    def mode(self) -> str:
        """Pillow mode of the converted image: `"L"` or `"RGB"`."""
        return "L" if self.channels == 1 else "RGB"

    @property
    def is_random(self) -> bool:
        """Whether the output depends on random draws (random crop or random flip)."""
        return self.random_flip or not self.center_crop

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that keys the augmentation of indexed examples; call it at the start of every epoch."""
        self.epoch = check_int("epoch", epoch, 0)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """`(width, height)` after resizing the shorter side to `resolution` (torchvision's arithmetic)."""
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resolution, int(self.resolution * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def random_params(
        self, width: int, height: int, index: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[int, int, bool]:
        """`(top, left, flip)` for a resized image of size `(width, height)`.

        With `index`: from `SeedSequence(seed, spawn_key=(tag, epoch, index))` (stateless); else from
        `generator` / torch's global generator. Deterministic parts (centre crop, no flip) use no randomness.
        """
        r = self.resolution
        if index is not None:
            index = check_int("index", index, 0)
            words = np.random.SeedSequence(self.seed, spawn_key=(_AUGMENTATION_STREAM, self.epoch, index))
            w_flip, w_top, w_left = (int(v) for v in words.generate_state(3, dtype=np.uint64))
            draw_top = lambda n: w_top % n  # noqa: E731 - n <= image size; 2**64 modulo bias is negligible
            draw_left = lambda n: w_left % n  # noqa: E731
            draw_flip = lambda: bool(w_flip >> 63)  # noqa: E731
        else:
            draw_top = draw_left = lambda n: int(torch.randint(0, n, (1,), generator=generator))  # noqa: E731
            draw_flip = lambda: bool(torch.rand(1, generator=generator) < 0.5)  # noqa: E731
        if self.center_crop:
            top, left = int(round((height - r) / 2.0)), int(round((width - r) / 2.0))
        else:
            top, left = draw_top(height - r + 1), draw_left(width - r + 1)
        flip = draw_flip() if self.random_flip else False
        return top, left, flip

    def _resize_crop_flip(
        self, image: Image.Image, index: int | None, generator: torch.Generator | None
    ) -> Image.Image:
        """The geometric steps, on an image of any mode ("L", "RGB" or "F"): the same for both bit depths."""
        size = self.resized_size(*image.size)
        if size != image.size:
            image = image.resize(size, resample=Image.Resampling.BILINEAR)
        top, left, flip = self.random_params(*image.size, index=index, generator=generator)
        r = self.resolution
        image = image.crop((left, top, left + r, top + r))
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image

    @staticmethod
    def _check_image(image: Any) -> None:
        if not isinstance(image, Image.Image):
            raise ValueError(f"`image` must be a PIL.Image.Image, got {type(image).__name__}.")

    def keeps_precision(self, image: Image.Image) -> bool:
        """Whether `image` takes the full-precision path: `preserve_precision` and a 16-bit or float mode."""
        return self.preserve_precision and image.mode in HIGH_PRECISION_MODES

    def to_uint8(
        self, image: Image.Image, index: int | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Every step but the scaling, in 8 bits (whatever `preserve_precision`): a uint8 tensor
        `(C, resolution, resolution)`."""
        self._check_image(image)
        image = convert_image(image, self.mode)  # 8-bit "L" / "RGB"; 16-bit and float images scaled, not clipped
        arr = np.array(self._resize_crop_flip(image, index, generator), dtype=np.uint8)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(arr))

    def to_float(
        self, image: Image.Image, index: int | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Every step but the scaling to [-1, 1], at full precision: a float32 tensor `(C, resolution,
        resolution)` in [0, 1].

        16-bit and float images ([`ddpm_ext.images.HIGH_PRECISION_MODES`]) are read with
        [`ddpm_ext.images.to_unit_float`] and resized as one mode `"F"` image (they are all grayscale; with
        `channels=3` the result is copied to the 3 channels, as Pillow's `"L"` -> `"RGB"` does); other images go
        through [`to_uint8`] and are divided by 255.
        """
        self._check_image(image)
        if image.mode not in HIGH_PRECISION_MODES:
            return self.to_uint8(image, index, generator=generator).float().div_(255)
        gray = Image.fromarray(to_unit_float(image), mode="F")
        arr = np.array(self._resize_crop_flip(gray, index, generator), dtype=np.float32)  # (r, r), writable
        return torch.from_numpy(arr)[None].expand(self.channels, -1, -1).contiguous()  # (C, r, r)

    # uint8 pixels `u` -> float32 `u / 127.5 - 1` in [-1, 1]: [`ddpm_ext.images.normalize`]
    normalize = staticmethod(normalize)

    def __call__(
        self, image: Image.Image, index: int | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Transform one image; see the class docstring for `index` and `generator`."""
        self._check_image(image)
        if self.keeps_precision(image):
            return from_unit(self.to_float(image, index, generator=generator))  # x = 2 v - 1, off the 8-bit grid
        return self.normalize(self.to_uint8(image, index, generator=generator))



def build_transform(
    resolution: int,
    *,
    center_crop: bool = False,
    random_flip: bool = False,
    channels: int | None = None,
    dataset: datasets.Dataset | None = None,
    image_column: str | None = None,
    seed: int | None = 0,
    preserve_precision: bool = False,
) -> ImageTransform:
    """Make the training [`ImageTransform`] (the arguments of diffusers' `train_unconditional.py`).

    Args:
        resolution (`int`): Output height and width.
        center_crop (`bool`, defaults to `False`): Centre crop (else random crop).
        random_flip (`bool`, defaults to `False`): Random horizontal flips.
        channels (`int`, *optional*): 1 or 3; by default inferred from `dataset` with [`infer_channels`],
            else 3.
        dataset (`datasets.Dataset`, *optional*): Used to infer `channels`.
        image_column (`str`, *optional*): Image column of `dataset`.
        seed (`int`, *optional*, defaults to 0): Augmentation seed; `None` draws one from the OS (stored in
            `transform.seed`, so it can be logged and reused).
        preserve_precision (`bool`, defaults to `False`): Keep 16-bit and float images at their precision
            instead of converting them to 8 bits (diffusers' `--preserve_input_precision`); bits/dim does not
            apply to the result (see [`ImageTransform`]).

    Example:

    ```py
    >>> from ddpm_ext.data import build_transform, load_image_dataset
    >>> ds = load_image_dataset("mnist-5k")
    >>> build_transform(28, center_crop=True, dataset=ds)  # doctest: +NORMALIZE_WHITESPACE
    ImageTransform(resolution=28, center_crop=True, random_flip=False, channels=1, seed=0,
                   preserve_precision=False, epoch=0)

    ```
    """
    if channels is None:
        channels = infer_channels(dataset, image_column) if dataset is not None else 3
    if seed is None:
        seed = int(np.random.SeedSequence().entropy) % 2**63
    return ImageTransform(resolution, center_crop=center_crop, random_flip=random_flip, channels=channels, seed=seed,
                          preserve_precision=preserve_precision)


def infer_channels(dataset: datasets.Dataset, image_column: str | None = None) -> int:
    """1 when the data set's images are grayscale, else 3.

    Uses the `mode` of the `datasets.Image` feature when set, else the mode of the first image: `"1"`, `"L"`,
    `"LA"`, `"I"`, `"I;16"` and `"F"` count as grayscale; everything else (including palette images) as RGB.
    """
    column = find_image_column(dataset, image_column)
    feature = dataset.features[column]
    mode = getattr(feature, "mode", None)
    if mode is None:
        if len(dataset) == 0:
            raise ValueError("Cannot infer `channels` from an empty data set; pass `channels` (1 or 3).")
        first = dataset[0][column]
        if not isinstance(first, Image.Image):
            raise ValueError(
                f"Column {column!r} does not hold PIL images (got {type(first).__name__}); pass `image_column`."
            )
        mode = first.mode
    return 1 if mode in GRAY_MODES else 3


class _BatchTransform:
    """The function given to `Dataset.with_transform` (a class, so it pickles into DataLoader workers)."""

    def __init__(self, transform: ImageTransform, image_column: str, index_column: str | None, output_column: str):
        self.transform = transform
        self.image_column = image_column
        self.index_column = index_column
        self.output_column = output_column

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[torch.Tensor]]:
        images = batch[self.image_column]
        indices = batch[self.index_column] if self.index_column else [None] * len(images)
        return {self.output_column: [self.transform(im, idx) for im, idx in zip(images, indices)]}


def preprocess_dataset(
    dataset: datasets.Dataset,
    transform: ImageTransform,
    image_column: str | None = None,
    *,
    output_column: str = "input",
) -> datasets.Dataset:
    r"""Attach `transform` to `dataset` lazily (`Dataset.with_transform`): rows become `{"input": tensor}`.

    When the transform is random, a column `INDEX_COLUMN` with the row numbers `0..len-1` is added first
    (this flattens a shuffled/selected data set), and each example is transformed with `index=` its row,
    so its crop and flip depend only on `(transform.seed, transform.epoch, row)`. Call
    `transform.set_epoch(epoch)` before iterating over each epoch.

    Args:
        dataset (`datasets.Dataset`): Data set with an image column.
        transform (`ImageTransform`): From [`build_transform`].
        image_column (`str`, *optional*): Found with [`find_image_column`] when not given.
        output_column (`str`, defaults to `"input"`): Key of the tensors.

    Example:

    ```py
    >>> import torch
    >>> from ddpm_ext.data import build_transform, collate_fn, load_image_dataset, preprocess_dataset
    >>> ds = load_image_dataset("mnist-5k", max_train_samples=64, seed=0)
    >>> transform = build_transform(28, random_flip=True, dataset=ds, seed=0)
    >>> train = preprocess_dataset(ds, transform)
    >>> loader = torch.utils.data.DataLoader(
    ...     train, batch_size=16, shuffle=True, collate_fn=collate_fn, generator=torch.Generator().manual_seed(0)
    ... )
    >>> transform.set_epoch(0)
    >>> next(iter(loader))["input"].shape
    torch.Size([16, 1, 28, 28])

    ```
    """
    if not isinstance(transform, ImageTransform):
        raise ValueError(
            f"`transform` must be an ImageTransform (see build_transform), got {type(transform).__name__}."
        )
    column = find_image_column(dataset, image_column)
    index_column = None
    if transform.is_random:
        index_column = INDEX_COLUMN
        if INDEX_COLUMN in dataset.column_names:
            dataset = dataset.remove_columns(INDEX_COLUMN)
        dataset = dataset.add_column(INDEX_COLUMN, np.arange(len(dataset), dtype=np.int64))
    columns = [column] + ([index_column] if index_column else [])
    return dataset.with_transform(_BatchTransform(transform, column, index_column, output_column), columns=columns)


def collate_fn(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of `{"input": tensor, ...}` examples into a batch (tensors stacked, other values listed)."""
    if not examples:
        raise ValueError("`examples` is empty; there is nothing to collate.")
    batch: dict[str, Any] = {}
    for key in examples[0]:
        values = [ex[key] for ex in examples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values).to(memory_format=torch.contiguous_format)
        else:
            batch[key] = values
    return batch
