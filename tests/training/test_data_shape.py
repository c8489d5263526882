"""The model's shape comes from the data (issue 26): the preset picked from the data's channels, channel mismatches
and fine-tuning without data refused before anything is written, and save_to_disk folders trained on."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler
from PIL import Image

from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.commands import cli

# TINY of test_training.py without --model_config (picked from the data; --resolution 8 suits both presets)
SMALL = ["--resolution", "8", "--train_batch_size", "4", "--max_train_samples", "8", "--max_train_steps", "2",
         "--eval_batch_size", "2", "--ddpm_num_inference_steps", "2", "--lr_warmup_steps", "1", "--cpu_threads", "1"]
NEW = SMALL + ["--ddpm_num_steps", "50"]  # from scratch; fine-tuning keeps the pretrained schedule


def images(n: int = 8, mode: str = "RGB", size: int = 10) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(n)]


def image_folder(tmp_path: Path, mode: str = "RGB") -> Path:
    folder = tmp_path / f"images-{mode}"
    folder.mkdir()
    for i, im in enumerate(images(mode=mode)):
        im.save(folder / f"{i}.png")
    return folder


def saved_dataset(tmp_path: Path, splits: tuple[str, ...] | None = None) -> Path:
    """A `Dataset.save_to_disk` folder of RGB images, or a `DatasetDict` one with `splits`."""
    ds = datasets.Dataset.from_dict({"image": images()}, features=datasets.Features({"image": datasets.Image()}))
    folder = tmp_path / ("saved-" + "-".join(splits or ("dataset",)))
    (ds if splits is None else datasets.DatasetDict({s: ds for s in splits})).save_to_disk(str(folder))
    return folder


def train(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(["train", *argv])
    return code, capsys.readouterr().err


def saved_config(out: Path) -> dict:
    return json.loads((out / "unet" / "config.json").read_text())


@pytest.mark.parametrize("mode, channels, preset", [("RGB", 3, "rgb32-small"), ("L", 1, "mnist-small")])
def test_the_preset_comes_from_the_data(mode, channels, preset, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["train", *NEW, "--train_data_dir", str(image_folder(tmp_path, mode)), "--checkpointing_steps",
                     "2", "--output_dir", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    assert f"new UNet, preset {preset} (picked from the data's channels)" in printed.out  # the start summary
    config = saved_config(out)
    assert (config["in_channels"], config["out_channels"], config["sample_size"]) == (channels, channels, 8)
    assert config["block_out_channels"] == list(build_unet(preset).config.block_out_channels)
    assert Image.open(out / "samples.png").mode == mode
    state = json.loads((out / "checkpoint-2" / "training_state.json").read_text())
    assert state["config"]["model_config"] == preset


def test_an_auto_picked_run_resumes_and_a_different_preset_is_refused(tmp_path, capsys):
    out, folder = tmp_path / "out", image_folder(tmp_path)
    common = NEW + ["--train_data_dir", str(folder), "--checkpointing_steps", "2", "--output_dir", str(out)]
    assert train(common, capsys)[0] == 0
    resume = ["--max_train_steps", "3", "--resume_from_checkpoint", "latest"]
    code, err = train(common + resume, capsys)
    assert code == 0, err[-2000:]
    assert json.loads((out / "training_info.json").read_text())["global_step"] == 3
    code, err = train(common + resume + ["--model_config", "ddpm-cifar10"], capsys)  # 3 channels too, but another
    assert code == 2
    assert "--model_config is 'ddpm-cifar10' here but 'rgb32-small' in the checkpoint" in err


def test_a_preset_with_other_channels_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = train(NEW + ["--model_config", "tiny", "--train_data_dir", str(image_folder(tmp_path)),
                             "--output_dir", str(out)], capsys)
    assert code == 2
    assert "error: --model_config tiny has in_channels 1, but the data (--train_data_dir" in err
    assert "has 3 channels (colour); give --model_config rgb32-small (in_channels 3)" in err
    assert not out.exists()


def test_a_pretrained_unet_with_other_channels_is_refused_before_anything_is_written(tmp_path, capsys):
    DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=50)).save_pretrained(
        tmp_path / "grey")
    out = tmp_path / "out"
    code, err = train(SMALL + ["--pretrained_model_name_or_path", str(tmp_path / "grey"), "--train_data_dir",
                               str(image_folder(tmp_path)), "--output_dir", str(out)], capsys)
    assert code == 2
    assert f"error: --pretrained_model_name_or_path {tmp_path / 'grey'} has a UNet with in_channels 1, but" in err
    assert "has 3 channels (colour); fine-tune it on grayscale data" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model_config", "tiny", "--dataset_name", "mnist-5k"],
         "--model_config tiny cannot apply to --pretrained_model_name_or_path"),
        ([], "needs the data to fine-tune on: give --train_data_dir (a folder of images or a save_to_disk folder) "
             "or --dataset_name"),
    ],
)
def test_fine_tuning_flags_are_refused_before_loading(flags, message, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = train(SMALL + ["--pretrained_model_name_or_path", str(tmp_path / "nowhere"), *flags,
                               "--output_dir", str(out)], capsys)
    assert code == 2 and message in err
    assert not out.exists()


@pytest.mark.parametrize("flag, splits", [("--dataset_name", None), ("--train_data_dir", ("train", "test"))])
def test_save_to_disk_folders_train(flag, splits, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = train(NEW + [flag, str(saved_dataset(tmp_path, splits)), "--output_dir", str(out)], capsys)
    assert code == 0, err[-2000:]
    assert saved_config(out)["in_channels"] == 3


def test_a_dataset_dict_without_train_and_several_splits_is_a_clear_error(tmp_path, capsys):
    out, folder = tmp_path / "out", saved_dataset(tmp_path, ("a", "b"))
    code, err = train(NEW + ["--dataset_name", str(folder), "--output_dir", str(out)], capsys)
    assert code == 2
    expected = f"`dataset_name`={str(folder)!r} is a DatasetDict (saved with save_to_disk) with the splits ['a', 'b']"
    assert expected + " and no 'train' split" in err
    assert not out.exists()


def test_a_fine_tuning_checkpoint_of_an_older_version_resumes(tmp_path, capsys):
    """Older versions stored --model_config's then default, mnist-small, in fine-tuning checkpoints too."""
    DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=50)).save_pretrained(
        tmp_path / "grey")
    out = tmp_path / "out"
    common = SMALL + ["--pretrained_model_name_or_path", str(tmp_path / "grey"), "--train_data_dir",
                      str(image_folder(tmp_path, "L")), "--checkpointing_steps", "2", "--output_dir", str(out)]
    assert train(common, capsys)[0] == 0
    state_file = out / "checkpoint-2" / "training_state.json"
    state = json.loads(state_file.read_text())
    assert state["config"]["model_config"] is None
    state["config"]["model_config"] = "mnist-small"
    state_file.write_text(json.dumps(state))
    (out / "checkpoint-2" / "manifest.json").unlink()  # nor did they write a manifest
    code, err = train(common + ["--max_train_steps", "3", "--resume_from_checkpoint", "latest"], capsys)
    assert code == 0, err[-2000:]


