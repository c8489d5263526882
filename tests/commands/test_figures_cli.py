"""`ddpm-ext figures`: every figure is reachable, each file is the figure function's own, bad input exits 2 early."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_pipeline import TINY_SIZE, TINY_T

from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.commands.cli import main
from ddpm_ext.commands.figures import FIGURES
from ddpm_ext.data import ImageTransform, load_image_dataset
from ddpm_ext.figures import class_grid_figure, inpainting_figure
from ddpm_ext.pipelines.guidance import set_class_names


def _image_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.tile(np.arange(12, dtype=np.uint8) * 20, (12, 1))).save(folder / "a.png")
    return folder


@pytest.fixture(scope="module")
def conditional_dir(tmp_path_factory) -> Path:
    """A tiny class-conditional pipeline (3 named classes), saved once."""
    torch.manual_seed(0)
    unet = build_unet("tiny", num_class_embeds=4).eval()
    set_class_names(unet, ["top", "bottom", "left"])
    folder = tmp_path_factory.mktemp("conditional")
    DDPMExtPipeline(unet=unet, scheduler=DDPMExtScheduler(num_train_timesteps=TINY_T)).save_pretrained(folder)
    return folder


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_figures_without_and_with_a_pipeline(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "figs"
    images = str(_image_folder(tmp_path))
    assert main(["figures", "--output_dir", str(out), "--num_train_timesteps", "50", "--train_data_dir", images]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["forward_process.png", "schedules.png"]
    assert Image.open(out / "schedules.png").size == (1500, 460)
    capsys.readouterr()

    # the pipeline is the first argument; an unconditional pipeline gets every figure but the class grid
    out2 = tmp_path / "figs2"
    assert main(["figures", str(tiny_pipeline_dir), "--output_dir", str(out2), "--steps", "4", "--step_counts", "2,4",
                 "--num_images", "2", "--jump_length", "2", "--jump_n_sample", "2", "--train_data_dir", images]) == 0
    names = ["ddpm_vs_ddim.png", "forward_process.png", "inpainting.png", "noise_comparison.png",
             "reverse_trajectory.gif", "reverse_trajectory.png", "schedules.png"]
    assert sorted(p.name for p in out2.iterdir()) == names
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == names
    assert Image.open(out2 / "reverse_trajectory.gif").n_frames == 5  # x_T and 4 steps


def test_inpainting_figure_from_the_cli_is_the_functions_on_a_held_out_image(tiny_pipeline_dir, tmp_path, capsys):
    # default data: mnist-5k, whose held-out split is "test"; its row 3 at the pipeline's 16x16, one channel
    out = tmp_path / "figs"
    assert main(["figures", str(tiny_pipeline_dir), "--only", "inpainting", "--output_dir", str(out), "--steps", "4",
                 "--jump_length", "2", "--jump_n_sample", "2", "--masks", "top_half", "strokes", "--image_index", "3",
                 "--seed", "5"]) == 0
    assert capsys.readouterr().out.split() == [str(out / "inpainting.png")]
    assert [p.name for p in out.iterdir()] == ["inpainting.png"]

    digit = load_image_dataset("mnist-5k", split="test")[3]["image"]
    image = ImageTransform(TINY_SIZE, center_crop=True, channels=1)(digit)
    pipe = DDPMExtPipeline.from_pretrained(tiny_pipeline_dir)
    fig = inpainting_figure(pipe, image, tmp_path / "expected.png", mask_kinds=["top_half", "strokes"],
                            num_inference_steps=4, jump_length=2, jump_n_sample=2, seed=5)
    png = Image.open(out / "inpainting.png")
    assert png.size == fig.size and png.mode == Image.open(fig.path).mode == "RGBA"
    np.testing.assert_array_equal(_pixels(out / "inpainting.png"), _pixels(fig.path))
    assert fig.mask_kinds == ["top_half", "strokes"] and fig.image.shape == (1, 1, TINY_SIZE, TINY_SIZE)


def test_class_grid_from_the_cli_is_the_functions(conditional_dir, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["figures", str(conditional_dir), "--only", "class_grid", "--output_dir", str(out), "--steps", "3",
                 "--num_images", "3", "--class_labels", "left", "1", "--guidance_scale", "2", "--seed", "4"]) == 0
    assert capsys.readouterr().out.split() == [str(out / "class_grid.png")]

    pipe = DDPMExtPipeline.from_pretrained(conditional_dir)
    pipe.set_progress_bar_config(disable=True)
    fig = class_grid_figure(pipe, tmp_path / "expected.png", class_labels=["left", 1], num_per_class=3,
                            guidance_scale=2.0, num_inference_steps=3, seed=4)
    png = Image.open(out / "class_grid.png")
    assert png.size == fig.size and png.mode == Image.open(fig.path).mode == "RGBA"
    np.testing.assert_array_equal(_pixels(out / "class_grid.png"), _pixels(fig.path))


def test_a_conditional_pipeline_gets_every_figure(conditional_dir, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["figures", str(conditional_dir), "--output_dir", str(out), "--steps", "2", "--step_counts", "2",
                 "--num_images", "1", "--jump_length", "1", "--jump_n_sample", "1", "--masks", "left_half",
                 "--train_data_dir", str(_image_folder(tmp_path))]) == 0
    stems = {p.stem for p in out.glob("*.png")}
    assert stems == set(FIGURES) and len(FIGURES) == 7
    assert (out / "reverse_trajectory.gif").exists()
    # three classes, one image each: rows of one 8-px tile, narrower than the figure's least width
    grid = Image.open(out / "class_grid.png")
    assert grid.mode == "RGBA" and grid.size[0] == 640  # the narrowest strip figure


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--output_dir", "{tmp}/afile"], "exists and is not a folder"),
        (["--step_counts", "10,0"], "argument --step_counts: must be comma-separated integers >= 1"),
        (["{tmp}/missing"], "neither an existing folder"),
        (["{pipe}", "--steps", str(TINY_T + 1)], "`--steps` must be at most the pipeline's num_train_timesteps = 20"),
        (["{pipe}", "--step_counts", f"2,{TINY_T + 1}"], "`--step_counts` must be at most"),
        (["--image_index", "5000"], "`--image_index` must be below 1, the number of rows of the data set's split"),
        (["--pipeline", "{pipe}"], "unrecognized arguments: --pipeline"),  # retired: the pipeline is positional
        (["--only", "bogus"], "argument --only: invalid choice: 'bogus'"),
        (["--only", "schedules", "inpainting"], "`--only inpainting` needs a trained pipeline"),
        (["{pipe}", "--only", "class_grid"], "`--only class_grid` needs a class-conditional pipeline"),
        (["{pipe}", "--class_labels", "1"], "`--class_labels` is an option of the class_grid figure"),
        (["{cond}", "--only", "schedules", "--guidance_scale", "2"], "`--guidance_scale` is an option of the"),
        (["{cond}", "--class_labels", "7"], "`class_labels` holds 7, outside the model's classes 0..2"),
        (["{cond}", "--guidance_scale", "-1"], "`--guidance_scale` must be"),
        (["{pipe}", "--masks", "circle"], "argument --masks: invalid choice: 'circle'"),
        (["{pipe}", "--jump_length", "0"], "argument --jump_length: must be an integer >= 1, got 0"),
        (["{pipe}", "--jump_n_sample", "0"], "argument --jump_n_sample: must be an integer >= 1, got 0"),
    ],
)
def test_figures_bad_option(tiny_pipeline_dir, conditional_dir, tmp_path, capsys, extra, message):
    (tmp_path / "afile").write_text("x")
    paths = {"{tmp}": str(tmp_path), "{pipe}": str(tiny_pipeline_dir), "{cond}": str(conditional_dir)}
    for key, value in paths.items():
        extra = [e.replace(key, value) for e in extra]
    if "--output_dir" not in extra:
        extra += ["--output_dir", str(tmp_path / "figs")]
    assert main(["figures", "--train_data_dir", str(_image_folder(tmp_path)), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err or pytest.fail(f"{message!r} not in {err!r}")
    assert not (tmp_path / "figs").exists()


def test_image_index_is_checked_against_the_held_out_split(tiny_pipeline_dir, tmp_path, capsys):
    # mnist-5k: 4,500 training and 500 held-out rows; row 600 exists for the forward process, not for inpainting
    out = tmp_path / "figs"
    assert main(["figures", str(tiny_pipeline_dir), "--only", "forward_process", "inpainting", "--image_index", "600",
                 "--output_dir", str(out)]) == 2
    message = "`--image_index` must be below 500, the number of rows of the data set's split 'test', got 600."
    assert message in capsys.readouterr().err
    assert not out.exists()
