"""`DDPMExtPipeline`: sampling from a trained UNet with DDPM, DDIM or a compatible diffusers scheduler.

Saving and loading (diffusers' `DDPMPipeline` layout, which vanilla diffusers loads) live in
[`checkpoint_io`](checkpoint_io.py), the opt-in fast path of the UNet calls in [`fast_path`](fast_path.py), and
the start of the chain (x_T, the call's timesteps) in [`chain_start`](chain_start.py).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, get_args

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import logging as diffusers_logging

from ..data import ImageTransform
from ..images import images_to_uint8, normalize, tensor_to_numpy, to_pil, to_unit
from ..likelihood import BitsPerDimOutput, bits_per_dim
from ..memory import check_fits, sampling_bytes
from ..schedulers.scheduling_common import ScheduleMixin
from ..validation import check_choice, check_finite, check_generator, check_int, check_number, weights_are_finite
from .chain_start import draw_initial_noise, resolve_timestep_spacing, set_sampling_timesteps
from .checkpoint_io import (
    GUIDE_DIR,
    as_ext_scheduler,
    check_component_classes,
    check_components,
    check_unet_weights,
    folder_with_guide,
    load_scheduler,
    resolve_pipeline_folder,
    save_pipeline,
    saved_guide,
    square_sample_size,
)
from .fast_path import FastPath, unet_call
from .guidance import (
    autoguide,
    check_autoguidance_scale,
    check_guide_unet,
    class_names,
    default_autoguidance_scale,
    is_class_conditional,
    num_guided_channels,
    prepare_guidance,
)

OutputType = Literal["pil", "np", "pt", "latent", "numpy"]
OUTPUT_TYPES: tuple[str, ...] = get_args(OutputType)


@dataclass
class DDPMExtPipelineOutput(ImagePipelineOutput):
    """Output of [`DDPMExtPipeline`].

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the samples, in [0, 1] for "np" / "pt".
        trajectory (`list[torch.Tensor]`, *optional*): x_t before every step and the final x_0, each (B, C, H, W)
            in [-1, 1] on the CPU (`return_trajectory=True`).
        pred_original_samples (`list[torch.Tensor]`, *optional*): x̂_0 predicted at every step.
        timesteps (`list[int]`, *optional*): the timestep of every step.
    """

    trajectory: list[torch.Tensor] | None = None
    pred_original_samples: list[torch.Tensor] | None = None
    timesteps: list[int] | None = None


class DDPMExtPipeline(DiffusionPipeline):
    r"""Image generation with DDPM ancestral sampling, DDIM or any compatible diffusers scheduler, from one trained UNet
    (unconditional, or class-conditional with classifier-free guidance: `class_labels=`, `guidance_scale=`).

    Args:
        unet ([`UNet2DModel`]): ε_θ(x_t, t) (or x_0 / v, as the scheduler's `prediction_type` says).
        scheduler ([`DDPMExtScheduler`], [`DDIMExtScheduler`] or any diffusers scheduler): the sampler.
        guide_unet ([`UNet2DModel`], *optional*): a weaker version of `unet` for autoguidance (Karras et al. 2024):
            sampling uses D_guide + w (D − D_guide) with w = `autoguidance_scale`. The training script saves the
            run's own EMA weights from earlier in training here (`--autoguidance_scale`); its config's private key
            `_ddpm_ext_autoguidance_scale` is the w used when a call does not give one. Vanilla diffusers
            ignores it (it loads `unet` and `scheduler` only).

    Example:

    ```py
    >>> import torch
    >>> from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, DDIMExtScheduler, build_unet
    >>> pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(beta_schedule="cosine"))
    >>> images = pipe(batch_size=2, num_inference_steps=10, generator=torch.manual_seed(0)).images
    >>> pipe.scheduler = DDIMExtScheduler.from_config(pipe.scheduler.config)
    >>> x = pipe(batch_size=2, num_inference_steps=10, eta=0.0, output_type="pt").images
    >>> x.shape
    torch.Size([2, 1, 8, 8])

    ```
    """

    model_cpu_offload_seq = "unet"
    _optional_components = ["guide_unet"]
    _callback_tensor_inputs = ["latents", "pred_original_sample", "model_output"]

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, guide_unet: UNet2DModel | None = None):
        super().__init__()
        check_components(unet, scheduler)
        if guide_unet is not None:
            check_guide_unet(unet, guide_unet)
        self.register_modules(unet=unet, scheduler=scheduler, guide_unet=guide_unet)
        self._num_timesteps = 0
        self._interrupt = False
        self._fast_path: FastPath | None = None  # the enabled fast path (see fast_path.py)

    @property
    def components(self) -> dict[str, Any]:
        """diffusers' `components` (what `__init__` takes), without `guide_unet` when there is no guide: the
        components a pipeline was built from, as diffusers' `test_components_function` expects."""
        components = super().components
        if components.get("guide_unet") is None:
            components.pop("guide_unet", None)
        return components

    # ----------------------------------------------------------------------------------------------
    # Fast path (opt-in; the machinery is in fast_path.py, docs/speed.md measures it)
    # ----------------------------------------------------------------------------------------------
    def enable_fast_path(
        self,
        channels_last: bool = True,
        autocast_dtype: torch.dtype | None = None,
        compile: bool = False,
        compile_mode: str | None = None,
    ) -> "DDPMExtPipeline":
        """Run the UNet faster during sampling; the weights, the scheduler and saving are unchanged.

        Args:
            channels_last (`bool`, defaults to `True`): store the UNet's weights and x_t in NHWC
                (`torch.channels_last`), the layout cuDNN's and oneDNN's fastest convolutions use. Images equal the
                default path's within float32 rounding (convolutions sum in another order).
            autocast_dtype (`torch.dtype`, *optional*): run the UNet under `torch.autocast` in `torch.bfloat16` or
                `torch.float16`; the scheduler step stays in the sample's dtype. Fast only on hardware with such
                arithmetic (tensor cores, AVX512-BF16 / AMX CPUs); elsewhere it is slower. Images differ from
                float32 ones by the UNet's reduced-precision error.
            compile (`bool`, defaults to `False`): `torch.compile` the UNet (compiled at its first call; later
                calls reuse it).
            compile_mode (`str`, *optional*): `torch.compile`'s `mode`: `"default"`, `"reduce-overhead"` (CUDA
                graphs on a GPU), `"max-autotune"` or `"max-autotune-no-cudagraphs"`; needs `compile=True`.

        Returns:
            The pipeline itself.

        Raises:
            `ValueError`: for an option of the wrong type or value.

        Example:

        ```py
        >>> import torch
        >>> from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
        >>> pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler())
        >>> pipe.set_progress_bar_config(disable=True)
        >>> default = pipe(batch_size=2, num_inference_steps=5, generator=torch.manual_seed(0), output_type="pt").images
        >>> fast = pipe.enable_fast_path(channels_last=True)(
        ...     batch_size=2, num_inference_steps=5, generator=torch.manual_seed(0), output_type="pt").images
        >>> bool((fast - default).abs().max() < 1e-4)
        True
        >>> pipe.disable_fast_path().fast_path is None
        True

        ```
        """
        fast = FastPath(channels_last, autocast_dtype, compile, compile_mode)  # checked before anything changes
        self.disable_fast_path()
        fast.apply(self._unets())  # the UNet and, when there is one, the autoguidance guide
        self._fast_path = fast
        return self

    def disable_fast_path(self) -> "DDPMExtPipeline":
        """Back to the default path: contiguous weights, float32 UNet calls, no compiled UNet."""
        if self._fast_path is not None:
            self._fast_path.remove(self._unets())
        self._fast_path = None
        return self

    def _unets(self) -> dict[str, UNet2DModel]:
        """The pipeline's UNets by component name: `unet`, and `guide_unet` when there is a guide."""
        guide = getattr(self, "guide_unet", None)
        return {"unet": self.unet, **({"guide_unet": guide} if guide is not None else {})}

    @property
    def autoguidance_scale(self) -> float:
        """The autoguidance scale w a call uses when it does not give one: the guide's saved recommendation, or 1
        (no guidance) without a guide."""
        return default_autoguidance_scale(getattr(self, "guide_unet", None))

    def resolve_autoguidance_scale(self, autoguidance_scale: float | None = None) -> float:
        """The w a call with `autoguidance_scale` samples with (None: [`autoguidance_scale`]).

        Raises:
            ValueError: for a value that is not a finite number >= 1, or one other than 1 without a `guide_unet`.
        """
        if autoguidance_scale is None:
            return self.autoguidance_scale
        w = check_autoguidance_scale(autoguidance_scale)
        if w != 1.0 and getattr(self, "guide_unet", None) is None:
            raise ValueError(
                f"`autoguidance_scale`={autoguidance_scale!r} needs a guide model, but this pipeline has no "
                "`guide_unet` "
                "(train with --autoguidance_scale, or pass `guide_unet=` to the pipeline); leave it at None or 1."
            )
        return w

    @property
    def fast_path(self) -> dict[str, Any] | None:
        """The options given to [`enable_fast_path`], or `None` when sampling takes the default path."""
        return None if self._fast_path is None else self._fast_path.options

    @property
    def id2label(self) -> dict[int, str] | None:
        """`{class id: name}` of a class-conditional UNet (the null class, id K, is not listed); `None` when
        the UNet is unconditional."""
        return dict(enumerate(class_names(self.unet))) if is_class_conditional(self.unet) else None

    def _unet_call(self, device: torch.device, component: str = "unet") -> Callable[..., torch.Tensor]:
        """The `component` UNet's call ("unet" or "guide_unet") through the fast path when it is enabled
        ([`unet_call`])."""
        return unet_call(getattr(self, component), device, self._fast_path, component)

    @property
    def num_timesteps(self) -> int:
        """The number of denoising steps of the latest call (diffusers' name)."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` (e.g. in `callback_on_step_end`) to skip the remaining steps (diffusers)."""
        return self._interrupt

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 1000,
        eta: float = 0.0,
        stochastic: bool = True,
        output_type: OutputType = "pil",
        return_dict: bool = True,
        return_trajectory: bool = False,
        callback_on_step_end: Callable[[Any, int, Any, dict[str, torch.Tensor]], dict | None]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' default, never mutated)
        latents: torch.Tensor | None = None,
        timesteps: list[int] | None = None,
        class_labels: Sequence[int | str] | torch.Tensor | int | str | None = None,
        guidance_scale: float | None = None,
        use_clipped_model_output: bool | None = None,
        timestep_spacing: str | None = None,
        autoguidance_scale: float | None = None,
    ) -> DDPMExtPipelineOutput | tuple:
        """Sample images: x_T ~ N(0, I), then one scheduler step per timestep down to x_0.

        Works with every scheduler of `pipe.scheduler.compatibles` (x_T is scaled by the scheduler's
        `init_noise_sigma`, the model input by `scale_model_input`, and `scheduler.step` gets the keyword
        arguments its signature accepts).

        Args:
            batch_size (`int`, defaults to 1): the number of images.
            generator (`torch.Generator` or a list of `batch_size` of them, *optional*): for reproducible samples.
            num_inference_steps (`int`, defaults to 1000): denoising steps, 1..`num_train_timesteps`; fewer than T
                respaces the chain. Ignored when `timesteps` is given.
            eta (`float`, defaults to 0.0): DDIM's η in [0, 1] (needs a scheduler whose `step` takes `eta`).
            stochastic (`bool`, defaults to `True`): add the noise σ_t z at each step; `False` samples "without z"
                (needs a ddpm_ext scheduler).
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (B, H, W, C; diffusers' `"numpy"` too),
                `"pt"` (B, C, H, W) in [0, 1], or `"latent"` (x_0 itself, (B, C, H, W) in [-1, 1], unclipped).
            return_dict (`bool`, defaults to `True`): return a [`DDPMExtPipelineOutput`] or a tuple.
            return_trajectory (`bool`, defaults to `False`): also return x_t and x̂_0 of every step (on the CPU).
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*): called as
                `callback(pipe, i, t, tensors)` after every step, `tensors` holding the names of
                `callback_on_step_end_tensor_inputs`; a returned `"latents"` replaces x_{t-1} (diffusers).
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`): any of
                `pipe._callback_tensor_inputs`: `"latents"` (x_{t-1} after the step), `"pred_original_sample"`
                (x̂_0, when the scheduler gives it) and `"model_output"`.
            latents (`torch.Tensor`, *optional*): x_T itself, (B, C, H, W), every value finite, instead of drawing
                it; it is scaled by the scheduler's `init_noise_sigma` as a drawn one is.
            timesteps (`list[int]`, *optional*): custom descending timesteps, for schedulers whose `set_timesteps`
                accepts them; replaces `num_inference_steps`.
            class_labels (`list[int | str]`, *optional*): for a class-conditional UNet, one class id or name per
                image (a single one is repeated); see [`id2label`]. Without them a conditional UNet samples p(x),
                the null class that label dropout trains.
            guidance_scale (`float`, *optional*): classifier-free guidance w >= 0: ε̂ = ε(x, ∅) + w (ε(x, y) −
                ε(x, ∅)); 1 samples p(x | y), 0 samples p(x) (the null class), > 1 trades diversity for fidelity to
                the class. Both branches go through one batched UNet call per step. `None` (default): 1 with
                `class_labels`, 0 without.
            use_clipped_model_output (`bool`, *optional*): for schedulers whose `step` takes it (DDIM: ours and
                diffusers'), as in diffusers' `DDIMPipeline`: `True` uses the ε̂ consistent with the x̂_0 actually used
                (clipped or thresholded), ε̂ = (x_t − √ᾱ_t x̂_0) / √(1 − ᾱ_t), so that the DDIM update does not mix a
                clipped x̂_0 with the model's unclipped ε̂ (improved-diffusion's and GLIDE's `ddim_sample`).
                `None` (default) means `True` for such schedulers (with ours the samples change only where x̂_0 was
                clipped); `False` is diffusers' `DDIMPipeline` default, bit for bit.
            timestep_spacing (`str`, *optional*): `"leading"`, `"trailing"` or `"linspace"` for this call, in place
                of the scheduler config's (which is left as it is), for every scheduler with that option. `None`
                (default): the config's spacing, except that diffusers' default `"leading"` becomes `"trailing"`
                for the schedulers verified with it (not diffusers' PNDM), so a chain of S < T steps starts at
                t = T − 1 instead of (S − 1)·T/S (t = 900 of 1000 for 10 steps); see [`resolve_timestep_spacing`].
                `"leading"` with a leading config is diffusers' `DDPMPipeline` behaviour, bit for bit. At S = T
                every spacing gives the same chain.
            autoguidance_scale (`float`, *optional*): autoguidance w >= 1 with the pipeline's `guide_unet`:
                D̂ = D_guide + w (D − D_guide) at every step (Karras et al. 2024; combined after classifier-free
                guidance, which each model then gets). 1 samples `unet` alone (the guide is not run; diffusers'
                `DDPMPipeline` behaviour); `None` (default) is the guide's saved recommendation
                ([`autoguidance_scale`]), 1 without a guide. Costs a second UNet call per step.

        Returns:
            [`DDPMExtPipelineOutput`] or `(images,)`.

        Raises:
            `ValueError`: before any work, for an argument of the wrong type or value (e.g. `generator=5`: pass
                `torch.Generator().manual_seed(5)`), `latents` holding NaN or ±inf, or a `batch_size` whose images
                and UNet activations would not fit in the device's available memory (the estimate and the limit
                are named: [`ddpm_ext.memory`]); after the chain, for a sample holding NaN or ±inf (non-finite
                weights, or a callback that diverged), whatever the `output_type`: no images are returned.

        Example:

        ```py
        >>> import torch
        >>> from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
        >>> pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(beta_schedule="cosine"),
        ...                        guide_unet=build_unet("tiny"))
        >>> pipe.set_progress_bar_config(disable=True)
        >>> x = pipe(batch_size=2, num_inference_steps=10, autoguidance_scale=2.0, output_type="pt").images
        >>> x.shape
        torch.Size([2, 1, 8, 8])

        ```
        """
        step_kwargs, tensor_inputs = self._check_call(
            batch_size, generator, eta, stochastic, output_type, latents, timesteps,
            callback_on_step_end, callback_on_step_end_tensor_inputs, use_clipped_model_output,
        )  # fmt: skip
        spacing = resolve_timestep_spacing(self.scheduler, timestep_spacing, custom_timesteps=timesteps is not None)
        guidance = prepare_guidance(self.unet, class_labels, guidance_scale, batch_size)
        autoguidance = self.resolve_autoguidance_scale(autoguidance_scale)
        unet, scheduler = self.unet, self.scheduler
        device = self._execution_device
        self._interrupt = False

        # 1. The timesteps, with this call's spacing (the scheduler checks its own options: the count, the list)
        set_sampling_timesteps(
            scheduler, num_inference_steps, timesteps=timesteps, timestep_spacing=spacing, device=device
        )
        self._num_timesteps = len(scheduler.timesteps)
        # ddpm_ext's schedulers take the host-side int (no device sync per step); others their own timestep tensors
        host_steps = scheduler.timesteps.tolist()
        step_steps = host_steps if isinstance(scheduler, ScheduleMixin) else scheduler.timesteps

        # 2. x_T ~ N(0, I) (drawn exactly as diffusers' DDPMPipeline draws it), or the given latents, scaled by
        #    the scheduler's initial σ (1 for DDPM / DDIM; σ_max for the Karras-style schedulers)
        if latents is None:
            latents = draw_initial_noise(
                (batch_size, unet.config.in_channels, *self._sample_hw()), generator, device, unet.dtype
            )
        else:
            latents = latents.to(device=device, dtype=unet.dtype)
        if scheduler.init_noise_sigma != 1.0:
            latents = latents * scheduler.init_noise_sigma
        trajectory, x0s = ([latents.cpu()], []) if return_trajectory else (None, None)
        if self._fast_path is not None:
            latents = self._fast_path.sample_layout(latents)
        model = self._unet_call(device)
        if guidance is not None:  # class labels (and the null class for guidance) in one batched call
            model = guidance.wrap(model)
        if autoguidance != 1.0:  # D_guide + w (D − D_guide), the guide given the same labels and guidance
            guide = self._unet_call(device, "guide_unet")
            guide = guidance.wrap(guide) if guidance is not None else guide
            model = autoguide(model, guide, autoguidance, num_guided_channels(unet))

        # 3. x_t -> x_{t-1} for every timestep
        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            if self.interrupt:
                continue
            model_output = model(scheduler.scale_model_input(latents, step_steps[i]), t)
            out = scheduler.step(model_output, step_steps[i], latents, **step_kwargs)
            latents = out.prev_sample
            pred_original_sample = getattr(out, "pred_original_sample", None)
            if callback_on_step_end is not None:
                available = {
                    "latents": latents, "pred_original_sample": pred_original_sample, "model_output": model_output
                }
                changed = callback_on_step_end(self, i, host_steps[i], {k: available[k] for k in tensor_inputs})
                if changed:
                    latents = changed.pop("latents", latents)
            if return_trajectory:
                trajectory.append(latents.cpu())
                x0s.append(None if pred_original_sample is None else pred_original_sample.cpu())

        # 4. [-1, 1] -> [0, 1] -> the requested type ("latent": x_0 as it is); NaN or ±inf is refused for every type
        self._check_result(latents)
        images = self._output(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return DDPMExtPipelineOutput(
            images=images,
            trajectory=trajectory,
            pred_original_samples=x0s,
            timesteps=host_steps if return_trajectory else None,
        )

    def _output(self, sample: torch.Tensor, output_type: str) -> Any:
        """x_0 (B, C, H, W) in [-1, 1] as the call's `output_type` (`"latent"`: unchanged; `"numpy"`: `"np"`)."""
        if output_type == "latent":
            return sample
        return self.postprocess(sample, "np" if output_type == "numpy" else output_type)

    def _sample_hw(self) -> tuple[int, int]:
        size = self.unet.config.sample_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @torch.no_grad()
    def bits_per_dim(
        self,
        images: torch.Tensor | np.ndarray | Sequence[PIL.Image.Image],
        *,
        generator: torch.Generator | list[torch.Generator] | None = None,
        batch_size: int | None = None,
        variance_type: str | None = None,
        clip_denoised: bool | None = None,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        progress: bool = False,
    ) -> BitsPerDimOutput:
        r"""The variational bound of held-out images under this pipeline's UNet, in bits/dim per image.

        Uses the full training chain of the scheduler's config (whichever sampler is set, DDPM or DDIM); see
        [`ddpm_ext.bits_per_dim`] for the terms and conventions.

        Args:
            images: float tensor (N, C, H, W) in [-1, 1] on the 8-bit grid; uint8 tensor (N, C, H, W); uint8
                NumPy array (N, H, W, C) or (N, H, W); or a list of PIL images, which get the training
                preprocessing (convert to the UNet's channels, resize the shorter side to `sample_size`,
                centre crop, u / 127.5 - 1).
            generator (`torch.Generator` or a list of N of them, *optional*): for the noise of x_t.
            batch_size (`int`, *optional*): (image, timestep) pairs per UNet call; defaults to N.
            variance_type (`str`, *optional*): σ_t² of p_θ; defaults to the scheduler's `variance_type`.
            clip_denoised (`bool`, *optional*): clip x̂_0 to [-1, 1] before computing μ_θ; defaults to the
                scheduler's `clip_sample` (p_θ as the sampler draws from it).
            class_labels (`int` or N ints, *optional*): for a class-conditional UNet, the class id of every image
                (or one for all); the null class id K (`len(self.id2label)`) scores the unconditional p(x). Required
                for a conditional UNet, refused for an unconditional one.
            progress (`bool`, defaults to `False`): show a progress bar.

        Returns:
            [`BitsPerDimOutput`] with `total`, `prior`, `decoder` (N,) and `terms` (N, T), in bits/dim.

        Example:

        ```py
        >>> import torch
        >>> from PIL import Image
        >>> from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
        >>> pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=20))
        >>> out = pipe.bits_per_dim([Image.new("L", (8, 8), 255)], generator=torch.manual_seed(0))
        >>> out.total.shape
        torch.Size([1])

        ```
        """
        x0 = self.preprocess(images)
        return bits_per_dim(
            self.unet,
            self.scheduler,
            x0,
            generator=generator,
            batch_size=batch_size,
            clip_denoised=clip_denoised,
            class_labels=class_labels,
            progress=progress,
            variance_type=variance_type,
        )

    def preprocess(self, images: torch.Tensor | np.ndarray | Sequence[PIL.Image.Image]) -> torch.Tensor:
        """Images -> float32 tensor (N, C, H, W) in [-1, 1] on the 8-bit grid, for [`bits_per_dim`].

        Float tensors pass through unchanged (they are checked, not rescaled); uint8 pixels u become
        u / 127.5 - 1; PIL images get the training transform ([`ddpm_ext.data.ImageTransform`] with centre crop
        to the UNet's `sample_size` and its number of channels).
        """
        if isinstance(images, torch.Tensor):
            return normalize(images) if images.dtype == torch.uint8 else images
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8:
                raise ValueError(
                    "A NumPy array of `images` must hold uint8 pixels (N, H, W, C) or (N, H, W), "
                    f"got dtype {images.dtype}; "
                    "pass floats as a torch tensor (N, C, H, W) in [-1, 1]."
                )
            return normalize(torch.from_numpy(images_to_uint8(images)).permute(0, 3, 1, 2))
        if isinstance(images, (list, tuple)) and images and all(isinstance(im, PIL.Image.Image) for im in images):
            # the training transform: 16-bit / float images scaled to 8 bits, resized, centre-cropped, normalized
            size = square_sample_size(self.unet, "PIL `images`")
            transform = ImageTransform(size, center_crop=True, channels=self.unet.config.in_channels)
            return torch.stack([transform(im) for im in images])
        raise ValueError(
            "`images` must be a float tensor (N, C, H, W) in [-1, 1], a uint8 tensor or NumPy array, or a non-empty "
            f"list of PIL images, got {type(images).__name__}."
        )

    def postprocess(self, sample: torch.Tensor, output_type: OutputType = "pil"):
        """(B, C, H, W) in [-1, 1] -> images in [0, 1] as PIL, NumPy (B, H, W, C) or torch (B, C, H, W)."""
        image = to_unit(sample)  # (B, C, H, W) in [0, 1]
        if output_type == "pt":
            return image
        image = tensor_to_numpy(image)  # (B, H, W, C)
        return to_pil(image) if output_type == "pil" else image

    def _check_call(
        self, batch_size, generator, eta, stochastic, output_type, latents=None, timesteps=None, callback=None,
        tensor_inputs=(), use_clipped_model_output=None, image_hw=None,
    ) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
        """Check the call's own arguments once, before any work; return `scheduler.step`'s keyword arguments and
        the callback's tensor names. (The scheduler checks `num_inference_steps` / `timesteps` in `set_timesteps`.)

        The step gets each of the call's sampler options that its signature names; an option the step does not take
        is refused when it asks for something other than its neutral value (`generator` is simply not passed).
        """
        check_int("batch_size", batch_size, 1)
        check_choice("output_type", output_type, OUTPUT_TYPES)
        check_generator(generator, batch_size)
        if latents is not None:
            shape = (batch_size, self.unet.config.in_channels, *self._sample_hw())
            if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape:
                got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"`latents` must be a tensor of shape {shape} (batch_size, C, H, W), got {got}.")
            check_finite("latents", latents, " (x_T must be finite)")
        self._check_memory(batch_size, image_hw)
        if timesteps is not None and "timesteps" not in inspect.signature(self.scheduler.set_timesteps).parameters:
            raise ValueError(
                f"`timesteps` needs a scheduler whose `set_timesteps` accepts custom timesteps; "
                f"{type(self.scheduler).__name__} does not."
            )
        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
            tensor_inputs = callback.tensor_inputs
        bad = [k for k in tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be names from {self._callback_tensor_inputs}, got {bad}."
            )
        check_number("eta", eta, 0, 1)
        if not isinstance(stochastic, bool):
            raise ValueError(f"`stochastic` must be True or False, got {stochastic!r}.")

        # the sampler options of this call: (value, the value that needs no support from the step, what it needs;
        # None: passed when the step takes it, dropped otherwise)
        wanted = {
            "generator": (generator, None, None),
            "eta": (
                float(eta),
                0.0,
                "a DDIM scheduler (`pipe.scheduler = DDIMExtScheduler.from_config(pipe.scheduler.config)`)",
            ),
            "stochastic": (stochastic, True, "a ddpm_ext scheduler (the others always add their noise)"),
        }
        if use_clipped_model_output is None:  # the consistent ε̂ wherever the step offers it
            wanted["use_clipped_model_output"] = (True, None, None)
        elif not isinstance(use_clipped_model_output, bool):
            raise ValueError(
                f"`use_clipped_model_output` must be True, False or None, got {use_clipped_model_output!r}."
            )
        else:
            wanted["use_clipped_model_output"] = (use_clipped_model_output, False, "a DDIM scheduler")
        params = inspect.signature(self.scheduler.step).parameters  # by name, as diffusers' prepare_extra_step_kwargs
        kwargs: dict[str, Any] = {}
        for name, (value, neutral, needs) in wanted.items():
            if name in params:
                kwargs[name] = value
            elif needs is not None and value != neutral:
                raise ValueError(
                    f"`{name}`={value!r} needs {needs}; {type(self.scheduler).__name__}.step has no `{name}`."
                )
        return kwargs, list(tensor_inputs)

    def _check_memory(self, batch_size: int, image_hw: tuple[int, int] | None = None) -> None:
        """Refuse a call whose images and UNet activations would not fit in the device's memory
        ([`ddpm_ext.memory.sampling_bytes`]; both guidance branches go through one batched UNet call)."""
        h, w = image_hw or self._sample_hw()
        needed = sampling_bytes(
            self.unet.config, batch_size, height=h, width=w, element_size=self.unet.dtype.itemsize,
            unet_batch_factor=2 if is_class_conditional(self.unet) else 1,
        )
        check_fits(needed, self._execution_device, f"`batch_size`={batch_size} of {h}x{w} images",
                   "sample in smaller batches (several calls)")

    def _check_result(self, sample: torch.Tensor) -> None:
        """Refuse a chain that ended in NaN or ±inf (an image of only 0 and 255 pixels is no sample), naming the
        likely cause: non-finite UNet weights."""
        if bool(torch.isfinite(sample).all()):
            return
        bad = sorted(name for name, unet in self._unets().items() if not weights_are_finite(unet))
        cause = (f"the weights of {' and '.join(f'`{b}`' for b in bad)} hold NaN or infinite values" if bad
                 else "the chain diverged (a callback's latents, or a scheduler option)")
        raise ValueError(
            f"Sampling produced {int((~torch.isfinite(sample)).sum())} non-finite value(s) of {sample.numel()}: "
            f"{cause}; no images are returned."
        )

    # ----------------------------------------------------------------------------------------------
    # Saving and loading
    # ----------------------------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Save in diffusers' `DDPMPipeline` layout (safetensors) that both diffusers and ddpm_ext load.

        Each file is written atomically (temporary file + rename) and `model_index.json` last, so a full disk or a
        kill never destroys an earlier good pipeline in the folder; other files there are left alone.

        Args:
            save_directory (`str` or `os.PathLike`): the folder to write.
            safe_serialization (`bool`, defaults to `True`): must stay `True`; weights are safetensors only.
            variant (`str`, *optional*): save the weights as `diffusion_pytorch_model.<variant>.safetensors`; load
                them with `from_pretrained(..., variant=...)` (diffusers' convention, e.g. `"fp16"`).
            max_shard_size (`int` or `str`, *optional*): shard the UNet weights above this size (diffusers').
            push_to_hub (`bool`, defaults to `False`): refused; save, then upload with
                [`ddpm_ext.hub.push_pipeline`] (or `huggingface_hub.upload_folder`).

        Example:

        ```py
        >>> import tempfile
        >>> from diffusers import DDPMPipeline
        >>> from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
        >>> folder = tempfile.mkdtemp()
        >>> DDPMExtPipeline(
        ...     unet=build_unet("tiny"), scheduler=DDPMExtScheduler(beta_schedule="cosine")
        ... ).save_pretrained(folder)
        >>> (
        ...     type(DDPMPipeline.from_pretrained(folder).scheduler).__name__,
        ...     type(DDPMExtPipeline.from_pretrained(folder).scheduler).__name__,
        ... )
        ('DDPMScheduler', 'DDPMExtScheduler')

        ```
        """
        if not safe_serialization:
            raise ValueError(
                "`safe_serialization=False` is not supported: ddpm_ext writes safetensors weights only (a pickle "
                "file can run arbitrary code when it is loaded)."
            )
        if push_to_hub:
            raise ValueError("`push_to_hub` is not handled by `save_pretrained`; save, then upload the folder.")
        if kwargs:
            raise ValueError(f"Unexpected arguments {sorted(kwargs)} for `DDPMExtPipeline.save_pretrained`.")
        save_pipeline(self.unet, self.scheduler, save_directory, guide_unet=getattr(self, "guide_unet", None),
                      variant=variant, max_shard_size=max_shard_size)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "DDPMExtPipeline":
        """Load a pipeline saved by ddpm_ext or by diffusers' `DDPMPipeline`, from a folder or a Hub repo id.

        The folder (or the Hub snapshot, fetched with `huggingface_hub.snapshot_download`) is checked first, then
        loaded by diffusers' own `DiffusionPipeline.from_pretrained`, with the same arguments and log lines.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): a local folder or a Hub repo id (`org/name`).
            revision (`str`, *optional*): the Hub revision (branch, tag or commit), `"main"` by default.
            cache_dir, token, local_files_only, force_download, proxies: as in diffusers (for a Hub repo id).
            allow_pickle (`bool`, defaults to `False`): allow loading weights from a pickle (`.bin`) file when the
                checkpoint has no safetensors; only for checkpoints you trust.
            variant (`str`, *optional*): load `diffusion_pytorch_model.<variant>.safetensors` (e.g. `"fp16"`).
            use_safetensors (`bool`, *optional*): `True` requires safetensors; `False` asks for the pickle weights
                (with `allow_pickle=True`).
            dtype (`torch.dtype`, *optional*): dtype of the UNet weights (`torch_dtype` is diffusers' older name).
            low_cpu_mem_usage, device_map, max_memory, offload_folder, offload_state_dict, disable_mmap: passed to
                diffusers.
            unet (`UNet2DModel`, *optional*), scheduler (`SchedulerMixin`, *optional*): use these components
                instead of the saved ones (that component is then not read from disk).
            guide_unet (`UNet2DModel` or `None`, *optional*): the autoguidance guide instead of the saved one;
                `guide_unet=None` loads none (sampling is then the UNet alone). A saved guide (`guide_unet/`, named
                in `model_index.json`) is loaded by default, with the same weight checks as the UNet.

        Returns:
            [`DDPMExtPipeline`]: diffusers' `DDPMScheduler` / `DDIMScheduler` configs are loaded into
            [`DDPMExtScheduler`] / [`DDIMExtScheduler`]; other diffusers schedulers are kept as they are.

        Raises:
            ValueError: before anything is built, for an argument not listed above, a folder that is not a DDPM
                pipeline (a unet class other than `UNet2DModel`, a scheduler class that is not a scheduler),
                weights with missing or unexpected tensors (named), or pickle weights without `allow_pickle=True`.
        """
        components = ("unet", "scheduler", "guide_unet")
        unknown = sorted(set(kwargs) - set(_HUB_ARGUMENTS) - set(_LOADING_ARGUMENTS) - {"allow_pickle", *components})
        if unknown:
            raise ValueError(
                f"Unexpected arguments {unknown} for `DDPMExtPipeline.from_pretrained`; it accepts "
                f"{sorted(_HUB_ARGUMENTS + _LOADING_ARGUMENTS + ('allow_pickle',) + components)}."
            )
        load_guide = "guide_unet" not in kwargs  # guide_unet=None: no guide; a model: that one
        hub = {k: kwargs.pop(k) for k in _HUB_ARGUMENTS if k in kwargs}
        allow_pickle = bool(kwargs.pop("allow_pickle", False))
        overrides = {k: kwargs.pop(k) for k in components if kwargs.get(k) is not None}
        for k in components:
            kwargs.pop(k, None)
        folder = resolve_pipeline_folder(
            pretrained_model_name_or_path,
            allow_pickle=allow_pickle,
            components=tuple(k for k in ("unet", "scheduler") if k not in overrides),
            **hub,
        )
        check_component_classes(folder)
        if "scheduler" not in overrides:
            overrides["scheduler"] = load_scheduler(folder)
            _log_loaded("scheduler", overrides["scheduler"], folder)
        asked_safetensors = kwargs.get("use_safetensors")  # the caller's, before the UNet's check sets it
        if "unet" not in overrides:
            kwargs["use_safetensors"] = check_unet_weights(
                folder, variant=kwargs.get("variant"), use_safetensors=kwargs.get("use_safetensors"),
                allow_pickle=allow_pickle,
            )
        if load_guide and saved_guide(folder):
            safe = check_unet_weights(folder, variant=kwargs.get("variant"), use_safetensors=asked_safetensors,
                                      allow_pickle=allow_pickle, component=GUIDE_DIR)
            dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
            overrides["guide_unet"] = UNet2DModel.from_pretrained(
                folder, subfolder=GUIDE_DIR, variant=kwargs.get("variant"), use_safetensors=safe,
                **({"torch_dtype": dtype} if dtype is not None else {}))
            _log_loaded(GUIDE_DIR, overrides["guide_unet"], folder)
        pipe = super().from_pretrained(folder, **overrides, **kwargs)
        uninitialised = [name for name, p in pipe.unet.state_dict().items() if p.device.type == "meta"]
        if uninitialised:  # a pickle file with missing tensors (safetensors ones are refused before loading)
            raise ValueError(f"The weights in {folder / 'unet'} lack the tensor(s) {uninitialised[:10]}.")
        pipe.register_to_config(_name_or_path=os.fspath(pretrained_model_name_or_path))
        return pipe



class DDPMExtCustomPipeline(DDPMExtPipeline):
    r"""[`DDPMExtPipeline`] as diffusers' own loader builds it from a saved folder or Hub repo, through the
    custom-pipeline file `pipeline.py` that ddpm_ext saves beside `model_index.json`:

    ```py
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(folder_or_repo_id, custom_pipeline="pipeline", trust_remote_code=True)
    ```

    diffusers loads the components that `model_index.json` lists (the UNet, and diffusers' `DDPMScheduler` /
    `DDIMScheduler`) and calls this class; it then does what [`DDPMExtPipeline.from_pretrained`] does on top: the
    scheduler becomes ddpm_ext's with every saved setting, and a saved autoguidance guide (`guide_unet/`, which
    diffusers neither lists nor downloads) is loaded from the UNet's folder, or for a Hub repo fetched from the same
    commit. Samples equal [`DDPMExtPipeline.from_pretrained`]'s. Built directly, it is a plain [`DDPMExtPipeline`].
    The guide is read without a `variant` (diffusers does not pass the one it loaded); a guide saved only as a
    variant loads through [`DDPMExtPipeline.from_pretrained`] with `variant=`.
    """

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, guide_unet: UNet2DModel | None = None):
        scheduler = as_ext_scheduler(scheduler)
        source = getattr(unet.config, "_name_or_path", None)  # diffusers' loader: <pipeline folder>/unet
        if guide_unet is None and source and os.path.isdir(source):
            folder = folder_with_guide(Path(source).parent)
            if (folder / GUIDE_DIR / "config.json").is_file():
                safe = check_unet_weights(folder, variant=None, use_safetensors=None, allow_pickle=False,
                                          component=GUIDE_DIR)
                guide_unet = UNet2DModel.from_pretrained(
                    folder, subfolder=GUIDE_DIR, use_safetensors=safe, torch_dtype=unet.dtype
                ).to(unet.device)
        super().__init__(unet=unet, scheduler=scheduler, guide_unet=guide_unet)

def _log_loaded(name: str, component: Any, folder: Path) -> None:
    """diffusers' log line for a component it loads itself, for one that ddpm_ext loaded and passed in."""
    diffusers_logging.get_logger("diffusers.pipelines.pipeline_utils").info(
        f"Loaded {name} as {type(component).__name__} from `{name}` subfolder of {folder}."
    )


# from_pretrained's arguments: for fetching a Hub repo, and passed on to diffusers' loading
_HUB_ARGUMENTS = ("revision", "cache_dir", "token", "local_files_only", "force_download", "proxies")
_LOADING_ARGUMENTS = (
    "variant", "use_safetensors", "dtype", "torch_dtype", "low_cpu_mem_usage", "device_map", "max_memory",
    "offload_folder", "offload_state_dict", "disable_mmap",
)  # fmt: skip
