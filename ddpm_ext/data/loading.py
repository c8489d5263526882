"""Loading image data sets: built-in, Hub, a `save_to_disk` folder or a local image folder (checked file by file
before training)."""


import hashlib
import os
from pathlib import Path
from typing import Any

import datasets
from PIL import Image

from ..network import hub_time_limits
from ..validation import check_int
from .builtin import BUILTIN_DATASETS, DEFAULT_DATASET, _builtin_lookalike, list_builtin_datasets, load_builtin_dataset

# The file extensions `datasets`' "imagefolder" builder loads (all formats Pillow can open).
try:
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder as _ImageFolder

    IMAGE_EXTENSIONS: tuple[str, ...] = tuple(ext.lower() for ext in _ImageFolder.EXTENSIONS)
except Exception:  # pragma: no cover - a `datasets` layout we do not know
    IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")

# The files `datasets.Dataset.save_to_disk` and `datasets.DatasetDict.save_to_disk` write (read back with
# `datasets.load_from_disk`).
SAVED_DATASET_FILES = (datasets.config.DATASET_INFO_FILENAME, datasets.config.DATASET_STATE_JSON_FILENAME)
SAVED_DATASET_DICT_FILE = datasets.config.DATASETDICT_JSON_FILENAME
# What a local path may be, for the error messages.
ACCEPTED_LOCAL_DATA = (
    "a folder of images (any of the extensions the `imagefolder` builder reads), a folder written by "
    "`Dataset.save_to_disk` (dataset_info.json + state.json) or `DatasetDict.save_to_disk` (dataset_dict.json), or, "
    "with `dataset_name`, a folder of data files `datasets.load_dataset` reads (parquet, csv, json, arrow)"
)

# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def _is_hidden(path: Path, root: Path) -> bool:
    # datasets' data-file resolution skips names starting with "." and folders starting with "__".
    parts = path.relative_to(root).parts
    return any(p.startswith(".") for p in parts) or any(p.startswith("__") for p in parts[:-1])


def _image_files(root: Path) -> list[Path]:
    """The image files `datasets`' imagefolder loads from `root`, sorted."""
    return sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not _is_hidden(p, root)
    )


