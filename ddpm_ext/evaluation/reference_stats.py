"""The on-disk cache of reference statistics: the real images' features, μ and Σ, computed once per key.

[`reference_statistics`] extracts the features of the real images ([`ddpm_ext.evaluation.features`]) and their
statistics ([`ddpm_ext.evaluation.metrics.feature_statistics`]) once per data set, split, image size and
extractor, and keeps them as safetensors under [`default_stats_cache_dir`]; FID and KID then need only the
generated images' features.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..data import default_cache_dir
from ..files import atomic_path
from .features import FeatureExtractor, extract_features
from .metrics import feature_statistics

__all__ = [
    "ReferenceStatistics",
    "default_stats_cache_dir",
    "reference_statistics",
    "stats_cache_key",
]


def default_stats_cache_dir() -> Path:
    """Where reference statistics are cached: `$DDPM_EXT_FID_STATS_DIR` when set, else `fid_stats/` under
    [`ddpm_ext.data.default_cache_dir`] (`$DDPM_EXT_CACHE`, else `~/.cache/ddpm_ext`)."""
    if os.environ.get("DDPM_EXT_FID_STATS_DIR"):
        return Path(os.environ["DDPM_EXT_FID_STATS_DIR"]).expanduser()
    return default_cache_dir() / "fid_stats"


@dataclass
class ReferenceStatistics:
    """Features of the real images and their statistics, as [`reference_statistics`] returns them.

    Args:
        features (`torch.Tensor`): `(N, F)` float64 (KID needs the features themselves).
        mean (`torch.Tensor`): μ `(F,)`.
        cov (`torch.Tensor`): Σ `(F, F)`.
        key (`dict`): What identifies the statistics (data set, split, extractor, image size, ...).
        path (`pathlib.Path`, *optional*): The cache file, when cached.
        cache_hit (`bool`): Whether they were read from the cache (no features were extracted).
        seconds (`float`): Time to compute or load them.
    """

    features: torch.Tensor
    mean: torch.Tensor
    cov: torch.Tensor
    key: dict[str, Any]
    path: Path | None = None
    cache_hit: bool = False
    seconds: float = 0.0

    @property
    def num_images(self) -> int:
        return int(self.features.shape[0])


def stats_cache_key(key: dict[str, Any]) -> str:
    """A stable 16-hex-digit hash of a JSON-serialisable key (sorted keys)."""
    try:
        text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    except TypeError as err:
        raise ValueError(f"The reference-statistics `key` must be JSON-serialisable, got {key!r}: {err}") from err
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reference_statistics(
    images: Callable[[], torch.Tensor | Iterable[torch.Tensor]],
    extractor: FeatureExtractor,
    *,
    key: dict[str, Any],
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    progress: bool = False,
) -> ReferenceStatistics:
    r"""Features and statistics of the real images, computed once per key and cached as safetensors.

    The file is `cache_dir / f"{hash}.safetensors"`, `hash` from `key` plus the extractor's identity, holding
    the features, μ and Σ, and the key (in the metadata, checked on load). On a hit, `images` is **not
    called**: no image is loaded and no feature extracted.

    Args:
        images (`Callable`): Returns the real images, a tensor `(N, C, H, W)` or an iterable of batches (uint8 or
            [-1, 1]); called only on a cache miss.
        extractor ([`FeatureExtractor`]): The feature network.
        key (`dict`): JSON-serialisable description of the images, e.g. `{"dataset": "mnist-5k", "split":
            "test", "image_size": 28, "channels": 1, "num_images": 500}`.
        cache_dir (`str` or `os.PathLike`, *optional*): Defaults to [`default_stats_cache_dir`].
        use_cache (`bool`, defaults to `True`): `False` neither reads nor writes the cache.
        batch_size (`int`, defaults to 64), progress (`bool`, defaults to `False`): For the extraction.

    Example:

    ```py
    >>> import tempfile, torch
    >>> from ddpm_ext.evaluation.features import EfficientNetLite0Features
    >>> from ddpm_ext.evaluation.reference_stats import reference_statistics
    >>> extractor = EfficientNetLite0Features()
    >>> images = lambda: torch.randint(
    ...     0, 256, (4, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    ... )
    >>> with tempfile.TemporaryDirectory() as d:
    ...     first = reference_statistics(images, extractor, key={"dataset": "demo"}, cache_dir=d)
    ...     again = reference_statistics(images, extractor, key={"dataset": "demo"}, cache_dir=d)
    >>> first.cache_hit, again.cache_hit, torch.equal(first.features, again.features)
    (False, True, True)

    ```
    """
    if not isinstance(key, dict):
        raise ValueError(f"`key` must be a dict describing the real images, got {type(key).__name__}.")
    full_key = {**key, "extractor": extractor.identity}
    digest = stats_cache_key(full_key)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_stats_cache_dir()
    path = folder / f"{digest}.safetensors"
    start = time.perf_counter()
    if use_cache and path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                stored_key = json.loads((f.metadata() or {}).get("key", "null"))
                if stored_key == json.loads(json.dumps(full_key)):
                    feats, mean, cov = (f.get_tensor(n) for n in ("features", "mean", "cov"))
                    return ReferenceStatistics(feats, mean, cov, full_key, path, True, time.perf_counter() - start)
        except Exception:  # noqa: BLE001 - a corrupt or foreign file is recomputed and overwritten
            pass
    feats = extract_features(extractor, images(), batch_size=batch_size, progress=progress, desc="reference features")
    mean, cov = feature_statistics(feats)
    if use_cache:
        with atomic_path(path) as tmp:  # a concurrent reader sees the old file or the new one
            save_file({"features": feats.contiguous(), "mean": mean.contiguous(), "cov": cov.contiguous()}, str(tmp),
                      metadata={"key": json.dumps(full_key, sort_keys=True)})
    return ReferenceStatistics(feats, mean, cov, full_key, path if use_cache else None, False,
                               time.perf_counter() - start)
