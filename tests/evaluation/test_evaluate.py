"""The evaluate command: end to end on a tiny random pipeline, sampler specs, and every bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.commands.evaluate import build_parser, main
from ddpm_ext.evaluation.evaluate import EvaluationConfig, SamplerSpec, evaluate, parse_sampler
from ddpm_ext.seeding import image_generators
from ddpm_ext.images import make_grid


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    """A randomly initialised 8x8 grayscale UNet with T = 20 (cosine), saved like a trained pipeline."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("pipe")
    DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=20, beta_schedule="cosine")).save_pretrained(folder)
    return folder


def quick_eval(pipeline, tmp_path, *extra: str) -> dict:
    """`evaluate` with small defaults (no bits/dim, DDIM-5) that `extra` overrides (argparse keeps the last value)."""
    argv = [str(pipeline), "--stats_cache_dir", str(tmp_path / "stats"), "--no_progress", "--num_bpd_images", "0",
            "--samplers", "ddim:5:0", *extra]
    return evaluate(build_parser().parse_args(argv))


def test_evaluate_end_to_end(tiny_pipeline, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = [
        str(tiny_pipeline), "--num_bpd_images", "3", "--max_real_images", "16", "--num_samples", "12",
        "--kid_subset_size", "6", "--kid_subsets", "10", "--samplers", "ddim:5:0", "ddpm-noz:4", "ddpm:20:fixed_large",
        "--batch_size", "5", "--stats_cache_dir", str(tmp_path / "stats"), "--output_dir", str(out), "--no_progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    markdown = (out / "results.md").read_text()
    assert printed.strip() == markdown.strip()

    # bits/dim: both fixed variances from one set of UNet calls, per-image bound = prior + terms
    bpd = {r["variance_type"]: r for r in results["bits_per_dim"]}
    assert list(bpd) == ["fixed_small", "fixed_large"]
    for r in bpd.values():
        assert r["num_images"] == 3 and math.isfinite(r["bits_per_dim"]) and r["bits_per_dim"] > r["decoder"] > 0
        assert 0 <= r["prior"] < 1e-3  # cosine T = 20: ᾱ_T ≈ 0
        assert r["sem"] > 0 and r["wall_time_s"] > 0 and r["wall_time_shared_by"] == ["fixed_small", "fixed_large"]
    assert bpd["fixed_small"]["decoder"] == pytest.approx(bpd["fixed_large"]["decoder"])  # same σ² at the first step

    # FID / KID rows, labelled as not comparable to published FIDs
    rows = {r["sampler"]: r for r in results["samples"]}
    assert list(rows) == ["ddim:5:0", "ddpm-noz:4", "ddpm:20:fixed_large"]
    label = "EfficientNet-Lite0 FID — NOT comparable to published (Inception) FIDs"
    for r in rows.values():
        assert r["num_fake"] == 12 and r["num_real"] == 16 and r["kid_subset_size"] == 6
        assert math.isfinite(r["fid"]) and r["fid"] > 1.0  # random weights: far from digits
        assert math.isfinite(r["kid_mean"]) and r["kid_std"] >= 0 and r["label"] == label
        assert r["comparable_to_published"] is False and r["wall_time_s"] > 0
    assert rows["ddim:5:0"]["adds_noise"] is False and rows["ddpm-noz:4"]["adds_noise"] is False
    assert rows["ddpm:20:fixed_large"]["adds_noise"] is True
    assert rows["ddpm:20:fixed_large"]["variance_type"] == "fixed_large"
    assert results["feature_extractor"]["label"] == label and label in markdown
    assert "| ddim:5:0 | 5 | 0 | no | 12 |" in markdown and "| fixed_small |" in markdown
    assert results["reference"]["cache_hit"] is False and results["reference"]["num_images"] == 16

    # one grid per sampler: the evaluated samples themselves (image i from its own generator, any batch size)
    for r in rows.values():
        grid = Image.open(out / r["grid"])
        assert grid.mode == "L" and grid.size == (4 * 10 + 2, 3 * 10 + 2)  # 12 images of 8x8, 4 per row, padding 2
    pipe = DDPMExtPipeline.from_pretrained(tiny_pipeline)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = parse_sampler("ddim:5:0").build(pipe.scheduler.config)
    direct = pipe(batch_size=12, generator=image_generators(0, 0, 12), num_inference_steps=5, eta=0.0,
                  output_type="pt").images
    expected = make_grid((direct * 255).round().to(torch.uint8), nrow=4)
    assert np.array_equal(np.asarray(Image.open(out / rows["ddim:5:0"]["grid"])), np.asarray(expected))

    # a second run reads the cached reference features and reproduces the numbers
    again = quick_eval(tiny_pipeline, tmp_path, "--num_bpd_images", "0", "--max_real_images", "16", "--num_samples",
                     "12", "--kid_subset_size", "6", "--kid_subsets", "10", "--samplers", "ddim:5:0", "--batch_size", "12")
    assert again["reference"]["cache_hit"] is True and again["reference"]["cache_file"] == results["reference"]["cache_file"]
    assert again["bits_per_dim"] == [] and again["files"] == {}
    assert again["samples"][0]["fid"] == pytest.approx(rows["ddim:5:0"]["fid"], rel=1e-6)
    assert again["samples"][0]["kid_mean"] == pytest.approx(rows["ddim:5:0"]["kid_mean"], rel=1e-6)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("ddpm:1000", SamplerSpec("ddpm", 1000)),
        ("ddpm:50:fixed_large", SamplerSpec("ddpm", 50, variance_type="fixed_large")),
        ("ddpm-noz:100", SamplerSpec("ddpm-noz", 100)),
        ("ddim:50", SamplerSpec("ddim", 50, eta=0.0)),
        ("DDIM:10:1", SamplerSpec("ddim", 10, eta=1.0)),
        ("ddim:10:0.5", SamplerSpec("ddim", 10, eta=0.5)),
    ],
)
def test_parse_sampler(spec, expected):
    parsed = parse_sampler(spec)
    assert parsed == expected
    assert parse_sampler(parsed.spec) == parsed  # the canonical spec round-trips
    assert "/" not in parsed.slug and ":" not in parsed.slug


