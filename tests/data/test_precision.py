"""`preserve_precision` (diffusers' `--preserve_input_precision`): 16-bit and float images kept at their precision.

Fast (seconds): the 16-bit images are gradient PNGs written here; the end-to-end run is 2 steps of the tiny UNet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_ext.data import ImageTransform, build_transform, load_image_dataset, preprocess_dataset
from ddpm_ext.images import to_8bit
from ddpm_ext.training.flags import parse_args
from ddpm_ext.training.resume import RESUME_MUST_MATCH
from ddpm_ext.training.setup import build_data, load_data

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "training" / "train_ddpm.py"
H, W = 40, 60


def gradient16() -> np.ndarray:
    """(H, W) uint16: every pixel a different 16-bit value, 0 at the top-left to 65535 at the bottom-right."""
    return np.round(np.linspace(0, 65535, H * W)).astype(np.uint16).reshape(H, W)


@pytest.fixture()
def png16(tmp_path) -> tuple[np.ndarray, Image.Image]:
    """The gradient, written as a 16-bit grayscale PNG and opened again (Pillow: mode "I;16" or "I")."""
    values = gradient16()
    Image.fromarray(values).save(tmp_path / "gradient16.png")
    image = Image.open(tmp_path / "gradient16.png")
    image.load()
    assert image.mode in ("I;16", "I")
    return values, image


def unit(x: torch.Tensor) -> np.ndarray:
    """Model space -> [0, 1] in float64, so the check adds no rounding of its own."""
    return (x.double().numpy() + 1) / 2


def test_16bit_values_preserved_where_8bit_path_quantizes(png16):
    values, image = png16
    crop = values[:, 10:50].astype(np.float64)  # centre crop, no resize (the shorter side is already 40)
    kept = ImageTransform(40, center_crop=True, channels=1, preserve_precision=True)(image)
    plain = ImageTransform(40, center_crop=True, channels=1)(image)
    assert kept.shape == plain.shape == (1, 40, 40) and kept.dtype == torch.float32
    # Kept: v / 65535 to float32 precision (far below one 16-bit step), and every 16-bit value back exactly.
    assert np.abs(unit(kept)[0] - crop / 65535).max() < 0.01 / 65535
    assert np.array_equal(np.round(unit(kept)[0] * 65535), crop)
    v32 = torch.from_numpy((crop / 65535).astype(np.float32))
    assert torch.equal(kept, (2 * v32 - 1)[None])  # x = 2 v - 1 of the float32 values
    # The 8-bit path keeps the high byte: on the 8-bit grid, off by up to 255/65535 of the range.
    u = unit(plain)[0] * 255
    assert np.abs(u - np.round(u)).max() < 1e-4
    assert np.array_equal(np.round(u), crop // 256)
    assert np.abs(unit(plain)[0] - crop / 65535).max() > 200 / 65535
    assert len(np.unique(kept.numpy())) == 1600 and len(np.unique(plain.numpy())) <= 256


def test_resize_works_on_float_values(png16):
    values, image = png16
    t = ImageTransform(20, center_crop=True, channels=1, preserve_precision=True)
    kept = unit(t(image))[0]
    # Reference: the same Pillow bilinear (antialiased) resize of the shorter side to 20, on a mode "F" image.
    as_float = Image.fromarray((values / 65535).astype(np.float32), mode="F")
    ref = np.asarray(as_float.resize((30, 20), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(kept, ref[:, 5:25], rtol=0, atol=1e-6)
    # The 8-bit path resizes the high bytes and rounds to 8 bits: within a bit more than one 8-bit step.
    plain = unit(ImageTransform(20, center_crop=True, channels=1)(image))[0]
    assert np.abs(kept - plain).max() < 1.5 / 255
    assert np.abs(kept * 255 - np.round(kept * 255)).max() > 0.1  # off the 8-bit grid


@pytest.mark.parametrize("channels", [1, 3])
def test_augmentation_parameters_identical_in_both_paths(png16, channels):
    values, image = png16
    kept_t = ImageTransform(40, random_flip=True, channels=channels, seed=3, preserve_precision=True)
    plain_t = ImageTransform(40, random_flip=True, channels=channels, seed=3)
    flips, offsets = set(), set()
    for epoch in (0, 1):
        kept_t.set_epoch(epoch)
        plain_t.set_epoch(epoch)
        for index in range(24):
            kept, plain = kept_t(image, index), plain_t(image, index)
            assert kept.shape == plain.shape == (channels, 40, 40)
            # No resize here, so the 8-bit pixels are exactly the high bytes of the kept 16-bit values: the crop
            # offset and the flip are the same, for every (seed, epoch, index).
            v16 = np.round(unit(kept) * 65535).astype(np.int64)
            assert np.array_equal(v16 >> 8, np.round(unit(plain) * 255).astype(np.int64))
            top, left, flip = plain_t.random_params(W, H, index=index)
            assert (top, left, flip) == kept_t.random_params(W, H, index=index)
            window = values[top : top + 40, left : left + 40]
            assert np.array_equal(v16[0], window[:, ::-1] if flip else window)
            flips.add(flip)
            offsets.add(left)
    assert flips == {False, True} and len(offsets) > 3  # the parameters do vary
    # Without an index (torchvision-like draws from a generator): the same draws in both paths.
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    for _ in range(4):
        kept, plain = kept_t(image, generator=g1), plain_t(image, generator=g2)
        assert np.array_equal(np.round(unit(kept) * 65535).astype(np.int64) >> 8, np.round(unit(plain) * 255))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "1"])
def test_8bit_images_identical_with_and_without_the_flag(mode):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (23, 31, 4), dtype=np.uint8), mode="RGBA").convert(mode)
    for channels in (1, 3):
        for kwargs in ({"center_crop": True}, {"random_flip": True, "seed": 7}):
            a = ImageTransform(16, channels=channels, **kwargs)
            b = ImageTransform(16, channels=channels, preserve_precision=True, **kwargs)
            for index in (None, 0, 5):
                ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
                xa, xb = a(image, index, generator=ga), b(image, index, generator=gb)
                assert torch.equal(xa, xb)
                if index is not None:
                    assert torch.equal(b.to_float(image, index), a.to_uint8(image, index).float() / 255)


def test_float_image():
    values = np.random.default_rng(1).random((12, 16)).astype(np.float32)  # (H, W) in [0, 1)
    values[0, 0], values[-1, -1] = 0.0, 1.0
    image = Image.fromarray(values, mode="F")
    x = ImageTransform(12, center_crop=True, channels=3, preserve_precision=True)(image)
    expected = torch.from_numpy(values[:, 2:14].copy()) * 2 - 1
    assert x.shape == (3, 12, 12)
    assert all(torch.equal(x[c], expected) for c in range(3))  # grayscale copied to the 3 channels
    # Without the flag the same image is rounded to 8 bits (to_8bit: round(255 v)).
    plain = ImageTransform(12, center_crop=True, channels=3)(image)
    assert torch.equal(plain[0], torch.from_numpy(np.asarray(to_8bit(image))[:, 2:14].copy()).float() / 127.5 - 1)
    assert (x - plain).abs().max() > 1e-3
    # Values outside [0, 1] are refused, not clipped (without the flag they are clipped, as before).
    for bad, shown in ((1.5, "to 1.5"), (-0.25, "from -0.25"), (np.nan, "NaN")):
        broken = values.copy()
        broken[3, 3] = bad
        with pytest.raises(ValueError, match=rf"mode 'F'.*values in \[0, 1\].*{shown}"):
            ImageTransform(12, preserve_precision=True)(Image.fromarray(broken, mode="F"))


def test_32bit_integer_image_is_read_as_16_bits():
    values = np.array([[-5, 0, 1, 65535, 70000, 257 * 200]], dtype=np.int32)  # mode "I"
    full = ImageTransform(6, channels=1, preserve_precision=True)
    row = full.to_float(Image.fromarray(np.repeat(values, 6, axis=0), mode="I"), index=0)[0, 0]
    assert np.round(row.double().numpy() * 65535).tolist() == [0, 0, 1, 65535, 65535, 51400]


def test_bad_preserve_precision():
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match=rf"`preserve_precision` must be True or False, got {bad!r}"):
            ImageTransform(8, preserve_precision=bad)
    assert "preserve_precision=True" in repr(build_transform(8, preserve_precision=True))


def test_image_folder_of_16bit_pngs_keeps_precision(tmp_path):
    """The training script's path: imagefolder -> inferred channels -> preprocess_dataset, 16 bits throughout."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.roll(gradient16(), 7 * i, axis=1)[:8, :12]).save(folder / f"{i}.png")  # 12 wide, 8 high
    ds = load_image_dataset(train_data_dir=folder)
    transform = build_transform(8, random_flip=True, dataset=ds, seed=0, preserve_precision=True)
    assert transform.channels == 1
    x = torch.stack([row["input"] for row in preprocess_dataset(ds, transform)])  # (3, 1, 8, 8)
    v16 = unit(x) * 65535  # random 8 x 8 crops, no resize: whole 16-bit values ...
    assert np.abs(v16 - np.round(v16)).max() < 0.02
    assert np.abs(unit(x) * 255 - np.round(unit(x) * 255)).max() > 0.1  # ... not on the 8-bit grid


