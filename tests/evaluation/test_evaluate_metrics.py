"""`ddpm-ext evaluate`'s precision/recall/density/coverage, digit-judge and mean-pixel columns, and
`--update_model_card` (the card's metrics section replaced in place), on the 16x16 grayscale tiny pipeline."""

from __future__ import annotations

import datetime
import doctest
import json
import shutil

import numpy as np
import pytest
import torch

from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.commands.evaluate import build_parser, main
from ddpm_ext.data import build_transform, load_mnist_5k
from ddpm_ext.evaluation import report
from ddpm_ext.evaluation.class_scores import class_coverage, classifier_inception_score
from ddpm_ext.evaluation.config import EvaluationConfig
from ddpm_ext.evaluation.digit_classifier import DigitClassifier
from ddpm_ext.evaluation.evaluate import (
    evaluate,
    load_evaluation,
    reference_features,
    sample_images,
    score_reference,
    score_samples,
)
from ddpm_ext.evaluation.features import extract_features
from ddpm_ext.evaluation.precision_recall import precision_recall_density_coverage
from ddpm_ext.evaluation.report import (
    METRICS_END,
    METRICS_START,
    evaluation_command,
    model_card_metrics,
    replace_marked_section,
    update_model_card,
)

# cpu_threads=1: the tests sample again and compare with the run's row exactly; "auto" may change the thread count
# (and so the float sums of the convolutions) between the two samplings on a busy machine
SMALL = dict(num_bpd_images=2, max_real_images=12, num_samples=10, kid_subset_size=5, kid_subsets=5,
             samplers=["ddim:3:0"], nearest_k=3, batch_size=10, no_progress=True, cpu_threads=1)


@pytest.fixture(scope="module")
def small_run(tiny_pipeline_dir, tmp_path_factory):
    """One evaluation of the tiny pipeline with the judge (auto: 1 channel) and k = 3, written to a folder."""
    stats = tmp_path_factory.mktemp("stats")
    out = tmp_path_factory.mktemp("eval")
    config = EvaluationConfig(tiny_pipeline_dir, stats_cache_dir=str(stats), output_dir=str(out), **SMALL)
    with pytest.warns(UserWarning, match="not a meaningful number"):
        results = evaluate(config)
    return config, results, out


def test_new_columns_equal_the_metrics_called_directly(small_run):
    config, results, _ = small_run
    row = results["samples"][0]
    # the same samples and reference, through the steps
    run = load_evaluation(config)
    samples = sample_images(run, "ddim:3:0")
    reference = reference_features(run)
    assert reference.cache_hit is True and reference.num_images == 12

    feats = extract_features(run.extractor, samples.images, batch_size=10)
    expected = precision_recall_density_coverage(reference.features, feats, nearest_k=3)
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, abs=1e-12)
    assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1 and 0 <= row["coverage"] <= 1
    assert row["density"] >= 0 and row["nearest_k"] == 3 and row["prdc_skipped"] is None

    judge = DigitClassifier.pretrained()
    probs = judge.predict_proba(samples.images)
    coverage = class_coverage(probs)
    assert row["classifier_is"] == pytest.approx(classifier_inception_score(probs), rel=1e-12)
    assert row["classes_present"] == coverage.num_present and row["class_counts"] == list(coverage.counts)
    assert row["class_entropy"] == pytest.approx(coverage.normalized_entropy, rel=1e-12)
    assert sum(row["class_counts"]) == 10 and 1.0 <= row["classifier_is"] <= 10.0
    assert row["mean_pixel"] == pytest.approx(samples.images.double().mean().item() / 255, rel=1e-12)

    # score_samples on these samples gives the evaluate row (FID too): one definition
    # same process, same thread count, same samples, same functions: equal up to nothing but summation order
    direct = score_samples(run, samples, reference)
    for key in ("fid", "kid_mean", "precision", "recall", "density", "coverage", "classifier_is", "mean_pixel"):
        assert direct[key] == pytest.approx(row[key], rel=1e-9)


def test_real_reference_row_is_the_judge_on_the_held_out_digits(small_run):
    """The ceiling row: the same 12 real digits (seeded subset of the test split), at 16x16, scored by the judge."""
    _, results, _ = small_run
    rows = np.sort(np.random.default_rng(0).permutation(500)[:12])
    to_pixels = build_transform(16, center_crop=True, channels=1).to_uint8
    test = load_mnist_5k(split="test")
    real = torch.stack([to_pixels(test[int(r)]["image"]) for r in rows])  # uint8 (12, 1, 16, 16)
    probs = DigitClassifier.pretrained().predict_proba(real)
    ref = results["digit_judge"]["reference"]
    assert ref["num_images"] == 12
    assert ref["classifier_is"] == pytest.approx(classifier_inception_score(probs), rel=1e-12)
    assert ref["classes_present"] == class_coverage(probs).num_present
    assert ref["mean_pixel"] == pytest.approx(real.double().mean().item() / 255, rel=1e-12)
    assert 0.05 < ref["mean_pixel"] < 0.3  # MNIST: mostly black background
    assert results["digit_judge"]["heldout_accuracy"] == pytest.approx(0.984)


