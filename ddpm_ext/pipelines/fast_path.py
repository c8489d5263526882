"""The pipelines' opt-in fast path: channels-last, autocast and `torch.compile` for the UNet calls of sampling.

[`DDPMExtPipeline.enable_fast_path`] checks its options into a [`FastPath`], which puts the pipeline's UNets into
channels-last layout and compiles them, and [`unet_call`] gives the sampling loop the UNet call that goes
through it. The weights, the scheduler and saving are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

AUTOCAST_DTYPES: tuple[torch.dtype | None, ...] = (None, torch.bfloat16, torch.float16)
COMPILE_MODES: tuple[str | None, ...] = (
    None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
)


@dataclass
class FastPath:
    """The options of an enabled fast path, checked when it is made, and the compiled UNets it made.

    Args:
        channels_last (`bool`, defaults to `True`): store the UNets' weights and x_t in NHWC (`torch.channels_last`).
        autocast_dtype (`torch.dtype`, *optional*): run the UNets under `torch.autocast` in this dtype
            (`torch.bfloat16` or `torch.float16`); their output is cast back to x_t's dtype.
        compile (`bool`, defaults to `False`): call the UNets through `torch.compile`.
        compile_mode (`str`, *optional*): `torch.compile`'s `mode`, one of `COMPILE_MODES`; needs `compile=True`.
        compiled (`dict[str, Callable]`): the compiled UNets by component name, filled by [`apply`].

    Raises:
        `ValueError`: for an option of the wrong type or value.
    """

    channels_last: bool = True
    autocast_dtype: torch.dtype | None = None
    compile: bool = False
    compile_mode: str | None = None
    compiled: dict[str, Callable[..., Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name, value in (("channels_last", self.channels_last), ("compile", self.compile)):
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be True or False, got {value!r}.")
        if self.autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"`autocast_dtype` must be one of {list(AUTOCAST_DTYPES)}, got {self.autocast_dtype!r}.")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"`compile_mode` must be one of {list(COMPILE_MODES)}, got {self.compile_mode!r}.")
        if self.compile_mode is not None and not self.compile:
            raise ValueError(f"`compile_mode`={self.compile_mode!r} needs `compile=True`.")

    @property
    def options(self) -> dict[str, Any]:
        """The four options as a new dict (what [`DDPMExtPipeline.fast_path`] returns)."""
        return {
            "channels_last": self.channels_last,
            "autocast_dtype": self.autocast_dtype,
            "compile": self.compile,
            "compile_mode": self.compile_mode,
        }

    def apply(self, unets: dict[str, torch.nn.Module]) -> None:
        """Put `unets` (by component name) into channels-last layout and wrap them in `torch.compile`, as asked.

        `torch.compile` only wraps a module here; the compilation itself happens at its first call.
        """
        for name, model in unets.items():
            if self.channels_last:
                model.to(memory_format=torch.channels_last)
            if self.compile:
                self.compiled[name] = torch.compile(model, mode=self.compile_mode)

    def remove(self, unets: dict[str, torch.nn.Module]) -> None:
        """Undo [`apply`]: contiguous weights again, no compiled UNet."""
        if self.channels_last:
            for model in unets.values():
                model.to(memory_format=torch.contiguous_format)
        self.compiled = {}

    def sample_layout(self, sample: torch.Tensor) -> torch.Tensor:
        """x_t in the memory layout of the UNets' weights (channels-last when that option is on)."""
        return sample.contiguous(memory_format=torch.channels_last) if self.channels_last else sample


def unet_call(
    model: torch.nn.Module,
    device: torch.device,
    fast_path: FastPath | None = None,
    component: str = "unet",
) -> Callable[..., torch.Tensor]:
    """`(x_t, t, **labels) -> model output` of `model` in x_t's dtype, through `fast_path` when there is one.

    Args:
        model (`torch.nn.Module`): a UNet whose call returns an object with `.sample` (diffusers' `UNet2DModel`).
        device (`torch.device`): where sampling runs (the autocast device type).
        fast_path ([`FastPath`], *optional*): the enabled fast path; `None` calls `model` as it is.
        component (`str`, defaults to `"unet"`): the component name of `model`, under which `fast_path` keeps its
            compiled version.

    `labels` are the keyword arguments of a class-conditional UNet (`class_labels=`, see `guidance.py`).
    """
    if fast_path is None:
        return lambda x, t, **labels: model(x, t, **labels).sample
    unet = fast_path.compiled.get(component, model)
    dtype = fast_path.autocast_dtype
    if dtype is None:
        return lambda x, t, **labels: unet(x, t, **labels).sample

    def call(x: torch.Tensor, t: torch.Tensor, **labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype):
            out = unet(x, t, **labels).sample
        return out.to(x.dtype)

    return call
