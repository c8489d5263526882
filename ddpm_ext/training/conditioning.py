"""Class-conditional training for classifier-free guidance (Ho & Salimans 2022): labels, the null class, dropout.

Its flags (`--class_conditional`, `--label_column`, `--class_dropout_prob`, `--guidance_scale`) are defined and
checked with the others in [`ddpm_ext.training.flags`].

One UNet learns both p(x | y) and p(x): each training label is replaced by the null class ∅ with probability
`--class_dropout_prob` (default 0.1, as in the paper's best settings), so sampling can later combine the two
branches (see `ddpm_ext.pipelines.guidance` for the conventions: `num_class_embeds` = K + 1, the last id K is ∅,
the class names in the UNet config).

Where the labels come from:

- `mnist-5k`: the `"label"` column (`ClassLabel`, digits "0".."9");
- `--train_data_dir`: one sub-folder per class (the `imagefolder` builder's `ClassLabel` column `"label"`);
- a Hub data set: its `"label"` column, or the column named by `--label_column` (`ClassLabel`, non-negative
  integers, or strings, whose sorted distinct values become the classes);
- `openmoji-32` carries no class column (only the emoji and its code points), so it cannot train a conditional
  model: `--class_conditional` on it is an error, as on any data set without labels.

Example:

    accelerate launch training/train_ddpm.py --class_conditional --output_dir outputs/mnist-cond
"""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from diffusers import UNet2DModel

from ..pipelines.guidance import (
    class_names,
    is_class_conditional,
    num_classes,
    set_class_names,
)
from ..validation import check_number

__all__ = [
    "Conditioning",
    "LabelledDataset",
    "dataset_class_labels",
    "drop_labels",
    "make_class_conditional",
    "setup_conditioning",
]

DEFAULT_LABEL_COLUMN = "label"
LABEL_KEY = "class_label"  # key of the labels in a training batch


# --------------------------------------------------------------------------------------------------
# Labels of a data set
# --------------------------------------------------------------------------------------------------
def dataset_class_labels(dataset: datasets.Dataset, label_column: str | None = None) -> tuple[torch.Tensor, list[str]]:
    """The class id of every row and the class names.

    Args:
        dataset (`datasets.Dataset`): the training data.
        label_column (`str`, *optional*): the label column; defaults to `"label"`.

    Returns:
        `(ids, names)`: int64 tensor (N,) of ids in [0, K−1], and the K names. A `ClassLabel` column keeps its
        names; integers 0..max become the names "0".."max"; strings become classes in sorted order.

    Raises:
        ValueError: when the column is missing (the columns are listed), holds negative ids, values that are not
            class labels, or fewer than 2 classes.

    Example:

    ```py
    >>> import datasets
    >>> from ddpm_ext.training.conditioning import dataset_class_labels
    >>> ds = datasets.Dataset.from_dict({"kind": ["cat", "dog", "cat"]})
    >>> ids, names = dataset_class_labels(ds, "kind")
    >>> ids.tolist(), names
    ([0, 1, 0], ['cat', 'dog'])

    ```
    """
    column = label_column or DEFAULT_LABEL_COLUMN
    features = dataset.features
    if column not in features:
        listing = ", ".join(f"{name!r} ({type(feat).__name__})" for name, feat in features.items())
        flag = "`label_column`" if label_column else "--class_conditional"
        raise ValueError(
            f"{flag} needs class labels, but the data set has no column {column!r} (its columns: {listing}). "
            "Name the label column with --label_column, or give an image folder with one sub-folder per class."
        )
    feature = features[column]
    values = list(dataset[column])
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        ids = np.asarray(values, dtype=np.int64)
        if (ids < 0).any():
            raise ValueError(
                f"The label column {column!r} has {int((ids < 0).sum())} rows without a label (id -1); "
                "drop them or use a split where every image is labelled."
            )
    elif isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        ids = np.asarray(values, dtype=np.int64)
        if (ids < 0).any():
            raise ValueError(
                f"The label column {column!r} holds negative ids (e.g. {int(ids[ids < 0][0])}); ids must be >= 0."
            )
        names = [str(i) for i in range(int(ids.max()) + 1)] if len(ids) else []
    elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        names = sorted(set(values))
        index = {n: i for i, n in enumerate(names)}
        ids = np.asarray([index[v] for v in values], dtype=np.int64)
    else:
        raise ValueError(
            f"The label column {column!r} has the type {feature!r}; class labels must be a ClassLabel, integers >= 0 "
            "or strings."
        )
    if len(names) < 2:
        raise ValueError(
            f"The label column {column!r} holds {len(names)} class(es); a conditional model needs at least 2."
        )
    return torch.from_numpy(ids), [str(n) for n in names]