def test_a_vanilla_diffusers_pipeline_fine_tunes_on_a_colour_folder_and_loads_back_in_diffusers(tmp_path, capsys):
    """The fine-tuning path a diffusers user takes: their DDPMPipeline folder, their own RGB images, the result
    loaded and sampled by diffusers' own DDPMPipeline."""
    torch.manual_seed(0)
    unet = build_unet("tiny", in_channels=3, out_channels=3, sample_size=8)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(tmp_path / "vanilla")
    out = tmp_path / "out"
    code, err = train(SMALL + ["--pretrained_model_name_or_path", str(tmp_path / "vanilla"), "--train_data_dir",
                               str(image_folder(tmp_path)), "--output_dir", str(out)], capsys)
    assert code == 0, err[-2000:]
    loaded = DDPMPipeline.from_pretrained(out)  # plain diffusers, no ddpm_ext class involved
    assert type(loaded) is DDPMPipeline and type(loaded.scheduler) is DDPMScheduler
    assert loaded.scheduler.config.num_train_timesteps == 50 and loaded.unet.config.in_channels == 3
    # training started from the vanilla weights: they moved, but only a little
    moved = (loaded.unet.conv_in.weight - unet.conv_in.weight).abs().max().item()
    assert 0 < moved < 0.1
    images = loaded(batch_size=1, num_inference_steps=2, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (1, 8, 8, 3) and np.isfinite(images).all()
