"""Class-conditional training: labels from data sets, null-class dropout rate, the conditional UNet, the script's
flags and errors, and a briefly trained model whose requested classes a hand-written classifier recognises."""

from __future__ import annotations

import argparse
import json
import math

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ddpm_ext import DDIMExtScheduler, DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.data import load_image_dataset
from ddpm_ext.images import save_image_grid
from ddpm_ext.pipelines.guidance import balanced_class_labels, class_names
from ddpm_ext.seeding import image_generators
from ddpm_ext.training.conditioning import (
    Conditioning,
    dataset_class_labels,
    drop_labels,
    make_class_conditional,
)
from ddpm_ext.training.flags import add_conditioning_arguments, check_conditioning_args
from ddpm_ext.training.outputs import sample_grid_call
from ddpm_ext.training.train import main, training_step

# a tiny UNet on 8x8 MNIST crops (as tests/training/test_training.py): seconds per run
TINY = ["--model_config", "tiny", "--resolution", "8", "--train_batch_size", "8", "--max_train_samples", "48",
        "--ddpm_num_inference_steps", "4", "--ddpm_num_steps", "100", "--lr_warmup_steps", "2"]


# --------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------
def test_mnist_labels_are_the_digits():
    ds = load_image_dataset("mnist-5k", max_train_samples=50, seed=0)
    ids, names = dataset_class_labels(ds)
    assert names == [str(d) for d in range(10)]
    assert ids.tolist() == list(ds["label"])


def test_image_folder_classes_are_its_sub_folders(tmp_path):
    for name, value in (("cats", 0), ("dogs", 255)):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("L", (8, 8), value).save(tmp_path / name / f"{i}.png")
    ds = load_image_dataset(train_data_dir=tmp_path)
    ids, names = dataset_class_labels(ds)
    assert names == ["cats", "dogs"]
    pixels = [np.asarray(im).mean() for im in ds["image"]]
    assert [names[i] for i in ids.tolist()] == ["cats" if p == 0 else "dogs" for p in pixels]


def test_label_columns_of_other_types():
    ds = datasets.Dataset.from_dict({"kind": ["dog", "cat", "dog"], "n": [2, 0, 1]})
    assert dataset_class_labels(ds, "kind")[0].tolist() == [1, 0, 1]
    ids, names = dataset_class_labels(ds, "n")
    assert ids.tolist() == [2, 0, 1] and names == ["0", "1", "2"]


@pytest.mark.parametrize(
    "data, column, match",
    [
        ({"image": [0, 1]}, None, "needs class labels, but the data set has no column 'label'"),
        ({"label": [0, 1]}, "y", "`label_column` needs class labels, but the data set has no column 'y'"),
        ({"label": [0, -1]}, None, "negative ids"),
        ({"label": [0, 0]}, None, "holds 1 class"),
        ({"label": [0.5, 1.0]}, None, "must be a ClassLabel"),
    ],
)
def test_bad_label_columns(data, column, match):
    with pytest.raises(ValueError, match=match):
        dataset_class_labels(datasets.Dataset.from_dict(data), column)


def test_unlabelled_class_label_rows_are_refused():
    features = datasets.Features({"label": datasets.ClassLabel(names=["a", "b"])})
    with pytest.raises(ValueError, match="without a label"):
        dataset_class_labels(datasets.Dataset.from_dict({"label": [0, -1]}, features=features))


