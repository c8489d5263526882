"""The training script end to end: smoke run, fine-tuning, exact resume after SIGKILL, 2 processes, push, bad input."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.commands import cli
from ddpm_ext.images import save_image_grid
from ddpm_ext.seeding import image_generators
from ddpm_ext.training import flags

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "training" / "train_ddpm.py"
CLI = ["-m", "ddpm_ext", "train"]  # `ddpm-ext train`, as `python -m` and `accelerate launch -m` run it
# A tiny UNet on 8x8 MNIST crops: each run takes seconds.
TINY = ["--model_config", "tiny", "--resolution", "8", "--train_batch_size", "8", "--max_train_samples", "48",
        "--eval_batch_size", "4", "--ddpm_num_inference_steps", "4", "--ddpm_num_steps", "100",
        "--lr_warmup_steps", "2"]
# fine-tuning keeps the pretrained scheduler and UNet: their flags are refused with --pretrained_model_name_or_path
_FIXED = ("--ddpm_num_steps", "--model_config")
TINY_FINETUNE = [a for i, a in enumerate(TINY) if a not in _FIXED and TINY[i - 1] not in _FIXED]
# Every training subprocess runs with one OpenMP thread: runs compared bit for bit must use the same thread
# count (a convolution's float sums depend on it), and one thread is the fastest for the tiny UNet anyway.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(args: list[str], *, env: dict | None = None, timeout: int = 600, launcher: list[str] | None = None,
        check: bool = True, entry: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run the training with `args`: `training/train_ddpm.py`, or `entry` (e.g. `CLI`), under `launcher`."""
    cmd = (launcher or [sys.executable]) + (entry or [str(SCRIPT)]) + args
    result = subprocess.run(cmd, check=False, cwd=ROOT, env={**ENV, **(env or {})}, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def weights(folder: Path, sub: str = "unet") -> dict[str, torch.Tensor]:
    return load_file(folder / sub / "diffusion_pytorch_model.safetensors")


def assert_same_weights(a: Path, b: Path, sub: str = "unet") -> None:
    wa, wb = weights(a, sub), weights(b, sub)
    assert wa.keys() == wb.keys()
    for k in wa:
        # exact by construction: both runs on this machine, in processes with OMP_NUM_THREADS=1 (ENV above)
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=f"{k} differs")