@pytest.mark.parametrize(
    "spec, why",
    [
        ("ddim:ten", "STEPS must be an integer"),
        ("ddim:10:2", r"ETA must be a number in \[0, 1\], got 2"),
        ("ddim:0", "STEPS must be an integer >= 1, got 0"),
        ("euler:10", r"unknown kind 'euler' \(allowed kinds: \['ddpm', 'ddpm-noz', 'ddim', 'dpmpp', 'unipc'\]\)"),
        ("ddpm-noz:10:fixed_large", "wrong number of fields for 'ddpm-noz'"),
        ("ddpm:10:other", r"VARIANCE must be one of \['fixed_small'"),
        ("ddpm", "wrong number of fields"),
        ("", "empty"),
    ],
)
def test_parse_sampler_rejects_bad_specs(spec, why):
    with pytest.raises(ValueError, match=f"`--samplers` {spec!r}: {why}.*Allowed: ddpm:STEPS"):
        parse_sampler(spec)


def test_bad_sampler_spec_is_an_argparse_error(tiny_pipeline, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tiny_pipeline), "--samplers", "ddim:ten"])
    assert exit_info.value.code == 2
    assert "argument --samplers: Bad sampler spec `--samplers` 'ddim:ten'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--samplers", "ddpm:50"], r"'ddpm:50': 50 steps is more than the pipeline's num_train_timesteps=20; allowed STEPS: 1..20"),
        (["--samplers", "ddpm:20:learned_range"], r"'ddpm:20:learned_range' does not fit this pipeline.*out_channels"),
        (["--num_samples", "10", "--kid_subset_size", "20"], r"`--kid_subset_size` 20 is larger .*--num_samples 10 and 500 real images.*2..10"),
        (["--num_samples", "50", "--kid_subset_size", "20", "--max_real_images", "8"], r"--num_samples 50 and 8 real images.*allowed: 2..8"),
        (["--dataset", "mnist5k"], r"did you mean 'mnist-5k'"),
        (["--dataset", "./no_such_folder"], r"`train_data_dir` does not exist: './no_such_folder'"),
        (["--dataset", "mnist-5k", "--split", "validation"], r"has the splits \['train', 'test', 'all'\], got split='validation'"),
        (["--variance_types", "learned_range"], r"`--variance_types` \['learned_range'\] includes a learned variance.*out_channels=1"),
        (["--num_bpd_images", "501"], r"`--num_bpd_images` 501 is more than the 500 images of 'mnist-5k' \(split 'test'\)"),
        (["--samplers", "ddim:5:0", "ddim:5"], r"lists a sampler twice: \['ddim:5:0', 'ddim:5:0'\]"),
        (["--inception_weights", "w.pth"], r"only used with feature_extractor='inception'"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "nonsense"], r"`--device`"),
    ],
)
def test_bad_inputs_name_the_argument_value_and_allowed(tiny_pipeline, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        quick_eval(tiny_pipeline, tmp_path, *extra)


def test_channel_mismatch_and_missing_pipeline(tiny_pipeline, tmp_path):
    folder = tmp_path / "rgb"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (40 * i, 0, 255)).save(folder / f"{i}.png")
    with pytest.raises(ValueError, match=r"Channel mismatch: `--dataset` .*rgb' has RGB images \(3 channel\(s\)\) but the model .* takes 1"):
        quick_eval(tiny_pipeline, tmp_path, "--dataset", str(folder))
    with pytest.raises(ValueError, match="neither an existing folder nor a Hub repo id"):
        quick_eval(tmp_path / "no" / "pipeline", tmp_path)
    with pytest.raises(ValueError, match="has no model_index.json"):
        quick_eval(folder, tmp_path)


