"""The variational bound of DDPM in bits/dim (Ho et al. 2020 eq. 5; improved DDPM's `calc_bpd_loop`).

Legend (code t = 0..T-1 is the paper's t = 1..T; D = C·H·W values per image):

    prior      L_T     = D_KL(q(x_T | x_0) ‖ N(0, I))                              (no parameters)
    terms[:, t]  t ≥ 1 = L_{t-1} = D_KL(q(x_{t-1} | x_t, x_0) ‖ p_θ(x_{t-1} | x_t))   x_t ~ q(x_t | x_0)
    terms[:, 0]        = L_0     = −log p_θ(x_0 | x_1), discretized Gaussian, bins 2/255 open at ±1
    decoder            = terms[:, 0]
    total      L       = prior + Σ_t terms[:, t]

Every term is in nats / (D ln 2) = bits per dimension, one Monte Carlo draw of x_t per image and timestep
(unbiased for the bound). The Gaussian KL and the discretized decoder are the ones the training loss uses
([`ddpm_ext.losses.vlb_terms`]); the distributions come from [`DDPMExtScheduler`].
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .images import normalize
from .losses import mean_flat, normal_kl, vlb_terms
from .schedulers.scheduling_common import VARIANCE_TYPES, canonical_variance_type
from .schedulers.scheduling_ddpm_ext import DDPMExtScheduler
from .validation import check_int, learns_variance

__all__ = ["BitsPerDimOutput", "bits_per_dim", "bits_per_dim_variances", "check_images_on_grid"]

# |u - round(u)| allowed for u = (x + 1) · 127.5, in units of one 8-bit bin (float32 rounding is ~1e-5).
GRID_TOLERANCE = 1e-4


@dataclass
class BitsPerDimOutput(BaseOutput):
    """The variational bound per image, in bits/dim (float64, on the CPU).

    Args:
        total (`torch.Tensor` of shape `(N,)`): L = L_T + Σ_{t≥1} L_{t-1} + L_0, an upper bound on −log₂ p(x_0) / D.
        prior (`torch.Tensor` of shape `(N,)`): L_T = KL(q(x_T | x_0) ‖ N(0, I)).
        decoder (`torch.Tensor` of shape `(N,)`): L_0 = −log p_θ(x_0 | x_1) (= `terms[:, 0]`).
        terms (`torch.Tensor` of shape `(N, T)`): `terms[:, 0]` = L_0, `terms[:, t]` = L_{t-1} of the paper, the KL
            at code timestep t ≥ 1; `total = prior + terms.sum(1)`.
    """

    total: torch.Tensor
    prior: torch.Tensor
    decoder: torch.Tensor
    terms: torch.Tensor


def check_images_on_grid(images: Any, *, name: str = "images", channels: int | None = None) -> torch.Tensor:
    """Check that `images` is a float tensor (N, C, H, W) in [-1, 1] on the 8-bit grid; return it snapped to the grid.

    The grid is the pipeline's preprocessing: x = u / 127.5 - 1 for integer pixels u in 0..255.

    Raises:
        ValueError: for a non-tensor, a non-float dtype, ndim other than 4, no images, a channel count other
            than `channels`, non-finite values, values outside [-1, 1], or values off the 8-bit grid.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(
            f"`{name}` must be a float torch.Tensor (N, C, H, W) in [-1, 1], got {type(images).__name__}; "
            "`DDPMExtPipeline.bits_per_dim` also takes PIL images and uint8 arrays."
        )
    if not images.is_floating_point():
        raise ValueError(
            f"`{name}` must be a float tensor in [-1, 1] (x = u / 127.5 - 1), got dtype {images.dtype}; "
            "convert uint8 pixels u with `u / 127.5 - 1`."
        )
    if images.ndim != 4:
        raise ValueError(
            f"`{name}` must have shape (N, C, H, W) (ndim 4), got shape {tuple(images.shape)} (ndim {images.ndim})."
        )
    if images.shape[0] == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(images.shape)}); pass at least one image.")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(
            f"`{name}` has {images.shape[1]} channels (shape {tuple(images.shape)}) but the model takes "
            f"in_channels={channels}."
        )
    x = images.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"`{name}` contains NaN or infinite values; allowed are values in [-1, 1] on the 8-bit grid.")
    low, high = float(x.min()), float(x.max())
    tol = GRID_TOLERANCE / 127.5
    if low < -1 - tol or high > 1 + tol:
        raise ValueError(f"`{name}` must lie in [-1, 1], got values in [{low:.6g}, {high:.6g}].")
    u = (x + 1) * 127.5
    off = (u - u.round()).abs().max().item()
    if off > GRID_TOLERANCE:
        raise ValueError(
            f"`{name}` must lie on the 8-bit grid x = u / 127.5 - 1 (u integer in 0..255): a value is {off:.3g} of a "
            f"bin away from it (allowed {GRID_TOLERANCE}). Quantize first: `((x + 1) * 127.5).round() / 127.5 - 1`."
        )
    # snapped in float64, then stored as float32 (or float64): the values every earlier bits/dim was computed on
    return normalize(u.round().clamp(0, 255), torch.float64).to(
        images.dtype if images.dtype == torch.float64 else torch.float32
    )


