"""`DDPMExtInpaintPipeline`: inpainting with any trained unconditional DDPM, by RePaint (Lugmayr et al. 2022).

Legend (code timesteps 0..T-1 as in diffusers; "level" ℓ = position on the RePaint schedule, see below):

    x0, known           the input image x_0 in [-1, 1] and its kept pixels (mask 0)
    keep                (B, 1, H, W) bool, True where the input is kept
    repaint_schedule    RePaint's `get_schedule_jump`: the levels the sample visits, ending at -1 (= x_0)
    grid                `scheduler.timesteps` after `set_timesteps(S)`: level ℓ is timestep grid[S - 1 - ℓ]

Algorithm 1 of RePaint, on the scheduler's (possibly respaced) chain, for one step x_t -> x_s (s the next kept
timestep, x_0 after the last):

    x_s^known   ~ q(x_s | x_0) = N(√ᾱ_s x_0, (1 - ᾱ_s) I)        (`scheduler.add_noise`; x_0 itself when s = -1)
    x_s^unknown ~ p_θ(x_s | x_t)                                  (`scheduler.step`: DDPM with any σ², or DDIM)
    x_s         = keep ? x_s^known : x_s^unknown

and for a resampling jump x_s -> x_t (one level up the same chain), the forward process of the respaced chain
(improved DDPM's respacing, Nichol & Dhariwal 2021, §4 and `respace.py`: β'_t = 1 - ᾱ_t / ᾱ_s):

    x_t ~ q(x_t | x_s) = N(√(1 - β'_t) x_s, β'_t I),  1 - β'_t = ᾱ_t / ᾱ_s.

With all T steps this is RePaint's own `undo` (β'_t = β_t); respaced, it is the exact q(x_t | x_s) of the full
chain (the product of the skipped α's), which diffusers' `RePaintScheduler.undo_step` approximates by a loop over
`betas[t + i]` that only matches "leading" spacing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal, Sequence, get_args

import numpy as np
import PIL.Image
import torch
from PIL import ImageDraw

from ..images import convert_image, normalize, to_unit
from ..schedulers.scheduling_common import ScheduleMixin, draw_noise
from ..validation import check_choice, check_int, check_seed
from .chain_start import draw_initial_noise, resolve_timestep_spacing, set_sampling_timesteps
from .guidance import prepare_guidance
from .pipeline_ddpm_ext import DDPMExtPipeline, DDPMExtPipelineOutput, OutputType

__all__ = [
    "DDPMExtInpaintPipeline",
    "DDPMExtInpaintPipelineOutput",
    "MASK_THRESHOLD",
    "MASK_KINDS",
    "draw_initial_noise",
    "forward_jump",
    "make_mask",
    "prepare_mask",
    "repaint_schedule",
]

MaskKind = Literal["left_half", "top_half", "centre_box", "strokes"]
MASK_KINDS: tuple[str, ...] = get_args(MaskKind)
MASK_THRESHOLD = 0.5  # a mask value >= this (in [0, 1]) marks a pixel to fill, as diffusers' inpainting pipelines
_GRAY_PIL_MODES = ("1", "L", "I", "I;16", "F")


def repaint_schedule(num_steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """The levels RePaint's sampler visits (its `get_schedule_jump` with default `n_sample` and no jump2/jump3).

    Level `num_steps - 1` is x_T, level -1 is x_0. A step to a lower level is one denoising step; a step to a
    higher level is one forward ("resampling") jump. After reaching level j (j = 0, `jump_length`,
    2 `jump_length`, ... < `num_steps - jump_length`) the sampler jumps `jump_length` levels back up, and does so
    `jump_n_sample - 1` times in all at each such j; the denoising steps in all are
    `num_steps + (jump_n_sample - 1) * jump_length * len(js)`.

    Args:
        num_steps (`int`): S, the number of timesteps of the (respaced) chain, >= 1.
        jump_length (`int`, defaults to 10): RePaint's j, levels per jump, >= 1.
        jump_n_sample (`int`, defaults to 10): RePaint's r, how often each stretch is sampled, >= 1 (1: no jumps).

    Returns:
        `list[int]`: the levels, from `num_steps - 1` down to -1, consecutive entries differing by one.

    Example:

    ```py
    >>> from ddpm_ext.pipelines.pipeline_ddpm_ext_inpaint import repaint_schedule
    >>> repaint_schedule(5, jump_length=2, jump_n_sample=2)
    [4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]

    ```
    """
    num_steps = check_int("num_inference_steps", num_steps, 1)
    jump_length = check_int("jump_length", jump_length, 1)
    jump_n_sample = check_int("jump_n_sample", jump_n_sample, 1)
    jumps = {j: jump_n_sample - 1 for j in range(0, num_steps - jump_length, jump_length)}
    levels, t = [], num_steps
    while t >= 1:
        t -= 1
        levels.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                levels.append(t)
    levels.append(-1)
    return levels


def forward_jump(
    sample: torch.Tensor, alpha_cumprod_from: float, alpha_cumprod_to: float, noise: torch.Tensor
) -> torch.Tensor:
    """One resampling jump up a (respaced) chain: a sample of q(x_s | x_t) = N(√(1 - β'_s) x_t, β'_s I).

    β'_s = 1 - ᾱ_s / ᾱ_t is the β of the respaced chain (improved DDPM's respacing, Nichol & Dhariwal 2021 §4:
    the kept ᾱ values define the new β's), so x_s given x_0 has exactly q(x_s | x_0) of the trained chain. With
    every timestep kept it is RePaint's one-step `undo` (β'_s = β_s).

    Args:
        sample (`torch.Tensor`): x_t, (B, C, H, W).
        alpha_cumprod_from (`float`): ᾱ_t (1 for x_0).
        alpha_cumprod_to (`float`): ᾱ_s, s > t, so ᾱ_s < ᾱ_t.
        noise (`torch.Tensor`): z ~ N(0, I), like `sample`.
    """
    keep = alpha_cumprod_to / alpha_cumprod_from  # 1 - β'_s, in float64
    return keep**0.5 * sample + (1.0 - keep) ** 0.5 * noise


def make_mask(kind: MaskKind, height: int, width: int, *, seed: int = 0) -> torch.Tensor:
    """A standard fill mask, (1, 1, H, W) float: 1 = fill, 0 = keep (the pipeline's convention).

    - `"left_half"` / `"top_half"`: the left columns `[0, W // 2)` / the top rows `[0, H // 2)`;
    - `"centre_box"`: the central box of half the height and half the width (rows `[H // 4, H // 4 + H // 2)`);
    - `"strokes"`: four random brush strokes (lines 1/8 of the shorter side wide, at least 2 px), from `seed`.

    Example:

    ```py
    >>> from ddpm_ext.pipelines.pipeline_ddpm_ext_inpaint import make_mask
    >>> make_mask("left_half", 2, 4).tolist()
    [[[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]]]
    >>> int(make_mask("centre_box", 8, 8).sum())
    16

    ```
    """
    check_choice("kind", kind, MASK_KINDS)
    height, width = check_int("height", height, 1), check_int("width", width, 1)
    mask = torch.zeros(1, 1, height, width)
    if kind == "left_half":
        mask[..., : width // 2] = 1
    elif kind == "top_half":
        mask[..., : height // 2, :] = 1
    elif kind == "centre_box":
        mask[..., height // 4 : height // 4 + height // 2, width // 4 : width // 4 + width // 2] = 1
    else:
        rng = np.random.default_rng(check_seed("seed", seed))
        canvas = PIL.Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for _ in range(4):
            points = [(float(rng.uniform(0, width)), float(rng.uniform(0, height))) for _ in range(3)]
            draw.line(points, fill=255, width=max(2, min(height, width) // 8), joint="curve")
        mask[0, 0] = torch.from_numpy(np.asarray(canvas) >= 128).float()
    return mask


def _downsampling_factor(unet: Any) -> int:
    """2 ** (number of down blocks that halve the resolution): H and W must be multiples of it."""
    blocks = getattr(unet, "down_blocks", [])
    return 2 ** sum(1 for b in blocks if getattr(b, "downsamplers", None))


def _pil_to_array(im: PIL.Image.Image, name: str) -> np.ndarray:
    """A PIL image -> uint8 (H, W, C): grayscale modes as one channel, everything else as RGB (alpha dropped)."""
    if not isinstance(im, PIL.Image.Image):
        raise ValueError(f"A list of `{name}` must hold PIL images only, got {type(im).__name__}.")
    arr = np.asarray(im.convert("L" if im.mode in _GRAY_PIL_MODES else "RGB"), dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def prepare_mask(
    mask_image: torch.Tensor | np.ndarray | PIL.Image.Image | Sequence[PIL.Image.Image],
) -> tuple[torch.Tensor, bool]:
    """Any mask -> `(fill, binary)`: `fill` a bool tensor (B, 1, H, W), True where a pixel is to be inpainted.

    Convention (diffusers' inpainting pipelines, e.g. `StableDiffusionInpaintPipeline`): white / 1 = fill,
    black / 0 = keep. (diffusers' deprecated `RePaintPipeline` uses the opposite.)

    Values are brought to [0, 1] (uint8 / 255, bool as 0 / 1, floats as given and required to lie in [0, 1]),
    channels are reduced by their maximum (a pixel is filled when any channel says so), and the result is
    thresholded at 0.5 (>= 0.5: fill). `binary` says whether the mask was already 0 / 1 (before thresholding).

    Accepted layouts (the package's image conventions, see `ddpm_ext.images`): a tensor (B, C, H, W), (B, H, W) or
    (H, W); a NumPy array (B, H, W, C), (B, H, W) or (H, W); a PIL image or a list of them (grayscale modes as
    they are, anything else as RGB with alpha dropped).
    """
    if isinstance(mask_image, PIL.Image.Image):
        mask_image = [mask_image]
    if isinstance(mask_image, (list, tuple)):
        if not mask_image:
            raise ValueError("`mask_image` is an empty list.")
        arrays = [_pil_to_array(m, "mask_image") for m in mask_image]
        if len({a.shape[:2] for a in arrays}) > 1:
            raise ValueError(
                f"All `mask_image` PIL images must have one size, got {sorted({m.size for m in mask_image})}."
            )
        mask_image = np.stack([a.max(axis=-1) for a in arrays])  # (B, H, W) uint8
    if isinstance(mask_image, np.ndarray):
        arr = mask_image
        if arr.ndim == 4:
            arr = arr.max(axis=-1)  # (B, H, W, C) -> (B, H, W)
        values = torch.from_numpy(np.ascontiguousarray(arr))
        values = values[None] if values.ndim == 2 else values
        values = values[:, None] if values.ndim == 3 else values
        if values.ndim != 4:
            raise ValueError(
                f"A NumPy `mask_image` must be (B, H, W, C), (B, H, W) or (H, W), got shape {mask_image.shape}."
            )
    elif isinstance(mask_image, torch.Tensor):
        values = mask_image.detach()
        if values.ndim == 2:
            values = values[None, None]
        elif values.ndim == 3:
            values = values[:, None]
        if values.ndim != 4:
            raise ValueError(
                "A tensor `mask_image` must be (B, C, H, W), (B, H, W) or (H, W), "
                f"got shape {tuple(mask_image.shape)}."
            )
        values = values.amax(dim=1, keepdim=True)  # (B, C, H, W) -> (B, 1, H, W)
    else:
        raise ValueError(
            "`mask_image` must be a PIL image (or a list of them), a NumPy array or a torch tensor, "
            f"got {type(mask_image).__name__}."
        )
    if values.numel() == 0:
        raise ValueError(f"`mask_image` is empty (shape {tuple(values.shape)}).")
    if values.dtype == torch.bool:
        values = values.float()
    elif values.dtype == torch.uint8:
        values = to_unit(normalize(values))  # uint8 -> [0, 1]
    elif values.is_floating_point():
        values = values.float()
        low, high = float(values.min()), float(values.max())
        if not (low >= 0.0 and high <= 1.0):  # also refuses NaN
            raise ValueError(f"A float `mask_image` must lie in [0, 1] (1 = fill), got values in [{low}, {high}].")
    else:
        raise ValueError(f"`mask_image` must hold bool, uint8 or float values, got dtype {values.dtype}.")
    binary = bool(((values == 0) | (values == 1)).all())
    return values >= MASK_THRESHOLD, binary


@dataclass
class DDPMExtInpaintPipelineOutput(DDPMExtPipelineOutput):
    """Output of [`DDPMExtInpaintPipeline`].

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the completions, in [0, 1] for "np" / "pt";
            kept pixels are the input's.
        trajectory (`list[torch.Tensor]`, *optional*): x at every visited level of the RePaint schedule (jumps
            included), from x_T to the final x_0, each (B, C, H, W) in [-1, 1] on the CPU.
        pred_original_samples (`list[torch.Tensor]`, *optional*): x̂_0 predicted at every denoising step.
        timesteps (`list[int]`, *optional*): the timestep of every `trajectory` entry (-1 for x_0).
        fill_mask (`torch.Tensor`): (B, 1, H, W) bool, True where pixels were inpainted (the thresholded mask).
    """

    fill_mask: torch.Tensor | None = None


class DDPMExtInpaintPipeline(DDPMExtPipeline):
    r"""Inpainting with a trained unconditional DDPM, no retraining: RePaint (Lugmayr et al. 2022).

    At every step the kept region comes from the forward process q(x_{t-1} | x_0) of the input and the region to
    fill from the model; resampling jumps (`jump_length`, `jump_n_sample`) go back up the chain to harmonise the
    two. The sampler is the pipeline's scheduler: [`DDPMExtScheduler`] with any σ² (learned variance included) or
    [`DDIMExtScheduler`], respaced to `num_inference_steps`. Shares loading, saving, the fast path and the output
    conversion with [`DDPMExtPipeline`]; make one from a sampling pipeline with `from_pipe` (same UNet and
    scheduler objects, no copy).

    Args:
        unet ([`UNet2DModel`]): ε_θ(x_t, t) (or x_0 / v, as the scheduler's `prediction_type` says).
        scheduler ([`DDPMExtScheduler`] or [`DDIMExtScheduler`]): the sampler.

    Example:

    ```py
    >>> import torch
    >>> from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
    >>> from ddpm_ext.pipelines.pipeline_ddpm_ext_inpaint import DDPMExtInpaintPipeline
    >>> pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=20))
    >>> inpaint = DDPMExtInpaintPipeline.from_pipe(pipe)
    >>> inpaint.unet is pipe.unet
    True
    >>> image = torch.rand(1, 1, 8, 8) * 2 - 1              # [-1, 1]
    >>> mask = torch.zeros(1, 1, 8, 8); mask[..., :, :4] = 1  # 1 = fill: the left half
    >>> out = inpaint(image, mask, num_inference_steps=10, jump_length=3, jump_n_sample=2,
    ...               generator=torch.manual_seed(0), output_type="pt")
    >>> bool(torch.equal(out.images[..., 4:], image[..., 4:] / 2 + 0.5))
    True

    ```
    """

    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor | np.ndarray | PIL.Image.Image | Sequence[PIL.Image.Image],
        mask_image: torch.Tensor | np.ndarray | PIL.Image.Image | Sequence[PIL.Image.Image],
        num_inference_steps: int = 250,
        jump_length: int = 10,
        jump_n_sample: int = 10,
        eta: float = 0.0,
        stochastic: bool = True,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
        return_trajectory: bool = False,
        class_labels: Sequence[int | str] | torch.Tensor | int | str | None = None,
        guidance_scale: float | None = None,
        use_clipped_model_output: bool | None = None,
        timestep_spacing: str | None = None,
    ) -> DDPMExtInpaintPipelineOutput | tuple:
        """Fill the masked pixels of `image` with samples of the model that agree with the kept pixels.

        Args:
            image: the images to complete: a float tensor (B, C, H, W) in [-1, 1]; a uint8 tensor (B, C, H, W); a
                uint8 NumPy array (B, H, W, C) or (B, H, W); a PIL image or a list of them (converted to the UNet's
                channels as in training, transparency on white). Nothing is resized or cropped (the kept pixels
                must come back unchanged): C must be the UNet's `in_channels`, and H and W multiples of the UNet's
                downsampling factor (its `sample_size` is the size it was trained at).
            mask_image: which pixels to fill, **white / 1 = fill, black / 0 = keep** (diffusers' inpainting
                convention). One mask for every image or one per image, of the image's H x W; any number of
                channels, reduced by their maximum; not binary: thresholded at 0.5 (see [`prepare_mask`]).
            num_inference_steps (`int`, defaults to 250): steps of the (respaced) chain, 1..T (RePaint uses 250).
            jump_length (`int`, defaults to 10): RePaint's j, timesteps per resampling jump, >= 1.
            jump_n_sample (`int`, defaults to 10): RePaint's r, times each stretch of the chain is sampled, >= 1;
                1 is no resampling. The UNet runs about `jump_n_sample` times `num_inference_steps` times.
            eta (`float`, defaults to 0.0): DDIM's η in [0, 1] (needs a DDIM scheduler), as in [`DDPMExtPipeline`].
            stochastic (`bool`, defaults to `True`): add the noise σ_t z in the model's steps; `False` takes the mean
                (the kept region and the jumps stay samples of q).
            generator (`torch.Generator` or a list of B of them, *optional*): for x_T, the model's steps, the
                kept region's noise and the jumps. The kept region's noise is drawn only for images that keep a
                pixel: with one generator per image, an image whose mask keeps nothing gets exactly the numbers
                [`DDPMExtPipeline`] draws for it (with one shared generator, when no image keeps a pixel), so an
                all-fill mask with `jump_n_sample=1` reproduces plain sampling.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (B, H, W, C) or `"pt"` (B, C, H, W).
            return_dict (`bool`, defaults to `True`): return a [`DDPMExtInpaintPipelineOutput`] or a tuple.
            return_trajectory (`bool`, defaults to `False`): also return x at every level and every x̂_0 (CPU).
            class_labels, guidance_scale: for a class-conditional UNet, the class of each completion and the
                classifier-free guidance w, exactly as in [`DDPMExtPipeline`] (one batched UNet call per step).
            use_clipped_model_output, timestep_spacing: as in [`DDPMExtPipeline`] (defaults: the consistent DDIM ε̂,
                and `"trailing"` for a config that says diffusers' `"leading"`); the resampling jumps follow the chain
                the spacing gives.

        Returns:
            [`DDPMExtInpaintPipelineOutput`] or `(images,)`. The kept pixels of the output are the input's: the
            last step lands on x_0 itself there (pasted, not generated), so 8-bit inputs come back bit-exact as
            PIL / uint8, and float inputs as `x / 2 + 0.5` in [0, 1].

        Raises:
            `ValueError`: before any sampling, for images and masks of different sizes or counts, images of the
                wrong channels or size, values out of range, `jump_length` or `jump_n_sample` < 1, a bad `eta`,
                and the other arguments [`DDPMExtPipeline`] checks (the generator's type, a batch that cannot fit
                in memory). An all-keep or all-fill mask works, with a `UserWarning`. After the chain, a result
                holding NaN or ±inf (non-finite weights) raises a `ValueError` instead of returning images.
        """
        x0, fill = self._prepare_inputs(image, mask_image)
        batch_size = x0.shape[0]
        step_kwargs, _ = self._check_call(
            batch_size, generator, eta, stochastic, output_type, use_clipped_model_output=use_clipped_model_output,
            image_hw=tuple(x0.shape[-2:]),
        )
        spacing = resolve_timestep_spacing(self.scheduler, timestep_spacing)
        guidance = prepare_guidance(self.unet, class_labels, guidance_scale, batch_size)  # None: unconditional
        levels = repaint_schedule(num_inference_steps, jump_length, jump_n_sample)
        if not isinstance(self.scheduler, ScheduleMixin):
            raise ValueError(
                f"Inpainting needs a ddpm_ext scheduler (DDPMExtScheduler or DDIMExtScheduler), got "
                f"{type(self.scheduler).__name__}; convert it with "
                "`DDPMExtScheduler.from_config(pipe.scheduler.config)`."
            )
        self._warn_trivial_masks(fill)
        device = self._execution_device
        dtype = self.unet.dtype
        x0, fill = x0.to(device=device, dtype=dtype), fill.to(device)
        keep = ~fill  # (B, 1, H, W)
        has_known = keep.flatten(1).any(dim=1).tolist()  # images that need q(x_s | x_0) noise

        # 1. x_T ~ N(0, I), drawn as DDPMExtPipeline (and diffusers' DDPMPipeline) draw it
        scheduler = self.scheduler
        x = draw_initial_noise(tuple(x0.shape), generator, device, dtype)
        set_sampling_timesteps(scheduler, num_inference_steps, timestep_spacing=spacing)
        grid = scheduler.timesteps.tolist()  # descending; level ℓ is grid[S - 1 - ℓ]
        S = len(grid)
        ab = scheduler._alphas_cumprod64  # float64 ᾱ of the full chain, the scheduler's own
        model = self._unet_call(device)
        if guidance is not None:  # the guided ε̂ in step 2; masking and jumps are unchanged
            model = guidance.wrap(model)
        if self._fast_path is not None:
            x = self._fast_path.sample_layout(x)

        def timestep(level: int) -> int:
            return grid[S - 1 - level] if level >= 0 else -1

        trajectory, x0s, visited = ([x.cpu()], [], [grid[0]]) if return_trajectory else (None, None, None)
        # 2. Walk the RePaint schedule: down = one denoising step (RePaint Algorithm 1, lines 4-8),
        #    up = one resampling jump x_s -> x_t ~ q(x_t | x_s) on the respaced chain
        for a, b in self.progress_bar(list(zip(levels[:-1], levels[1:]))):
            t, s = timestep(a), timestep(b)
            if b < a:
                # (with `generator`)
                out = scheduler.step(model(x, torch.tensor(t, device=device)), t, x, **step_kwargs)
                known = x0 if s < 0 else scheduler.add_noise(
                    x0, self._known_noise(x0, generator, has_known), torch.tensor([s])
                )
                x = torch.where(keep, known, out.prev_sample)
                if return_trajectory:
                    x0s.append(out.pred_original_sample.cpu())
            else:  # up from timestep t to the next kept one, s > t
                x = forward_jump(x, ab[t] if t >= 0 else 1.0, ab[s], draw_noise(x, generator))
            if return_trajectory:
                trajectory.append(x.cpu())
                visited.append(s)

        # 3. [-1, 1] -> [0, 1] -> the requested type (the last step put x_0 itself in the kept region); NaN or ±inf
        #    is refused
        self._check_result(x)
        images = self._output(x, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return DDPMExtInpaintPipelineOutput(
            images=images, trajectory=trajectory, pred_original_samples=x0s, timesteps=visited, fill_mask=fill.cpu()
        )

    # ----------------------------------------------------------------------------------------------
    # Inputs
    # ----------------------------------------------------------------------------------------------
    def _prepare_inputs(self, image, mask_image) -> tuple[torch.Tensor, torch.Tensor]:
        """Check and convert: x_0 (B, C, H, W) float32 in [-1, 1] and `fill` (B, 1, H, W) bool."""
        if isinstance(image, PIL.Image.Image):
            image = [image]
        if isinstance(image, (list, tuple)) and image and all(isinstance(im, PIL.Image.Image) for im in image):
            x0 = self._pil_images(image)
        elif isinstance(image, torch.Tensor) and image.dtype not in (torch.uint8,) and not image.is_floating_point():
            raise ValueError(f"A tensor `image` must hold uint8 or float values, got dtype {image.dtype}.")
        else:
            if isinstance(image, torch.Tensor) and image.ndim != 4:
                raise ValueError(f"A tensor `image` must be (B, C, H, W), got shape {tuple(image.shape)}.")
            if isinstance(image, np.ndarray) and image.ndim not in (3, 4):
                raise ValueError(f"A NumPy `image` must be (B, H, W, C) or (B, H, W), got shape {image.shape}.")
            try:
                x0 = self.preprocess(image)
            except ValueError as e:
                raise ValueError(str(e).replace("`images`", "`image`")) from None
            x0 = x0.detach().float().cpu()
        if x0.shape[0] == 0:
            raise ValueError("`image` holds no images.")
        low, high = float(x0.min()), float(x0.max())
        if not (low >= -1.0 and high <= 1.0):
            raise ValueError(f"A float `image` must lie in [-1, 1], got values in [{low}, {high}].")
        self._check_image_size(x0)

        fill, binary = prepare_mask(mask_image)
        if fill.shape[-2:] != x0.shape[-2:]:
            raise ValueError(
                f"`mask_image` is {fill.shape[-2]}x{fill.shape[-1]} (HxW) but `image` is "
                f"{x0.shape[-2]}x{x0.shape[-1]}; "
                "they must have the same size."
            )
        if fill.shape[0] not in (1, x0.shape[0]):
            raise ValueError(
                f"`mask_image` has {fill.shape[0]} masks for {x0.shape[0]} images; give 1 or {x0.shape[0]}."
            )
        if not binary:
            warnings.warn(
                f"`mask_image` is not binary; it was thresholded at {MASK_THRESHOLD} (>= {MASK_THRESHOLD}: fill).",
                UserWarning,
                stacklevel=3,
            )
        return x0, fill.cpu().expand(x0.shape[0], -1, -1, -1).contiguous()

    def _pil_images(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        """PIL images at their own size -> (B, C, H, W) in [-1, 1], in the UNet's channels (1: "L", 3: "RGB")."""
        channels = self.unet.config.in_channels
        if channels not in (1, 3):
            raise ValueError(
                f"PIL `image` needs a UNet with 1 or 3 input channels, this one has {channels}; pass a tensor."
            )
        sizes = {im.size for im in images}
        if len(sizes) > 1:
            raise ValueError(f"All `image` PIL images must have one size, got {sorted(sizes)}.")
        arr = np.stack(
            [np.asarray(convert_image(im, "L" if channels == 1 else "RGB"), dtype=np.uint8) for im in images]
        )
        arr = arr[..., None] if arr.ndim == 3 else arr  # (B, H, W, C)
        return normalize(torch.from_numpy(arr).permute(0, 3, 1, 2))

    def _check_image_size(self, x0: torch.Tensor) -> None:
        channels = self.unet.config.in_channels
        if x0.shape[1] != channels:
            raise ValueError(f"`image` has {x0.shape[1]} channels but the UNet takes {channels} (`in_channels`).")
        factor = _downsampling_factor(self.unet)
        h, w = x0.shape[-2:]
        if h % factor or w % factor:
            size = self.unet.config.sample_size
            raise ValueError(
                f"`image` is {h}x{w} (HxW); the UNet needs H and W to be multiples of {factor} (it halves the "
                f"resolution {factor.bit_length() - 1} times; it was trained at {size}). Resize or pad the image first."
            )

    @staticmethod
    def _warn_trivial_masks(fill: torch.Tensor) -> None:
        filled = fill.flatten(1).float().mean(dim=1)
        if bool((filled == 0).any()):
            warnings.warn(
                "`mask_image` keeps every pixel of some image; it comes back unchanged.", UserWarning, stacklevel=3
            )
        if bool((filled == 1).any()):
            warnings.warn(
                "`mask_image` fills every pixel of some image; that is unconditional sampling.",
                UserWarning,
                stacklevel=3,
            )

    @staticmethod
    def _known_noise(
        like: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None, has_known: list[bool]
    ) -> torch.Tensor:
        """ε for q(x_s | x_0), drawn only for images with kept pixels (others keep the plain sampler's stream)."""
        if isinstance(generator, list):
            noise = torch.zeros_like(like)
            for i, g in enumerate(generator):
                if has_known[i]:
                    noise[i : i + 1] = draw_noise(like[i : i + 1], g)
            return noise
        return draw_noise(like, generator) if any(has_known) else torch.zeros_like(like)