def dataset_identity(
    dataset: datasets.Dataset,
    dataset_name: str | None = None,
    train_data_dir: str | os.PathLike | None = None,
    *,
    split: str = "train",
) -> dict[str, Any]:
    """What identifies the training data `dataset`, loaded by [`load_image_dataset`] from the same arguments: a
    record that changes when the data does, stored with each training checkpoint and compared on resume.

    For an image folder: its number of image files, their total size and a SHA-256 over every file's relative path
    and content (a renamed, added, removed or edited image changes it). For anything else (a built-in, Hub or
    `save_to_disk` data set): the source, split and `datasets` fingerprint (which covers the data and every
    transform, e.g. the `max_train_samples` selection). Both also record the number of rows used.

    Returns:
        `dict`: JSON-serialisable; equal records mean the same data.
    """
    rows = len(dataset)
    if train_data_dir is not None and saved_dataset_kind(train_data_dir) is None:
        root = Path(train_data_dir).expanduser()
        digest, total = hashlib.sha256(), 0
        files = _image_files(root)
        for path in files:
            data = path.read_bytes()
            total += len(data)
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(data).digest())
        return {"source": f"image folder {root}", "files": len(files), "bytes": total,
                "sha256": digest.hexdigest(), "rows": rows}
    source = str(train_data_dir) if train_data_dir is not None else (dataset_name or DEFAULT_DATASET)
    return {"source": source, "split": split, "rows": rows, "fingerprint": getattr(dataset, "_fingerprint", None)}


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
    files = _image_files(root)
    if not files:
        raise ValueError(
            f"`train_data_dir` {str(train_data_dir)!r} contains no image files (it is a {_describe_path(root)}; "
            f"searched recursively; accepted extensions: {' '.join(sorted(set(IMAGE_EXTENSIONS)))}). A local path "
            f"must be {ACCEPTED_LOCAL_DATA}."
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


def saved_dataset_kind(path: str | os.PathLike) -> str | None:
    """What `save_to_disk` wrote at `path`: `"dataset"` (a `Dataset`: dataset_info.json and state.json),
    `"dataset_dict"` (a `DatasetDict`: dataset_dict.json), or None when `path` is no such folder."""
    root = Path(path).expanduser()
    if not root.is_dir():
        return None
    if (root / SAVED_DATASET_DICT_FILE).is_file():
        return "dataset_dict"
    if (root / datasets.config.DATASET_STATE_JSON_FILENAME).is_file():
        return "dataset"
    return None


def load_saved_dataset(path: str | os.PathLike, *, flag: str, split: str = "train") -> datasets.Dataset:
    """Load a `Dataset.save_to_disk` or `DatasetDict.save_to_disk` folder with `datasets.load_from_disk`.

    Of a `DatasetDict`, the split `split` is taken when it has one; with the default `split="train"` and a single
    split, that split; otherwise a `ValueError` lists the splits. A saved `Dataset` has no splits: a `split` other
    than `"train"` is refused.

    Args:
        path (`str` or `os.PathLike`): The folder ([`saved_dataset_kind`] must not be None).
        flag (`str`): The argument that named `path` (`"dataset_name"` or `"train_data_dir"`), for the messages.
        split (`str`, defaults to `"train"`): The split of a `DatasetDict` to load.

    Returns:
        `datasets.Dataset`

    Raises:
        `ValueError`: For a folder `datasets.load_from_disk` cannot read (the cause given), a split that is not
            there (the splits listed) or a split asked of a saved `Dataset`.
    """
    kind = saved_dataset_kind(path)
    written_by = "DatasetDict.save_to_disk" if kind == "dataset_dict" else "Dataset.save_to_disk"
    try:
        loaded = datasets.load_from_disk(str(Path(path).expanduser()))
    except Exception as err:
        raise ValueError(
            f"`{flag}`={str(path)!r} looks like a folder written by {written_by}, but datasets.load_from_disk "
            f"could not read it: {type(err).__name__}: {err}"
        ) from err
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if split in loaded:
            return loaded[split]
        if split == "train" and len(splits) == 1:
            return loaded[splits[0]]
        raise ValueError(
            f"`{flag}`={str(path)!r} is a DatasetDict (saved with save_to_disk) with the splits {splits} and no "
            f"{split!r} split; choose one with `split` (--dataset_split), e.g. {splits[0]!r}."
        )
    if split != "train":
        raise ValueError(
            f"`{flag}`={str(path)!r} is a single Dataset (saved with Dataset.save_to_disk), which has no splits; "
            f"got split={split!r}. Leave the split at its default 'train', or save a DatasetDict."
        )
    return loaded


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
    config_name: str | None = None,
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
    image_column: str | None = None,
    max_train_samples: int | None = None,
    seed: int | None = None,
) -> datasets.Dataset:
    r"""Load the training images, failing early and clearly on bad input.

    The arguments mirror diffusers' `train_unconditional.py` (`--dataset_name`, `--dataset_config_name`,
    `--train_data_dir`, `--cache_dir`, `--max_train_samples`). Give at most one of `dataset_name` and
    `train_data_dir`; with neither, the default built-in data set [`DEFAULT_DATASET`] (`"mnist-5k"`) is loaded.

    Args:
        dataset_name (`str`, *optional*): A built-in name ([`list_builtin_datasets`]), a folder written by
            `Dataset.save_to_disk` or `DatasetDict.save_to_disk` (loaded with `datasets.load_from_disk`, see
            [`load_saved_dataset`]), or a Hugging Face Hub data set or local folder of data files (parquet, csv,
            json, arrow or images), loaded with `datasets.load_dataset(dataset_name, config_name,
            cache_dir=cache_dir, split=split)` (a Hub data set needs the network or a cached copy). A name without
            "/" that looks like a misspelt built-in name (e.g. `"MNIST-5K"`, `"openmoji"`) is an error rather than
            a Hub request.
        train_data_dir (`str` or `os.PathLike`, *optional*): A local folder of images, checked file by file with
            [`validate_image_folder`] and loaded with `datasets.load_dataset("imagefolder", ...)`
            (sub-folders become a `"label"` column, as in `datasets`), or a `save_to_disk` folder as above.
        config_name (`str`, *optional*): The configuration (subset) of a Hub data set, the second argument of
            `datasets.load_dataset` (e.g. `"cifar10"` of `"uoft-cs/cifar10"`, or a subset of a multi-config
            data set). Only for Hub data sets: built-in data sets and image folders have none.
        split (`str`, defaults to `"train"`): Split to load. mnist-5k has `"train"` (4,500 images), `"test"`
            (500 held out, 50 per digit) and `"all"`; openmoji-32 has only `"train"`. Of a saved `DatasetDict`
            with a single split, that split is taken by default.
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
        `ValueError`: For both sources given, a `config_name` for a built-in data set or an image folder, an
            unknown built-in-like name, a Hub data set that cannot be
            loaded (name and cause given, chained from the original error), a missing folder, a folder
            without images, unreadable image files (listed), a saved `DatasetDict` without the split (its
            splits listed), a missing image column or `max_train_samples < 1`.

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
    if max_train_samples is not None:
        try:
            check_int("max_train_samples", max_train_samples, 1)
        except ValueError:
            raise ValueError(
                f"`max_train_samples` must be an integer >= 1 or None, got {max_train_samples!r}."
            ) from None
    if dataset_name is not None and (not isinstance(dataset_name, str) or not dataset_name.strip()):
        raise ValueError(f"`dataset_name` must be a non-empty string, got {dataset_name!r}.")
    if dataset_name is None and train_data_dir is None:
        dataset_name = DEFAULT_DATASET
    if config_name is not None:
        if not isinstance(config_name, str) or not config_name.strip():
            raise ValueError(f"`config_name` must be a non-empty string or None, got {config_name!r}.")
        saved = dataset_name is not None and saved_dataset_kind(dataset_name) is not None
        if train_data_dir is not None or dataset_name in BUILTIN_DATASETS or saved:
            source = (f"the image folder `train_data_dir`={str(train_data_dir)!r}" if train_data_dir is not None
                      else f"the save_to_disk folder {dataset_name!r}" if saved
                      else f"the built-in data set {dataset_name!r}")
            raise ValueError(
                f"`config_name`={config_name!r} applies only to Hub data sets (the configuration passed to "
                f"datasets.load_dataset), not to {source}, which has none; leave it out."
            )

    if train_data_dir is not None and saved_dataset_kind(train_data_dir) is not None:
        ds = load_saved_dataset(train_data_dir, flag="train_data_dir", split=split)
    elif dataset_name is not None and saved_dataset_kind(dataset_name) is not None:
        ds = load_saved_dataset(dataset_name, flag="dataset_name", split=split)
    elif train_data_dir is not None:
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
            with hub_time_limits():  # every Hub request of the download ends (huggingface_hub sets no timeout)
                ds = datasets.load_dataset(
                    dataset_name, config_name, split=split, cache_dir=None if cache_dir is None else str(cache_dir)
                )
        except Exception as err:
            config = "" if config_name is None else f"config_name={config_name!r}, "
            if Path(dataset_name).expanduser().exists():
                raise ValueError(
                    f"Could not load `dataset_name`={dataset_name!r}, a local {_describe_path(dataset_name)} "
                    f"({config}split={split!r}), with datasets.load_dataset: {type(err).__name__}: {err}. A local "
                    f"path must be {ACCEPTED_LOCAL_DATA}."
                ) from err
            raise ValueError(
                f"Could not load the data set `dataset_name`={dataset_name!r} ({config}split={split!r}) with "
                f"datasets.load_dataset: {type(err).__name__}: {err}. Either the Hugging Face Hub could not be "
                f"reached and no cached copy was found (cache_dir={None if cache_dir is None else str(cache_dir)!r}), "
                f"or the name, configuration or split is wrong. Built-in data sets that need no network: "
                f"{list_builtin_datasets()}."
            ) from err
        if isinstance(ds, datasets.DatasetDict):  # pragma: no cover - only when a loader ignores `split`
            ds = ds[split]

    find_image_column(ds, image_column)
    if max_train_samples is not None:
        # in memory: only an index list, and a save_to_disk folder is left as it was (no cache file written in it)
        ds = ds.shuffle(seed=seed, keep_in_memory=True).select(
            range(min(int(max_train_samples), len(ds))), keep_in_memory=True
        )
    return ds


def _describe_path(path: str | os.PathLike, shown: int = 8) -> str:
    """What is at a local path, for error messages: a file, or a folder and (some of) the names in it."""
    root = Path(path).expanduser()
    if not root.is_dir():
        return "file"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    listed = ", ".join(names[:shown]) + (f", ... ({len(names)} entries)" if len(names) > shown else "")
    return f"folder holding {listed}" if names else "empty folder"