def _as_ddpm_scheduler(scheduler: Any) -> DDPMExtScheduler:
    """The [`DDPMExtScheduler`] with the same training chain as `scheduler` (a ddpm_ext or diffusers scheduler)."""
    if isinstance(scheduler, DDPMExtScheduler):
        return scheduler
    config = getattr(scheduler, "config", None)
    if config is None:
        raise ValueError(
            f"`scheduler` must be a diffusers-style scheduler with a `config` (e.g. DDPMExtScheduler, DDPMScheduler), "
            f"got {type(scheduler).__name__}."
        )
    keys = set(inspect.signature(DDPMExtScheduler.__init__).parameters) - {"self"}
    return DDPMExtScheduler.from_config({k: v for k, v in dict(config).items() if k in keys})


def _model_channels(model: Any) -> tuple[int | None, int | None]:
    config = getattr(model, "config", None)
    return getattr(config, "in_channels", None), getattr(config, "out_channels", None)


def _model_device_dtype(model: Any, fallback: torch.device) -> tuple[torch.device, torch.dtype]:
    if isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        if p is not None:
            return p.device, p.dtype
    return fallback, torch.float32


def _check_variance_types(variance_types: Any) -> list[str]:
    if isinstance(variance_types, str) or not isinstance(variance_types, (list, tuple)) or not variance_types:
        raise ValueError(
            f"`variance_types` must be a non-empty tuple of names from {list(VARIANCE_TYPES)}, got {variance_types!r}."
        )
    for v in variance_types:
        canonical_variance_type(v)  # raises ValueError naming `variance_type`, the value and the allowed names
    return list(dict.fromkeys(variance_types))


def _check_class_labels(model: Any, class_labels: Any, n: int) -> torch.Tensor | None:
    """`class_labels` as (N,) int64 ids in 0..K (K = the null class of a ddpm_ext conditional UNet), checked
    against the model's `num_class_embeds`; None for an unconditional model called without labels."""
    config = getattr(model, "config", None)
    embeds = config.get("num_class_embeds") if hasattr(config, "get") else getattr(config, "num_class_embeds", None)
    other = config.get("class_embed_type") if hasattr(config, "get") else getattr(config, "class_embed_type", None)
    conditional = bool(embeds) or other is not None
    if class_labels is None:
        if conditional:
            null = f"{embeds - 1}" if embeds else "K"
            raise ValueError(
                f"The model is class-conditional (num_class_embeds={embeds}): pass `class_labels`, the null class id "
                f"{null} for the unconditional p(x) that label dropout trains, or class ids for p(x | y)."
            )
        return None
    if config is not None and not conditional:
        raise ValueError(
            f"`class_labels` were given ({class_labels!r:.60}), but the model is unconditional "
            "(no `num_class_embeds`); "
            "drop `class_labels`."
        )
    if isinstance(class_labels, (int, np.integer)) and not isinstance(class_labels, (bool, np.bool_)):
        labels = torch.full((n,), int(class_labels), dtype=torch.long)
    else:
        values = torch.as_tensor(class_labels) if not isinstance(class_labels, torch.Tensor) else class_labels
        if values.dtype.is_floating_point or values.dtype == torch.bool or values.ndim != 1 or len(values) != n:
            raise ValueError(
                f"`class_labels` must be one int id, or {n} int ids (one per image) as a sequence or 1-D integer "
                f"tensor; got {class_labels!r:.80}."
            )
        labels = values.long().cpu()
    high = int(embeds) - 1 if embeds else None
    bad = labels[(labels < 0) | (labels > high)] if high is not None else labels[labels < 0]
    if bad.numel():
        allowed = f"0..{high} (id {high} is the null class)" if high is not None else "ids >= 0"
        raise ValueError(f"`class_labels` holds {int(bad[0])}, outside the model's class ids; allowed: {allowed}.")
    return labels


