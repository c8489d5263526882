"""What a run tells its user: the start summary, the time left, the end summary whose commands work, and the Hub
pre-flight's one-line error when the Hub cannot be reached (in process; the token-checking server's cases are in
test_training.py)."""

from __future__ import annotations

import doctest
import shlex

import huggingface_hub
import pytest
from test_training import TINY

from ddpm_ext import build_unet
from ddpm_ext.commands import cli
from ddpm_ext.training import report


def test_report_doctests():
    result = doctest.testmod(report, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_finish_estimate_leaves_out_the_first_step_and_speaks_once():
    clock = iter([100.0, 130.0])  # step 1 ends at 100 s (after start-up), step 10 at 130 s: 30 s / 9 steps
    estimate = report.FinishEstimate(0, 1000, now=lambda: next(clock))
    assert estimate.at_step == 10  # 10 steps come before 5% (50)
    lines = [estimate.after_step(s) for s in range(1, 12)]
    assert lines[9] == "Step 10 of 1,000: about 55 min 0 s left (3.33 s per step)." and lines.count(None) == 10
    # a resumed run counts from its first step; 5% of a short run comes first; a run too short says nothing
    assert report.FinishEstimate(500, 540).at_step == 502
    assert report.FinishEstimate(0, 2).after_step(2) is None


def test_a_run_explains_itself_and_its_commands_work(tmp_path, capsys, monkeypatch):
    out = tmp_path / "my run"  # a space: the printed commands must quote it
    args = TINY + ["--max_train_steps", "4", "--checkpointing_steps", "2", "--output_dir", str(out)]
    assert cli.main(["train", *args]) == 0
    text = capsys.readouterr().out
    start, end = text.split("Done: ")
    params = sum(p.numel() for p in build_unet("tiny", sample_size=8).parameters())
    assert "mnist-5k (built-in, the default), split train, 48 images at 8x8, 1 channel (grey)" in start
    assert f"new UNet, preset tiny, {params:,} parameters" in start
    assert "4 optimisation steps of batch 8 = 8 per process x 1 process x 1 accumulated" in start
    assert "rate 0.002 (cosine schedule after 2 warm-up steps)" in start and f"output:     {out}" in start
    assert "resuming" not in start
    assert "Step 2 of 4: about" in start  # the time left, once, before the end
    assert f"pipeline:     {out} (model_index.json, unet/, scheduler/)" in end
    assert f"sample grid:  {out / 'samples.png'}" in end and f"model card:   {out / 'README.md'}" in end
    assert "checkpoints:  checkpoint-2, checkpoint-4" in end
    commands = [line.strip() for line in end.split("Use it:")[1].strip().splitlines()]
    quoted = shlex.quote(str(out))
    assert commands == [f"ddpm-ext sample {quoted} --num_images 16 --output samples.png",
                        f"ddpm-ext evaluate {quoted} --dataset mnist-5k",
                        f"ddpm-ext push {quoted} --repo_id 'my run'"]
    # the sample command as printed, run; the other two parsed by their commands' parsers
    monkeypatch.chdir(tmp_path)
    sample = shlex.split(commands[0])[1:] + ["--num_images", "2", "--steps", "2"]  # fewer images, for speed
    assert cli.main(sample) == 0 and (tmp_path / "samples.png").is_file()
    for command in commands[1:]:
        argv = shlex.split(command)[1:]
        parsed = cli.build_parser(argv[0])[0].parse_args(argv)
        assert parsed.pipeline == str(out)

    # resumed: the summary names the checkpoint and the step
    capsys.readouterr()
    assert cli.main(["train", *args[:-4], "--max_train_steps", "6", "--output_dir", str(out),
                     "--resume_from_checkpoint", "latest"]) == 0
    text = capsys.readouterr().out
    assert f"resuming:   {out / 'checkpoint-4'} (step 4 of 6)" in text and "Done: 6 steps" in text


def test_push_preflight_without_a_reachable_hub_fails_in_one_line_before_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", "hf_secret_preflight_token")
    out = tmp_path / "o"
    code = cli.main(["train", *TINY, "--max_train_steps", "2", "--output_dir", str(out), "--push_to_hub",
                     "--hub_model_id", "ddpm-ext-tests/unreachable"])
    captured = capsys.readouterr()
    assert code == 3
    # one line (besides the data set's progress bar of loading, before it)
    [line] = [line for line in captured.err.splitlines() if "error" in line.lower()]
    assert captured.err.strip().splitlines()[-1] == line
    assert line.startswith("error: --push_to_hub: the Hub repository ddpm-ext-tests/unreachable could not be")
    assert "nothing was trained or written" in line
    assert "hf_secret_preflight_token" not in captured.out + captured.err
    assert "Training a DDPM" not in captured.out and not out.exists()


@pytest.mark.parametrize("private", [False, True])
def test_the_push_command_of_the_end_summary_keeps_private(private):
    import argparse  # noqa: PLC0415

    args = argparse.Namespace(output_dir="runs/x", dataset_name="openmoji-32", train_data_dir=None,
                              hub_model_id="me/x", hub_private_repo=private)
    assert report.use_commands(args)[1:] == ["ddpm-ext evaluate runs/x --dataset openmoji-32",
                                             "ddpm-ext push runs/x --repo_id me/x" + (" --private" if private else "")]
    assert report.use_commands(args, pushed=True)[-1].startswith("ddpm-ext evaluate")