# --------------------------------------------------------------------------------------------------
# Dropout into the null class
# --------------------------------------------------------------------------------------------------
def test_dropout_rate_matches_the_probability():
    n, p, null = 200_000, 0.1, 10
    labels = torch.arange(n) % 10
    out = drop_labels(labels, p, null, torch.Generator().manual_seed(0))
    dropped = int((out == null).sum())
    # dropped ~ Binomial(n, p): mean n p = 20,000, sd sqrt(n p (1-p)) = 134.2; 5 sd leaves a 6e-7 chance of a
    # false failure for a correct implementation, and catches any rate off by more than 0.0034.
    assert abs(dropped - n * p) < 5 * math.sqrt(n * p * (1 - p))
    kept = out != null
    assert torch.equal(out[kept], labels[kept])  # the others keep their label
    again = drop_labels(labels, p, null, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # a pure function of the step's generator: resume stays exact
    assert not (drop_labels(labels, 0.0, null, torch.Generator().manual_seed(0)) == null).any()


def test_labelled_rows_through_a_data_loader():
    ds = datasets.Dataset.from_dict({"x": list(range(6))}).with_format("torch")
    cond = Conditioning(torch.tensor([0, 1, 2, 0, 1, 2]), ["a", "b", "c"], 0.0)
    loader = torch.utils.data.DataLoader(cond.attach(ds), batch_size=3)
    batches = list(loader)
    assert batches[0]["class_label"].tolist() == [0, 1, 2] and batches[1]["x"].tolist() == [3, 4, 5]
    assert cond.batch_labels(batches[0], torch.Generator().manual_seed(0)).tolist() == [0, 1, 2]


# --------------------------------------------------------------------------------------------------
# The conditional UNet
# --------------------------------------------------------------------------------------------------
def test_make_class_conditional_keeps_every_weight():
    torch.manual_seed(0)
    plain = build_unet("tiny")
    cond = make_class_conditional(plain, ["a", "b", "c"], seed=0)
    assert cond.config.num_class_embeds == 4 and class_names(cond) == ["a", "b", "c"]
    state = cond.state_dict()
    for key, value in plain.state_dict().items():
        assert torch.equal(state[key], value), key
    assert state["class_embedding.weight"].shape == (4, plain.config.block_out_channels[0] * 4)
    assert make_class_conditional(cond, ["x", "y", "z"], seed=0) is cond and class_names(cond) == ["x", "y", "z"]
    with pytest.raises(ValueError, match="conditional on 3 classes .* the data has 2"):
        make_class_conditional(cond, ["a", "b"], seed=0)


def test_sample_grid_has_a_row_per_class():
    unet = build_unet("tiny", num_class_embeds=11)
    call, nrow, order = sample_grid_call(unet, 64, 2.0)
    assert nrow == 6 and call["batch_size"] == 60 and call["guidance_scale"] == 2.0
    assert call["class_labels"] == [i % 10 for i in range(60)]  # evaluate's pairing of image i and class
    assert sorted(order) == list(range(60))
    shown = [call["class_labels"][i] for i in order]
    assert shown == [c for c in range(10) for _ in range(6)]  # displayed one row per class
    assert order[:6] == [0, 10, 20, 30, 40, 50]  # row 0: images 0, K, 2K, ... in index order
    assert sample_grid_call(build_unet("tiny"), 64) == ({"batch_size": 64}, None, None)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--label_column", "y"], "--label_column needs --class_conditional"),
        (["--guidance_scale", "2"], "--guidance_scale needs --class_conditional"),
        (["--class_conditional", "--class_dropout_prob", "1"], r"--class_dropout_prob must be in \[0, 1\)"),
        (["--class_conditional", "--guidance_scale", "-1"], "--guidance_scale must be a finite number >= 0"),
        (["--class_conditional", "--guidance_scale", "nan"], "--guidance_scale must be a finite number >= 0"),
    ],
)
def test_bad_flags(argv, match, capsys):
    parser = argparse.ArgumentParser()
    add_conditioning_arguments(parser)
    with pytest.raises(ValueError, match=match):
        check_conditioning_args(parser.parse_args(argv))


# --------------------------------------------------------------------------------------------------
# The training script
# --------------------------------------------------------------------------------------------------
def test_script_trains_a_conditional_model(tmp_path):
    out = tmp_path / "out"
    argv = TINY + ["--class_conditional", "--max_train_steps", "2", "--eval_batch_size", "20", "--guidance_scale", "2",
                   "--output_dir", str(out)]
    assert main(argv) == 0
    pipe = DDPMExtPipeline.from_pretrained(out)
    assert pipe.id2label == {d: str(d) for d in range(10)} and pipe.unet.config.num_class_embeds == 11
    info = json.loads((out / "training_info.json").read_text())
    assert info["num_classes"] == 10 and info["class_dropout_prob"] == 0.1
    grid = Image.open(out / "samples.png")  # 10 rows (one per digit) of 2 images of 8 px, padding 2
    assert grid.size == (2 + 2 * 10, 2 + 10 * 10)
    # the grid's images are the 20 `ddpm-ext evaluate` draws first: image i asked for digit i mod 10, from the
    # package's seeding rule; row d shows images d and d + 10 (within one grey level: thread counts may differ)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=20, class_labels=balanced_class_labels(20, 10), guidance_scale=2.0, num_inference_steps=4,
                  generator=image_generators(0, 0, 20), output_type="np").images
    shown = np.asarray(save_image_grid(images[[i for d in range(10) for i in (d, d + 10)]], tmp_path / "g.png", 2))
    assert np.abs(np.asarray(grid).astype(int) - shown.astype(int)).max() <= 1
    swapped = np.asarray(save_image_grid(images, tmp_path / "h.png", 2))  # the draw order is not the display order
    assert np.abs(np.asarray(grid).astype(int) - swapped.astype(int)).max() > 10


