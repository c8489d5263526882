"""ddpm_ext.images: the value conventions and the 8-bit reading of 16-bit and float images, on every read path."""

from __future__ import annotations

import doctest
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm_ext.images as images_mod
from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.data import ImageTransform, build_transform, load_image_dataset
from ddpm_ext.images import (
    GRAY_MODES,
    HIGH_PRECISION_MODES,
    convert_image,
    from_unit,
    images_to_uint8,
    normalize,
    to_8bit,
    to_pil,
    to_uint8,
    to_unit,
    to_unit_float,
)

SIDE = 256


def gradient16() -> np.ndarray:
    """(SIDE, SIDE) uint16 covering the full 16-bit range: 0 at the top-left, 65535 at the bottom-right."""
    return np.round(np.linspace(0, 65535, SIDE * SIDE)).astype(np.uint16).reshape(SIDE, SIDE)


def png_rgb16(arr: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG of `arr` (H, W, 3) uint16, written by hand (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # bit depth 16, colour type 2 (RGB)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.fixture()
def png16(tmp_path):
    """A full-range 16-bit grayscale gradient saved as PNG and opened again, and the expected 8-bit pixels."""
    values = gradient16()
    path = tmp_path / "gray16" / "gradient.png"
    path.parent.mkdir()
    Image.fromarray(values).save(path)
    return path, (values >> 8).astype(np.uint8)


def test_16bit_png_is_scaled_not_clipped(png16):
    path, expected = png16
    with Image.open(path) as im:
        assert im.mode == "I;16"
        clipped = np.asarray(im.convert("L"))  # Pillow's own conversion: everything above 255 becomes white
        assert (clipped == 255).mean() > 0.99
        got = np.asarray(to_8bit(im))
    assert got.dtype == np.uint8 and got.min() == 0 and got.max() == 255
    np.testing.assert_array_equal(got, expected)
    assert abs(got.mean() - 127.5) < 0.6  # a uniform ramp keeps its mid-grey mean
    assert np.array_equal(np.asarray(convert_image(Image.open(path), "L")), expected)
    rgb = np.asarray(convert_image(Image.open(path), "RGB"))
    assert rgb.shape == (SIDE, SIDE, 3) and all(np.array_equal(rgb[..., c], expected) for c in range(3))


def test_other_high_bit_depth_modes():
    values = gradient16()
    expected = (values >> 8).astype(np.uint8)
    big_endian = Image.frombytes("I;16B", (SIDE, SIDE), values.astype(">u2").tobytes())
    assert big_endian.mode == "I;16B" and np.array_equal(np.asarray(to_8bit(big_endian)), expected)
    as_int32 = Image.fromarray(values.astype(np.int32))
    assert as_int32.mode == "I" and np.array_equal(np.asarray(to_8bit(as_int32)), expected)
    # 8-bit pixels stored as 16 bits (v = 257 u) come back exactly
    u = np.arange(256, dtype=np.uint16).reshape(16, 16)
    assert np.array_equal(np.asarray(to_8bit(Image.fromarray(u * 257))), u)
    # "I" values outside 0..65535 are clipped to that range
    assert np.asarray(to_8bit(Image.fromarray(np.array([[-5, 70000]], dtype=np.int32)))).tolist() == [[0, 255]]
    # float images are read as [0, 1]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0, 2.0]], dtype=np.float32))
    assert f.mode == "F" and np.asarray(to_8bit(f)).tolist() == [[0, 128, 255, 255]]
    with pytest.raises(ValueError, match="NaN or infinite"):
        to_8bit(Image.fromarray(np.array([[np.nan]], dtype=np.float32)))
    # 8-bit modes are untouched
    l8 = Image.new("L", (2, 2), 7)
    assert to_8bit(l8) is l8


def test_to_unit_float_keeps_16_bits(png16):
    path, _ = png16
    values = gradient16()
    with Image.open(path) as im:
        got = to_unit_float(im)
    assert got.dtype == np.float32 and got.shape == (SIDE, SIDE)
    assert np.array_equal(np.round(got.astype(np.float64) * 65535), values)  # every one of the 65536 levels
    assert np.abs(got - values / 65535).max() < 1e-7
    assert len(np.unique(got)) == 65536  # to_8bit keeps 256 of them
    big_endian = Image.frombytes("I;16B", (SIDE, SIDE), values.astype(">u2").tobytes())
    assert np.array_equal(to_unit_float(big_endian), got)
    assert np.array_equal(to_unit_float(Image.fromarray(values.astype(np.int32))), got)  # mode "I"
    clipped = to_unit_float(Image.fromarray(np.array([[-5, 70000, 257 * 3]], dtype=np.int32)))
    assert clipped.tolist() == [[0.0, 1.0, np.float32(3 / 255)]]  # "I" clipped to 0..65535; 257 u -> u / 255
    f = np.array([[0.0, 1e-6, 0.5, 1.0]], dtype=np.float32)
    assert np.array_equal(to_unit_float(Image.fromarray(f)), f)  # "F": the values themselves
    for bad in (1.0001, -1e-3, np.inf, np.nan):
        with pytest.raises(ValueError, match=r"mode 'F'\) image must hold values in \[0, 1\]"):
            to_unit_float(Image.fromarray(np.array([[0.5, bad]], dtype=np.float32)))
    for mode in ("L", "RGB", "RGBA", "P", "1"):
        with pytest.raises(ValueError, match=rf"got mode '{mode}'; 8-bit images go through `convert_image`"):
            to_unit_float(Image.new(mode, (2, 2)))
    assert HIGH_PRECISION_MODES <= GRAY_MODES  # so infer_channels reads them as grayscale


def test_16bit_rgb_png_agrees_with_grayscale(tmp_path):
    values = gradient16()[:64]  # (64, 256)
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_rgb16(np.stack([values, 65535 - values, values], axis=-1)))
    with Image.open(path) as im:
        assert im.mode == "RGB"  # Pillow reduces 16-bit colour to 8 bits itself, by the high byte
        got = np.asarray(convert_image(im, "RGB"))
    np.testing.assert_array_equal(got[..., 0], values >> 8)
    np.testing.assert_array_equal(got[..., 1], (65535 - values) >> 8)


def test_every_read_path_scales_16bit(png16, tmp_path):
    path, expected = png16
    # training folders: datasets' imagefolder -> ImageTransform (grayscale inferred from mode I;16)
    ds = load_image_dataset(train_data_dir=path.parent)
    transform = build_transform(SIDE, center_crop=True, dataset=ds)
    assert transform.channels == 1
    assert np.array_equal(transform.to_uint8(ds[0]["image"])[0].numpy(), expected)
    torch.testing.assert_close(transform(ds[0]["image"]), normalize(torch.from_numpy(expected))[None])
    # the pipeline's preprocess (bits_per_dim): resized to the model's 8x8, from the 8-bit image
    pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=10))
    with Image.open(path) as im:
        x = pipe.preprocess([im])
    reference = ImageTransform(8, center_crop=True, channels=1)(Image.fromarray(expected))
    torch.testing.assert_close(x[0], reference, rtol=0, atol=0)
    assert float(x.max()) > 0.5 and float(x.min()) < -0.5  # not a clipped, all-white image
    # grids of PIL images
    assert np.array_equal(images_to_uint8([Image.open(path)])[0, ..., 0], expected)