@pytest.mark.slow
def test_python_m_evaluate_runs(tiny_pipeline, tmp_path):
    cmd = [sys.executable, "-m", "ddpm_ext", "evaluate", str(tiny_pipeline), "--num_bpd_images", "2", "--num_samples", "0",
           "--output_dir", str(tmp_path / "out"), "--no_progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| fixed_small |" in done.stdout and (tmp_path / "out" / "results.json").is_file()


def test_clip_denoised_option(tiny_pipeline, tmp_path):
    """bits/dim clips x̂_0 as the sampler does by default (the scheduler's clip_sample); --clip_denoised overrides."""
    auto = quick_eval(tiny_pipeline, tmp_path, "--num_bpd_images", "2", "--num_samples", "0")
    off = quick_eval(tiny_pipeline, tmp_path, "--num_bpd_images", "2", "--num_samples", "0", "--clip_denoised", "false")
    assert [r["clip_denoised"] for r in auto["bits_per_dim"]] == [True, True]
    assert [r["clip_denoised"] for r in off["bits_per_dim"]] == [False, False]
    assert "x̂₀ clipped" in auto["markdown"] and "x̂₀ not clipped" in off["markdown"]
    assert auto["bits_per_dim"][0]["bits_per_dim"] != off["bits_per_dim"][0]["bits_per_dim"]


def test_evaluate_from_python_config_equals_the_command(tiny_pipeline, tmp_path):
    """`evaluate(EvaluationConfig(...))` needs no argparse and gives the command's numbers."""
    from ddpm_ext.evaluation.evaluate import EvaluationConfig

    stats = str(tmp_path / "stats")
    config = EvaluationConfig(tiny_pipeline, num_bpd_images=2, num_samples=6, kid_subset_size=3, kid_subsets=4,
                              max_real_images=8, samplers=["ddim:5:0"], stats_cache_dir=stats, no_progress=True)
    assert config.samplers == [SamplerSpec("ddim", 5, eta=0.0)]
    with pytest.warns(UserWarning, match=r"FID from 8 real and 6 generated images is not a meaningful number.*at least 1280 images"):
        direct = evaluate(config)
    with pytest.warns(UserWarning, match="not a meaningful number"):
        command = quick_eval(tiny_pipeline, tmp_path, "--num_bpd_images", "2", "--num_samples", "6", "--kid_subset_size",
                             "3", "--kid_subsets", "4", "--max_real_images", "8")
    assert direct["samples"][0]["fid"] == pytest.approx(command["samples"][0]["fid"], rel=1e-9)
    assert direct["bits_per_dim"][0]["bits_per_dim"] == pytest.approx(command["bits_per_dim"][0]["bits_per_dim"], rel=1e-9)
    assert direct["config"]["samplers"] == ["ddim:5:0"] and direct["config"]["num_samples"] == 6
    # the command line takes its defaults from the config: one place
    defaults = EvaluationConfig.defaults()
    parsed = vars(build_parser().parse_args([str(tiny_pipeline)]))
    assert all(parsed[k] == v for k, v in defaults.items() if k != "samplers") and parsed["samplers"] == ["ddim:50:0"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_bpd_images": -1}, r"`num_bpd_images` must be an integer >= 0, got -1"),
        ({"batch_size": 0}, r"`batch_size` must be an integer >= 1, got 0"),
        ({"kid_subset_size": 1}, r"`kid_subset_size` must be an integer >= 2, got 1"),
        ({"num_samples": 2.5}, r"`num_samples` must be an integer >= 0, got 2.5"),
        ({"max_real_images": 1}, r"`max_real_images` must be an integer >= 2, got 1"),
        ({"clip_denoised": "maybe"}, r"`clip_denoised` must be one of \['auto', 'true', 'false'\], got 'maybe'"),
        ({"variance_types": ["other"]}, r"`variance_types` must be one of \['fixed_small'"),
        ({"feature_extractor": "clip"}, r"`feature_extractor` must be one of \['efficientnet-lite0', 'inception'\]"),
        ({"samplers": ["ddim:0"]}, r"STEPS must be an integer >= 1, got 0"),
        ({"pipeline": ""}, r"`pipeline` must be a folder or a Hub repo id"),
    ],
)
def test_config_rejects_bad_values_on_construction(kwargs, message):
    from ddpm_ext.evaluation.evaluate import EvaluationConfig

    with pytest.raises(ValueError, match=message):
        EvaluationConfig(**{"pipeline": "outputs/mnist", **kwargs})