@pytest.mark.slow
def test_smoke_training_writes_a_pipeline_diffusers_loads(tmp_path):
    out = tmp_path / "out"
    run(TINY + ["--max_train_steps", "4", "--checkpointing_steps", "2", "--output_dir", str(out),
                "--ddpm_beta_schedule", "cosine", "--variance_type", "fixed_large", "--logger", "tensorboard"])
    for name in ("model_index.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
                 "samples.png", "README.md", "training_info.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "training_info.json").read_text())["global_step"] == 4
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4"]
    assert list((out / "logs").rglob("events.out.tfevents*")), "tensorboard scalars"
    grid = Image.open(out / "samples.png")
    assert grid.size[0] > 8 and grid.mode in ("L", "RGB")

    ours = DDPMExtPipeline.from_pretrained(out)
    assert ours.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert ours.scheduler.config.num_train_timesteps == 100
    assert ours.scheduler.config.variance_type == "fixed_large"
    vanilla = DDPMPipeline.from_pretrained(out)
    vanilla.set_progress_bar_config(disable=True)
    assert vanilla(batch_size=1, num_inference_steps=3, output_type="np").images.shape == (1, 8, 8, 1)
    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card and "pipeline_tag: unconditional-image-generation" in card
    assert "cosine" in card and "fixed_large" in card and "LeCun" in card


@pytest.mark.slow
def test_hybrid_loss_bf16_and_gradient_accumulation(tmp_path):
    """Improved DDPM's L_hybrid with a learned variance, under bf16 autocast, with 2 accumulated micro-batches."""
    out = tmp_path / "hybrid"
    run(TINY + ["--max_train_steps", "2", "--loss_type", "hybrid", "--variance_type", "learned_range",
                "--mixed_precision", "bf16", "--gradient_accumulation_steps", "2", "--prediction_type", "epsilon",
                "--output_dir", str(out)])
    assert json.loads((out / "training_info.json").read_text())["global_step"] == 2
    pipe = DDPMExtPipeline.from_pretrained(out)
    assert pipe.unet.config.out_channels == 2 and pipe.scheduler.config.variance_type == "learned_range"
    vanilla = DDPMPipeline.from_pretrained(out)
    vanilla.set_progress_bar_config(disable=True)
    assert vanilla(batch_size=1, num_inference_steps=3, output_type="np").images.shape == (1, 8, 8, 1)


@pytest.mark.slow
def test_importance_sampled_timesteps_reach_the_training_step(tmp_path):
    """--timestep_sampling importance: the script draws t from the min-SNR proposal (the weights differ from a uniform
    run of the same seed; the draws themselves are checked in tests/test_losses.py) and trains to finite weights."""
    common = TINY + ["--max_train_steps", "2", "--prediction_type", "v_prediction", "--snr_gamma", "5"]
    run(common + ["--output_dir", str(tmp_path / "uniform")])
    run(common + ["--timestep_sampling", "importance", "--output_dir", str(tmp_path / "importance")])
    uniform, importance = weights(tmp_path / "uniform"), weights(tmp_path / "importance")
    assert all(torch.isfinite(v).all() for v in importance.values())
    assert any(not torch.equal(uniform[k], importance[k]) for k in uniform)


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    common = TINY + ["--max_train_steps", "12", "--checkpointing_steps", "3", "--checkpoints_total_limit", "2",
                     "--random_flip", "--max_train_samples", "20"]  # 20 images / batch 8: epochs end mid-run
    run(common + ["--output_dir", str(tmp_path / "straight")])

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(SCRIPT)] + common + ["--output_dir", str(killed)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint-6").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoint-6").is_dir() and not (killed / "model_index.json").exists()
    # a half-written checkpoint, as a kill during save_state leaves it, must never be picked
    half = killed / "checkpoint-9.tmp"
    half.mkdir(exist_ok=True)
    (half / "model.safetensors").write_bytes(b"truncated")

    result = run(common + ["--output_dir", str(killed), "--resume_from_checkpoint", "latest"])
    assert "Resumed from" in result.stdout + result.stderr
    assert not half.exists()
    assert_same_weights(tmp_path / "straight", killed)
    # EMA and optimizer state came back too: the checkpoints of both runs hold the same state
    for sub in ("unet", "unet_ema"):
        assert_same_weights(tmp_path / "straight" / "checkpoint-12", killed / "checkpoint-12", sub)


@pytest.mark.slow
def test_fine_tune_from_ddpm_ext_and_diffusers_pipelines(tmp_path):
    torch.manual_seed(0)
    unet = build_unet("tiny", sample_size=8)
    DDPMPipeline(
        unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2")
    ).save_pretrained(tmp_path / "diffusers")
    DDPMExtPipeline(
        unet=unet, scheduler=DDPMExtScheduler(num_train_timesteps=60, beta_schedule="quadratic")
    ).save_pretrained(tmp_path / "ext")
    for source, T, schedule in (("diffusers", 50, "squaredcos_cap_v2"), ("ext", 60, "scaled_linear")):
        out = tmp_path / f"ft-{source}"
        run(TINY_FINETUNE + ["--max_train_steps", "2", "--pretrained_model_name_or_path", str(tmp_path / source),
                    "--dataset_name", "mnist-5k", "--output_dir", str(out), "--ddpm_num_inference_steps", "5"])
        loaded = DDPMExtPipeline.from_pretrained(out)
        assert loaded.scheduler.config.num_train_timesteps == T and loaded.scheduler.config.beta_schedule == schedule
        # training started from the given weights: they moved, but only a little
        before, after = unet.state_dict()["conv_in.weight"], weights(out)["conv_in.weight"]
        assert 0 < (before - after).abs().max() < 0.1


