"""The class-grid figure: samples of a class-conditional pipeline, one row per class, the same seeds in each row."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..images import from_unit
from ..pipelines.guidance import check_guidance_scale, class_names, num_classes, resolve_class_labels
from ..pipelines.pipeline_ddpm_ext import DDPMExtPipeline
from ..seeding import image_generators
from .common import _row, _save_strips, _seeds, check_steps

__all__ = ["ClassGridFigure", "class_grid_figure"]


@dataclass
class ClassGridFigure:
    """What [`class_grid_figure`] drew.

    Args:
        path (`Path`): the PNG.
        class_ids (`list[int]`): the class of each row.
        class_names (`list[str]`): its name.
        seeds (`list[int]`): the seed of each column ([`ddpm_ext.seeding.image_seed`] of image j; the same x_T in
            every row).
        guidance_scale (`float`): w.
        samples (`torch.Tensor`): (rows, columns, C, H, W) in [-1, 1].
        size (`tuple[int, int]`): (width, height) of the PNG in pixels.
    """

    path: Path
    class_ids: list[int]
    class_names: list[str]
    seeds: list[int]
    guidance_scale: float
    samples: torch.Tensor
    size: tuple[int, int] = (0, 0)


def class_grid_figure(
    pipeline: DDPMExtPipeline,
    output_path: str | Path,
    *,
    class_labels: Sequence[int | str] | None = None,
    num_per_class: int = 8,
    guidance_scale: float = 1.0,
    num_inference_steps: int = 100,
    seed: int = 0,
    scale: int = 3,
) -> ClassGridFigure:
    r"""Samples of a class-conditional pipeline, one row per class, the same seeds in every row.

    Args:
        pipeline ([`DDPMExtPipeline`]): a class-conditional pipeline.
        output_path (`str` or `Path`): the PNG.
        class_labels (`list[int | str]`, *optional*): the classes (ids or names); all by default.
        num_per_class (`int`, defaults to 8): images per row.
        guidance_scale (`float`, defaults to 1.0): classifier-free guidance w.
        num_inference_steps (`int`, defaults to 100): sampling steps.
        seed (`int`, defaults to 0): column j is image j of `seed` (the package's seeding rule), in every row.
        scale (`int`, defaults to 3): nearest-neighbour enlargement.

    Returns:
        [`ClassGridFigure`]

    Example:

    ```py
    >>> import tempfile, os
    >>> from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
    >>> from ddpm_ext.figures import class_grid_figure
    >>> unet = build_unet("tiny", num_class_embeds=3)  # two classes and the null class
    >>> pipe = DDPMExtPipeline(unet=unet, scheduler=DDPMExtScheduler(num_train_timesteps=20))
    >>> fig = class_grid_figure(pipe, os.path.join(tempfile.mkdtemp(), "c.png"), num_per_class=2,
    ...                         num_inference_steps=5)
    >>> tuple(fig.samples.shape), fig.class_names
    ((2, 2, 1, 8, 8), ['0', '1'])

    ```
    """
    names = class_names(pipeline.unet)  # raises for an unconditional UNet
    if class_labels is None:
        ids = list(range(num_classes(pipeline.unet)))
    else:
        ids = resolve_class_labels(pipeline.unet, list(class_labels))
    w = check_guidance_scale(guidance_scale)
    steps = check_steps(pipeline, "num_inference_steps", num_inference_steps)
    seeds = _seeds(seed, num_per_class)
    labels = [c for c in ids for _ in seeds]
    generators = [g for _ in ids for g in image_generators(seed, 0, len(seeds))]  # the same x_T in every row
    images = from_unit(pipeline(batch_size=len(labels), generator=generators, num_inference_steps=steps,
                                output_type="pt", class_labels=labels, guidance_scale=w).images.cpu())
    samples = images.reshape(len(ids), len(seeds), *images.shape[1:])
    result = ClassGridFigure(Path(output_path), ids, [names[c] for c in ids], seeds, w, samples)
    ticks = [f"image {j}" for j in range(len(seeds))]
    rows = [_row(f"{names[c]}\n(class {c})", samples[r], len(seeds), ticks, scale) for r, c in enumerate(ids)]
    result.size = _save_strips(
        rows,
        "Class-conditional samples",
        f"one row per class, the same seed in each column; guidance w = {w:g}; {steps} steps",
        result.path,
    )
    return result
