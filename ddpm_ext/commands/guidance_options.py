"""`--class_labels` and `--guidance_scale` of `ddpm-ext sample` (classifier-free guidance of a conditional model).

With `--class_labels 3 7`, `--num_images` is split into one block per label, in order, and the grid has one row
per label (unless `--nrow` says otherwise); image i keeps its generator (the package's seeding rule). Without
`--class_labels` a conditional model draws p(x), its null class (the pipeline's default).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from ..pipelines.guidance import prepare_guidance, resolve_class_labels

__all__ = ["add_guidance_arguments", "cli_guidance"]


def add_guidance_arguments(parser: argparse.ArgumentParser) -> None:
    """`--class_labels` and `--guidance_scale`."""
    parser.add_argument(
        "--class_labels", nargs="+", default=None, metavar="LABEL",
        help="Classes to draw (ids or names) for a class-conditional model; --num_images is split evenly among "
        "them, one grid row per label.",
    )
    parser.add_argument(
        "--guidance_scale", type=float, default=None,
        help="Classifier-free guidance w >= 0: 0 unconditional, 1 conditional, > 1 guided (default: 1 with "
        "--class_labels; without them a conditional model draws p(x), w = 0).",
    )


def cli_guidance(
    pipe: Any, class_labels: list[str] | None, guidance_scale: float | None, num_images: int, nrow: int | None
) -> tuple[list[int] | None, Callable[[int, int], dict[str, Any]], int | None]:
    """Check the options against the pipeline before sampling.

    Returns:
        `(ids, call_kwargs, nrow)`: the class id of every image (or `None`), a function giving the pipeline
        keywords for images `start .. start + count − 1`, and the grid's row length.

    Raises:
        ValueError: as [`prepare_guidance`] does, or when `num_images` is not a multiple of the number of labels.
    """
    if class_labels is None:
        guidance = prepare_guidance(pipe.unet, None, guidance_scale, num_images)  # conditional: p(x) unless w given
        extra = {} if guidance is None else {"guidance_scale": guidance.guidance_scale}
        return None, lambda start, count: dict(extra), nrow
    if num_images % len(class_labels):
        n = len(class_labels)
        raise ValueError(
            f"`--num_images` ({num_images}) must be a multiple of the number of `--class_labels` ({n}), e.g. "
            f"{n * max(1, num_images // n)}: each label gets the same number of images (a grid row)."
        )
    per_label = num_images // len(class_labels)
    ids = resolve_class_labels(pipe.unet, [label for label in class_labels for _ in range(per_label)], num_images)
    w = prepare_guidance(pipe.unet, ids, guidance_scale, num_images).guidance_scale
    return (
        ids,
        lambda start, count: {"class_labels": ids[start : start + count], "guidance_scale": w},
        nrow if nrow is not None else per_label,
    )
