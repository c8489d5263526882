"""One seeding rule: image i of a seed is the same image from the pipeline, `ddpm-ext sample`, `ddpm-ext evaluate`
and the figures, whatever the batch size."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm_ext.seeding as seeding_mod
from ddpm_ext import DDPMExtPipeline
from ddpm_ext.commands.cli import main
from ddpm_ext.evaluation.config import EvaluationConfig
from ddpm_ext.evaluation.evaluate import load_evaluation, sample_images
from ddpm_ext.figures import noise_comparison_figure
from ddpm_ext.images import to_uint8
from ddpm_ext.seeding import image_generators, image_seed

SEED, COUNT, STEPS = 3, 5, 4


def pipeline_uint8(folder, batch_size: int) -> torch.Tensor:
    """Images 0..COUNT-1 of SEED from the pipeline (DDPM, STEPS steps), in batches: uint8 (N, C, H, W)."""
    pipe = DDPMExtPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    chunks = []
    for start in range(0, COUNT, batch_size):
        n = min(batch_size, COUNT - start)
        images = pipe(n, generator=image_generators(SEED, start, n), num_inference_steps=STEPS, output_type="pt").images
        chunks.append(to_uint8(images, (0, 1)))
    return torch.cat(chunks)


def test_image_seed_is_keyed_by_seed_and_index():
    assert image_seed(0, 0) == image_seed(0, 0)
    seeds = {image_seed(s, i) for s in range(4) for i in range(4)}
    assert len(seeds) == 16  # no overlap between seed s image i+1 and seed s+1 image i (unlike seed + i)
    assert all(0 <= s < 2**63 for s in seeds)
    a, b = image_generators(1, 2, 3), image_generators(1, 0, 5)[2:]
    assert [g.initial_seed() for g in a] == [g.initial_seed() for g in b]
    for bad, message in (((-1, 0), r"`seed` must be an integer in \[0, 4294967295\], got -1"),
                         ((2**32, 0), r"`seed` must be an integer in \[0, 4294967295\], got 4294967296"),
                         ((0, 1.5), "`index` must be an integer >= 0")):
        with pytest.raises(ValueError, match=message):
            image_seed(*bad)
    with pytest.raises(ValueError, match="`count` must be an integer >= 0"):
        image_generators(0, 0, -1)


def test_image_i_is_the_same_everywhere(tiny_pipeline_dir, tmp_path):
    reference = pipeline_uint8(tiny_pipeline_dir, COUNT)  # (5, 1, 16, 16), one batch
    # Within 1 level, not bit for bit: other batch sizes (and the commands' adaptive thread counts) may run other
    # float32 kernels, and a last-bit difference can round a pixel the other way. Another seeding moves them by tens.
    for batch_size in (1, 2, 3):
        torch.testing.assert_close(pipeline_uint8(tiny_pipeline_dir, batch_size), reference, rtol=0, atol=1,
                                   msg=str(batch_size))

    # ddpm-ext sample: one PNG per image, in batches of 2
    single = tmp_path / "single"
    assert main(["sample", str(tiny_pipeline_dir), "--num_images", str(COUNT), "--steps", str(STEPS), "--seed",
                 str(SEED), "--batch_size", "2", "--scheduler", "ddpm", "--output", str(tmp_path / "grid.png"),
                 "--images_dir", str(single)]) == 0
    files = sorted(single.iterdir())
    sampled = np.stack([np.asarray(Image.open(f)) for f in files])  # (5, 16, 16)
    assert np.abs(sampled.astype(int) - reference[:, 0].numpy().astype(int)).max() <= 1

    # ddpm-ext evaluate's sampling step, in batches of 3
    config = EvaluationConfig(tiny_pipeline_dir, num_bpd_images=0, num_samples=COUNT, samplers=[f"ddpm:{STEPS}"],
                              kid_subset_size=2, batch_size=3, seed=SEED, device="cpu", no_progress=True)
    run = load_evaluation(config)
    torch.testing.assert_close(sample_images(run, f"ddpm:{STEPS}").images, reference, rtol=0, atol=1)

    # the figures (with-z row of the noise comparison)
    pipe = DDPMExtPipeline.from_pretrained(tiny_pipeline_dir)
    fig = noise_comparison_figure(pipe, tmp_path / "z.png", num_inference_steps=STEPS, num_images=COUNT, seed=SEED)
    assert fig.seeds == [image_seed(SEED, i) for i in range(COUNT)]
    torch.testing.assert_close(to_uint8(fig.with_noise), reference, rtol=0, atol=1)


def test_docstring_examples():
    result = doctest.testmod(seeding_mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
