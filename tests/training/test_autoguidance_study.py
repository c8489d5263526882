"""training/autoguidance_study.py: every checkpoint's EMA tried as the guide at every w, rows equal `evaluate`'s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from diffusers import UNet2DModel
from repo_scripts import load_script

import ddpm_ext.evaluation.evaluate as ev
from ddpm_ext import DDPMExtPipeline
from ddpm_ext.evaluation.config import EvaluationConfig
from ddpm_ext.evaluation.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--model_config", "tiny", "--resolution", "8", "--train_batch_size", "8", "--max_train_samples", "48",
        "--max_train_steps", "4", "--ddpm_num_steps", "20", "--ddpm_num_inference_steps", "4", "--eval_batch_size", "4",
        "--lr_warmup_steps", "1", "--checkpointing_steps", "2", "--checkpoints_total_limit", "10"]
SCORING = ["--num_samples", "4", "--kid_subset_size", "2", "--max_real_images", "8", "--sampler", "ddim:4:0"]


@pytest.fixture(scope="module")
def study():
    return load_script("training/autoguidance_study.py")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    subprocess.run([sys.executable, str(ROOT / "training" / "train_ddpm.py"), *TINY, "--output_dir", str(out)],
                   check=True, cwd=ROOT, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, capture_output=True,
                   timeout=600)
    return out


@pytest.mark.slow
def test_rows_equal_evaluate_with_that_guide_and_the_study_resumes(study, tiny_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    argv = [str(tiny_run), "--output_dir", str(out), "--guide_steps", "2", "--scales", "1", "2.5",
            "--stats_cache_dir", str(tmp_path / "stats"), *SCORING]
    assert study.main(argv) == 0
    result = json.loads((out / "autoguidance_study.json").read_text())
    assert [(r["guide_step"], r["w"]) for r in result["rows"]] == [(None, 1.0), (2, 2.5)]
    assert result["rows"][1]["guide_fraction"] == 0.5 and result["rows"][1]["sampler"] == "ddim:4:0:ag=2.5"
    # the guided row is what `evaluate` gives for a pipeline whose guide is checkpoint-2's EMA, at w = 2.5
    pipe = DDPMExtPipeline.from_pretrained(tiny_run)
    pipe.register_modules(guide_unet=UNet2DModel.from_pretrained(tiny_run / "checkpoint-2" / "unet_ema"))
    pipe.save_pretrained(tmp_path / "guided")
    # one thread, as the study's --threads 1: float sums (sampling, features) depend on the thread count
    config = dict(num_bpd_images=0, num_samples=4, kid_subset_size=2, max_real_images=8, digit_judge="on",
                  stats_cache_dir=str(tmp_path / "stats"), no_progress=True, cpu_threads=1)
    rows = evaluate(
        EvaluationConfig(str(tmp_path / "guided"), samplers=["ddim:4:0:ag=2.5", "ddim:4:0:ag=1"], **config)
    )["samples"]
    for mine, theirs in zip(result["rows"][::-1], rows):
        for key in ("classifier_is", "fid", "precision", "recall", "mean_pixel"):
            assert mine[key] == theirs[key], key
    assert "| 2 | 0.50 | 2.5 |" in (out / "autoguidance_study.md").read_text()
    # run again with one more guide: only the new rows are scored
    scored = []
    real = ev.sample_images
    monkeypatch.setattr(ev, "sample_images", lambda run, spec: scored.append(spec.spec) or real(run, spec))
    assert study.main(argv[:4] + ["2", "4"] + argv[5:]) == 0
    assert scored == ["ddim:4:0:ag=2.5"]
    assert len(json.loads((out / "autoguidance_study.json").read_text())["rows"]) == 3


@pytest.mark.parametrize("extra, message", [
    (["--guide_steps", "3"],
     "--guide_steps 3: {run} has no checkpoint-3 with weights; its checkpoints are at steps [2, 4]"),
])
def test_a_missing_guide_is_refused_before_anything_is_written(study, tiny_run, tmp_path, capsys, extra, message):
    assert study.main([str(tiny_run), "--output_dir", str(tmp_path / "s"), *extra, *SCORING]) == 2
    assert message.format(run=tiny_run) in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("argv, message", [
    (["--guide_steps", "2", "--scales", "0.5"], "--scales must be numbers >= 1 (1: no guidance), got [0.5]"),
    (["--guide_steps", "0"], "--guide_steps must be checkpoint steps >= 1, got [0]"),
    (["--guide_steps", "2", "--sampler", "ddpm:50:ag=2"], "must not set ag=: the study sets the scale (--scales)"),
    (["--guide_steps", "2", "--num_samples", "0"], "--num_samples must be >= 1, got 0"),
])
def test_bad_arguments(study, argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        study.main(["--output_dir", str(tmp_path / "s"), *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
