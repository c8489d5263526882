"""`ddpm-ext sample --class_labels ... --guidance_scale w` and `figures.class_grid_figure` on a tiny conditional
pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.commands.cli import main
from ddpm_ext.figures import class_grid_figure
from ddpm_ext.pipelines.guidance import set_class_names
from ddpm_ext.seeding import image_generators, image_seed

SIZE = 8


@pytest.fixture(scope="module")
def conditional_dir(tmp_path_factory):
    torch.manual_seed(0)
    unet = build_unet("tiny", num_class_embeds=4).eval()
    set_class_names(unet, ["top", "bottom", "left"])
    folder = tmp_path_factory.mktemp("conditional")
    DDPMExtPipeline(unet=unet, scheduler=DDPMExtScheduler(num_train_timesteps=20)).save_pretrained(folder)
    return folder


def test_sample_without_labels_draws_the_null_class(conditional_dir, tmp_path):
    # no --class_labels: p(x), the same images as the pipeline called with guidance_scale=0
    grid = tmp_path / "grid.png"
    assert main(["sample", str(conditional_dir), "--num_images", "4", "--steps", "3", "--seed", "2", "--nrow", "4",
                 "--output", str(grid)]) == 0
    pipe = DDPMExtPipeline.from_pretrained(conditional_dir)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=4, guidance_scale=0.0, num_inference_steps=3, generator=image_generators(2, 0, 4),
                    output_type="np").images
    shown = np.asarray(Image.open(grid).convert("L")).astype(int)
    for i in range(4):  # padding 2 around each 8-px image
        x = 2 + i * (SIZE + 2)
        assert np.abs(shown[2:2 + SIZE, x:x + SIZE] - np.round(expected[i, ..., 0] * 255)).max() <= 1


def test_sample_with_labels_writes_a_row_per_label(conditional_dir, tmp_path):
    grid = tmp_path / "grid.png"
    args = ["sample", str(conditional_dir), "--class_labels", "left", "0", "--guidance_scale", "2", "--num_images", "6",
            "--steps", "3", "--seed", "5", "--batch_size", "4", "--output", str(grid),
            "--images_dir", str(tmp_path / "one")]
    assert main(args) == 0
    assert Image.open(grid).size == (3 * (SIZE + 2) + 2, 2 * (SIZE + 2) + 2)  # 2 rows (labels) of 3
    pipe = DDPMExtPipeline.from_pretrained(conditional_dir)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=6, class_labels=[2, 2, 2, 0, 0, 0], guidance_scale=2.0, num_inference_steps=3,
                    generator=image_generators(5, 0, 6), output_type="np").images
    got = np.stack([np.asarray(Image.open(tmp_path / "one" / f"{i:05d}.png")) for i in range(6)])
    assert np.abs(got.astype(int) - np.round(expected[..., 0] * 255).astype(int)).max() <= 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--guidance_scale", "2"], "`guidance_scale`=2.0 needs `class_labels`: the UNet is class-conditional "
                                    "(3 classes: 0='top', 1='bottom', 2='left')"),
        (["--class_labels", "cat"], "unknown class name 'cat'"),
        (["--class_labels", "3"], "holds 3, outside the model's classes 0..2"),
        (["--class_labels", "0", "1", "2"],
         "`--num_images` (4) must be a multiple of the number of `--class_labels` (3)"),
        (["--class_labels", "0", "--guidance_scale", "-1"], "`guidance_scale` must be a number >= 0, got -1.0"),
        (["--class_labels", "0", "--guidance_scale", "inf"], "`guidance_scale` must be a number >= 0, got inf"),
    ],
)
def test_bad_labels_are_clear_errors_and_write_nothing(conditional_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "out" / "grid.png"
    assert main(["sample", str(conditional_dir), "--num_images", "4", "--steps", "2", "--output", str(out),
                 *extra]) == 2
    err = capsys.readouterr().err
    assert message in err or pytest.fail(f"{message!r} not in {err!r}")
    assert not out.parent.exists()


def test_labels_for_an_unconditional_pipeline_are_refused(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "g.png"
    assert main(["sample", str(tiny_pipeline_dir), "--class_labels", "1", "--steps", "2", "--output", str(out)]) == 2
    assert "the UNet is unconditional" in capsys.readouterr().err and not out.exists()
    assert main(["sample", str(tiny_pipeline_dir), "--guidance_scale", "2", "--steps", "2", "--output", str(out)]) == 2
    assert "needs a class-conditional UNet" in capsys.readouterr().err and not out.exists()


def test_class_grid_figure_rows_are_classes_and_columns_seeds(conditional_dir, tmp_path):
    pipe = DDPMExtPipeline.from_pretrained(conditional_dir)
    pipe.set_progress_bar_config(disable=True)
    fig = class_grid_figure(pipe, tmp_path / "classes.png", class_labels=["left", 1], num_per_class=3,
                            guidance_scale=2.0, num_inference_steps=3, seed=4)
    assert (fig.class_ids == [2, 1] and fig.class_names == ["left", "bottom"]
            and fig.seeds == [image_seed(4, j) for j in range(3)])
    assert fig.samples.shape == (2, 3, 1, SIZE, SIZE) and Image.open(fig.path).size == fig.size
    # row r, column j is image j of seed 4 drawn for the class of row r
    one = pipe(batch_size=1, class_labels=[1], guidance_scale=2.0, num_inference_steps=3,
               generator=image_generators(4, 2, 1), output_type="pt").images * 2 - 1
    torch.testing.assert_close(fig.samples[1, 2], one[0], rtol=0, atol=1e-5)
    unconditional = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=20))
    with pytest.raises(ValueError, match="unconditional"):
        class_grid_figure(unconditional, tmp_path / "x.png")