def test_script_refuses_data_without_labels_before_training(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.new("L", (8, 8), 40 * i).save(tmp_path / "images" / f"{i}.png")
    out = tmp_path / "out"
    code = main(["--model_config", "tiny", "--class_conditional", "--train_data_dir", str(tmp_path / "images"),
                 "--output_dir", str(out)])
    assert code == 2 and "needs class labels" in capsys.readouterr().err
    assert not out.exists() or not any(out.glob("checkpoint-*"))


# --------------------------------------------------------------------------------------------------
# A briefly trained model: requested classes are recognised well above chance
# --------------------------------------------------------------------------------------------------
def synthetic_classes(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 images in [-1, 1]: class 0 bright top half, 1 bright bottom half, 2 bright left half, plus noise."""
    labels = torch.randint(0, 3, (n,), generator=generator)
    x = -torch.ones(n, 1, 8, 8)
    x[labels == 0, :, :4, :] = 1
    x[labels == 1, :, 4:, :] = 1
    x[labels == 2, :, :, :4] = 1
    return (x + 0.1 * torch.randn(x.shape, generator=generator)).clamp(-1, 1), labels


def judge(images: torch.Tensor) -> torch.Tensor:
    """The hand-written classifier: which half is brightest (top, bottom, left)."""
    x = images[:, 0]
    halves = torch.stack([x[:, :4].mean((1, 2)), x[:, 4:].mean((1, 2)), x[:, :, :4].mean((1, 2))], 1)
    return halves.argmax(1)


def test_judge_is_exact_on_the_training_data():
    x, y = synthetic_classes(300, torch.Generator().manual_seed(1))
    assert torch.equal(judge(x), y)


@pytest.fixture
def one_thread():
    """One torch thread for the test, the process's count restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow  # 300 training steps
def test_briefly_trained_model_draws_the_requested_classes(one_thread):
    torch.manual_seed(0)
    scheduler = DDPMExtScheduler(num_train_timesteps=100, beta_schedule="cosine")
    unet = make_class_conditional(build_unet("tiny"), ["top", "bottom", "left"], seed=0)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=3e-3)
    data_gen = torch.Generator().manual_seed(0)
    for step in range(300):
        g = torch.Generator().manual_seed(step)
        x, y = synthetic_classes(32, data_gen)
        loss = training_step(unet, scheduler, x, g, loss_type="simple", class_labels=drop_labels(y, 0.1, 3, g))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    pipe = DDPMExtPipeline(unet=unet.eval(), scheduler=DDIMExtScheduler.from_config(scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    requested = torch.arange(3).repeat_interleave(10)
    accuracy = {}
    for w in (0.0, 1.0, 2.0):
        images = pipe(batch_size=30, class_labels=requested, guidance_scale=w, num_inference_steps=20,
                      generator=torch.manual_seed(0), output_type="pt").images * 2 - 1
        accuracy[w] = (judge(images) == requested).float().mean().item()
    # chance is 1/3; the conditional and guided samples are the requested class (measured: 1.0 and 1.0; after
    # only 300 steps a stronger w = 3 overshoots and mixes up top and bottom: 0.7)
    assert accuracy[1.0] >= 0.8 and accuracy[2.0] >= 0.8, accuracy
    assert accuracy[0.0] < 0.6, accuracy  # w = 0 ignores the label: about chance (measured 0.33)


def test_resumed_conditional_run_equals_an_uninterrupted_one(tmp_path):
    """Label dropout comes from the step's generator: 2 steps + resume to 4 give the weights of 4 straight steps."""
    # --cpu_threads 1: compared bit for bit, so all three runs must sum in the same order ("auto" may change the
    # thread count mid-run on a busy machine); same process, same thread count: exact by construction
    common = TINY + ["--class_conditional", "--class_dropout_prob", "0.5", "--checkpointing_steps", "2",
                     "--eval_batch_size", "10", "--no-use_ema", "--cpu_threads", "1"]
    assert main(common + ["--max_train_steps", "4", "--output_dir", str(tmp_path / "straight")]) == 0
    assert main(common + ["--max_train_steps", "2", "--output_dir", str(tmp_path / "resumed")]) == 0
    assert main(common + ["--max_train_steps", "4", "--output_dir", str(tmp_path / "resumed"),
                          "--resume_from_checkpoint", "latest"]) == 0
    a, b = (load_file(tmp_path / d / "unet" / "diffusion_pytorch_model.safetensors") for d in ("straight", "resumed"))
    assert a.keys() == b.keys() and "class_embedding.weight" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_fine_tuning_a_conditional_pipeline_needs_the_flag(tmp_path, capsys):
    unet = build_unet("tiny", num_class_embeds=11)
    DDPMExtPipeline(unet=unet, scheduler=DDPMExtScheduler(num_train_timesteps=100)).save_pretrained(tmp_path / "cond")
    fixed = ("--ddpm_num_steps", "--model_config")  # the pretrained pipeline fixes them
    finetune = [a for i, a in enumerate(TINY) if a not in fixed and TINY[i - 1] not in fixed]
    code = main(finetune + ["--pretrained_model_name_or_path", str(tmp_path / "cond"), "--dataset_name", "mnist-5k",
                            "--output_dir", str(tmp_path / "out")])
    assert code == 2 and "is class-conditional (10 classes" in capsys.readouterr().err
