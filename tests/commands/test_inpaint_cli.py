"""`ddpm-ext inpaint`: the completion keeps the image's pixels, matches the pipeline, and bad input exits 2 early."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image
from tiny_pipeline import TINY_SIZE

from ddpm_ext.commands.cli import main
from ddpm_ext.pipelines.pipeline_ddpm_ext_inpaint import DDPMExtInpaintPipeline
from ddpm_ext.seeding import image_generators

S = TINY_SIZE


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (S, S), dtype=np.uint8)
    mask = np.zeros((S, S), np.uint8)
    mask[:, : S // 2] = 255  # fill the left half
    Image.fromarray(image).save(tmp_path / "x.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    return tmp_path, image, mask


def test_inpaint_writes_the_pipeline_completion(tiny_pipeline_dir, files, capsys):
    d, image, mask = files
    out = d / "sub" / "out.png"
    argv = ["inpaint", str(tiny_pipeline_dir), "--image", str(d / "x.png"), "--mask", str(d / "m.png"),
            "--output", str(out), "--steps", "6", "--jump_length", "2", "--jump_n_sample", "2", "--seed", "3"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    got = np.asarray(Image.open(out))
    # exact: the kept half is the input's pixels pasted back
    np.testing.assert_array_equal(got[:, S // 2 :], image[:, S // 2 :])
    pipe = DDPMExtInpaintPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(Image.fromarray(image), Image.fromarray(mask), num_inference_steps=6, jump_length=2,
                    jump_n_sample=2, generator=image_generators(3, 0, 1)).images[0]
    # exact by construction: batch 1 in both, same process, same thread count (inpaint has no adaptive threads)
    np.testing.assert_array_equal(got, np.asarray(expected))


def test_inpaint_ddim(tiny_pipeline_dir, files):
    d, image, _ = files
    out = d / "ddim.png"
    argv = ["inpaint", str(tiny_pipeline_dir), "--image", str(d / "x.png"), "--mask", str(d / "m.png"),
            "--output", str(out), "--steps", "4", "--jump_n_sample", "1", "--scheduler", "ddim", "--eta", "0"]
    assert main(argv) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out))[:, S // 2 :], image[:, S // 2 :])


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--jump_length", "0"], "--jump_length: must be an integer >= 1, got 0"),
        (["--jump_n_sample", "0"], "--jump_n_sample: must be an integer >= 1, got 0"),
        (["--eta", "2"], r"`--eta` must be in \[0, 1\], got 2.0"),
        (["--eta", "0.5"], r"`--eta` 0.5 needs a DDIM scheduler"),
        (["--steps", "21"], "`--steps` must be at most the pipeline's num_train_timesteps = 20, got 21"),
        (["--mask", "SMALL"], r"`--mask` is 8x8 \(WxH\) but `--image` is 16x16"),
        (["--image", "MISSING"], "`--image` .* is not a file"),
        (["--output", "out.txt"], "must end with an image extension"),
    ],
)
def test_inpaint_bad_input_exits_2_before_writing(tiny_pipeline_dir, files, capsys, extra, match):
    d, _, _ = files
    Image.new("L", (8, 8)).save(d / "small.png")
    out = d / "never.png"
    argv = ["inpaint", str(tiny_pipeline_dir), "--image", str(d / "x.png"), "--mask", str(d / "m.png"),
            "--output", str(out), "--steps", "5"]
    extra = [str(d / "small.png") if e == "SMALL" else str(d / "missing.png") if e == "MISSING" else
             str(d / e) if e == "out.txt" else e for e in extra]
    assert main(argv + extra) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not out.exists()