@pytest.mark.slow
def test_two_process_data_parallel_run(tmp_path):
    out = tmp_path / "ddp"
    result = run(TINY + ["--max_train_steps", "3", "--output_dir", str(out), "--checkpointing_steps", "3"],
                 launcher=[sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--main_process_port", "0"])  # no GPU: gloo on the CPU
    info = json.loads((out / "training_info.json").read_text())
    assert info["num_processes"] == 2 and info["global_step"] == 3
    assert (out / "model_index.json").is_file() and len(list(out.glob("samples/*.png"))) == 1
    # the manifest, written once every process has written its part, lists both processes' files; only the main
    # process held the output folder's lock (another rank taking it would have been refused), and released it
    manifest = json.loads((out / "checkpoint-3" / "manifest.json").read_text())
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(manifest["files"])
    assert not (out / ".ddpm_ext-run.lock").exists()
    assert "Pushed" not in result.stdout


@pytest.mark.slow
def test_accelerate_launches_the_train_command(tmp_path):
    out = tmp_path / "cli"
    run(TINY + ["--max_train_steps", "2", "--output_dir", str(out)], entry=CLI,
        launcher=[sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"])
    info = json.loads((out / "training_info.json").read_text())
    assert info["global_step"] == 2 and info["num_processes"] == 1
    assert DDPMExtPipeline.from_pretrained(out).unet.config.sample_size == 8


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "nan"
    argv = TINY + ["--max_train_steps", "8", "--checkpointing_steps", "2", "--checkpoints_total_limit", "1",
                   "--output_dir", str(out)]
    code = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(SCRIPT.parent)!r})\n"
        "import ddpm_ext.training.train as train_ddpm\n"
        "real = train_ddpm.training_step\n"
        "calls = []\n"
        "def poisoned(*a, **k):\n"
        "    calls.append(1)\n"
        "    loss = real(*a, **k)\n"
        "    return loss * float('nan') if len(calls) == 5 else loss\n"
        "train_ddpm.training_step = poisoned\n"
        f"sys.exit(train_ddpm.main({argv!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, env=ENV, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    text = result.stdout + result.stderr
    assert "the loss became nan at step 4" in text
    # checkpoint-4 holds the weights whose loss was NaN: set aside; checkpoint-2 (finite) is the one kept, even with
    # --checkpoints_total_limit 1 (today: checkpoint-2 pruned, checkpoint-4 kept)
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-2"]
    assert [p.name for p in out.glob("superseded/*/checkpoint-*")] == ["checkpoint-4"]
    assert f"The last checkpoint with finite weights and loss is {out / 'checkpoint-2'}" in text
    assert not (out / "model_index.json").exists()
    # the advice works: resume from it with a lower learning rate, which is applied (not silently overridden)
    resumed = run(TINY + ["--max_train_steps", "4", "--checkpointing_steps", "2", "--output_dir", str(out),
                          "--resume_from_checkpoint", "latest", "--learning_rate", "1e-4"])
    assert f"Resumed from {out / 'checkpoint-2'} at step 2" in resumed.stdout + resumed.stderr
    assert "Learning rate changed on resume: peak 0.002 -> 0.0001" in resumed.stdout + resumed.stderr
    sched = torch.load(out / "checkpoint-4" / "scheduler.bin", weights_only=True)
    assert sched["base_lrs"] == [1e-4]
    state = json.loads((out / "checkpoint-4" / "training_state.json").read_text())
    assert state["changeable"]["learning_rate"] == 1e-4 and (out / "model_index.json").is_file()


class OnRepoCreated(dict):
    """The upload server's record of created repos, calling `hook` as a repo is created (in the server's thread,
    before the client has its answer): what the training run has done by then is what it did before it."""

    def __init__(self, hook):
        super().__init__()
        self.hook = hook

    def __setitem__(self, key, value):
        self.hook(key)
        super().__setitem__(key, value)


@pytest.mark.slow
def test_push_to_hub_round_trip(tmp_path, upload_hub, olah_hub):
    out = tmp_path / "push"
    seen = {}  # the pre-flight creates the repo before the run writes anything (its output folder does not exist)
    upload_hub.repos = OnRepoCreated(lambda key: seen.update({key: out.exists()}))
    env = {"HF_ENDPOINT": upload_hub.url, "HF_TOKEN": upload_hub.token}
    result = run(TINY + ["--max_train_steps", "2", "--output_dir", str(out), "--push_to_hub",
                         "--hub_model_id", "ddpm-ext-tests/pushed", "--hub_private_repo"], env=env)
    assert seen == {("model", "ddpm-ext-tests/pushed"): False}
    assert "Pushed to" in result.stdout + result.stderr
    assert f"Hub:          {upload_hub.url}/ddpm-ext-tests/pushed" in result.stdout  # the end summary
    assert "ddpm-ext push" not in result.stdout and upload_hub.token not in result.stdout + result.stderr
    [commit] = upload_hub.commits_for("ddpm-ext-tests/pushed")
    uploaded = set(commit.added)
    assert {"model_index.json", "README.md", "samples.png", "unet/diffusion_pytorch_model.safetensors",
            "unet/config.json", "scheduler/scheduler_config.json", "pipeline.py"} == uploaded
    for content in commit.added.values():
        assert upload_hub.token.encode() not in content
    assert upload_hub.repos[("model", "ddpm-ext-tests/pushed")].private

    # pull side through the real local Hub server
    pulled = DDPMExtPipeline.from_pretrained("ddpm-ext-tests/pushed")
    for k, v in weights(out).items():
        # exact: the safetensors file pulled back through the Hub, byte for byte
        torch.testing.assert_close(pulled.unet.state_dict()[k], v, rtol=0, atol=0)
    # the run's pipeline.py (saved by save_pipeline_whole, pushed): diffusers' own loader gives ddpm_ext's pipeline
    generic = DiffusionPipeline.from_pretrained("ddpm-ext-tests/pushed", revision="main", custom_pipeline="pipeline",
                                                trust_remote_code=True)
    assert isinstance(generic, DDPMExtPipeline) and type(generic.scheduler) is DDPMExtScheduler
    card = ModelCard.load("ddpm-ext-tests/pushed")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "unconditional-image-generation"
    assert card.text.count("from_pretrained('ddpm-ext-tests/pushed')") == 2  # the snippets load the pushed repo


@pytest.mark.slow
def test_push_preflight_refuses_a_bad_token_before_the_first_step(tmp_path, upload_hub):
    out = tmp_path / "badtoken"
    env = {"HF_ENDPOINT": upload_hub.url, "HF_TOKEN": "hf_wrong_secret_token"}
    result = run(TINY + ["--max_train_steps", "2", "--checkpointing_steps", "1", "--output_dir", str(out),
                         "--push_to_hub", "--hub_model_id", "ddpm-ext-tests/badtoken"], env=env, check=False)
    assert result.returncode == 3
    [line] = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert line.startswith("error: --push_to_hub: the Hub repository ddpm-ext-tests/badtoken could not be created "
                           "or reached (HfHubHTTPError: Invalid user token.")
    assert "hf_wrong_secret_token" not in result.stdout + result.stderr
    assert not out.exists()  # no checkpoint-*, no model_index.json: nothing written, nothing trained
    assert ("model", "ddpm-ext-tests/badtoken") not in upload_hub.repos


@pytest.mark.slow
def test_failed_push_keeps_output_and_says_how_to_retry(tmp_path, upload_hub):
    """The pre-flight passes, then the token is revoked during training: the final push fails, the output stays."""
    out = tmp_path / "nopush"
    token = upload_hub.token
    upload_hub.repos = OnRepoCreated(lambda key: setattr(upload_hub, "token", "revoked"))
    env = {"HF_ENDPOINT": upload_hub.url, "HF_TOKEN": token}
    result = run(TINY + ["--max_train_steps", "2", "--output_dir", str(out), "--push_to_hub", "--hub_model_id",
                         "ddpm-ext-tests/refused"], env=env, check=False)
    assert result.returncode == 3
    text = result.stdout + result.stderr
    assert "the push to the Hub failed" in text
    assert f"ddpm-ext push {out} --repo_id ddpm-ext-tests/refused" in text
    assert (out / "model_index.json").is_file() and (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert token not in text and upload_hub.commits_for("ddpm-ext-tests/refused") == []


# --------------------------------------------------------------------------------------------------
# Bad input: a clear CLI error before any training, nothing written
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--train_batch_size", "0"], "--train_batch_size must be >= 1, got 0"),
        (["--learning_rate", "-1"], "`--learning_rate` must be a number > 0, got -1.0."),
        (["--max_train_steps", "0"], "--max_train_steps must be >= 1, got 0"),
        (["--ddpm_beta_schedule", "exp"], "argument --ddpm_beta_schedule: invalid choice: 'exp'"),
        (["--variance_type", "other"], "argument --variance_type: invalid choice: 'other'"),
        (["--loss_type", "hybrid"], "--loss_type hybrid needs --variance_type learned_range"),
        (["--dataset_name", "mnist-5k", "--train_data_dir", "x"], "give either --dataset_name or --train_data_dir"),
        (["--model_config", "huge"], "--model_config must be one of"),
        (["--resume_from_checkpoint", "/nonexistent"],
         "--resume_from_checkpoint must be 'latest' or an existing checkpoint"),
        (["--ddpm_num_inference_steps", "2000"],
         "--ddpm_num_inference_steps (2000) must not exceed --ddpm_num_steps (1000)"),
        (["--cpu_threads", "0"], "`--cpu_threads` must be 'auto' or an integer >= 1, got '0'."),
        (["--timestep_sampling", "importance"],
         "--timestep_sampling importance draws t in proportion to the min-SNR-γ weight: it needs --snr_gamma"),
        (["--timestep_sampling", "importance", "--snr_gamma", "5", "--loss_type", "hybrid",
          "--variance_type", "learned_range"],
         "--timestep_sampling importance needs --loss_type simple, got 'hybrid'"),
        (["--timestep_sampling", "sometimes"], "argument --timestep_sampling: invalid choice: 'sometimes'"),
        (["--autoguidance_scale", "0.5"], "`--autoguidance_scale` must be a number >= 1, got 0.5."),
        (["--autoguidance_scale", "nan"], "`--autoguidance_scale` must be a number >= 1, got nan."),
        (["--autoguidance_guide_fraction", "1"],
         "`--autoguidance_guide_fraction` must be a number in (0, 1), got 1.0."),
        (["--autoguidance_guide_fraction", "0"], "`--autoguidance_guide_fraction` must be a number > 0, got 0.0."),
        # issue 31: every input bounded before work
        (["--seed", "-1"], "`--seed` must be an integer in [0, 4294967295], got -1."),
        (["--seed", "4294967296"], "`--seed` must be an integer in [0, 4294967295], got 4294967296."),
        (["--eval_batch_size", "1000000"],
         "--eval_batch_size 1000000 (the sample grid of 28x28 images) needs about 607.5 GiB of memory (estimate) but"),
        (["--train_batch_size", "1000000000", "--model_config", "tiny"],
         "--train_batch_size 1000000000 (at least, a training step of 8x8 images) needs about"),
        (["--model_config", "tiny", "--resolution", "4096"],
         "--eval_batch_size 64 (the sample grid of 4096x4096 images) needs about"),
        (["--ddpm_num_steps", "1000000000", "--ddpm_num_inference_steps", "10"],
         "--ddpm_num_steps 1000000000 needs about 279.4 GiB of memory (estimate) but"),
        (["--autoguidance_scale", "3", "--max_train_steps", "1"],
         "--autoguidance_scale 3 needs --max_train_steps >= 2, got 1: the guide is the EMA of an earlier step"),
        (["--logging_dir", "../x"], "--logging_dir '../x' leaves --output_dir"),
        (["--logging_dir", "a/../../x"], "--logging_dir 'a/../../x' leaves --output_dir"),
        (["--cache_dir", ""], "`--cache_dir` must be a non-empty path, got ''."),
        (["--train_data_dir", " "], "`--train_data_dir` must be a non-empty path, got ' '."),
        (["--model_config", "tiny", "--pretrained_model_name_or_path", ""],
         "`--pretrained_model_name_or_path` must be a non-empty path, got ''."),
    ],
)
# the script in a subprocess is the slow tier; the same messages in process are the fast tier
@pytest.mark.parametrize("entry", [pytest.param("script", marks=pytest.mark.slow), "ddpm-ext train"])
def test_bad_flags(entry, args, message, tmp_path, capsys):
    """The same clear error, exit status 2, from the script (a subprocess) and from the CLI (in process)."""
    argv = args + ["--output_dir", str(tmp_path / "o")]
    if entry == "script":
        result = run(argv, check=False, timeout=120)
        code, err = result.returncode, result.stderr
    else:
        code, err = cli.main(["train", *argv]), capsys.readouterr().err
    assert code == 2
    assert message in err
    assert not (tmp_path / "o").exists()


def test_empty_output_dir_is_refused_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # '' would have meant this folder
    assert cli.main(["train", "--output_dir", ""]) == 2
    assert capsys.readouterr().err.strip() == "error: `--output_dir` must be a non-empty path, got ''."
    assert list(tmp_path.iterdir()) == []


def test_absolute_logging_dir_is_the_users_choice(tmp_path):
    parser = argparse.ArgumentParser()
    flags.add_arguments(parser)
    args = parser.parse_args(["--output_dir", str(tmp_path / "o"), "--logging_dir", str(tmp_path / "logs"),
                              "--model_config", "tiny", "--resolution", "8"])
    flags.check_args(args)  # accepted: the help says an absolute path is used as it is
    assert "absolute path is used as it is" in " ".join(a.help for a in parser._actions if a.dest == "logging_dir")


def test_a_model_config_with_negative_channels_is_refused_naming_the_key(tmp_path, capsys):
    config = tmp_path / "unet.json"
    config.write_text(json.dumps({**flags.unet_config("tiny"), "block_out_channels": [8, -16]}))
    assert cli.main(["train", "--model_config", str(config), "--output_dir", str(tmp_path / "o")]) == 2
    assert "--model_config: `preset` " in (err := capsys.readouterr().err)
    assert "`block_out_channels` must be a non-empty list of integers >= 1, got [8, -16]" in err
    assert not (tmp_path / "o").exists()


def test_a_pipeline_folder_with_bad_sizes_is_refused_before_fine_tuning(tmp_path, capsys):
    pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=10))
    pipe.save_pretrained(tmp_path / "p")
    config = json.loads((tmp_path / "p" / "unet" / "config.json").read_text())
    (tmp_path / "p" / "unet" / "config.json").write_text(json.dumps({**config, "out_channels": 0}))
    assert cli.main(["train", "--pretrained_model_name_or_path", str(tmp_path / "p"), "--dataset_name", "mnist-5k",
                     "--output_dir", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'p' / 'unet' / 'config.json'}: `out_channels` must be an integer >= 1, got 0." in (
        capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(flags.has_accelerator(), reason="fp16 runs on this machine's GPU")
def test_fp16_without_a_gpu_is_refused(tmp_path, capsys):
    assert cli.main(["train", "--mixed_precision", "fp16", "--output_dir", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: --mixed_precision fp16 needs a GPU, and this machine has none")
    assert not (tmp_path / "o").exists()


def test_autoguidance_of_a_one_step_run_is_refused_once_its_steps_are_known():
    from ddpm_ext.training.setup import guide_step  # noqa: PLC0415 (the step count is known after the data)

    args = argparse.Namespace(autoguidance_scale=3.0, autoguidance_guide_fraction=0.5)
    with pytest.raises(ValueError, match=r"--autoguidance_scale 3 needs a run of >= 2 optimisation steps, got 1"):
        guide_step(args, 1)
    assert guide_step(args, 2) == 1 and guide_step(args, 10) == 5


def test_train_command_help_lists_every_training_flag(capsys):
    assert cli.main(["train", "--help"]) == 0
    shown = capsys.readouterr().out
    parser = argparse.ArgumentParser()
    flags.add_arguments(parser)
    options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    assert len(options) > 60 and shown.startswith("usage: ddpm-ext train")
    assert [o for o in options if o not in shown] == []


@pytest.mark.slow  # a subprocess
def test_a_bad_flag_through_the_command_line_is_a_clear_error(tmp_path):
    result = run(["--train_batch_size", "0", "--output_dir", str(tmp_path / "o")], entry=CLI, check=False,
                 timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --train_batch_size must be >= 1, got 0"
    assert not (tmp_path / "o").exists()


def make_folder(tmp_path: Path, n: int = 3, corrupt: bool = False) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.full((10, 10), i * 40, dtype=np.uint8)).save(folder / f"{i}.png")
    if corrupt:
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return folder


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("empty", "contains no image files"),
        ("corrupt", "broken.png"),
        ("unknown", "mnist-5k"),
        ("column", "pixels"),
        ("pretrained", "is neither an existing folder nor a Hub repo id"),
    ],
)
@pytest.mark.parametrize("entry", [pytest.param("script", marks=pytest.mark.slow), "ddpm-ext train"])
def test_bad_data(entry, case, message, tmp_path, capsys):
    if case == "missing":
        args = ["--train_data_dir", str(tmp_path / "nope")]
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        args = ["--train_data_dir", str(tmp_path / "empty")]
    elif case == "corrupt":
        args = ["--train_data_dir", str(make_folder(tmp_path, corrupt=True))]
    elif case == "unknown":
        args = ["--dataset_name", "mnist5k"]
    elif case == "column":
        args = ["--train_data_dir", str(make_folder(tmp_path)), "--image_column", "pixels"]
    else:
        args = ["--pretrained_model_name_or_path", str(tmp_path / "no" / "such" / "pipeline"),
                "--dataset_name", "mnist-5k"]
    base = TINY_FINETUNE if case == "pretrained" else TINY
    argv = base + args + ["--output_dir", str(tmp_path / "o")]
    if entry == "script":  # a subprocess
        result = run(argv, check=False, timeout=300)
        code, err = result.returncode, result.stderr
    else:
        code, err = cli.main(["train", *argv]), capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "error:" in err and message in err
    assert not (tmp_path / "o" / "model_index.json").exists()


# --------------------------------------------------------------------------------------------------
# Autoguidance: the guide is the EMA of a fixed step, saved with the pipeline, checkpointed, resumed exactly
# --------------------------------------------------------------------------------------------------
AUTOGUIDED = TINY + ["--max_train_steps", "8", "--checkpointing_steps", "2", "--checkpoints_total_limit", "10",
                     "--autoguidance_scale", "3", "--autoguidance_guide_fraction", "0.5"]


@pytest.mark.slow
def test_autoguidance_guide_is_the_ema_of_its_step_and_resumes_exactly(tmp_path):
    full = tmp_path / "full"
    run(AUTOGUIDED + ["--output_dir", str(full)])
    # the guide: the EMA weights after step 0.5 × 8 = 4, as checkpoint-4 holds them; not the final ones
    assert_same_weights(full, full / "checkpoint-4", sub="guide_unet")
    guide, ema4 = weights(full, "guide_unet"), weights(full / "checkpoint-4", "unet_ema")
    # exact: the guide is a copy of checkpoint-4's EMA weights (same run, same file contents)
    assert all(torch.equal(guide[k], ema4[k]) for k in guide)
    assert not all(torch.equal(guide[k], weights(full)[k]) for k in guide)
    assert not (full / "checkpoint-2" / "guide_unet").exists() and (full / "checkpoint-6" / "guide_unet").is_dir()
    config = json.loads((full / "guide_unet" / "config.json").read_text())
    assert config["_ddpm_ext_autoguidance_scale"] == 3.0 and config["_ddpm_ext_guide_step"] == 4
    info = json.loads((full / "training_info.json").read_text())
    assert info["autoguidance"] == {"scale": 3.0, "guide_step": 4, "guide": "the EMA weights of that step"}
    pipe = DDPMExtPipeline.from_pretrained(full)
    assert pipe.guide_unet is not None and pipe.autoguidance_scale == 3.0
    card = (full / "README.md").read_text()
    assert "| autoguidance | guide = EMA weights of step 4, default w = 3.0 |" in card
    assert "autoguidance w = 3.0, seed 0" in card and "autoguidance_scale=1.0).images  # the UNet alone" in card
    # the final grid is the pipeline's default call: autoguided at w = 3
    grid = np.asarray(Image.open(full / "samples.png"))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=4, generator=image_generators(0, 0, 4), num_inference_steps=4, output_type="np").images
    unguided = pipe(batch_size=4, generator=image_generators(0, 0, 4), num_inference_steps=4, output_type="np",
                    autoguidance_scale=1).images
    # (within one grey level: the script samples on one thread, this process perhaps on more)
    diff = lambda a, b: np.abs(a.astype(int) - np.asarray(save_image_grid(b, tmp_path / "g.png")).astype(int))  # noqa: E731
    assert diff(grid, images).max() <= 1
    assert diff(grid, unguided).max() > 10  # the guide changes the images
    # resumed before the guide's step (it is taken in the resumed part) and after it (it comes from the checkpoint)
    for step in (2, 6):
        part = tmp_path / f"resumed-{step}"
        shutil.copytree(full, part)
        run(AUTOGUIDED + ["--output_dir", str(part), "--resume_from_checkpoint", str(part / f"checkpoint-{step}")])
        for sub in ("unet", "guide_unet"):
            assert_same_weights(full, part, sub=sub)
    # a run started without a guide cannot gain one after the guide's step has passed: a clear error, nothing lost
    plain = tmp_path / "plain"
    i = AUTOGUIDED.index("--autoguidance_scale")
    run(AUTOGUIDED[:i] + AUTOGUIDED[i + 2 :] + ["--output_dir", str(plain)])
    before = sorted(p.name for p in plain.iterdir())
    result = run(AUTOGUIDED + ["--output_dir", str(plain), "--resume_from_checkpoint", str(plain / "checkpoint-6")],
                 check=False)
    assert result.returncode == 2
    assert "--autoguidance_scale 3 needs the guide of step 4" in result.stderr and "holds no guide" in result.stderr
    assert sorted(p.name for p in plain.iterdir()) == before and not (plain / "guide_unet").exists()
