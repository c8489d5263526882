"""training/recipe_study.py: the README runs its quick-start flags; a tiny variant trains, is scored, resumes."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study():
    return load_script("training/recipe_study.py")


def readme_training_flags() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quick_start = text[text.index("## Quick start"):text.index("**2. Run the tests**")]
    block = quick_start[quick_start.index("```bash\n") + len("```bash\n"):]
    block = block[:block.index("```")].replace("\\\n", " ")  # the command, its continuation lines joined
    command = next(line for line in block.splitlines() if line.startswith("python3 -m venv"))
    words = shlex.split(command.split("&&")[-1])
    flags = words[words.index("training/train_ddpm.py") + 1:]
    i = flags.index("--output_dir")
    return flags[:i] + flags[i + 2:]


def test_readme_quick_start_trains_the_study_recipe(study):
    # one recipe: the README's main job and the study's "quick-start" row must be the same flags
    assert readme_training_flags() == shlex.split(study.QUICK_START)


def test_named_variants_train_the_recipe_they_were_measured_on(study, tmp_path, capsys):
    # the README's table was measured on the unconditional recipe: its rows must not turn conditional with
    # the quick start; the quick-start row and --variant rows are the quick start's (class-conditional) flags
    argv = ["--output_dir", str(tmp_path / "s"), "--variants", "quick-start", "unconditional", "bs64-1600",
            "--variant", "mine=--seed 3", "--dry_run"]
    assert study.main(argv) == 0
    commands = {}
    for block in capsys.readouterr().out.split("# ")[1:]:
        name, train, _ = block.split("\n", 2)
        commands[name] = shlex.split(train)
    assert "--class_conditional" in commands["quick-start"] and "--class_conditional" in commands["mine"]
    assert "--class_conditional" not in commands["unconditional"] and "--class_conditional" not in commands["bs64-1600"]
    flags = commands["bs64-1600"]
    assert flags[flags.index("--max_train_steps") + 1] == "1600"
    assert flags[flags.index("--autoguidance_scale") + 1] == "1"
    assert commands["mine"][commands["mine"].index("--seed") + 1] == "3"
    assert not (tmp_path / "s").exists()


def test_merge_flags_replaces_and_appends(study):
    assert study.merge_flags("--a 1 --b 2 --c", "--b 3 --d x y") == ["--a", "1", "--b", "3", "--c", "--d", "x", "y"]
    assert study.merge_flags("--a 1", "") == ["--a", "1"]
    with pytest.raises(ValueError, match="--output_dir is set by the study"):
        study.merge_flags("--a 1", "--output_dir x")
    with pytest.raises(ValueError, match="flags must start with a --flag, got '3'"):
        study.merge_flags("--a 1", "3 --b")


@pytest.mark.parametrize("argv, message", [
    (["--variant", "novalue"], "--variant must look like NAME=FLAGS"),
    (["--variant", "a/b=--seed 1"], "--variant must look like NAME=FLAGS"),
    (["--variant", "x=--cpu_threads 2"], "--cpu_threads is set by the study"),
    (["--variants", "nope"], "invalid choice: 'nope'"),
    (["--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["--num_samples", "10", "--kid_subset_size", "20"], "--kid_subset_size (20) must not exceed --num_samples (10)"),
])
def test_bad_arguments(study, argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        study.main(["--output_dir", str(tmp_path / "s"), *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


TINY = ("--model_config tiny --resolution 8 --train_batch_size 8 --max_train_samples 48 --max_train_steps 3 "
        "--ddpm_num_steps 100 --ddpm_num_inference_steps 4 --eval_batch_size 4 --lr_warmup_steps 1")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # FID of 8 images
def test_tiny_variant_trains_scores_and_resumes(study, tmp_path, capsys):
    out, stats = tmp_path / "study", tmp_path / "stats"
    argv = ["--output_dir", str(out), "--variant", f"tiny={TINY}", "--num_samples", "8", "--kid_subset_size", "4",
            "--sampler", "ddpm:3", "--max_real_images", "16", "--stats_cache_dir", str(stats)]
    assert study.main(argv) == 0
    rows = json.loads((out / "recipe_study.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["tiny"]
    row = rows[0]
    flags = shlex.split(row["flags"])
    assert flags[flags.index("--max_train_steps") + 1] == "3" and flags[flags.index("--train_batch_size") + 1] == "8"
    assert flags[flags.index("--prediction_type") + 1] == "v_prediction"  # the quick start's flags are kept
    info = json.loads((out / "tiny" / "training_info.json").read_text())
    assert (row["steps"], row["batch_size"], row["images_seen"]) == (3, 8, 24) == (info["global_step"], 8, 24)
    assert row["train_seconds"] == info["train_seconds_this_run"]
    assert row["seconds_per_step"] == pytest.approx(row["train_seconds"] / 3)
    evaluated = json.loads((out / "tiny" / "recipe_eval" / "results.json").read_text())["samples"][0]
    assert evaluated["sampler"] == "ddpm:3"
    for key in ("classifier_is", "classifier_is_std", "classes_present", "fid", "kid_mean", "precision", "recall"):
        assert row[key] == evaluated[key]
    assert 1.0 <= row["classifier_is"] <= 10.0
    table = (out / "recipe_study.md").read_text()
    assert "| tiny |" in table and f"{row['classifier_is']:.2f}" in table
    log = (out / "tiny.log").read_text()
    commands = [line for line in log.splitlines() if line.startswith("$ ")]  # the runs (the run's own end
    assert [" evaluate " in c for c in commands] == [False, True]  # summary also names an evaluate command)
    assert "train_ddpm.py" in commands[0]
    # again: nothing is trained or scored twice
    assert study.main(argv) == 0
    assert (out / "tiny.log").read_text() == log
    # the same name with other flags is refused, nothing changes
    capsys.readouterr()
    with pytest.raises(SystemExit, match="variant 'tiny' is in .* with other flags"):
        study.main([*argv[:3], f"tiny={TINY} --seed 1", *argv[4:]])
    assert json.loads((out / "recipe_study.json").read_text())["rows"] == rows
