"""`ddpm-ext`: sample runs in-process through `main([...])`; one subprocess test of the entry point."""

from __future__ import annotations

import configparser
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_pipeline import TINY_SIZE, TINY_T

from ddpm_ext import DDIMExtScheduler, DDPMExtPipeline, fast_sampler
from ddpm_ext.commands import cli
from ddpm_ext.commands.cli import main
from ddpm_ext.seeding import image_generators

ROOT = Path(__file__).resolve().parents[2]


def pipeline_images(folder, seed, count, steps, scheduler=None, **kwargs) -> np.ndarray:
    """uint8 (N, H, W, 1) images 0..count-1 the pipeline gives for `seed`, one generator per image."""
    pipe = DDPMExtPipeline.from_pretrained(folder)
    if scheduler is not None:
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=count, generator=image_generators(seed, 0, count),
        num_inference_steps=steps, output_type="np", **kwargs,
    ).images
    return np.round(images * 255).astype(np.uint8)


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(int)


def test_sample_grid_single_images_and_seeds(tiny_pipeline_dir, tmp_path, capsys):
    grid, single = tmp_path / "grid.png", tmp_path / "single"
    # --cpu_threads 1: "auto" may change the thread count between two runs on a busy machine (other float sums)
    args = ["sample", str(tiny_pipeline_dir), "--num_images", "5", "--steps", "4", "--seed", "7", "--nrow", "5",
            "--cpu_threads", "1"]
    assert main([*args, "--batch_size", "2", "--output", str(grid), "--images_dir", str(single)]) == 0
    assert str(grid) in capsys.readouterr().out

    assert Image.open(grid).size == (5 * (TINY_SIZE + 2) + 2, TINY_SIZE + 2 + 2)  # one row of 5, 2-px padding
    files = sorted(single.iterdir())
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(5)]
    assert all(Image.open(f).size == (TINY_SIZE, TINY_SIZE) for f in files)

    # image i is the pipeline's sample from image_generators(7, i, 1), whatever the batch size
    expected = pipeline_images(tiny_pipeline_dir, 7, 5, 4)
    got = np.stack([read(f) for f in files])
    # within 1 level: batches of 2 vs one of 5 (and 1 thread vs this process's count) may run other float32
    # kernels; a last-bit difference can round a pixel the other way (another seed moves them by tens)
    assert np.abs(got - expected[..., 0].astype(int)).max() <= 1
    tiles = read(grid)[2 : 2 + TINY_SIZE]  # the grid's row holds the same images
    assert np.abs(tiles[:, 2 : 2 + TINY_SIZE] - got[0]).max() == 0  # the same tensor, written twice: exact

    # deterministic: the same command gives the same bytes; another batch size the same images; another seed not
    again = tmp_path / "again.png"
    assert main([*args, "--batch_size", "5", "--output", str(again)]) == 0
    assert np.abs(read(again) - read(grid)).max() <= 1
    other = tmp_path / "other.png"
    assert main([*args, "--batch_size", "2", "--output", str(other), "--seed", "8"]) == 0
    assert (read(other) != read(grid)).any()
    assert main([*args, "--batch_size", "2", "--output", str(again)]) == 2  # kept: it exists (issue 31)
    assert main([*args, "--batch_size", "2", "--output", str(again), "--overwrite"]) == 0
    assert again.read_bytes() == grid.read_bytes()  # same batches, same process and thread count: exact


def test_sample_ddim_and_without_noise(tiny_pipeline_dir, tmp_path):
    ddim = tmp_path / "ddim.png"
    assert main(["sample", str(tiny_pipeline_dir), "--num_images", "2", "--steps", "5", "--scheduler", "ddim",
                 "--eta", "0", "--output", str(ddim), "--nrow", "2", "--seed", "3"]) == 0
    expected = pipeline_images(tiny_pipeline_dir, 3, 2, 5, scheduler=DDIMExtScheduler, eta=0.0)
    assert np.abs(read(ddim)[2 : 2 + TINY_SIZE, 2 : 2 + TINY_SIZE] - expected[0, ..., 0]).max() <= 1

    mean_only = tmp_path / "no_z.png"
    assert main(["sample", str(tiny_pipeline_dir), "--num_images", "2", "--steps", "5", "--no-noise",
                 "--output", str(mean_only), "--nrow", "2", "--seed", "3"]) == 0
    expected = pipeline_images(tiny_pipeline_dir, 3, 2, 5, stochastic=False)
    assert np.abs(read(mean_only)[2 : 2 + TINY_SIZE, 2 + TINY_SIZE + 2 : 2 + 2 * TINY_SIZE + 2]
                  - expected[1, ..., 0]).max() <= 1


