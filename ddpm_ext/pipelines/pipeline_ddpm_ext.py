"""`DDPMExtPipeline`: unconditional DDPM / DDIM sampling from one trained UNet, with an opt-in fast path.

Saving and loading (diffusers' `DDPMPipeline` layout, which vanilla diffusers loads) live in
[`checkpoint_io`](checkpoint_io.py).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ..images import images_to_uint8
from ..likelihood import BitsPerDimOutput, bits_per_dim
from ..schedulers.scheduling_ddim_ext import DDIMExtScheduler
from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler
from .guidance import class_names, is_class_conditional, prepare_guidance
from .checkpoint_io import check_components, load_scheduler, load_unet, resolve_pipeline_folder, save_pipeline, square_sample_size

OutputType = Literal["pil", "np", "pt"]
OUTPUT_TYPES = ("pil", "np", "pt")
AUTOCAST_DTYPES = (None, torch.bfloat16, torch.float16)
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")



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
    r"""Unconditional image generation with DDPM ancestral sampling or DDIM, from one trained UNet.

    Args:
        unet ([`UNet2DModel`]): ε_θ(x_t, t) (or x_0 / v, as the scheduler's `prediction_type` says).
        scheduler ([`DDPMExtScheduler`], [`DDIMExtScheduler`] or any diffusers scheduler): the sampler.

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

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin):
        super().__init__()
        check_components(unet, scheduler)
        self.register_modules(unet=unet, scheduler=scheduler)
        self._fast_path: dict[str, Any] | None = None
        self._compiled_unet: Callable[..., Any] | None = None

    # ----------------------------------------------------------------------------------------------
    # Fast path (opt-in; see the README's "Speed" section for the measured effect of every option)
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
            compile (`bool`, defaults to `False`): `torch.compile` the UNet (compiled at the first call, which
                takes from seconds on a GPU to minutes on a CPU; later calls reuse it).
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
        for name, value in (("channels_last", channels_last), ("compile", compile)):
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be True or False, got {value!r}.")
        if autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"`autocast_dtype` must be one of {list(AUTOCAST_DTYPES)}, got {autocast_dtype!r}.")
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"`compile_mode` must be one of {list(COMPILE_MODES)}, got {compile_mode!r}.")
        if compile_mode is not None and not compile:
            raise ValueError(f"`compile_mode`={compile_mode!r} needs `compile=True`.")
        self.disable_fast_path()
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if compile:
            self._compiled_unet = torch.compile(self.unet, mode=compile_mode)
        self._fast_path = {
            "channels_last": channels_last,
            "autocast_dtype": autocast_dtype,
            "compile": compile,
            "compile_mode": compile_mode,
        }
        return self

    def disable_fast_path(self) -> "DDPMExtPipeline":
        """Back to the default path: contiguous weights, float32 UNet calls, no compiled UNet."""
        if self._fast_path is not None and self._fast_path["channels_last"]:
            self.unet.to(memory_format=torch.contiguous_format)
        self._fast_path, self._compiled_unet = None, None
        return self

    @property
    def id2label(self) -> dict[int, str] | None:
        """`{class id: name}` of a class-conditional UNet (the null class, id K, is not listed); `None` when
        the UNet is unconditional."""
        return dict(enumerate(class_names(self.unet))) if is_class_conditional(self.unet) else None

    @property
    def fast_path(self) -> dict[str, Any] | None:
        """The options given to [`enable_fast_path`], or `None` when sampling takes the default path."""
        return None if self._fast_path is None else dict(self._fast_path)

    def _unet_call(self, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """`(x_t, t, **labels) -> model output` in x_t's dtype, through the fast path when it is enabled
        (`labels`: `class_labels=` for a class-conditional UNet, see `guidance.py`)."""
        fast = self._fast_path
        if fast is None:
            return lambda x, t, **labels: self.unet(x, t, **labels).sample
        unet = self._compiled_unet if self._compiled_unet is not None else self.unet  # (no truth test: len())
        dtype = fast["autocast_dtype"]
        if dtype is None:
            return lambda x, t, **labels: unet(x, t, **labels).sample

        def call(x: torch.Tensor, t: torch.Tensor, **labels: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=dtype):
                out = unet(x, t, **labels).sample
            return out.to(x.dtype)

        return call

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
        callback_on_step_end: Callable[[Any, int, int, dict[str, torch.Tensor]], dict | None] | None = None,
        class_labels: Sequence[int | str] | torch.Tensor | int | str | None = None,
        guidance_scale: float = 1.0,
    ) -> DDPMExtPipelineOutput | tuple:
        """Sample images: x_T ~ N(0, I), then one scheduler step per timestep down to x_0.

        Args:
            batch_size (`int`, defaults to 1): the number of images.
            generator (`torch.Generator` or a list of `batch_size` of them, *optional*): for reproducible samples.
            num_inference_steps (`int`, defaults to 1000): denoising steps, 1..`num_train_timesteps`; fewer than T
                respaces the chain.
            eta (`float`, defaults to 0.0): DDIM's η in [0, 1] (needs a DDIM scheduler); 0 is deterministic.
            stochastic (`bool`, defaults to `True`): add the noise σ_t z at each step; `False` samples "without z"
                (needs a ddpm_ext scheduler).
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (B, H, W, C) or `"pt"` (B, C, H, W).
            return_dict (`bool`, defaults to `True`): return a [`DDPMExtPipelineOutput`] or a tuple.
            return_trajectory (`bool`, defaults to `False`): also return x_t and x̂_0 of every step (on the CPU).
            callback_on_step_end (`Callable`, *optional*): called as `callback(pipe, i, t, {"sample": x_prev,
                "pred_original_sample": x̂_0})` after every step; a returned dict may replace `"sample"`.
            class_labels (`list[int | str]`, *optional*): for a class-conditional UNet, one class id or name per
                image (a single one is repeated); see [`id2label`]. Required unless `guidance_scale=0`.
            guidance_scale (`float`, defaults to 1.0): classifier-free guidance w >= 0: ε̂ = ε(x, ∅) + w (ε(x, y) −
                ε(x, ∅)); 1 samples p(x | y), 0 samples p(x) (the null class), > 1 trades diversity for fidelity to
                the class. Both branches go through one batched UNet call per step.

        Returns:
            [`DDPMExtPipelineOutput`] or `(images,)`.
        """
        step_kwargs = self._check_call(batch_size, generator, num_inference_steps, eta, stochastic, output_type)
        guidance = prepare_guidance(self.unet, class_labels, guidance_scale, batch_size)
        unet, scheduler = self.unet, self.scheduler
        size = unet.config.sample_size
        shape = (batch_size, unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
        device = self._execution_device

        # 1. x_T ~ N(0, I) (drawn exactly as diffusers' DDPMPipeline draws it)
        if device.type == "mps":
            image = randn_tensor(shape, generator=generator, dtype=unet.dtype).to(device)
        else:
            image = randn_tensor(shape, generator=generator, device=device, dtype=unet.dtype)
        scheduler.set_timesteps(num_inference_steps)
        trajectory, x0s = ([image.cpu()], []) if return_trajectory else (None, None)
        if self._fast_path is not None and self._fast_path["channels_last"]:
            image = image.contiguous(memory_format=torch.channels_last)
        model = self._unet_call(device)
        if guidance is not None:
            model = guidance.wrap(model)
        # Timesteps go to the device once; ddpm_ext's schedulers take the host-side int (no sync per step),
        # other schedulers get their own timestep tensors as before.
        host_steps = scheduler.timesteps.tolist()
        device_steps = scheduler.timesteps.to(device)
        step_steps = host_steps if isinstance(scheduler, (DDPMExtScheduler, DDIMExtScheduler)) else scheduler.timesteps

        # 2. x_t -> x_{t-1} for every kept timestep
        for i in self.progress_bar(range(len(host_steps))):
            model_output = model(image, device_steps[i])
            out = scheduler.step(model_output, step_steps[i], image, generator=generator, **step_kwargs)
            image = out.prev_sample
            if callback_on_step_end is not None:
                changed = callback_on_step_end(
                    self, i, host_steps[i], {"sample": image, "pred_original_sample": out.pred_original_sample}
                )
                if changed and "sample" in changed:
                    image = changed["sample"]
            if return_trajectory:
                trajectory.append(image.cpu())
                x0s.append(out.pred_original_sample.cpu())

        # 3. [-1, 1] -> [0, 1] -> the requested type
        images = self.postprocess(image, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return DDPMExtPipelineOutput(
            images=images,
            trajectory=trajectory,
            pred_original_samples=x0s,
            timesteps=scheduler.timesteps.tolist() if return_trajectory else None,
        )

    @torch.no_grad()
    def bits_per_dim(
        self,
        images: torch.Tensor | np.ndarray | Sequence[PIL.Image.Image],
        *,
        generator: torch.Generator | list[torch.Generator] | None = None,
        batch_size: int | None = None,
        variance_type: str | None = None,
        clip_denoised: bool | None = None,
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
            progress=progress,
            variance_type=variance_type,
        )

    def preprocess(self, images: torch.Tensor | np.ndarray | Sequence[PIL.Image.Image]) -> torch.Tensor:
        """Images -> float32 tensor (N, C, H, W) in [-1, 1] on the 8-bit grid, for [`bits_per_dim`].

        Float tensors pass through unchanged (they are checked, not rescaled); uint8 pixels u become
        u / 127.5 - 1; PIL images get the training transform ([`ddpm_ext.data.ImageTransform`] with centre crop
        to the UNet's `sample_size` and its number of channels).
        """
        from ..data import ImageTransform  # imports `datasets`; only needed here
        from ..images import normalize

        if isinstance(images, torch.Tensor):
            return normalize(images) if images.dtype == torch.uint8 else images
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8:
                raise ValueError(
                    f"A NumPy array of `images` must hold uint8 pixels (N, H, W, C) or (N, H, W), got dtype {images.dtype}; "
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
        from ..images import tensor_to_numpy, to_pil, to_unit

        image = to_unit(sample)  # (B, C, H, W) in [0, 1]
        if output_type == "pt":
            return image
        image = tensor_to_numpy(image)  # (B, H, W, C)
        return to_pil(image) if output_type == "pil" else image

    def _check_call(self, batch_size, generator, num_inference_steps, eta, stochastic, output_type) -> dict:
        """Validate the call's arguments; return the extra keyword arguments for `scheduler.step`."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
        T = self.scheduler.config.num_train_timesteps
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= T:
            raise ValueError(
                f"`num_inference_steps` must be an integer in [1, {T}] (the scheduler's `num_train_timesteps`), "
                f"got {num_inference_steps!r}."
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {list(OUTPUT_TYPES)}, got {output_type!r}.")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"`generator` is a list of {len(generator)} generators but `batch_size` is {batch_size}.")
        params = inspect.signature(self.scheduler.step).parameters
        kwargs: dict[str, Any] = {}
        if not (isinstance(eta, (int, float)) and 0.0 <= eta <= 1.0):
            raise ValueError(f"`eta` must be a number in [0, 1], got {eta!r}.")
        if "eta" in params:
            kwargs["eta"] = float(eta)
        elif eta != 0.0:
            raise ValueError(
                f"`eta`={eta} needs a DDIM scheduler; {type(self.scheduler).__name__} has no η. Swap it with "
                "`pipe.scheduler = DDIMExtScheduler.from_config(pipe.scheduler.config)`."
            )
        if not stochastic:
            if "stochastic" not in params:
                raise ValueError(
                    f"`stochastic=False` needs a ddpm_ext scheduler; {type(self.scheduler).__name__} always adds noise."
                )
            kwargs["stochastic"] = False
        return kwargs

    # ----------------------------------------------------------------------------------------------
    # Saving and loading
    # ----------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Save in diffusers' `DDPMPipeline` layout (safetensors) that both diffusers and ddpm_ext load.

        Args:
            save_directory (`str` or `os.PathLike`): the folder to write.
            safe_serialization (`bool`, defaults to `True`): must stay `True`; weights are safetensors only.

        To upload, save to a folder and use [`ddpm_ext.hub.push_pipeline`] (or `huggingface_hub.upload_folder`).
        """
        if not safe_serialization:
            raise ValueError("`safe_serialization=False` is not supported: ddpm_ext writes safetensors weights only.")
        if kwargs.get("push_to_hub"):
            raise ValueError("`push_to_hub` is not handled by `save_pretrained`; save, then upload the folder.")
        save_pipeline(self.unet, self.scheduler, save_directory)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        allow_pickle: bool = False,
        torch_dtype: torch.dtype | None = None,
        scheduler: SchedulerMixin | None = None,
        **kwargs: Any,
    ) -> "DDPMExtPipeline":
        """Load a pipeline saved by ddpm_ext or by diffusers' `DDPMPipeline`, from a folder or a Hub repo id.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): a local folder or a Hub repo id (`org/name`).
            revision (`str`, *optional*): the Hub revision (branch, tag or commit), `"main"` by default.
            cache_dir, token, local_files_only: passed to `huggingface_hub.snapshot_download`.
            allow_pickle (`bool`, defaults to `False`): allow loading weights from a pickle (`.bin`) file when the
                checkpoint has no safetensors; only for checkpoints you trust.
            torch_dtype (`torch.dtype`, *optional*): dtype of the UNet weights.
            scheduler (`SchedulerMixin`, *optional*): use this scheduler instead of the saved one.

        Returns:
            [`DDPMExtPipeline`]: diffusers' `DDPMScheduler` / `DDIMScheduler` configs are loaded into
            [`DDPMExtScheduler`] / [`DDIMExtScheduler`]; other diffusers schedulers are kept as they are.
        """
        if kwargs:
            raise ValueError(f"Unexpected arguments {sorted(kwargs)} for `DDPMExtPipeline.from_pretrained`.")
        folder = resolve_pipeline_folder(
            pretrained_model_name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            allow_pickle=allow_pickle,
        )
        unet = load_unet(folder, allow_pickle=allow_pickle, torch_dtype=torch_dtype)
        if scheduler is None:
            scheduler = load_scheduler(folder)
        return cls(unet=unet, scheduler=scheduler)