def test_value_conventions_round_trip():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = normalize(u)
    assert x.dtype == torch.float32 and float(x.min()) == -1.0 and float(x.max()) == 1.0
    torch.testing.assert_close(x, u.float() / 127.5 - 1, rtol=0, atol=0)
    assert torch.equal(to_uint8(x), u)  # [-1, 1] -> uint8, exact on the 8-bit grid
    y = to_unit(x)
    assert float(y.min()) == 0.0 and float(y.max()) == 1.0 and torch.equal(to_uint8(y, (0, 1)), u)
    torch.testing.assert_close(from_unit(y), x, rtol=0, atol=1e-6)
    assert torch.equal(to_unit(torch.tensor([-3.0, 3.0])), torch.tensor([0.0, 1.0]))  # clipped
    # NumPy arrays follow the same rule, in float32, as diffusers' numpy_to_pil
    arr = np.random.default_rng(0).random((2, 5, 5, 3), dtype=np.float32)
    assert np.array_equal(to_uint8(arr, (0, 1)), (arr * 255).round().astype(np.uint8))
    assert np.array_equal(normalize(u.numpy()), x.numpy())
    pils = to_pil(arr)
    assert [p.mode for p in pils] == ["RGB", "RGB"] and np.array_equal(np.asarray(pils[1]), to_uint8(arr, (0, 1))[1])
    assert to_pil(arr[..., :1])[0].mode == "L"
    for bad in ((1, 1), (0,), "x", (0, float("inf"))):
        with pytest.raises(ValueError, match="`value_range` must be"):
            to_uint8(arr, bad)
    with pytest.raises(ValueError, match="uint8 or floating point"):
        to_uint8(torch.zeros(2, dtype=torch.int64))


def test_pipeline_postprocess_uses_the_same_rule():
    pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=10))
    sample = torch.linspace(-1.2, 1.2, 2 * 64).view(2, 1, 8, 8)
    pt = pipe.postprocess(sample, "pt")
    torch.testing.assert_close(pt, (sample / 2 + 0.5).clamp(0, 1), rtol=0, atol=0)
    arr = pipe.postprocess(sample, "np")
    assert arr.shape == (2, 8, 8, 1)
    pil = pipe.postprocess(sample, "pil")
    assert pil[0].mode == "L" and np.array_equal(np.asarray(pil[1]), to_uint8(sample, (-1, 1))[1, 0].numpy())
    assert [np.asarray(p).tolist() for p in pil] == [np.asarray(p).tolist() for p in pipe.numpy_to_pil(arr)]


def test_docstring_examples():
    result = doctest.testmod(images_mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