@pytest.mark.parametrize(
    "extra, scheduler, call",
    [
        # diffusers' behaviour from the command line: leading spacing and the UNet's own ε̂ in DDIM
        (["--scheduler", "ddim", "--timestep_spacing", "leading", "--ddim_eps", "model"], DDIMExtScheduler,
         {"eta": 0.0, "timestep_spacing": "leading", "use_clipped_model_output": False}),
        (["--timestep_spacing", "linspace"], None, {"timestep_spacing": "linspace"}),
        (["--scheduler", "dpmpp"], "dpmpp", {}),
        (["--scheduler", "unipc"], "unipc", {}),
    ],
)
def test_sample_sampler_options(tiny_pipeline_dir, tmp_path, extra, scheduler, call):
    out = tmp_path / "grid.png"
    assert main(["sample", str(tiny_pipeline_dir), "--num_images", "2", "--steps", "4", "--nrow", "2", "--seed", "5",
                 "--output", str(out), *extra]) == 0
    pipe = DDPMExtPipeline.from_pretrained(tiny_pipeline_dir)
    if isinstance(scheduler, str):
        pipe.scheduler = fast_sampler(scheduler, pipe.scheduler.config)
    elif scheduler is not None:
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=2, generator=image_generators(5, 0, 2), num_inference_steps=4, output_type="np",
                    **call).images
    expected = np.round(expected * 255).astype(np.uint8)
    assert np.abs(read(out)[2 : 2 + TINY_SIZE, 2 : 2 + TINY_SIZE] - expected[0, ..., 0]).max() <= 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ddim_eps", "model"], "`--ddim_eps` model needs a DDIM scheduler"),
        (["--timestep_spacing", "middle"], "argument --timestep_spacing: invalid choice: 'middle'"),
        (["--cpu_threads", "0"], "`--cpu_threads` must be 'auto' or an integer >= 1, got '0'."),
        (["--scheduler", "ddpm", "--eta", "0.5"], "`--eta` 0.5 is DDIM's η"),
        (["--eta", "0.5"], "needs a DDIM scheduler"),  # the saved scheduler is DDPM
        (["--scheduler", "ddim", "--eta", "2"], "`--eta` must be a number in [0, 1], got 2.0"),
        (["--num_images", "-3"], "argument --num_images: must be an integer >= 1, got -3"),
        (["--batch_size", "0"], "argument --batch_size: must be an integer >= 1"),
        (["--steps", str(TINY_T + 1)], f"`--steps` must be at most the pipeline's num_train_timesteps = {TINY_T}"),
        (["--scheduler", "euler"], "argument --scheduler: invalid choice: 'euler'"),
        (["--output", "{tmp}/grid.txt"], "must end with an image extension"),
        (["--output", "{tmp}/afile/grid.png"], "is a file, not a folder"),
        (["--output", "{tmp}"], "is a folder"),
        (["--images_dir", "{tmp}/afile"], "exists and is not a folder"),
        (["--device", "nodevice"], "is not a torch device"),
        (["--autoguidance_scale", "2"],
         "`autoguidance_scale`=2.0 needs a guide model, but this pipeline has no `guide_unet`"),
        (["--autoguidance_scale", "0.5"], "`autoguidance_scale` must be a number >= 1, got 0.5"),
    ],
)
def test_sample_bad_option_is_a_clear_error_and_writes_nothing(tiny_pipeline_dir, tmp_path, capsys, extra, message):
    (tmp_path / "afile").write_text("not a folder")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    args = ["sample", str(tiny_pipeline_dir), "--steps", "2", "--num_images", "1"]
    if "--output" not in extra:
        extra += ["--output", str(tmp_path / "out" / "grid.png")]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err or pytest.fail(f"{message!r} not in {err!r}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_sample_bad_pipeline_path(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "missing"), "--output", str(tmp_path / "g.png")]) == 2
    assert "neither an existing folder nor a Hub repo id" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["sample", str(tmp_path / "empty"), "--output", str(tmp_path / "g.png")]) == 2
    assert "has no model_index.json" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_help_and_unknown_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "sample" in out and "figures" in out and "evaluate" in out
    assert main(["sample", "--help"]) == 0
    assert "--no-noise" in capsys.readouterr().out
    assert main(["bogus"]) == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    assert main([]) == 2


