"""Image data sets and preprocessing for DDPM training, without torchvision.

Three modules, in the order the training script uses them (`builtin` holds the built-in data sets that
`loading` offers by name):

1. Loading (`loading.py`, built-in sets in `builtin.py`). [`load_image_dataset`] returns a `datasets.Dataset` with an
   image column from one of

   - a built-in data set that ships inside an installed package and needs no network
     ([`BUILTIN_DATASETS`]): `"mnist-5k"` (the default) and `"openmoji-32"`;
   - a Hugging Face Hub data set (`datasets.load_dataset(name, config_name)`);
   - a local folder of images (`datasets.load_dataset("imagefolder", data_dir=...)`), every file of which is
     opened and decoded first, so that a corrupt file is reported by path before any training starts;
   - a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk` (`datasets.load_from_disk`,
     [`load_saved_dataset`]).

2. Preprocessing (`transforms.py`). [`ImageTransform`] (made by [`build_transform`]) does with Pillow, NumPy and torch
   what diffusers' `train_unconditional.py` does with torchvision: `Resize(resolution, bilinear)` of the shorter
   side, `CenterCrop` or `RandomCrop`, `RandomHorizontalFlip`, `ToTensor`, `Normalize([0.5], [0.5])`. The
   result is a float32 `(C, H, W)` tensor in [-1, 1] whose values lie on the 8-bit grid `x = u / 127.5 - 1`
   (`u` the uint8 pixel), which the discrete likelihood (bits/dim) relies on. With `preserve_precision=True`
   (diffusers' `--preserve_input_precision`), 16-bit and float images skip the 8-bit conversion and give
   `x = 2 v - 1` from their values `v` in [0, 1] (`sample / 65535` for 16 bits), off the 8-bit grid: bits/dim
   does not apply to such data. 8-bit images are unaffected.

3. Batching (`transforms.py`). [`preprocess_dataset`] attaches the transform with `Dataset.with_transform`, giving
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

from .builtin import (
    BUILTIN_DATASETS,
    DEFAULT_DATASET,
    BuiltinDatasetInfo,
    default_cache_dir,
    held_out_split,
    list_builtin_datasets,
    load_builtin_dataset,
    load_mnist_5k,
    load_openmoji_32,
    render_openmoji,
)
from .loading import (
    IMAGE_EXTENSIONS,
    find_image_column,
    load_image_dataset,
    load_saved_dataset,
    saved_dataset_kind,
    validate_image_folder,
)
from .transforms import INDEX_COLUMN, ImageTransform, build_transform, collate_fn, infer_channels, preprocess_dataset

__all__ = [
    "BUILTIN_DATASETS",
    "DEFAULT_DATASET",
    "IMAGE_EXTENSIONS",
    "INDEX_COLUMN",
    "BuiltinDatasetInfo",
    "ImageTransform",
    "build_transform",
    "collate_fn",
    "default_cache_dir",
    "find_image_column",
    "held_out_split",
    "infer_channels",
    "list_builtin_datasets",
    "load_builtin_dataset",
    "load_image_dataset",
    "load_saved_dataset",
    "load_mnist_5k",
    "load_openmoji_32",
    "preprocess_dataset",
    "render_openmoji",
    "saved_dataset_kind",
    "validate_image_folder",
]