class LabelledDataset(torch.utils.data.Dataset):
    """Rows of a (transformed) data set with the class id added under `"class_label"` (a 0-d int64 tensor)."""

    def __init__(self, data: Any, labels: torch.Tensor):
        if len(data) != len(labels):
            raise ValueError(f"`labels` has {len(labels)} entries for {len(data)} rows.")
        self.data, self.labels = data, labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.data[index], LABEL_KEY: self.labels[index]}

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        getitems = getattr(self.data, "__getitems__", None)
        rows = getitems(indices) if getitems is not None else [self.data[i] for i in indices]
        return [{**row, LABEL_KEY: self.labels[i]} for row, i in zip(rows, indices)]


def drop_labels(labels: torch.Tensor, prob: float, null_class: int, generator: torch.Generator) -> torch.Tensor:
    """Each label replaced by `null_class` with probability `prob` (one uniform draw per label from `generator`).

    Example:

    ```py
    >>> import torch
    >>> from ddpm_ext.training.conditioning import drop_labels
    >>> drop_labels(torch.tensor([0, 1, 2]), 1.0, 10, torch.Generator().manual_seed(0)).tolist()
    [10, 10, 10]

    ```
    """
    check_number("prob", prob, 0, 1)
    drop = torch.rand(labels.shape, generator=generator).to(labels.device) < prob
    return torch.where(drop, torch.full_like(labels, null_class), labels)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
def make_class_conditional(unet: UNet2DModel, names: list[str], seed: int) -> UNet2DModel:
    """`unet` with a class embedding for `names` + the null class, the names stored in its config.

    An unconditional UNet is rebuilt with `num_class_embeds = K + 1`, keeps all its weights, and gets a fresh
    embedding (seeded with `seed`); a conditional UNet with K classes is kept (its names are replaced).

    Raises:
        ValueError: for a conditional UNet with another number of classes.
    """
    k = len(names)
    if is_class_conditional(unet):
        have = num_classes(unet)
        if have != k:
            raise ValueError(
                f"The pretrained UNet is conditional on {have} classes ({class_names(unet)}), "
                f"but the data has {k} ({names})."
            )
        set_class_names(unet, names)
        return unet
    keys = set(inspect.signature(UNet2DModel.__init__).parameters) - {"self"}
    config = {key: value for key, value in dict(unet.config).items() if key in keys}
    config["num_class_embeds"] = k + 1
    torch.manual_seed(seed)
    conditional = UNet2DModel(**config).to(unet.device)
    missing, unexpected = conditional.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or not all(m.startswith("class_embedding.") for m in missing):  # only the embedding is new
        raise RuntimeError(f"Rebuilding the UNet with a class embedding lost weights: {missing + unexpected}.")
    set_class_names(conditional, names)
    return conditional


# --------------------------------------------------------------------------------------------------
# What the training script calls
# --------------------------------------------------------------------------------------------------
@dataclass
class Conditioning:
    """The labels of the training rows and the dropout into the null class.

    Args:
        labels (`torch.Tensor`): (N,) class ids of the data set's rows.
        names (`list[str]`): the K class names.
        dropout_prob (`float`): probability of the null class per training example.
    """

    labels: torch.Tensor
    names: list[str]
    dropout_prob: float

    @property
    def null_class(self) -> int:
        return len(self.names)

    def attach(self, train_data: Any) -> LabelledDataset:
        """The training rows with their labels (row i of `train_data` is row i of the labelled data set)."""
        return LabelledDataset(train_data, self.labels)

    def batch_labels(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        """The batch's labels after dropout, drawn from the step's generator (so resume stays bit-exact)."""
        return drop_labels(batch[LABEL_KEY], self.dropout_prob, self.null_class, generator)

    def info(self) -> dict[str, Any]:
        """For training_info.json and the model card."""
        return {
            "num_classes": len(self.names), "class_names": list(self.names), "class_dropout_prob": self.dropout_prob
        }


def setup_conditioning(
    args: argparse.Namespace, dataset: datasets.Dataset, unet: UNet2DModel
) -> tuple[UNet2DModel, Conditioning | None]:
    """With `--class_conditional`: the labels of `dataset` and the UNet made conditional; else `(unet, None)`.

    Raises:
        ValueError: for data without usable labels, or a conditional pretrained UNet without
            `--class_conditional` (before any training).
    """
    if args.class_conditional:
        labels, names = dataset_class_labels(dataset, args.label_column)
        unet = make_class_conditional(unet, names, args.seed)
        return unet, Conditioning(labels, names, float(args.class_dropout_prob))
    if is_class_conditional(unet):
        raise ValueError(
            f"The pretrained UNet is class-conditional ({num_classes(unet)} classes: {class_names(unet)}); "
            "fine-tune it with --class_conditional (and labelled data)."
        )
    return unet, None