def test_results_files_carry_the_new_columns(small_run):
    _, results, out = small_run
    saved = json.loads((out / "results.json").read_text())
    row = saved["samples"][0]
    for key in ("fid", "kid_mean", "kid_std", "num_fake", "label", "precision", "recall", "density", "coverage",
                "nearest_k", "mean_pixel", "classifier_is", "classes_present", "class_entropy"):
        assert key in row
    assert saved["digit_judge"]["reference"]["num_images"] == 12
    markdown = (out / "results.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| sampler |"))
    assert header == ("| sampler | steps | η | noise z | samples | FID | KID ×10³ | ± std | precision | recall | "
                      "density | coverage | mean pixel | classifier IS | digits present | class entropy | "
                      "wall time (s) | grid |")
    ref = results["digit_judge"]["reference"]
    assert f"| real images | – | – | – | 12 | – | – | – | – | – | – | – | {ref['mean_pixel']:.3f} | " in markdown
    r = results["samples"][0]
    assert (f"| ddim:3:0 | 3 | 0 | no | 10 | {r['fid']:.2f} | {1e3 * r['kid_mean']:.2f} | {1e3 * r['kid_std']:.2f} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | {r['density']:.3f} | {r['coverage']:.3f} | ") in markdown
    assert "k = 3" in markdown


def test_judge_off_and_too_few_images_for_k(tiny_pipeline_dir, tmp_path):
    config = EvaluationConfig(tiny_pipeline_dir, stats_cache_dir=str(tmp_path), **{**SMALL, "num_bpd_images": 0,
                              "nearest_k": 5, "num_samples": 6, "kid_subset_size": 3, "digit_judge": "off"})
    with pytest.warns(UserWarning, match=r"skipped: too few images for nearest_k=5: 6 samples and 12 real images, "
                                         r"each set needs >= 7"):
        results = evaluate(config)
    row = results["samples"][0]
    assert row["precision"] is None and row["coverage"] is None and "too few images" in row["prdc_skipped"]
    assert "classifier_is" not in row and "digit_judge" not in results and math_finite(row["mean_pixel"])
    assert "PRDC skipped: too few images" in results["markdown"] and "classifier IS" not in results["markdown"]
    # k = 0 turns them off without a warning
    off = EvaluationConfig(tiny_pipeline_dir, stats_cache_dir=str(tmp_path), **{**SMALL, "num_bpd_images": 0,
                           "nearest_k": 0, "digit_judge": "off"})
    run = load_evaluation(off)
    assert run.prdc_skip_reason == "nearest_k = 0" and run.judge is None


def math_finite(x) -> bool:
    return x is not None and np.isfinite(x)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"nearest_k": -1}, r"`nearest_k` must be an integer >= 0, got -1"),
        ({"digit_judge": "maybe"}, r"`digit_judge` must be one of \['auto', 'on', 'off'\], got 'maybe'"),
        ({"update_model_card": "yes"}, r"`update_model_card` must be True or False, got 'yes'"),
    ],
)
def test_config_rejects_bad_new_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EvaluationConfig("outputs/mnist", **kwargs)


def test_digit_judge_on_needs_a_grayscale_model(tmp_path):
    folder = tmp_path / "rgb_pipe"
    unet = build_unet("tiny", in_channels=3, out_channels=3)
    DDPMExtPipeline(unet=unet, scheduler=DDPMExtScheduler(num_train_timesteps=20)).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"`--digit_judge` 'on' needs a 1-channel .* makes 3-channel images; "
                                         r"allowed for it: auto, off"):
        load_evaluation(EvaluationConfig(folder, digit_judge="on", num_samples=10, kid_subset_size=5))


# ----------------------------------------------------------------------------------------------------------
# The model card
# ----------------------------------------------------------------------------------------------------------

CARD_HEAD = "---\r\nlicense: mit\r\n---\r\n# A tiny DDPM\r\n\r\n## Metrics\r\n\r\n"
CARD_TAIL = "\r\n\r\n## Data attribution\r\n\r\nmnist-5k ✓\r\n"


def card_pipeline(tiny_pipeline_dir, tmp_path, middle="\nNo evaluation has been run yet.\n"):
    folder = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline_dir, folder)
    (folder / "README.md").write_bytes((CARD_HEAD + METRICS_START + middle + METRICS_END + CARD_TAIL).encode())
    return folder


