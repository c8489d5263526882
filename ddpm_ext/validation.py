"""Argument checks shared by the whole package: one helper per kind of value, one message format.

Every check raises a `ValueError` that names the argument, the bad value and what is allowed. Each value is
checked once, by the object that owns it (a scheduler checks its options in `__init__`, a pipeline its call
arguments once per call); the command line turns these errors into `error: ...` with exit status 2.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Sequence

import numpy as np
import torch

__all__ = [
    "MAX_SEED",
    "check_choice",
    "check_finite",
    "check_generator",
    "check_int",
    "check_number",
    "check_path",
    "check_positive",
    "check_seed",
    "learns_variance",
    "nonfinite_parameters",
    "resolve_device",
    "weights_are_finite",
]

LEARNED_VARIANCE_TYPES = ("learned_range", "learned")
MAX_SEED = 2**32 - 1  # NumPy's legacy seeding (accelerate's set_seed) takes seeds in [0, 2**32)


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """`value` as an `int` when it is an integer (not a bool) in [`low`, `high`]; else a `ValueError`.

    Example:

    ```py
    >>> check_int("num_inference_steps", 50, 1, 1000)
    50
    >>> check_int("batch_size", 0, 1)
    Traceback (most recent call last):
    ...
    ValueError: `batch_size` must be an integer >= 1, got 0.

    ```
    """
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        raise ValueError(f"`{name}` must be {_allowed('an integer', 'an integer', low, high)}, got {value!r}.")
    return int(value)


def check_number(
    name: str, value: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False
) -> float:
    """`value` as a finite `float` in [`low`, `high`] (`(low, high]` with `low_open=True`); else a `ValueError`
    (infinities and NaN are refused whatever the bounds)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    ok = ok and math.isfinite(float(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        raise ValueError(
            f"`{name}` must be {_allowed('a number', 'a finite number', low, high, low_open)}, got {value!r}."
        )
    return float(value)


def _allowed(kind: str, unbounded: str, low: Any, high: Any, low_open: bool = False) -> str:
    """The allowed values in words: "an integer in [1, 10]", "a number > 0", ..."""
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{low}, {high}]"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{kind} <= {high}"
    return unbounded


def check_seed(name: str, value: Any) -> int:
    """`value` as an `int` seed in [0, 2**32); else a `ValueError` (every seed of the package has this range).

    Example:

    ```py
    >>> check_seed("seed", 2**32)
    Traceback (most recent call last):
    ...
    ValueError: `seed` must be an integer in [0, 4294967295], got 4294967296.

    ```
    """
    return check_int(name, value, 0, MAX_SEED)


def check_path(name: str, value: Any) -> str:
    """`value` as a non-empty path string (an empty one would silently mean the current folder); else a
    `ValueError`."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
        raise ValueError(f"`{name}` must be a non-empty path, got {value!r}.")
    return os.fspath(value)


def check_generator(generator: Any, batch_size: int, name: str = "generator") -> None:
    """`generator` must be `None`, a `torch.Generator`, or a list of `batch_size` of them; else a `ValueError`
    (an int seed is refused with the way to make a generator of it)."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, list):
        bad = [type(g).__name__ for g in generator if not isinstance(g, torch.Generator)]
        if bad:
            raise ValueError(f"`{name}` must be a list of torch.Generator, got a list holding {bad[0]}.")
        if len(generator) != batch_size:
            raise ValueError(f"`{name}` is a list of {len(generator)} generators but `batch_size` is {batch_size}.")
        return
    hint = (f" (for a seed, pass `torch.Generator().manual_seed({generator!r})`)"
            if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool) else "")
    raise ValueError(
        f"`{name}` must be a torch.Generator, a list of them or None, got {type(generator).__name__}{hint}."
    )


def check_finite(name: str, tensor: torch.Tensor, what: str = "") -> torch.Tensor:
    """`tensor` when every value is finite; else a `ValueError` counting the NaN and infinite values."""
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        nan = int(torch.isnan(tensor).sum())
        raise ValueError(
            f"`{name}` holds {nan} NaN and {int((~finite).sum()) - nan} infinite value(s) of {tensor.numel()}"
            f"{what}."
        )
    return tensor


def weights_are_finite(weights: torch.nn.Module | Iterable[torch.Tensor]) -> bool:
    """Whether every parameter of a model, or every tensor of `weights`, is finite (no NaN, no ±inf)."""
    tensors = weights.parameters() if isinstance(weights, torch.nn.Module) else weights
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def nonfinite_parameters(module: torch.nn.Module) -> list[str]:
    """The names of `module`'s parameters that hold NaN or ±inf (empty when its weights are finite)."""
    return [name for name, p in module.named_parameters() if not bool(torch.isfinite(p).all())]


def check_positive(name: str, value: Any, *, upper: float | None = None) -> float:
    """`value` as a finite `float` in (0, `upper`] (or > 0); else a `ValueError`."""
    return check_number(name, value, 0, upper, low_open=True)


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """`value` when it is one of `allowed`; else a `ValueError` naming `name`, the value and the choices."""
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}.")
    return value


def learns_variance(variance_type: str | None) -> bool:
    """Whether a scheduler `variance_type` makes the model predict its variance (2C output channels)."""
    return variance_type in LEARNED_VARIANCE_TYPES


def resolve_device(name: Any = None, option: str = "--device") -> torch.device:
    """A torch device from a user's choice: `None` or `"auto"` is CUDA when available, else the CPU.

    Raises:
        `ValueError`: naming `option`, for a string torch does not parse, or a CUDA device where CUDA is missing.
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"`{option}` {name!r} is not a torch device ('auto', 'cpu', 'cuda', 'cuda:0', ...).") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`{option}` {name!r}: CUDA is not available here; use 'cpu' or 'auto'.")
    return device
