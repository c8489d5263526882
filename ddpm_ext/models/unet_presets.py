"""Named `UNet2DModel` configurations with sinusoidal (positional) time embeddings.

Each preset is a plain `UNet2DModel` config, so a model built from it saves, loads and samples in
vanilla diffusers. `time_embedding_type="positional"` is the Transformer sinusoidal embedding of t that
DDPM feeds to every residual block (Ho et al. 2020, Appendix B).
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from typing import Any

from diffusers import UNet2DModel

_PAPER_TIME_EMBEDDING = {
    # DDPM's embedding: sin then cos, frequencies 10000^(-i/(d/2-1)) (diffusers' google/ddpm-* checkpoints).
    "time_embedding_type": "positional",
    "flip_sin_to_cos": False,
    "freq_shift": 1,
}

UNET_PRESETS: dict[str, dict[str, Any]] = {
    # The DDPM paper's CIFAR-10 network: ch 128, multipliers (1, 2, 2, 2), two residual blocks per level,
    # self-attention at 16x16 and in the middle, dropout 0.1; 35.7 M parameters.
    "ddpm-cifar10": {
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (128, 256, 256, 256),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": None,
        "dropout": 0.1,
        "norm_num_groups": 32,
        **_PAPER_TIME_EMBEDDING,
    },
    # 28x28 grayscale (MNIST), small enough to train on a CPU: 28 -> 14 -> 7, attention in the 7x7 middle
    # block only (no attention at 14x14).
    "mnist-small": {
        "sample_size": 28,
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": (16, 32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        "attention_head_dim": None,
        "norm_num_groups": 8,
        **_PAPER_TIME_EMBEDDING,
    },
    # 32x32 RGB (emoji, CIFAR-sized data) small enough for a CPU: 32 -> 16 -> 8, attention at 8x8.
    "rgb32-small": {
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (32, 64, 96),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "attention_head_dim": None,
        "norm_num_groups": 8,
        **_PAPER_TIME_EMBEDDING,
    },
    # A few-thousand-parameter UNet for tests and smoke runs (seconds on a CPU).
    "tiny": {
        "sample_size": 8,
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": None,
        "norm_num_groups": 4,
        **_PAPER_TIME_EMBEDDING,
    },
}


def check_unet_config(config: dict[str, Any], source: str = "the UNet config") -> dict[str, Any]:
    """`config` when its sizes can build a `UNet2DModel`; else a `ValueError` naming `source`, the key and the value.

    Checked: `in_channels`, `out_channels`, `layers_per_block`, `norm_num_groups` (integers >= 1), `sample_size` (an
    integer >= 1 or a pair of them), `block_out_channels` (a non-empty list of integers >= 1, each divisible by
    `norm_num_groups`, as GroupNorm needs), `attention_head_dim` and `num_class_embeds` (None or an integer >= 1), and
    as many down and up block types as `block_out_channels`. Keys the config leaves out keep diffusers' defaults.

    Example:

    ```py
    >>> from ddpm_ext.models.unet_presets import check_unet_config, unet_config
    >>> check_unet_config({**unet_config("tiny"), "block_out_channels": [8, -16]}, "my.json")
    Traceback (most recent call last):
    ...
    ValueError: my.json: `block_out_channels` must be a non-empty list of integers >= 1, got [8, -16].

    ```
    """

    def positive(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    def bad(key: str, allowed: str) -> ValueError:
        return ValueError(f"{source}: `{key}` must be {allowed}, got {config[key]!r}.")

    for key in ("in_channels", "out_channels", "layers_per_block", "norm_num_groups"):
        if key in config and not positive(config[key]):
            raise bad(key, "an integer >= 1")
    for key in ("attention_head_dim", "num_class_embeds"):
        if config.get(key) is not None and not positive(config[key]):
            raise bad(key, "None or an integer >= 1")
    if "sample_size" in config:
        size = config["sample_size"]
        pair = isinstance(size, (list, tuple)) and len(size) == 2 and all(positive(v) for v in size)
        if not (positive(size) or pair):
            raise bad("sample_size", "an integer >= 1 or a pair [height, width] of them")
    channels = config.get("block_out_channels")
    if channels is not None:
        if not isinstance(channels, (list, tuple)) or not channels or not all(positive(c) for c in channels):
            raise bad("block_out_channels", "a non-empty list of integers >= 1")
        groups = config.get("norm_num_groups", 32)
        if any(c % groups for c in channels):
            raise bad("block_out_channels", f"a list of multiples of `norm_num_groups` = {groups} (GroupNorm)")
        for key in ("down_block_types", "up_block_types"):
            types = config.get(key)
            if types is not None and (not isinstance(types, (list, tuple)) or len(types) != len(channels)):
                raise bad(key, f"a list of {len(channels)} block types, one per `block_out_channels` entry")
    return config


def _unet_keys() -> set[str]:
    return set(inspect.signature(UNet2DModel.__init__).parameters) - {"self"}


def unet_config(preset: str | os.PathLike = "ddpm-cifar10", **overrides: Any) -> dict[str, Any]:
    """A `UNet2DModel` config from a preset name or a JSON config file, with keyword overrides.

    Args:
        preset (`str` or `os.PathLike`, defaults to `"ddpm-cifar10"`):
            One of `UNET_PRESETS` (`"ddpm-cifar10"`, `"mnist-small"`, `"rgb32-small"`, `"tiny"`), or the path
            of a JSON file holding a `UNet2DModel` config (e.g. a saved `unet/config.json`).
        **overrides: any `UNet2DModel.__init__` argument, e.g. `sample_size=64` or `in_channels=1`.

    Returns:
        `dict`: the config; pass it to `UNet2DModel(**config)` or use [`build_unet`].

    Raises:
        ValueError: for an unknown preset, a missing or invalid JSON file, or an unknown override key.

    Example:

    ```py
    >>> from ddpm_ext import unet_config
    >>> unet_config("mnist-small", sample_size=32)["sample_size"]
    32
    ```
    """
    name = os.fspath(preset)
    if name in UNET_PRESETS:
        config = copy.deepcopy(UNET_PRESETS[name])
    elif name.endswith(".json") or os.path.exists(name):
        if not os.path.isfile(name):
            raise ValueError(
                f"`preset` {name!r} is not a preset and no such JSON file exists; presets: {sorted(UNET_PRESETS)}."
            )
        try:
            with open(name, encoding="utf-8") as f:
                config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"`preset` file {name!r} is not valid JSON: {e}.") from e
        if not isinstance(config, dict):
            raise ValueError(f"`preset` file {name!r} must hold a JSON object, got {type(config).__name__}.")
        config = {k: v for k, v in config.items() if not k.startswith("_")}
    else:
        raise ValueError(f"`preset` must be one of {sorted(UNET_PRESETS)} or a JSON config path, got {name!r}.")
    allowed = _unet_keys()
    unknown = sorted(set(config) - allowed) + sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"Unknown UNet2DModel config keys {unknown}; allowed: {sorted(allowed)}.")
    config.update(overrides)
    return check_unet_config(config, f"`preset` {name!r}")


def build_unet(preset: str | os.PathLike = "ddpm-cifar10", **overrides: Any) -> UNet2DModel:
    """A freshly initialised `UNet2DModel` from [`unet_config`]`(preset, **overrides)`.

    Example:

    ```py
    >>> from ddpm_ext import build_unet
    >>> unet = build_unet("tiny")
    >>> unet.config.time_embedding_type
    'positional'
    ```
    """
    return UNet2DModel(**unet_config(preset, **overrides))