def test_update_model_card_replaces_only_the_marked_section(tiny_pipeline_dir, tmp_path, capsys):
    folder = card_pipeline(tiny_pipeline_dir, tmp_path)
    argv = [str(folder), "--num_bpd_images", "2", "--max_real_images", "12", "--num_samples", "10",
            "--kid_subset_size", "5", "--kid_subsets", "5", "--samplers", "ddim:3:0", "--nearest_k", "3",
            "--stats_cache_dir", str(tmp_path / "stats"), "--no_progress", "--update_model_card"]
    with pytest.warns(UserWarning, match="not a meaningful number"):
        assert main(argv) == 0
    assert f"Model card updated: {folder / 'README.md'}" in capsys.readouterr().err
    raw = (folder / "README.md").read_bytes()
    head, tail = (CARD_HEAD + METRICS_START).encode(), (METRICS_END + CARD_TAIL).encode()
    assert raw.startswith(head) and raw.endswith(tail)  # byte-identical outside the markers (CRLF kept)
    section = raw[len(head) : -len(tail)].decode()
    assert "No evaluation has been run yet." not in section
    assert "EfficientNet-Lite0 FID — NOT comparable to published (Inception) FIDs" in section
    assert "| fixed_small |" in section and "| fixed_large |" in section and "| ddim:3:0 |" in section
    assert "| sampler | FID | KID ×10³ | precision | recall | classifier IS |" in section
    assert "| real images (12) |" in section and "k = 3" in section
    assert datetime.datetime.now(datetime.UTC).date().isoformat() in section
    command = next(line for line in section.splitlines() if line.startswith("ddpm-ext evaluate "))
    assert "--update_model_card" in command and "--nearest_k 3" in command and "--samplers ddim:3:0" in command
    # the recorded command parses back to the same configuration
    again = EvaluationConfig.from_namespace(build_parser().parse_args(command.split()[2:]))
    assert evaluation_command(again) == command

    # a second update replaces the section again: still one pair of markers, the outside unchanged
    results = {"dataset": "mnist-5k", "split": "test", "image_size": 16, "channels": 1, "bits_per_dim": [],
               "samples": [], "command": "ddpm-ext evaluate x"}
    update_model_card(folder, results, date="2026-01-02")
    raw = (folder / "README.md").read_bytes()
    assert raw.startswith(head) and raw.endswith(tail) and raw.count(METRICS_START.encode()) == 1
    assert raw[len(head) : -len(tail)].decode() == "\n" + model_card_metrics(results, date="2026-01-02") + "\n"


@pytest.mark.parametrize(
    "setup, message",
    [
        ("hub", r"needs a local pipeline folder, but `pipeline` 'someone/tiny-ddpm' is not a folder"),
        ("no_readme", r"has no README.md \(model card\)"),
        ("no_markers",
         r"must contain each metrics marker exactly once .*found '<!-- ddpm_ext:metrics:start -->' 0 time"),
        ("twice", r"found '<!-- ddpm_ext:metrics:end -->' 2 time"),
    ],
)
def test_update_model_card_bad_inputs_fail_before_any_work(tiny_pipeline_dir, tmp_path, setup, message):
    folder = card_pipeline(tiny_pipeline_dir, tmp_path)
    pipeline: str = str(folder)
    if setup == "hub":
        pipeline = "someone/tiny-ddpm"
    elif setup == "no_readme":
        (folder / "README.md").unlink()
    elif setup == "no_markers":
        (folder / "README.md").write_text("# card\n")
    elif setup == "twice":
        (folder / "README.md").write_text(f"{METRICS_START}\n{METRICS_END}\n{METRICS_END}\n")
    before = (folder / "README.md").read_bytes() if (folder / "README.md").exists() else None
    with pytest.raises(ValueError, match=message):
        evaluate(EvaluationConfig(pipeline, update_model_card=True, **SMALL))
    if before is not None:
        assert (folder / "README.md").read_bytes() == before


def test_replace_marked_section_examples():
    text = f"a{METRICS_START}old{METRICS_END}b"
    assert replace_marked_section(text, "new\n") == f"a{METRICS_START}\nnew\n{METRICS_END}b"
    with pytest.raises(ValueError, match="out of order"):
        replace_marked_section(f"{METRICS_END}x{METRICS_START}", "new")


def test_report_docstring_examples():
    result = doctest.testmod(report, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_real_row_reproduces_the_judges_held_out_score(tmp_path):
    """At 28x28 (no resizing) the real-images row of the 500 mnist-5k test digits is the judge's stored
    held-out classifier IS (9.55), the number docs/evaluation.md quotes."""
    torch.manual_seed(0)
    folder = tmp_path / "pipe28"
    DDPMExtPipeline(unet=build_unet("tiny", sample_size=28),
                    scheduler=DDPMExtScheduler(num_train_timesteps=20)).save_pretrained(folder)
    run = load_evaluation(EvaluationConfig(folder, num_bpd_images=0, num_samples=10, kid_subset_size=5,
                                           samplers=["ddim:5:0"]))
    ref = score_reference(run)
    heldout = json.loads(run.judge.metadata["heldout_test"])
    assert ref["num_images"] == heldout["num_images"] == 500
    # stored on the developers' CPU, recomputed here through float32 convolutions whose last bits depend on the
    # CPU and thread count (4e-9 relative measured): rel 1e-6, as tests/evaluation/test_digit_classifier.py
    assert ref["classifier_is"] == pytest.approx(heldout["classifier_inception_score"], rel=1e-6)
    assert round(ref["classifier_is"], 2) == 9.55 and ref["classes_present"] == 10
    # from integer class counts (argmaxes with a 0.06 margin): only log's last ulp may differ between machines
    assert ref["class_entropy"] == pytest.approx(heldout["normalized_entropy"], rel=1e-9)
    assert round(ref["mean_pixel"], 3) == 0.135