def test_evaluation_reads_16bit_images_at_8_bits(tiny_pipeline, tmp_path):
    """A folder of full-range 16-bit PNGs is scaled to 8 bits (Pillow alone would clip it to white)."""
    from ddpm_ext.evaluation.evaluate import EvaluationConfig, load_evaluation

    folder = tmp_path / "gray16"
    folder.mkdir()
    values = np.round(np.linspace(0, 65535, 64)).astype(np.uint16).reshape(8, 8)
    for i in range(3):
        Image.fromarray(values if i == 0 else 65535 - values).save(folder / f"{i}.png")
    run = load_evaluation(EvaluationConfig(tiny_pipeline, dataset=str(folder), num_bpd_images=3, num_samples=0))
    pixels = run.pixels(np.arange(3))  # uint8 (3, 1, 8, 8), files in sorted order
    assert np.array_equal(pixels[0, 0].numpy(), values >> 8)
    assert np.array_equal(pixels[1, 0].numpy(), (65535 - values) >> 8)


def test_docstring_examples():
    import doctest

    import ddpm_ext.evaluation.evaluate as evaluate_mod

    result = doctest.testmod(evaluate_mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_a_class_conditional_pipeline_is_refused_before_any_work(tmp_path):
    from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet

    DDPMExtPipeline(unet=build_unet("tiny", num_class_embeds=3), scheduler=DDPMExtScheduler(num_train_timesteps=10)).save_pretrained(tmp_path / "cond")
    with pytest.raises(ValueError, match="class-conditional pipeline; `ddpm-ext evaluate` scores unconditional ones only"):
        evaluate(EvaluationConfig(pipeline=str(tmp_path / "cond"), num_bpd_images=1, num_samples=0))