def _tiny_16bit_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs16"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(np.roll(gradient16(), 5 * i, axis=1)[:10, :10]).save(folder / f"{i}.png")
    return folder


def test_build_data_forwards_the_flags(tmp_path):
    assert {"dataset_config_name", "preserve_input_precision"} <= set(RESUME_MUST_MATCH)
    folder = _tiny_16bit_folder(tmp_path)
    args = parse_args(["--train_data_dir", str(folder), "--preserve_input_precision", "--center_crop"])
    transform, train = build_data(args, load_data(args), 8, 1)
    assert transform.preserve_precision
    x = train[0]["input"]
    assert np.abs(unit(x) * 255 - np.round(unit(x) * 255)).max() > 0.1
    args = parse_args(["--train_data_dir", str(folder), "--dataset_config_name", "cifar10"])
    with pytest.raises(ValueError, match=r"`config_name`='cifar10' applies only to Hub data sets"):
        load_data(args)


def run_script(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT)] + args, cwd=ROOT, env=dict(os.environ), capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.mark.slow
def test_training_script_end_to_end(tmp_path):
    out = tmp_path / "out"
    tiny = ["--model_config", "tiny", "--resolution", "8", "--train_batch_size", "4", "--eval_batch_size", "4",
            "--ddpm_num_inference_steps", "2", "--ddpm_num_steps", "20", "--lr_warmup_steps", "1", "--random_flip"]
    result = run_script(tiny + ["--train_data_dir", str(_tiny_16bit_folder(tmp_path)), "--preserve_input_precision",
                                "--max_train_steps", "2", "--checkpointing_steps", "2", "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr[-4000:]
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    config = json.loads((out / "checkpoint-2" / "training_state.json").read_text())["config"]
    assert config["preserve_input_precision"] is True and config["dataset_config_name"] is None
    # The flag must match on resume, and --dataset_config_name is refused for a built-in data set.
    resumed = run_script(tiny + ["--train_data_dir", str(tmp_path / "imgs16"), "--max_train_steps", "4",
                                 "--output_dir", str(out), "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 2
    assert "--preserve_input_precision is False here but True in the checkpoint" in resumed.stderr
    refused = run_script(tiny + ["--dataset_config_name", "cifar10", "--max_train_steps", "2",
                                 "--output_dir", str(tmp_path / "o")])
    assert refused.returncode == 2
    assert "error: `config_name`='cifar10' applies only to Hub data sets" in refused.stderr
    assert "built-in data set 'mnist-5k'" in refused.stderr and not (tmp_path / "o" / "model_index.json").exists()