def test_a_broken_command_does_not_break_the_others(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "broken", ("Needs a missing package.", "ddpm_ext_no_such_module"))
    assert main(["sample", "--help"]) == 0
    capsys.readouterr()
    assert main(["broken", "--anything"]) == 2
    assert "needs a package that is not installed" in capsys.readouterr().err


def test_console_script_is_declared():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    scripts = {name.strip(): target.strip() for name, target in (line.split("=", 1) for line in lines)}
    module, func = scripts["ddpm-ext"].split(":")
    assert getattr(importlib.import_module(module), func) is main


@pytest.mark.slow
def test_entry_point_in_a_subprocess(tiny_pipeline_dir, tmp_path):
    """The installed `ddpm-ext` script end to end (`python -m ddpm_ext` where the package is not installed)."""
    script = shutil.which("ddpm-ext")
    command = [script] if script else [sys.executable, "-m", "ddpm_ext"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "grid.png"
    done = subprocess.run([*command, "sample", str(tiny_pipeline_dir), "--num_images", "4", "--steps", "3",
                           "--output", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "sampling 4 images" in done.stderr  # the progress bar
    assert done.stdout.strip() == str(out)
    assert Image.open(out).size == (2 * (TINY_SIZE + 2) + 2,) * 2


def test_evaluate_command(tiny_pipeline_dir, tmp_path, capsys):
    """`ddpm-ext evaluate` is `python -m ddpm_ext evaluate`: the table on stdout, bad input exits 2 with the reason."""
    argv = ["evaluate", str(tiny_pipeline_dir), "--num_bpd_images", "2", "--num_samples", "0", "--no_progress",
            "--output_dir", str(tmp_path / "eval")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| fixed_small |" in out and "| fixed_large |" in out
    assert (tmp_path / "eval" / "results.json").is_file()
    bad = ["evaluate", str(tiny_pipeline_dir), "--num_bpd_images", "0", "--num_samples", "4", "--kid_subset_size", "8",
           "--samplers", "ddim:5:0", "--output_dir", str(tmp_path / "bad")]
    assert main(bad) == 2
    assert "--kid_subset_size" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_sample_leaves_the_callers_thread_count(tiny_pipeline_dir, tmp_path):
    before = torch.get_num_threads()
    out = tmp_path / "grid.png"
    assert main(["sample", str(tiny_pipeline_dir), "--num_images", "1", "--steps", "2", "--output", str(out),
                 "--cpu_threads", str(before + 1)]) == 0
    assert torch.get_num_threads() == before and out.is_file()


def test_push_refuses_a_folder_that_is_not_a_pipeline_before_any_network(tmp_path, capsys):
    # the folder is checked before the Hub is contacted: a Hub error would be exit 1, not 2
    (tmp_path / "not-a-pipeline").mkdir()
    assert main(["push", str(tmp_path / "not-a-pipeline"), "--repo_id", "me/x", "--token", "hf_secret_x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a saved pipeline (no model_index.json)" in err
    assert "hf_secret_x" not in err and "Traceback" not in err


def test_push_requires_the_repo_id(tmp_path, capsys):
    assert main(["push", str(tmp_path)]) == 2
    assert "--repo_id" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Every command's inputs bounded, its outputs never silently replaced, non-finite results never written (issue 31)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nan_pipeline_dir(tmp_path_factory):
    """The tiny pipeline with every weight NaN (what a diverged run would have saved)."""
    from tiny_pipeline import make_tiny_pipeline  # noqa: PLC0415 (as the conftest fixture)

    pipe = make_tiny_pipeline()
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.fill_(float("nan"))
    folder = tmp_path_factory.mktemp("nan_pipeline")
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture()
def inpaint_inputs(tmp_path):
    Image.fromarray(np.full((TINY_SIZE, TINY_SIZE), 128, np.uint8)).save(tmp_path / "x.png")
    mask = np.zeros((TINY_SIZE, TINY_SIZE), np.uint8)
    mask[:, : TINY_SIZE // 2] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    return ["--image", str(tmp_path / "x.png"), "--mask", str(tmp_path / "m.png")]


@pytest.mark.parametrize("command", ["sample", "inpaint", "figures", "evaluate"])
@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_every_commands_seed_is_bounded(command, seed, tiny_pipeline_dir, tmp_path, capsys):
    assert main([command, str(tiny_pipeline_dir), "--seed", seed, "--output_dir" if command in ("figures", "evaluate")
                 else "--output", str(tmp_path / ("o" if command in ("figures", "evaluate") else "o.png"))]) == 2
    assert f"argument --seed: must be an integer in [0, 4294967295], got '{seed}'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, option",
    [
        (["sample", "P", "--output", ""], "--output"),
        (["sample", "P", "--images_dir", ""], "--images_dir"),
        (["inpaint", "P", "--image", "x.png", "--mask", "m.png", "--output", ""], "--output"),
        (["figures", "--output_dir", ""], "--output_dir"),
        (["evaluate", "P", "--output_dir", " "], "--output_dir"),
    ],
)
def test_empty_output_paths_are_refused(argv, option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # '' would have meant this folder
    assert main(argv) == 2
    assert f"argument {option}: must be a non-empty path, got" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_outputs_are_kept_unless_overwrite(tiny_pipeline_dir, inpaint_inputs, tmp_path, capsys):
    keep = tmp_path / "mine.png"
    keep.write_bytes(b"the user's file")
    quick = ["--steps", "2", "--cpu_threads", "1"]
    for argv in (["sample", str(tiny_pipeline_dir), "--num_images", "1", *quick],
                 ["inpaint", str(tiny_pipeline_dir), *inpaint_inputs, "--steps", "2", "--jump_n_sample", "1"]):
        assert main([*argv, "--output", str(keep)]) == 2
        assert f"`--output`: '{keep}' already exist(s); pass --overwrite to replace (nothing was written)." in (
            capsys.readouterr().err)
        assert keep.read_bytes() == b"the user's file"
        assert main([*argv, "--output", str(keep), "--overwrite"]) == 0
        assert Image.open(keep).size[1] >= TINY_SIZE
        keep.write_bytes(b"the user's file")
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "schedules.png").write_bytes(b"an earlier figure")
    fig = ["figures", "--only", "schedules", "--output_dir", str(figures), "--num_train_timesteps", "20"]
    assert main(fig) == 2
    assert "schedules.png' already exist(s); pass --overwrite" in capsys.readouterr().err
    assert (figures / "schedules.png").read_bytes() == b"an earlier figure"
    assert main([*fig, "--overwrite"]) == 0 and Image.open(figures / "schedules.png").size[0] > 10


def test_images_dir_holding_images_is_refused_unless_overwrite(tiny_pipeline_dir, tmp_path, capsys):
    folder = tmp_path / "single"
    folder.mkdir()
    for name in ("00000.png", "00001.png", "00002.png", "cat.png"):  # an earlier run of 3, and the user's own
        Image.new("L", (4, 4), 7).save(folder / name)
    argv = ["sample", str(tiny_pipeline_dir), "--num_images", "2", "--steps", "2", "--cpu_threads", "1",
            "--output", str(tmp_path / "grid.png"), "--images_dir", str(folder)]
    assert main(argv) == 2
    assert f"`--images_dir` '{folder}' already holds 4 image(s) (e.g. 00000.png); new images would mix" in (
        capsys.readouterr().err)
    assert not (tmp_path / "grid.png").exists() and len(list(folder.iterdir())) == 4
    assert main([*argv, "--overwrite"]) == 0
    assert (f"--overwrite: replaced 2 and removed 1 older image(s) in {folder}; 1 other image(s) left as they were"
            in capsys.readouterr().err)
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png", "cat.png"]
    assert Image.open(folder / "00000.png").size == (TINY_SIZE, TINY_SIZE)


def test_non_finite_weights_fail_in_one_line_writing_nothing(nan_pipeline_dir, inpaint_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    for argv in (["sample", str(nan_pipeline_dir), "--num_images", "2", "--steps", "2", "--output",
                  str(out / "grid.png"), "--images_dir", str(out / "single")],
                 ["inpaint", str(nan_pipeline_dir), *inpaint_inputs, "--steps", "2", "--jump_n_sample", "1",
                  "--output", str(out / "inpainted.png")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: Sampling produced ") and "the weights of `unet` hold NaN" in err
        assert not out.exists()
    assert main(["evaluate", str(nan_pipeline_dir), "--num_samples", "2", "--num_bpd_images", "0",
                 "--output_dir", str(out)]) == 2
    assert "non-finite weights (NaN or ±inf) in " in capsys.readouterr().err
    assert not out.exists()


def test_sample_refuses_more_images_than_memory_holds(tiny_pipeline_dir, tmp_path, capsys):
    assert main(["sample", str(tiny_pipeline_dir), "--num_images", str(10**12), "--output",
                 str(tmp_path / "g.png")]) == 2
    assert "`--num_images` 1000000000000 (16x16 images kept until written) needs about" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