@torch.no_grad()
def bits_per_dim_variances(
    model: Any,
    scheduler: Any,
    images: torch.Tensor,
    variance_types: Sequence[str] = ("fixed_small", "fixed_large"),
    *,
    generator: torch.Generator | list[torch.Generator] | None = None,
    batch_size: int | None = None,
    clip_denoised: bool | None = None,
    progress: bool = False,
    class_labels: int | Sequence[int] | torch.Tensor | None = None,
) -> dict[str, BitsPerDimOutput]:
    r"""The variational bound in bits/dim under several choices of σ_t², sharing one set of model evaluations.

    The model is evaluated once per image and timestep of the full training chain (all T =
    `num_train_timesteps`, not a respaced subset); the mean of p_θ is the same for every variance choice, so an
    ε-model trained with L_simple is scored under σ² = β̃_t (`"fixed_small"`) and σ² = β_t (`"fixed_large"`) at
    the cost of one. `"learned_range"` needs a model with 2C output channels (improved DDPM); a 2C model can
    also be scored under the fixed choices (its mean channels only).

    Args:
        model: ε_θ (or x_0 / v, as the scheduler's `prediction_type` says), called as `model(x_t, t).sample` like
            a [`UNet2DModel`]; `t` is a (B,) tensor of timesteps. A class-conditional UNet is called as
            `model(x_t, t, class_labels=y).sample`.
        scheduler: a [`DDPMExtScheduler`], or any scheduler whose config describes the same chain (diffusers'
            `DDPMScheduler`, [`DDIMExtScheduler`], ...); its β schedule and `prediction_type` are used.
        images (`torch.Tensor`): x_0, float (N, C, H, W) in [-1, 1] on the 8-bit grid (x = u / 127.5 - 1).
        variance_types (`tuple[str]`, defaults to `("fixed_small", "fixed_large")`): names from `VARIANCE_TYPES`.
        generator (`torch.Generator` or a list of N of them, *optional*): for the noise of x_t ~ q(x_t | x_0);
            the result depends on it and not on `batch_size`. A list gives each image its own stream.
        batch_size (`int`, *optional*): (image, timestep) pairs per model call; defaults to N.
        clip_denoised (`bool`, *optional*): clip x̂_0 to [-1, 1] before computing the mean of p_θ; defaults to the
            scheduler's `clip_sample`, i.e. p_θ as the sampler draws from it (improved DDPM's `image_nll.py` clips).
        progress (`bool`, defaults to `False`): show a tqdm progress bar over the model calls.
        class_labels (`int`, a sequence of N ints or a (N,) tensor, *optional*): the class ids y of a
            class-conditional UNet (`num_class_embeds` = K + 1): one id for every image, or one per image. The
            null class ∅ (id K, the label that training dropout substitutes) scores the unconditional p(x); an
            id 0..K−1 scores p(x | y). Required for a conditional UNet, refused for an unconditional one.

    Returns:
        `dict[str, BitsPerDimOutput]`: for each name of `variance_types`, a [`BitsPerDimOutput`].

    Raises:
        ValueError: for images outside [-1, 1], off the 8-bit grid, of the wrong ndim or channel count; an unknown
            variance type or prediction type; `"learned_range"` with a model of C output channels; `batch_size` < 1;
            a conditional UNet without `class_labels`, labels for an unconditional one, or labels of the wrong
            length or outside 0..K.

    Example:

    ```py
    >>> import torch
    >>> from ddpm_ext import DDPMExtScheduler, bits_per_dim_variances, build_unet
    >>> unet, scheduler = build_unet("tiny"), DDPMExtScheduler(num_train_timesteps=20)
    >>> x0 = torch.randint(0, 256, (2, 1, 8, 8)) / 127.5 - 1
    >>> out = bits_per_dim_variances(unet, scheduler, x0, generator=torch.manual_seed(0))
    >>> sorted(out), out["fixed_small"].terms.shape
    (['fixed_large', 'fixed_small'], torch.Size([2, 20]))

    ```
    """
    names = _check_variance_types(variance_types)
    kinds = {name: canonical_variance_type(name) for name in names}
    scheduler = _as_ddpm_scheduler(scheduler)
    in_channels, out_channels = _model_channels(model)
    x0_all = check_images_on_grid(images, channels=in_channels)
    n, c = x0_all.shape[:2]
    for name, kind in kinds.items():
        if learns_variance(kind) and out_channels is not None and out_channels != 2 * c:
            raise ValueError(
                f"`variance_type`={name!r} needs a model with out_channels = 2 x {c} = {2 * c} (mean and variance), "
                f"but the model has out_channels={out_channels}; score it with 'fixed_small' or 'fixed_large'."
            )
    if batch_size is None:
        batch_size = n
    batch_size = check_int("batch_size", batch_size, 1)  # image-timestep pairs per model call
    if isinstance(generator, list) and len(generator) != n:
        raise ValueError(f"`generator` is a list of {len(generator)} generators but there are {n} images.")
    labels_all = _check_class_labels(model, class_labels, n)  # (N,) int64, or None for an unconditional model

    device, model_dtype = _model_device_dtype(model, x0_all.device)
    x0_all = x0_all.to(device)
    if labels_all is not None:
        labels_all = labels_all.to(device)
    T = scheduler.config.num_train_timesteps
    terms = {name: torch.zeros(n, T, dtype=torch.float64) for name in names}

    # (image, timestep) pairs in a fixed order, t from T-1 down to 0 (as improved DDPM's calc_bpd_loop), image
    # minor; the noise of timestep t is one (N, C, H, W) draw, so batching does not change the result.
    noise_blocks: dict[int, torch.Tensor] = {}  # timestep -> its (N, C, H, W) draw, while a batch still needs it

    def batch_noise(ts: list[int], idx: torch.Tensor) -> torch.Tensor:
        for t in [t for t in noise_blocks if t > ts[0]]:  # every later batch has smaller timesteps
            del noise_blocks[t]
        noise = torch.empty((len(ts), *x0_all.shape[1:]), device=device, dtype=x0_all.dtype)
        ts_tensor = torch.tensor(ts)
        for t in dict.fromkeys(ts):  # descending: the draws happen in chain order
            if t not in noise_blocks:
                noise_blocks[t] = randn_tensor(
                    tuple(x0_all.shape), generator=generator, device=device, dtype=x0_all.dtype
                )
            rows = (ts_tensor == t).nonzero().flatten()
            noise[rows.to(device)] = noise_blocks[t][idx[rows].to(device)]
        return noise

    total_pairs = n * T
    starts = range(0, total_pairs, int(batch_size))
    was_training = isinstance(model, torch.nn.Module) and model.training
    if was_training:
        model.eval()
    try:
        iterator = starts
        if progress:
            iterator = tqdm(starts, desc="bits/dim", unit="call")
        for start in iterator:
            pairs = torch.arange(start, min(start + int(batch_size), total_pairs))
            t_desc, idx = pairs // n, pairs % n
            ts = (T - 1 - t_desc).to(device)
            noise = batch_noise(ts.tolist(), idx)
            x0 = x0_all[idx.to(device)]
            x_t = scheduler.add_noise(x0, noise, ts)
            labels = {} if labels_all is None else {"class_labels": labels_all[idx.to(device)]}  # (B,) per pair
            out = model(x_t.to(model_dtype), ts, **labels).sample.to(x0.dtype)
            for name in names:
                vb = vlb_terms(
                    scheduler,
                    model_output=out,
                    x_start=x0,
                    x_t=x_t,
                    timesteps=ts,
                    clip_denoised=clip_denoised,
                    variance_type=name,
                )
                terms[name][idx, ts.cpu()] = vb.double().cpu()
    finally:
        if was_training:
            model.train()

    # L_T: KL(q(x_T | x_0) ‖ N(0, I)), the same for every variance choice
    t_last = torch.full((n,), T - 1, device=device, dtype=torch.long)
    q_mean, _, q_logvar = scheduler.q_mean_variance(x0_all, t_last)
    zeros = torch.zeros((), device=device, dtype=q_mean.dtype)
    prior = mean_flat(normal_kl(mean1=q_mean, logvar1=q_logvar.expand_as(q_mean), mean2=zeros, logvar2=zeros))
    prior = prior.double().cpu() / math.log(2.0)

    return {
        name: BitsPerDimOutput(
            total=prior + terms[name].sum(dim=1), prior=prior.clone(), decoder=terms[name][:, 0].clone(),
            terms=terms[name],
        )
        for name in names
    }


