"""The inpainting figure: one image completed with several masks by RePaint, with points of its trajectory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..images import from_unit
from ..pipelines.pipeline_ddpm_ext import DDPMExtPipeline
from ..pipelines.pipeline_ddpm_ext_inpaint import DDPMExtInpaintPipeline, make_mask
from ..seeding import image_generators
from ..validation import check_int
from .common import _paper_t, _row, _save_strips, check_steps

__all__ = ["InpaintingFigure", "inpainting_figure"]

@dataclass
class InpaintingFigure:
    """What [`inpainting_figure`] drew: one row per mask.

    Args:
        path (`Path`): the PNG.
        mask_kinds (`list[str]`): the masks, one per row (see `pipeline_ddpm_ext_inpaint.make_mask`).
        image (`torch.Tensor`): the input, (1, C, H, W) in [-1, 1].
        fill_masks (`torch.Tensor`): (M, 1, H, W) bool, True where the row's pixels were filled.
        timesteps (`list[int]`): code timesteps of the shown trajectory columns (x at that point of the RePaint
            schedule, jumps included; the first is x_T).
        samples (`torch.Tensor`): x at those points, (M, K, C, H, W) in [-1, 1], not clipped.
        completions (`torch.Tensor`): the outputs, (M, C, H, W) in [-1, 1]; kept pixels equal `image`.
        num_inference_steps, jump_length, jump_n_sample (`int`): the sampler's settings.
        size (`tuple[int, int]`): (width, height) of the PNG in pixels.
    """

    path: Path
    mask_kinds: list[str]
    image: torch.Tensor
    fill_masks: torch.Tensor
    timesteps: list[int]
    samples: torch.Tensor
    completions: torch.Tensor
    num_inference_steps: int
    jump_length: int
    jump_n_sample: int
    size: tuple[int, int]


def inpainting_figure(
    pipeline: DDPMExtPipeline,
    image: torch.Tensor,
    output_path: str | Path,
    *,
    mask_kinds: Sequence[str] = ("left_half", "centre_box", "strokes"),
    num_inference_steps: int = 100,
    jump_length: int = 10,
    jump_n_sample: int = 5,
    num_columns: int = 5,
    seed: int = 0,
    scale: int = 3,
) -> InpaintingFigure:
    r"""Inpainting one image with several masks: input, mask, a few points of the trajectory, the completion.

    Sampling is RePaint ([`DDPMExtInpaintPipeline`]) with the pipeline's UNet and scheduler; every row starts from
    the same x_T (one generator seeded `seed` per row).

    Args:
        pipeline ([`DDPMExtPipeline`]): a trained pipeline (any ddpm_ext scheduler).
        image (`torch.Tensor`): (C, H, W) or (1, C, H, W) in [-1, 1], e.g. a data-set image.
        output_path (`str` or `Path`): the PNG.
        mask_kinds (`Sequence[str]`, defaults to left half, centre box, random strokes): one row each; any of
            `"left_half"`, `"top_half"`, `"centre_box"`, `"strokes"` (strokes drawn from `seed`).
        num_inference_steps (`int`, defaults to 100): steps of the respaced chain.
        jump_length, jump_n_sample (`int`, default 10 and 5): RePaint's resampling.
        num_columns (`int`, defaults to 5): trajectory points shown, evenly spread over the schedule (x_T first).
        seed (`int`, defaults to 0): the seed of every row.
        scale (`int`, defaults to 3): nearest-neighbour enlargement.

    Returns:
        [`InpaintingFigure`]

    Example:

    ```py
    >>> import tempfile, os, torch
    >>> from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
    >>> from ddpm_ext.figures import inpainting_figure
    >>> pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=20))
    >>> fig = inpainting_figure(pipe, torch.zeros(1, 8, 8), os.path.join(tempfile.mkdtemp(), "inpaint.png"),
    ...                         num_inference_steps=10, jump_length=3, jump_n_sample=2, num_columns=4)
    >>> fig.timesteps, tuple(fig.samples.shape), bool((fig.completions[~fig.fill_masks] == 0).all())
    ([19, 13, 7, 1], (3, 4, 1, 8, 8), True)

    ```
    """
    steps = check_steps(pipeline, "num_inference_steps", num_inference_steps)
    k = check_int("num_columns", num_columns, 1)
    seed = check_int("seed", seed, 0)
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4) or (image.ndim == 4 and image.shape[0] != 1):
        got = getattr(image, "shape", image)
        raise ValueError(f"`image` must be a tensor (C, H, W) or (1, C, H, W) in [-1, 1], got {got!r}.")
    x = (image if image.ndim == 4 else image[None]).detach().float().cpu()
    kinds = list(mask_kinds)
    if not kinds:
        raise ValueError("`mask_kinds` must name at least one mask, got none.")
    h, w = x.shape[-2:]
    masks = torch.cat([make_mask(kind, h, w, seed=seed) for kind in kinds])  # (M, 1, H, W), 1 = fill
    pipe = DDPMExtInpaintPipeline(unet=pipeline.unet, scheduler=pipeline.scheduler)
    pipe.set_progress_bar_config(disable=True)
    m = len(kinds)
    out = pipe(
        x.expand(m, -1, -1, -1), masks, num_inference_steps=steps, jump_length=jump_length,
        jump_n_sample=jump_n_sample, generator=[g for _ in range(m) for g in image_generators(seed, 0, 1)],
        output_type="pt", return_trajectory=True,
    )
    traj = torch.stack(out.trajectory[:-1], dim=1)  # (M, L, C, H, W): x_T ... the last x before x_0
    cols = np.unique(np.linspace(0, traj.shape[1] - 1, min(k, traj.shape[1])).round().astype(int)).tolist()
    ts = [out.timesteps[i] for i in cols]
    samples = traj[:, cols]
    completions = from_unit(out.images.cpu())
    shown_mask = from_unit(out.fill_mask.float()).expand(-1, x.shape[1], -1, -1)  # white = fill
    labels = ["input", "mask\n(white: fill)", *[f"t={_paper_t(t)}" for t in ts], "completion"]
    ncols = len(labels)
    rows = []
    for i, kind in enumerate(kinds):
        row = torch.cat([x, shown_mask[i : i + 1], samples[i], completions[i : i + 1]])
        rows.append(_row(kind.replace("_", " "), row, ncols, labels, scale))
    path = Path(output_path)
    size = _save_strips(
        rows,
        "Inpainting with an unconditional DDPM (RePaint)",
        f"{steps} respaced steps of T = {pipeline.scheduler.config.num_train_timesteps}, jump length {jump_length}, "
        f"{jump_n_sample} samples per stretch; x along the RePaint schedule (jumps included); t as in the paper",
        path,
    )
    return InpaintingFigure(
        path, kinds, x, out.fill_mask, ts, samples, completions, steps, jump_length, jump_n_sample, size
    )

