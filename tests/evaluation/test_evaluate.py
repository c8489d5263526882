"""The evaluate command: end to end on a tiny random pipeline, sampler specs, and every bad input."""

from __future__ import annotations

import doctest
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm_ext.evaluation.config as config_mod
import ddpm_ext.evaluation.evaluate as evaluate_mod
import ddpm_ext.evaluation.samplers as samplers_mod
from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.commands.evaluate import build_parser, main
from ddpm_ext.evaluation.class_scores import class_accuracy
from ddpm_ext.evaluation.config import EvaluationConfig
from ddpm_ext.evaluation.digit_classifier import DigitClassifier
from ddpm_ext.evaluation.evaluate import evaluate, judge_scores, load_evaluation
from ddpm_ext.evaluation.report import model_card_metrics, model_index_results
from ddpm_ext.evaluation.samplers import SamplerSpec, parse_sampler
from ddpm_ext.images import make_grid
from ddpm_ext.likelihood import bits_per_dim_variances
from ddpm_ext.pipelines.guidance import AUTOGUIDANCE_SCALE_KEY, balanced_class_labels, set_class_names
from ddpm_ext.seeding import image_generators


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    """A randomly initialised 8x8 grayscale UNet with T = 20 (cosine), saved like a trained pipeline."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("pipe")
    DDPMExtPipeline(unet=build_unet("tiny"),
                    scheduler=DDPMExtScheduler(num_train_timesteps=20, beta_schedule="cosine")).save_pretrained(folder)
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
    # within 1 level: evaluate sampled in batches of 5 (adaptive threads), this in one of 12; other float32 kernels
    # may round a pixel the other way. Other samples would differ by tens of levels.
    grid = np.asarray(Image.open(out / rows["ddim:5:0"]["grid"])).astype(int)
    assert np.abs(grid - np.asarray(expected).astype(int)).max() <= 1

    # a second run reads the cached reference features and reproduces the numbers
    again = quick_eval(tiny_pipeline, tmp_path, "--num_bpd_images", "0", "--max_real_images", "16", "--num_samples",
                     "12", "--kid_subset_size", "6", "--kid_subsets", "10", "--samplers", "ddim:5:0",
                     "--batch_size", "12")
    assert (again["reference"]["cache_hit"] is True
            and again["reference"]["cache_file"] == results["reference"]["cache_file"])
    assert again["bits_per_dim"] == [] and again["files"] == {}
    # batches of 12 against batches of 5: a pixel may round the other way on other float32 kernels (see above), which
    # moves FID/KID far less than 1e-3 relative; other samples or other reference features move them by far more
    assert again["samples"][0]["fid"] == pytest.approx(rows["ddim:5:0"]["fid"], rel=1e-3)
    assert again["samples"][0]["kid_mean"] == pytest.approx(rows["ddim:5:0"]["kid_mean"], rel=1e-3)


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
        (["--samplers", "ddpm:50"],
         r"'ddpm:50': 50 steps is more than the pipeline's num_train_timesteps=20; allowed STEPS: 1..20"),
        (["--samplers", "ddpm:20:learned_range"], r"'ddpm:20:learned_range' does not fit this pipeline.*out_channels"),
        (["--num_samples", "10", "--kid_subset_size", "20"],
         r"`--kid_subset_size` 20 is larger .*--num_samples 10 and 500 real images.*2..10"),
        (["--num_samples", "50", "--kid_subset_size", "20", "--max_real_images", "8"],
         r"--num_samples 50 and 8 real images.*allowed: 2..8"),
        (["--dataset", "mnist5k"], r"did you mean 'mnist-5k'"),
        (["--dataset", "./no_such_folder"], r"`train_data_dir` does not exist: './no_such_folder'"),
        (["--dataset", "mnist-5k", "--split", "validation"],
         r"has the splits \['train', 'test', 'all'\], got split='validation'"),
        (["--variance_types", "learned_range"],
         r"`--variance_types` \['learned_range'\] includes a learned variance.*out_channels=1"),
        (["--num_bpd_images", "501"],
         r"`--num_bpd_images` 501 is more than the 500 images of 'mnist-5k' \(split 'test'\)"),
        (["--samplers", "ddim:5:0", "ddim:5"], r"lists a sampler twice: \['ddim:5:0', 'ddim:5:0'\]"),
        (["--inception_weights", "w.pth"], r"only used with feature_extractor='inception'"),
        (["--samplers", "ddim:5:0:ag=2"],
         r"'ddim:5:0:ag=2' does not fit this pipeline: `autoguidance_scale`=2.0 needs a guide model"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "nonsense"], r"`--device`"),
    ],
)
def test_bad_inputs_name_the_argument_value_and_allowed(tiny_pipeline, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        quick_eval(tiny_pipeline, tmp_path, *extra)


def test_earlier_results_are_kept_unless_overwrite(tiny_pipeline, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text("{}")
    with pytest.raises(ValueError, match=r"`--output_dir`: '.*results.json' already exist\(s\); pass --overwrite"):
        evaluate(EvaluationConfig(tiny_pipeline, num_samples=0, num_bpd_images=0, output_dir=out))
    assert (out / "results.json").read_text() == "{}"


def test_channel_mismatch_and_missing_pipeline(tiny_pipeline, tmp_path):
    folder = tmp_path / "rgb"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (40 * i, 0, 255)).save(folder / f"{i}.png")
    with pytest.raises(ValueError, match=r"Channel mismatch: `--dataset` .*rgb' has RGB images \(3 channel\(s\)\) "
                                         r"but the model .* takes 1"):
        quick_eval(tiny_pipeline, tmp_path, "--dataset", str(folder))
    with pytest.raises(ValueError, match="neither an existing folder nor a Hub repo id"):
        quick_eval(tmp_path / "no" / "pipeline", tmp_path)
    with pytest.raises(ValueError, match="has no model_index.json"):
        quick_eval(folder, tmp_path)


@pytest.mark.slow
def test_python_m_evaluate_runs(tiny_pipeline, tmp_path):
    cmd = [sys.executable, "-m", "ddpm_ext", "evaluate", str(tiny_pipeline), "--num_bpd_images", "2",
           "--num_samples", "0", "--output_dir", str(tmp_path / "out"), "--no_progress"]
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
    stats = str(tmp_path / "stats")
    # one thread in both runs ("auto" may change the count mid-run on a busy machine): the same batches in the
    # same process and thread count give the same numbers up to the last bits of FID's eigendecomposition
    config = EvaluationConfig(tiny_pipeline, num_bpd_images=2, num_samples=6, kid_subset_size=3, kid_subsets=4,
                              max_real_images=8, samplers=["ddim:5:0"], stats_cache_dir=stats, no_progress=True,
                              cpu_threads=1)
    assert config.samplers == [SamplerSpec("ddim", 5, eta=0.0)]
    with pytest.warns(UserWarning,
                      match=r"FID from 8 real and 6 generated images is not a meaningful number.*at least 1280 images"):
        direct = evaluate(config)
    with pytest.warns(UserWarning, match="not a meaningful number"):
        command = quick_eval(tiny_pipeline, tmp_path, "--num_bpd_images", "2", "--num_samples", "6",
                             "--kid_subset_size", "3", "--kid_subsets", "4", "--max_real_images", "8",
                             "--cpu_threads", "1")
    assert direct["samples"][0]["fid"] == pytest.approx(command["samples"][0]["fid"], rel=1e-9)
    assert direct["bits_per_dim"][0]["bits_per_dim"] == pytest.approx(command["bits_per_dim"][0]["bits_per_dim"],
                                                                       rel=1e-9)
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
        ({"seed": 2**32}, r"`seed` must be an integer in \[0, 4294967295\], got 4294967296"),
        ({"seed": -1}, r"`seed` must be an integer in \[0, 4294967295\], got -1"),
        ({"output_dir": ""}, r"`output_dir` must be a non-empty path, got ''"),
        ({"overwrite": "yes"}, r"`overwrite` must be True or False, got 'yes'"),
    ],
)
def test_config_rejects_bad_values_on_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EvaluationConfig(**{"pipeline": "outputs/mnist", **kwargs})


def test_evaluation_reads_16bit_images_at_8_bits(tiny_pipeline, tmp_path):
    """A folder of full-range 16-bit PNGs is scaled to 8 bits (Pillow alone would clip it to white)."""
    folder = tmp_path / "gray16"
    folder.mkdir()
    values = np.round(np.linspace(0, 65535, 64)).astype(np.uint16).reshape(8, 8)
    for i in range(3):
        Image.fromarray(values if i == 0 else 65535 - values).save(folder / f"{i}.png")
    run = load_evaluation(EvaluationConfig(tiny_pipeline, dataset=str(folder), num_bpd_images=3, num_samples=0))
    pixels = run.pixels(np.arange(3))  # uint8 (3, 1, 8, 8), files in sorted order
    assert np.array_equal(pixels[0, 0].numpy(), values >> 8)
    assert np.array_equal(pixels[1, 0].numpy(), (65535 - values) >> 8)


def test_a_folder_named_relative_to_the_working_directory_evaluates(tiny_pipeline, tmp_path, monkeypatch):
    """`--dataset pets` (what a training run's end summary prints for `--train_data_dir pets`), not only './pets'."""
    (tmp_path / "pets" / "cats").mkdir(parents=True)
    for i in range(3):
        Image.new("L", (8, 8), 80 * i).save(tmp_path / "pets" / "cats" / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    run = load_evaluation(EvaluationConfig(tiny_pipeline, dataset="pets", num_bpd_images=3, num_samples=0))
    assert [int(p[0, 0, 0]) for p in run.pixels(np.arange(3))] == [0, 80, 160]


def test_docstring_examples():
    for module in (config_mod, evaluate_mod, samplers_mod):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted > 0, module.__name__


# ----------------------------------------------------------------------------------------------------------
# Class-conditional pipelines: balanced labels, guidance scales, class accuracy, bits/dim under the null class
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digit_pipeline(tmp_path_factory):
    """A randomly initialised 8x8 grayscale UNet for the 10 digits (+ the null class, id 10), T = 20 (cosine)."""
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("cond")
    unet = build_unet("tiny", num_class_embeds=11).eval()
    DDPMExtPipeline(unet=unet,
                    scheduler=DDPMExtScheduler(num_train_timesteps=20, beta_schedule="cosine")).save_pretrained(folder)
    return folder


def record_pipeline_calls(monkeypatch) -> list[dict]:
    """Record the keyword arguments of every DDPMExtPipeline call (then call it)."""
    calls, call = [], DDPMExtPipeline.__call__

    def recording(self, *args, **kwargs):
        calls.append({"scheduler": type(self.scheduler).__name__, **kwargs})
        return call(self, *args, **kwargs)

    monkeypatch.setattr(DDPMExtPipeline, "__call__", recording)
    return calls


def test_balanced_class_labels():
    assert balanced_class_labels(12, 10) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert balanced_class_labels(4, 10, start=8) == [8, 9, 0, 1]  # a batch starting at image 8
    assert balanced_class_labels(0, 3) == []
    with pytest.raises(ValueError, match="`num_classes` must be an integer >= 1, got 0"):
        balanced_class_labels(3, 0)


def test_a_class_conditional_pipeline_evaluates_end_to_end(digit_pipeline, tmp_path, monkeypatch):
    calls = record_pipeline_calls(monkeypatch)
    out = tmp_path / "eval"
    argv = [str(digit_pipeline), "--num_bpd_images", "2", "--max_real_images", "16", "--num_samples", "12",
            "--kid_subset_size", "6", "--kid_subsets", "4", "--samplers", "ddim:4:1", "ddpm:5",
            "--guidance_scales", "0", "2", "--batch_size", "5", "--nearest_k", "3",
            "--stats_cache_dir", str(tmp_path / "stats"), "--output_dir", str(out), "--no_progress"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    markdown = (out / "results.md").read_text()

    # every (sampler, w) is a row, in order; image i was asked for digit i mod 10 whatever the batch (5, 5, 2)
    rows = results["samples"]
    assert [(r["sampler"], r["guidance_scale"]) for r in rows] == [("ddim:4:1", 0.0), ("ddim:4:1", 2.0),
                                                                    ("ddpm:5", 0.0), ("ddpm:5", 2.0)]
    assert len(calls) == 4 * 3 and [c["batch_size"] for c in calls] == [5, 5, 2] * 4
    for i, row in enumerate(rows):
        mine = calls[3 * i : 3 * i + 3]
        assert [label for c in mine for label in c["class_labels"]] == [i % 10 for i in range(12)]
        assert {c["guidance_scale"] for c in mine} == {row["guidance_scale"]}
        ddim = row["kind"] == "ddim"  # DDIM gets the consistent ε̂ (the pipeline's default), DDPM does not need it
        assert all("use_clipped_model_output" not in c for c in mine)
        assert row["use_clipped_model_output"] is (True if ddim else None)
        assert 0.0 <= row["class_accuracy"] <= 1.0 and "class_accuracy_skipped" not in row
        assert math.isfinite(row["fid"]) and row["num_fake"] == 12
    assert results["conditioning"]["num_classes"] == 10 and results["conditioning"]["class_accuracy_skipped"] is None

    # the class accuracy is the judge's verdict on exactly these samples (DDPM-5, w = 2, recomputed directly)
    pipe = DDPMExtPipeline.from_pretrained(digit_pipeline)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = parse_sampler("ddpm:5").build(pipe.scheduler.config)
    requested = [i % 10 for i in range(12)]
    direct = pipe(batch_size=12, generator=image_generators(0, 0, 12), num_inference_steps=5, class_labels=requested,
                  guidance_scale=2.0, output_type="pt").images
    probs = DigitClassifier.pretrained().predict_proba((direct * 255).round().to(torch.uint8))
    assert rows[3]["class_accuracy"] == pytest.approx(class_accuracy(probs, torch.tensor(requested)))
    # the grid holds those samples, one digit per column (10 per row)
    expected = make_grid((direct * 255).round().to(torch.uint8), nrow=10)
    grid = np.asarray(Image.open(out / rows[3]["grid"])).astype(int)  # batches of 5 vs 12: within 1 level (above)
    assert np.abs(grid - np.asarray(expected).astype(int)).max() <= 1
    assert rows[3]["grid"] == "samples_ddpm-5-w2.png" and rows[0]["grid"] == "samples_ddim-4-eta1-w0.png"

    # bits/dim under the null class (id 10): a direct computation on the same held-out images agrees
    assert [r["class_label"] for r in results["bits_per_dim"]] == [10, 10]
    run = load_evaluation(EvaluationConfig(digit_pipeline, num_bpd_images=2, num_samples=0))
    x0 = run.pixels(run.order[:2]) / 127.5 - 1
    ref = bits_per_dim_variances(pipe.unet, pipe.scheduler, x0, ["fixed_small", "fixed_large"],
                                 generator=torch.Generator().manual_seed(0), batch_size=5, clip_denoised=True,
                                 class_labels=[10, 10])
    for r in results["bits_per_dim"]:
        assert r["bits_per_dim"] == pytest.approx(float(ref[r["variance_type"]].total.mean()), rel=1e-6)

    # the table shows w and the class accuracy; the text says which labels were used
    assert "| sampler | w | steps |" in markdown and "| class accuracy |" in markdown
    assert "| ddpm:5 | 2 | 5 | – | yes | 12 |" in markdown
    assert "class label ∅ = 10, the null class" in markdown and "image i is asked for class i mod K" in markdown
    assert "--guidance_scales 0.0 2.0" in results["command"]
    # and so does the model card's compact table
    card = model_card_metrics(results, date="2026-01-02")
    assert "| sampler | w | FID | KID ×10³ | precision | recall | class accuracy | classifier IS |" in card
    r = rows[3]
    assert (f"| ddpm:5 | 2 | {r['fid']:.2f} | {1e3 * r['kid_mean']:.2f} ± {1e3 * r['kid_std']:.2f} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | {r['class_accuracy']:.3f} | "
            f"{r['classifier_is']:.2f} |") in card
    assert "under the null class ∅ (id 10)" in card and "| real images (16) | – | – | – | – | – | – |" in card
    # and the card's model-index: one entry per number, the row's sampler and w in its name
    index = {(e.metric_type, e.metric_name): e.metric_value for e in model_index_results(results)}
    assert index[("accuracy", "class accuracy (ddpm:5, w = 2)")] == r["class_accuracy"]
    assert index[("fid", f"FID (ddpm:5, w = 2; {results['feature_extractor']['label']})")] == r["fid"]


def test_class_accuracy_of_hand_made_judgements():
    class Judge:  # known probabilities: argmax 3, 3, 7, 1, 0
        def predict_proba(self, images, batch_size):
            logits = torch.full((5, 10), -5.0)
            logits[torch.arange(5), torch.tensor([3, 3, 7, 1, 0])] = 5.0
            return logits.double().softmax(1)

    images = torch.zeros(5, 1, 8, 8, dtype=torch.uint8)
    scores = judge_scores(Judge(), images, requested=torch.tensor([3, 4, 7, 1, 9]))
    assert scores["class_accuracy"] == 0.6 and scores["classes_present"] == 4  # 3 of 5 read as asked
    assert "class_accuracy" not in judge_scores(Judge(), images)  # no labels: no accuracy


def test_class_accuracy_is_skipped_with_the_reason_for_classes_that_are_not_digits(tmp_path):
    torch.manual_seed(0)
    unet = build_unet("tiny", num_class_embeds=3).eval()
    set_class_names(unet, ["dark", "bright"])
    DDPMExtPipeline(unet=unet, scheduler=DDPMExtScheduler(num_train_timesteps=10)).save_pretrained(tmp_path / "cond")
    common = [str(tmp_path / "cond"), "--stats_cache_dir", str(tmp_path / "stats"), "--no_progress", "--num_bpd_images",
              "0", "--samplers", "ddim:2:0", "--num_samples", "4", "--kid_subset_size", "3", "--kid_subsets", "2",
              "--max_real_images", "8", "--nearest_k", "0", "--num_grid_images", "0"]
    with pytest.warns(UserWarning, match="not a meaningful number"):
        results = evaluate(build_parser().parse_args(common))
    row = results["samples"][0]
    assert row["guidance_scale"] == 1.0  # the default: p(x | y), as `ddpm-ext sample`
    assert row["class_accuracy"] is None and "are not the digits '0'..'9'" in row["class_accuracy_skipped"]
    assert "'dark', 'bright'" in results["conditioning"]["class_accuracy_skipped"]
    assert "Class accuracy skipped" in results["markdown"] and "| class accuracy |" not in results["markdown"]
    assert "classifier_is" in row  # the judge's other scores are still there
    with pytest.warns(UserWarning, match="not a meaningful number"):
        off = evaluate(build_parser().parse_args(common + ["--digit_judge", "off"]))
    assert "the digit judge is off (`digit_judge` is 'off')" in off["samples"][0]["class_accuracy_skipped"]


@pytest.mark.parametrize(
    "value, message",
    [
        ([-1.0], r"`guidance_scales` must be a number >= 0, got -1.0"),
        ([1.0, float("nan")], r"`guidance_scales` must be a number >= 0, got nan"),
        ([float("inf")], r"`guidance_scales` must be a number >= 0, got inf"),
        ([], r"`guidance_scales` must be a non-empty list"),
        ("2", r"`guidance_scales` must be a non-empty list of finite numbers >= 0 \(or None\), got '2'"),
        ([2, 2.0], r"`--guidance_scales` lists a scale twice: \[2.0, 2.0\]"),
    ],
)
def test_bad_guidance_scales_are_refused_on_construction(value, message):
    with pytest.raises(ValueError, match=message):
        EvaluationConfig("outputs/mnist", guidance_scales=value)


def test_bad_guidance_is_a_command_line_error_before_any_work(tiny_pipeline, digit_pipeline, tmp_path, monkeypatch,
                                                              capsys):
    loaded = []
    monkeypatch.setattr(evaluate_mod, "_load_data", lambda *a: loaded.append(a) or pytest.fail("data was loaded"))
    calls = record_pipeline_calls(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main([str(digit_pipeline), "--guidance_scales", "-0.5", "--no_progress"])
    assert exit_info.value.code == 2 and "`guidance_scales` must be a number >= 0, got -0.5" in capsys.readouterr().err
    # guidance for an unconditional pipeline, even w = 1: refused once the pipeline is known, before the data
    for w in ("2", "1"):
        with pytest.raises(ValueError, match=rf"`--guidance_scales` \[{w}.0\] needs a class-conditional pipeline, "
                                             r"but .* is unconditional .*drop --guidance_scales"):
            evaluate(EvaluationConfig(tiny_pipeline, guidance_scales=[float(w)], no_progress=True))
    assert loaded == [] and calls == []
    # a class embedding without ddpm_ext's null class cannot be evaluated
    DDPMExtPipeline(unet=build_unet("tiny", num_class_embeds=1),
                    scheduler=DDPMExtScheduler(num_train_timesteps=10)).save_pretrained(tmp_path / "one")
    with pytest.raises(ValueError, match=r"cannot be evaluated: A conditional UNet needs `num_class_embeds` >= 2"):
        evaluate(EvaluationConfig(tmp_path / "one", no_progress=True))
    assert loaded == [] and calls == []


def test_autoguided_rows_record_the_scale_used(tmp_path, monkeypatch):
    """The guide's saved w by default, a spec's ag=W otherwise; the pipeline gets exactly that w."""
    torch.manual_seed(2)
    guide = build_unet("tiny").eval()
    guide.register_to_config(**{AUTOGUIDANCE_SCALE_KEY: 2.5})
    folder = tmp_path / "guided"
    DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=20, beta_schedule="cosine"),
                    guide_unet=guide).save_pretrained(folder)
    calls = record_pipeline_calls(monkeypatch)
    results = quick_eval(folder, tmp_path, "--samplers", "ddim:5:0", "ddim:5:0:ag=1", "ddim:5:0:ag=4",
                         "--num_samples", "4", "--kid_subset_size", "2", "--max_real_images", "8",
                         "--digit_judge", "off")
    assert [r["autoguidance_scale"] for r in results["samples"]] == [2.5, 1.0, 4.0]
    assert [c.get("autoguidance_scale") for c in calls] == [None, 1.0, 4.0]  # None: the pipeline's default, 2.5
    table = results["markdown"]
    assert "| ddim:5:0 (autoguidance 2.5) |" in table and "| ddim:5:0:ag=1 |" in table and "| ddim:5:0:ag=4 |" in table
    first, unguided = results["samples"][0], results["samples"][1]
    assert first["fid"] != unguided["fid"]  # other images