def bits_per_dim(
    model: Any,
    scheduler: Any,
    images: torch.Tensor,
    *,
    generator: torch.Generator | list[torch.Generator] | None = None,
    batch_size: int | None = None,
    clip_denoised: bool | None = None,
    progress: bool = False,
    variance_type: str | None = None,
    class_labels: int | Sequence[int] | torch.Tensor | None = None,
) -> BitsPerDimOutput:
    r"""The variational bound L = L_T + Σ L_{t-1} + L_0 of each image, in bits/dim (Ho et al. 2020 eq. 5).

    Follows improved DDPM (`calc_bpd_loop`): one draw of x_t ~ q(x_t | x_0) per image and timestep of the full
    training chain; the Gaussian KL of each step against p_θ(x_{t-1} | x_t) = N(μ_θ, σ_t²), with the log of β̃
    clipped at the first step; the decoder L_0 a Gaussian discretized into 256 bins of width 2/255, open at ±1;
    the prior L_T in closed form. Everything is divided by D ln 2 (D = C·H·W).

    Args:
        model: called as `model(x_t, t).sample` like a [`UNet2DModel`].
        scheduler: a [`DDPMExtScheduler`] or any scheduler with the same config keys (see
            [`bits_per_dim_variances`]).
        images (`torch.Tensor`): x_0, float (N, C, H, W) in [-1, 1] on the 8-bit grid.
        generator (`torch.Generator` or a list of N of them, *optional*): for the noise; makes the result
            reproducible, independently of `batch_size`.
        batch_size (`int`, *optional*): (image, timestep) pairs per model call; defaults to N.
        clip_denoised (`bool`, *optional*): clip x̂_0 to [-1, 1] before computing μ_θ; defaults to the
            scheduler's `clip_sample` (p_θ as the sampler draws from it).
        progress (`bool`, defaults to `False`): show a tqdm progress bar.
        variance_type (`str`, *optional*): σ_t² of p_θ; defaults to the scheduler's `variance_type`.
        class_labels (`int` or N ints, *optional*): for a class-conditional UNet, the class id of every image (or
            one for all); the null class id K scores the unconditional p(x). See [`bits_per_dim_variances`].

    Returns:
        [`BitsPerDimOutput`] with `total`, `prior`, `decoder` (N,) and `terms` (N, T), in bits/dim.

    Example:

    ```py
    >>> import torch
    >>> from ddpm_ext import DDPMExtScheduler, bits_per_dim, build_unet
    >>> unet = build_unet("tiny")
    >>> scheduler = DDPMExtScheduler(num_train_timesteps=20, beta_schedule="cosine")
    >>> x0 = torch.randint(0, 256, (2, 1, 8, 8)) / 127.5 - 1  # pixels u -> u / 127.5 - 1
    >>> out = bits_per_dim(unet, scheduler, x0, generator=torch.manual_seed(0), batch_size=20)
    >>> out.total.shape, out.terms.shape
    (torch.Size([2]), torch.Size([2, 20]))
    >>> bool(torch.allclose(out.total, out.prior + out.terms.sum(1)))
    True

    ```
    """
    if variance_type is None:
        variance_type = _as_ddpm_scheduler(scheduler).config.variance_type
    return bits_per_dim_variances(
        model,
        scheduler,
        images,
        (variance_type,),
        generator=generator,
        batch_size=batch_size,
        clip_denoised=clip_denoised,
        progress=progress,
        class_labels=class_labels,
    )[variance_type]
