"""Checkpoints that belong to their run, load without unpickling, fail clearly; flags checked before any loading.

One tiny training run (module fixture, seconds) provides real checkpoints; damaged copies of them must be refused
by `validate_checkpoint` naming the file, and the scenarios of issue 18 run the script end to end.
"""

from __future__ import annotations

import builtins
import copy
import errno
import io
import json
import logging
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from test_training import ENV, ROOT, TINY, assert_same_weights, run, weights

from ddpm_ext import build_unet
from ddpm_ext.files import file_sha256, naming_failed_writes
from ddpm_ext.training import checkpoints, resume
from ddpm_ext.training import flags as train_flags
from ddpm_ext.training import setup as train_setup
from ddpm_ext.training.checkpoints import (
    CheckpointError,
    check_ema_state,
    list_checkpoints,
    prune_checkpoints,
    read_manifest,
    read_training_state,
    remove_partial_folders,
    validate_checkpoint,
    verify_manifest,
    write_manifest,
)
from ddpm_ext.training.train import Trainer
from ddpm_ext.training.train import main as train_main

STEPS = ["--max_train_steps", "6", "--checkpointing_steps", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """An uninterrupted 6-step run keeping checkpoint-2, -4 and -6, and its final pipeline."""
    out = tmp_path_factory.mktemp("trained") / "out"
    run(TINY + STEPS + ["--checkpoints_total_limit", "3", "--output_dir", str(out)])
    return out


def checkpoint_copy(trained: Path, tmp_path: Path, step: int = 6) -> Path:
    dest = tmp_path / f"checkpoint-{step}"
    shutil.copytree(trained / f"checkpoint-{step}", dest)
    return dest


def validate(ckpt: Path):
    state = read_training_state(ckpt)
    unet_config = json.loads((ckpt / "unet" / "config.json").read_text())
    return validate_checkpoint(ckpt, config=state["config"], unet_config=unet_config, use_ema=True, num_processes=1)


# --------------------------------------------------------------------------------------------------
# Layout: diffusers folders, no pickle
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_checkpoint_holds_diffusers_unets_and_no_pickle(trained):
    ckpt = trained / "checkpoint-6"
    assert [p.name for p in sorted(trained.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert not (ckpt / "custom_checkpoint_0.pkl").exists() and not (ckpt / "model.safetensors").exists()
    ema = UNet2DModel.from_pretrained(ckpt, subfolder="unet_ema")
    raw = UNet2DModel.from_pretrained(ckpt, subfolder="unet")
    # the final pipeline is the EMA of step 6; the raw weights differ from it
    for k, v in weights(trained).items():
        # exact: the final pipeline is a copy of the step-6 EMA weights of the same run
        torch.testing.assert_close(ema.state_dict()[k], v, rtol=0, atol=0)
    assert any((raw.state_dict()[k] != v).any() for k, v in weights(trained).items())
    scalars = json.loads((ckpt / "ema_state.json").read_text())
    assert scalars["optimization_step"] == 6 and scalars["decay"] == 0.999
    assert validate(ckpt)["global_step"] == 6


def _crafted_pickle(path: Path, marker: Path) -> None:
    """A pickle that, when fully unpickled, creates `marker` (what a crafted checkpoint could do)."""
    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path.write_bytes(pickle.dumps({"state": Exploit()}))


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, named",
    [
        ("truncated_unet", "unet/diffusion_pytorch_model.safetensors"),
        ("truncated_ema", "unet_ema/diffusion_pytorch_model.safetensors"),
        ("truncated_optimizer", "optimizer.bin"),
        ("bad_state_json", "training_state.json"),
        ("bad_ema_json", "ema_state.json"),
        ("missing_rng", "random_states_0.pkl"),
        ("other_unet_config", "unet/config.json"),
        ("other_flags", "--ddpm_num_steps is 100 here but 50 in the checkpoint"),
        ("crafted_pickle", "optimizer.bin"),
        ("legacy_pickle_ema", "custom_checkpoint_0.pkl"),
    ],
)
def test_damaged_or_foreign_checkpoint_is_refused_naming_the_file(trained, tmp_path, damage, named):
    ckpt = checkpoint_copy(trained, tmp_path)
    marker = tmp_path / "code-ran"
    if damage.startswith("truncated_"):
        f = {"unet": ckpt / "unet" / "diffusion_pytorch_model.safetensors",
             "ema": ckpt / "unet_ema" / "diffusion_pytorch_model.safetensors",
             "optimizer": ckpt / "optimizer.bin"}[damage.split("_", 1)[1]]
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "bad_state_json":
        (ckpt / "training_state.json").write_text('{"global_step": 6, "run_id"')
    elif damage == "bad_ema_json":
        (ckpt / "ema_state.json").write_text("[]")
    elif damage == "missing_rng":
        (ckpt / "random_states_0.pkl").unlink()
    elif damage == "other_unet_config":
        cfg = json.loads((ckpt / "unet" / "config.json").read_text())
        cfg["block_out_channels"] = [8, 8]
        (ckpt / "unet" / "config.json").write_text(json.dumps(cfg))
    elif damage == "other_flags":
        state = json.loads((ckpt / "training_state.json").read_text())
        state["config"]["ddpm_num_steps"] = 50
        (ckpt / "training_state.json").write_text(json.dumps(state))
    elif damage == "crafted_pickle":
        _crafted_pickle(ckpt / "optimizer.bin", marker)
    else:
        _crafted_pickle(ckpt / "custom_checkpoint_0.pkl", marker)
    if damage in ("other_unet_config", "other_flags", "crafted_pickle"):
        # a coherent checkpoint of another configuration, or a crafted one with a manifest that agrees: the checks
        # behind the manifest's refuse it (without the new manifest, the manifest would name the changed file)
        write_manifest(ckpt)
    state = json.loads((trained / "checkpoint-6" / "training_state.json").read_text())
    unet_config = json.loads((trained / "checkpoint-6" / "unet" / "config.json").read_text())
    with pytest.raises(CheckpointError, match="ddpm_num_steps" if damage == "other_flags" else str(ckpt)):
        validate_checkpoint(ckpt, config=state["config"], unet_config=unet_config, use_ema=True, num_processes=1)
    try:
        validate_checkpoint(ckpt, config=state["config"], unet_config=unet_config, use_ema=True, num_processes=1)
    except CheckpointError as e:
        assert named in str(e)
    assert not marker.exists(), "a pickle was unpickled"


@pytest.mark.slow
def test_crafted_checkpoint_is_refused_by_the_script_before_training(trained, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    ckpt = checkpoint_copy(trained, out, step=4)
    marker = tmp_path / "code-ran"
    _crafted_pickle(ckpt / "scheduler.bin", marker)
    write_manifest(ckpt)  # crafted with a manifest that agrees: the restricted unpickler still refuses it
    result = run(TINY + STEPS + ["--output_dir", str(out), "--resume_from_checkpoint", "latest"], check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"error: {ckpt / 'scheduler.bin'} is damaged or holds objects other than tensors" in result.stderr
    assert "Traceback" not in result.stderr and "Resumed" not in result.stdout + result.stderr
    assert not marker.exists() and not (out / "checkpoint-6").exists() and not (out / "model_index.json").exists()


# --------------------------------------------------------------------------------------------------
# Ownership: other runs' checkpoints and newer ones
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_new_run_never_prunes_or_resumes_another_runs_checkpoints(trained, tmp_path):
    out = tmp_path / "second"
    out.mkdir()
    shutil.copytree(trained / "checkpoint-6", out / "checkpoint-6")  # an earlier run's checkpoint
    refused = run(TINY + ["--max_train_steps", "2", "--output_dir", str(out)], check=False, timeout=120)
    assert refused.returncode == 2
    assert "holds checkpoints of another run (checkpoint-6)" in refused.stderr
    assert "--overwrite_output_dir" in refused.stderr

    # told to start anew: the old checkpoint is moved aside (not deleted), the new run keeps its own checkpoint-2
    result = run(TINY + ["--max_train_steps", "2", "--checkpointing_steps", "2", "--checkpoints_total_limit", "1",
                         "--learning_rate", "1e-3", "--output_dir", str(out), "--overwrite_output_dir"])
    assert "Moved checkpoint-6 to" in result.stdout + result.stderr
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    [aside] = out.glob("superseded/*/checkpoint-6")
    assert_same_weights(aside, trained / "checkpoint-6", "unet_ema")
    # latest resumes this run, not the old one
    resumed = run(TINY + ["--max_train_steps", "3", "--checkpointing_steps", "2", "--checkpoints_total_limit", "1",
                          "--learning_rate", "1e-3", "--output_dir", str(out), "--resume_from_checkpoint", "latest"])
    assert f"Resumed from {out / 'checkpoint-2'} at step 2" in resumed.stdout + resumed.stderr


@pytest.mark.slow
def test_resume_from_older_checkpoint_sets_newer_ones_aside_and_is_exact(trained, tmp_path):
    out = tmp_path / "older"
    shutil.copytree(trained, out)
    result = run(TINY + STEPS + ["--checkpoints_total_limit", "3", "--output_dir", str(out),
                                 "--resume_from_checkpoint", str(out / "checkpoint-2")])
    text = result.stdout + result.stderr
    assert "Moved checkpoint-4, checkpoint-6 to" in text and "Resumed from" in text
    assert sorted(p.name for p in out.glob("superseded/*/checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    # the replayed steps 3..6 equal the uninterrupted run's, to the bit
    assert_same_weights(out, trained)
    for sub in ("unet", "unet_ema"):
        assert_same_weights(out / "checkpoint-6", trained / "checkpoint-6", sub)


# --------------------------------------------------------------------------------------------------
# Fault injection: writes fail with ENOSPC during a checkpoint and during the final save
# --------------------------------------------------------------------------------------------------
_FULL_DISK = """
import builtins, errno, os, sys
import safetensors.torch
import ddpm_ext.training.train as train_ddpm
FAIL_UNDER = {fail_under!r}
real_open, real_save_file = builtins.open, safetensors.torch.save_file

def full(path):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

def failing_open(file, mode="r", *a, **k):
    if any(c in mode for c in "wax+") and FAIL_UNDER in os.fspath(file):
        full(file)
    return real_open(file, mode, *a, **k)

def failing_save_file(tensors, filename, *a, **k):
    if FAIL_UNDER in os.fspath(filename):
        full(filename)
    return real_save_file(tensors, filename, *a, **k)

builtins.open, safetensors.torch.save_file = failing_open, failing_save_file
sys.exit(train_ddpm.main({argv!r}))
"""


def run_with_full_disk(fail_under: str, argv: list[str]) -> subprocess.CompletedProcess:
    code = _FULL_DISK.format(fail_under=fail_under, argv=argv)
    return subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=ENV)


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_save_loses_nothing(trained, tmp_path):
    out = tmp_path / "full"
    result = run_with_full_disk("checkpoint-4.tmp", TINY + STEPS + ["--output_dir", str(out)])
    assert result.returncode == 1, result.stderr[-3000:]
    text = result.stdout + result.stderr
    assert f"error: could not write checkpoint-4: {out / 'checkpoint-4' / 'unet' / 'config.json'} (No space left on " \
        "device)" in text and "Traceback" not in text
    assert not list(out.glob("checkpoint-4*"))
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]  # no partial folder left
    validate(out / "checkpoint-2")
    for sub in ("unet", "unet_ema"):  # intact: the same bits as the uninterrupted run's checkpoint-2
        assert_same_weights(out / "checkpoint-2", trained / "checkpoint-2", sub)


@pytest.mark.slow
def test_full_disk_during_the_final_save_keeps_the_earlier_pipeline(trained, tmp_path):
    out = tmp_path / "final"
    shutil.copytree(trained, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and "checkpoint" not in str(p)}
    result = run_with_full_disk(".pipeline-", TINY + ["--max_train_steps", "2", "--seed", "1", "--output_dir", str(out),
                                                      "--overwrite_output_dir"])
    assert result.returncode == 1, result.stderr[-3000:]
    text = result.stdout + result.stderr
    assert f"error: could not write {out / 'unet' / 'config.json'} (No space left on device)" in text
    assert "Traceback" not in text
    for rel, data in before.items():
        if rel.parts[0] not in ("superseded",):
            assert (out / rel).read_bytes() == data, f"{rel} changed"
    assert not list(out.glob(".pipeline-*"))


# --------------------------------------------------------------------------------------------------
# Flags: checked in parse_args, before any model or data is loaded
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--resolution", "7"],
         "--resolution must be a multiple of 2 (each of the UNet's 1 downsampling steps halves the image), got 7"),
        (["--resolution", "100000"], "--resolution must be <= 4096, got 100000"),
        (["--learning_rate", "inf"], "`--learning_rate` must be a number > 0, got inf."),
        (["--learning_rate", "nan"], "`--learning_rate` must be a number > 0, got nan."),
        (["--ema_inv_gamma", "0"], "`--ema_inv_gamma` must be a number > 0, got 0.0."),
        (["--ema_power", "-1"], "`--ema_power` must be a number > 0, got -1.0."),
        (["--max_grad_norm", "-1"], "`--max_grad_norm` must be a number >= 0, got -1.0."),
        (["--adam_beta1", "1"], "`--adam_beta1` must be a number in [0, 1), got 1.0."),
        (["--adam_epsilon", "0"], "`--adam_epsilon` must be a number > 0, got 0.0."),
        (["--pretrained_model_name_or_path", "x", "--ddpm_beta_schedule", "cosine", "--ddpm_num_steps", "50"],
         "--ddpm_num_steps, --ddpm_beta_schedule cannot apply to --pretrained_model_name_or_path"),
        (["--enable_xformers_memory_efficient_attention"],
         "--enable_xformers_memory_efficient_attention needs xformers"),
        (["--logger", "wandb"], "--logger wandb needs the wandb package"),
    ],
)
def test_bad_flags_are_refused_before_loading(flags, message, tmp_path, capsys):
    if "xformers" in message and train_flags._importable("xformers"):
        pytest.skip("xformers is installed")
    if "wandb" in message and train_flags._importable("wandb"):
        pytest.skip("wandb is installed")
    with pytest.raises(SystemExit) as e:
        train_flags.parse_args(["--model_config", "tiny", "--output_dir", str(tmp_path / "o"), *flags])
    assert e.value.code == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unwritable_output_and_foreign_or_damaged_checkpoints_are_refused_in_parse_args(tmp_path, capsys):
    def error(*flags):
        with pytest.raises(SystemExit):
            train_flags.parse_args(["--model_config", "tiny", *flags])
        return capsys.readouterr().err

    (tmp_path / "file").write_text("x")
    assert f"--output_dir {tmp_path / 'file'} is a file, not a folder" in error("--output_dir", str(tmp_path / "file"))
    out = tmp_path / "out"
    (out / "checkpoint-6").mkdir(parents=True)
    assert "holds checkpoints of another run (checkpoint-6)" in error("--output_dir", str(out))
    (out / "checkpoint-6" / "training_state.json").write_text("{not json")
    msg = error("--output_dir", str(out), "--resume_from_checkpoint", "latest")
    assert f"{out / 'checkpoint-6' / 'training_state.json'} is damaged" in msg


def test_resolution_sets_the_unet_sample_size(tmp_path):
    args = train_flags.parse_args(["--model_config", "tiny", "--resolution", "16", "--output_dir", str(tmp_path / "o")])
    unet, _ = train_setup.build_model_and_scheduler(args)
    assert unet.config.sample_size == 16  # today: 8, the preset's, while training on 16x16 crops


def test_new_model_scheduler_samples_with_trailing_spacing(tmp_path):
    """A new model saves "trailing" (few-step chains start at T - 1, also in vanilla diffusers); the scheduler
    class keeps diffusers' "leading" default."""
    args = train_flags.parse_args(["--model_config", "tiny", "--output_dir", str(tmp_path / "o")])
    _, scheduler = train_setup.build_model_and_scheduler(args)
    assert scheduler.config.timestep_spacing == "trailing"
    assert train_setup.DDPMExtScheduler().config.timestep_spacing == "leading"
    scheduler.set_timesteps(10)
    assert scheduler.timesteps[0] == 999


def test_hub_token_on_the_command_line_warns(tmp_path):
    with pytest.warns(UserWarning, match="prefer HF_TOKEN"):
        args = train_flags.parse_args(["--hub_token", "hf_secret", "--output_dir", str(tmp_path / "o")])
    assert args.hub_token == "hf_secret"


def test_resume_applies_a_changed_learning_rate_and_keeps_an_unchanged_one_exact():
    def setup(lr):
        p = torch.nn.Parameter(torch.ones(3))
        opt = torch.optim.AdamW([p], lr=lr)
        sched = get_scheduler("cosine", optimizer=opt, num_warmup_steps=2, num_training_steps=10)
        return opt, sched

    opt, sched = setup(2e-3)
    for _ in range(4):
        opt.step()
        sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()

    class Wrapped:  # accelerate's AcceleratedScheduler exposes the LambdaLR as .scheduler
        def __init__(self, s):
            self.scheduler = s

    args = train_flags.parse_args(["--learning_rate", "1e-4", "--output_dir", "/tmp/unused-ddpm-ext"])
    for lr, expected in ((2e-3, saved_opt["param_groups"][0]["lr"]), (1e-4, None)):
        opt2, sched2 = setup(lr)
        opt2.load_state_dict(saved_opt)
        sched2.load_state_dict(saved_sched)  # the saved state carries lr 2e-3
        args.learning_rate = lr
        resume.apply_changed_flags({"changeable": {"learning_rate": 2e-3}}, args, opt2, Wrapped(sched2), None,
                                       type("A", (), {"print": staticmethod(lambda *a: None)}))
        if expected is not None:
            assert opt2.param_groups[0]["lr"] == expected  # bit-identical when unchanged
        else:
            # the cosine schedule at step 4 of 10 (2 warm-up), scaled to the new peak
            factor = 0.5 * (1 + math.cos(math.pi * (4 - 2) / (10 - 2)))
            assert opt2.param_groups[0]["lr"] == pytest.approx(1e-4 * factor, rel=1e-12)
            sched2.step()
            assert sched2.base_lrs == [1e-4]


# --------------------------------------------------------------------------------------------------
# Integrity (issue 31): a manifest proves a checkpoint's files, the data is the same, the weights are finite,
# faults end cleanly. In process (fast): exact comparisons hold there by construction (same process, one thread).
# --------------------------------------------------------------------------------------------------
IN_PROCESS = TINY + ["--cpu_threads", "1", "--checkpointing_steps", "2", "--checkpoints_total_limit", "3"]


def train_here(argv: list[str]) -> int:
    return train_main(IN_PROCESS + argv)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted 6-step run in this process, keeping checkpoint-2, -4 and -6, and its final pipeline."""
    out = tmp_path_factory.mktemp("straight") / "out"
    assert train_here(["--max_train_steps", "6", "--output_dir", str(out)]) == 0
    return out


def interrupted_copy(straight: Path, tmp_path: Path, at: int = 4) -> Path:
    """The output folder of `straight` as a run stopped after checkpoint-`at` leaves it: no pipeline, no later ones."""
    out = tmp_path / "out"
    out.mkdir()
    for step in range(2, at + 1, 2):
        shutil.copytree(straight / f"checkpoint-{step}", out / f"checkpoint-{step}")
    return out


def error_lines(text: str) -> list[str]:
    """The lines saying something went wrong (the rest of stderr is progress bars)."""
    return [line for line in text.splitlines() if "error" in line.lower() or "Traceback" in line]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def flip_lowest_mantissa_bits(path: Path, fraction: float = 0.01) -> None:
    """Flip the lowest mantissa bit of `fraction` of the float32 values of a safetensors file (the same ones each
    time: a seeded choice)."""
    tensors = load_file(path)
    g = torch.Generator().manual_seed(0)
    for name, t in tensors.items():
        bits = t.contiguous().view(torch.int32).flatten()
        chosen = torch.rand(bits.numel(), generator=g) < fraction
        bits[chosen] ^= 1
        tensors[name] = bits.view(torch.float32).view(t.shape)
    save_file(tensors, path, metadata={"format": "pt"})


def test_the_manifest_lists_every_file_and_the_data(straight):
    ckpt = straight / "checkpoint-4"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    files = {p.relative_to(ckpt).as_posix(): p for p in ckpt.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert set(manifest["files"]) == set(files) and "unet/diffusion_pytorch_model.safetensors" in files
    for name, entry in manifest["files"].items():
        assert entry == {"size": files[name].stat().st_size, "sha256": file_sha256(files[name])}
    assert manifest["data"] == {"source": "mnist-5k", "split": "train", "rows": 48,
                                "fingerprint": manifest["data"]["fingerprint"]}
    assert len(manifest["data"]["fingerprint"]) == 16
    assert verify_manifest(ckpt) == manifest


@pytest.mark.parametrize(
    "tamper, named",
    [
        ("flip_unet_bits", "checkpoint-4/unet/diffusion_pytorch_model.safetensors"),
        ("older_training_state", "checkpoint-4/training_state.json"),
        ("older_unet", "checkpoint-4/unet/diffusion_pytorch_model.safetensors"),
        ("older_optimizer", "checkpoint-4/optimizer.bin"),
        ("added_file", "checkpoint-4/guide_unet/config.json"),
        ("removed_file", "checkpoint-4/scheduler.bin"),
    ],
)
def test_a_tampered_checkpoint_is_refused_before_loading_and_the_intact_one_resumes_exactly(
    straight, tmp_path, capsys, tamper, named
):
    out = interrupted_copy(straight, tmp_path)
    ckpt, older = out / "checkpoint-4", out / "checkpoint-2"
    original = snapshot(ckpt)
    if tamper == "flip_unet_bits":
        flip_lowest_mantissa_bits(ckpt / "unet" / "diffusion_pytorch_model.safetensors")
    elif tamper == "older_training_state":
        shutil.copy(older / "training_state.json", ckpt / "training_state.json")
    elif tamper == "older_unet":
        shutil.rmtree(ckpt / "unet")
        shutil.copytree(older / "unet", ckpt / "unet")
    elif tamper == "older_optimizer":
        shutil.copy(older / "optimizer.bin", ckpt / "optimizer.bin")
    elif tamper == "added_file":
        shutil.copytree(older / "unet", ckpt / "guide_unet")
    else:
        (ckpt / "scheduler.bin").unlink()
    before = snapshot(out)
    capsys.readouterr()
    code = train_here(["--max_train_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint", "latest"])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    [line] = error_lines(err)
    assert line.startswith(f"error: {out / named} ") and "Traceback" not in err
    assert snapshot(out) == before  # nothing loaded, trained, moved or written
    if tamper == "flip_unet_bits":  # the intact checkpoint resumes to the uninterrupted run's bits
        shutil.copy(straight / "checkpoint-4" / "unet" / "diffusion_pytorch_model.safetensors", ckpt / "unet")
        assert snapshot(ckpt) == original
        assert train_here(["--max_train_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint",
                           "latest"]) == 0
        for sub in ("unet", "unet_ema"):
            assert_same_weights(out / "checkpoint-6", straight / "checkpoint-6", sub)
        assert_same_weights(out, straight)


def test_a_checkpoint_of_the_earlier_format_resumes_with_a_warning(straight, tmp_path, caplog):
    """No manifest (written before checkpoints had one): accepted, said in the log, resumed exactly."""
    out = interrupted_copy(straight, tmp_path)
    (out / "checkpoint-4" / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING):
        assert train_here(["--max_train_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint",
                           "latest"]) == 0
    assert f"{out / 'checkpoint-4'} has no manifest.json" in caplog.text and "cannot be verified" in caplog.text
    assert_same_weights(out, straight)
    assert (out / "checkpoint-6" / "manifest.json").is_file()  # what the run writes is verifiable


def test_without_a_manifest_a_training_state_of_another_step_is_still_refused(straight, tmp_path, capsys):
    out = interrupted_copy(straight, tmp_path)
    (out / "checkpoint-4" / "manifest.json").unlink()
    shutil.copy(out / "checkpoint-2" / "training_state.json", out / "checkpoint-4")
    assert train_here(["--max_train_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint", "latest"]) == 2
    assert (f"error: {out / 'checkpoint-4' / 'training_state.json'} is at step 2, but the folder is checkpoint-4: "
            "the file belongs to another checkpoint.") in capsys.readouterr().err


def test_a_damaged_manifest_is_refused_naming_it(straight, tmp_path, capsys):
    out = interrupted_copy(straight, tmp_path)
    (out / "checkpoint-4" / "manifest.json").write_text('{"format": 1, "files": {"../x": {}}}')
    assert train_here(["--max_train_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint", "latest"]) == 2
    assert f"error: {out / 'checkpoint-4' / 'manifest.json'} is damaged" in capsys.readouterr().err


def images_folder(folder: Path, n: int) -> Path:
    folder.mkdir(exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), 30 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_changed_training_data_is_refused_on_resume_unless_allowed(tmp_path, capsys, caplog):
    data = images_folder(tmp_path / "images", 8)
    argv = ["--train_data_dir", str(data), "--output_dir", str(tmp_path / "out")]
    assert train_here(["--max_train_steps", "2"] + argv) == 0
    recorded = json.loads((tmp_path / "out" / "checkpoint-2" / "manifest.json").read_text())["data"]
    assert recorded["source"] == f"image folder {data}" and (recorded["files"], recorded["rows"]) == (8, 8)
    Image.fromarray(np.full((8, 8), 255, dtype=np.uint8)).save(data / "3.png")  # one image edited
    before = snapshot(tmp_path / "out")
    capsys.readouterr()
    resume = ["--max_train_steps", "4", "--resume_from_checkpoint", "latest"] + argv
    assert train_here(resume) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith("error: the training data differs from the data") and "--allow_data_change" in line
    assert "sha256: " in line and "files:" not in line  # the same file count: the content changed
    assert snapshot(tmp_path / "out") == before
    with caplog.at_level(logging.WARNING):
        assert train_here(resume + ["--allow_data_change"]) == 0
    assert "--allow_data_change: the training data differs" in caplog.text
    assert json.loads((tmp_path / "out" / "checkpoint-4" / "manifest.json").read_text())["data"]["files"] == 8


@pytest.mark.parametrize(
    "damage, message",
    [
        ({"optimization_step": "4"}, "optimization_step must be an integer >= 0 (got \"4\")"),
        ({"optimization_step": -1}, "optimization_step must be an integer >= 0 (got -1)"),
        ({"decay": float("nan")}, "decay must be a number in [0, 1] (got NaN)"),
        ({"power": True}, "power must be a finite number > 0 (got true)"),
        ({"inv_gamma": None}, "inv_gamma must be a finite number > 0 (got null)"),
        ({"use_ema_warmup": 1}, "use_ema_warmup must be true or false (got 1)"),
        ({"min_decay": "missing"}, "min_decay must be a number in [0, 1] (missing)"),
    ],
)
def test_damaged_ema_state_values_are_named(straight, tmp_path, damage, message):
    path = tmp_path / "ema_state.json"
    scalars = json.loads((straight / "checkpoint-4" / "ema_state.json").read_text())
    for key, value in damage.items():
        if value == "missing":
            del scalars[key]
        else:
            scalars[key] = value
    path.write_text(json.dumps(scalars))
    with pytest.raises(CheckpointError) as e:
        check_ema_state(path)
    assert str(e.value) == f"{path} is damaged: {message}."


def test_damaged_ema_state_in_a_checkpoint_is_a_clear_error(straight, tmp_path, capsys):
    """Even with a manifest that agrees (written again after the damage): named, no traceback."""
    out = interrupted_copy(straight, tmp_path)
    state = out / "checkpoint-4" / "ema_state.json"
    state.write_text(state.read_text().replace('"optimization_step": 4', '"optimization_step": -4'))
    write_manifest(out / "checkpoint-4", data=read_manifest(straight / "checkpoint-4")["data"])
    assert train_here(["--max_train_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint", "latest"]) == 2
    err = capsys.readouterr().err
    assert f"error: {state} is damaged: optimization_step must be an integer >= 0 (got -4)." in err
    assert "Traceback" not in err


def test_a_checkpoint_holding_nonfinite_weights_is_refused_before_resuming(straight, tmp_path, capsys):
    out = interrupted_copy(straight, tmp_path)
    weights_file = out / "checkpoint-4" / "unet_ema" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights_file)
    tensors["conv_in.weight"][0, 0, 0, 0] = float("nan")
    save_file(tensors, weights_file)
    write_manifest(out / "checkpoint-4", data=read_manifest(straight / "checkpoint-4")["data"])
    capsys.readouterr()
    assert train_here(["--max_train_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint", "latest"]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {weights_file} holds non-finite weights (1 of 72 values of conv_in.weight")
    assert "Resumed" not in line and not (out / "checkpoint-6").exists()


@pytest.mark.parametrize("flag", ["--learning_rate", "--adam_weight_decay"])
def test_weights_blown_up_on_the_last_step_are_never_saved_or_reported_as_success(tmp_path, capsys, flag):
    out = tmp_path / "out"
    code = train_here(["--max_train_steps", "4", "--output_dir", str(out), flag, "1e308"])
    printed = capsys.readouterr()
    assert code == 1, printed.err[-2000:]
    text = printed.out + printed.err
    assert "error: the weights of the UNet and its EMA became non-finite (NaN or inf) at step" in text
    assert "nothing of them was saved" in text and "Done:" not in text
    assert not (out / "model_index.json").exists() and not (out / "training_info.json").exists()
    for ckpt in out.glob("checkpoint-*"):  # the checkpoints kept hold finite weights and pass the checks
        validate(ckpt)


def test_every_weight_set_a_run_saves_is_checked_for_finiteness():
    """The UNet, its EMA and the autoguidance guide: each is named when it holds NaN or inf."""
    unet = build_unet("tiny")
    guide, ema = copy.deepcopy(unet), EMAModel(unet.parameters())
    trainer = SimpleNamespace(plain_unet=unet, ema=ema, guide_unet=guide)
    assert Trainer._nonfinite_weights(trainer) == []
    with torch.no_grad():
        guide.conv_in.weight[0, 0, 0, 0] = float("inf")
    ema.shadow_params[-1][0] = float("nan")
    assert Trainer._nonfinite_weights(trainer) == ["its EMA", "the autoguidance guide"]
    with torch.no_grad():
        unet.conv_out.bias[0] = float("nan")
    assert Trainer._nonfinite_weights(trainer) == ["the UNet", "its EMA", "the autoguidance guide"]


def test_a_kill_while_pruning_leaves_a_folder_that_resumes_exactly(straight, tmp_path):
    """Pruning renames a checkpoint to checkpoint-<step>.pruning before deleting it: a kill mid-deletion leaves a
    partial `.pruning` folder (simulated here), which resume ignores and removes."""
    out = interrupted_copy(straight, tmp_path)
    (out / "checkpoint-2").rename(out / "checkpoint-2.pruning")
    (out / "checkpoint-2.pruning" / "training_state.json").unlink()  # deleted before the kill
    shutil.rmtree(out / "checkpoint-2.pruning" / "unet")
    assert train_here(["--max_train_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint", "latest"]) == 0
    assert not (out / "checkpoint-2.pruning").exists()
    assert_same_weights(out, straight)


def test_what_interrupted_writes_left_is_cleared_and_a_replaced_checkpoint_comes_back(tmp_path):
    """A kill while replacing checkpoint-4 by a new one of the same step (checkpoint-4 moved to checkpoint-4.old,
    the new one still checkpoint-4.tmp) and while pruning checkpoint-2: the old checkpoint-4 is put back."""
    for name in ("checkpoint-4.old", "checkpoint-4.tmp", "checkpoint-2.pruning", "checkpoint-6", "checkpoint-6.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "training_state.json").write_text(name)
    removed = remove_partial_folders(tmp_path)
    assert sorted(p.name for p in removed) == ["checkpoint-2.pruning", "checkpoint-4.tmp", "checkpoint-6.old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    assert (tmp_path / "checkpoint-4" / "training_state.json").read_text() == "checkpoint-4.old"


def test_pruning_renames_before_deleting(tmp_path, monkeypatch):
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "training_state.json").write_text(json.dumps(
            {"run_id": "r", "global_step": step, "epoch": 0, "batches_in_epoch": 0, "config": {}}))
    deleted = []
    monkeypatch.setattr(checkpoints.shutil, "rmtree", lambda p, **k: deleted.append(Path(p).name))
    assert [p.name for p in prune_checkpoints(tmp_path, "r", keep=1)] == ["checkpoint-2"]
    assert deleted == ["checkpoint-2.pruning"] and (tmp_path / "checkpoint-2.pruning").is_dir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-4"]


class FullDisk:
    """Fault injection in this process: every write whose path contains `where` fails as a full disk does, the way
    the writer reports it (PyTorch: a RuntimeError from inline_container.cc; safetensors: a SafetensorError; open:
    OSError ENOSPC)."""

    def __init__(self, monkeypatch, where: str):
        self.where = where
        real_open, real_io_open = builtins.open, io.open
        real_torch_save, real_save_file = torch.save, safetensors.torch.save_file

        def hit(f) -> bool:
            return isinstance(f, (str, os.PathLike)) and where in os.fspath(f)

        def failing_open(real):
            def open_(file, mode="r", *a, **k):
                if any(c in mode for c in "wax+") and hit(file):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(file))
                return real(file, mode, *a, **k)
            return open_

        def torch_save(obj, f, *a, **k):
            if hit(f):
                raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing "
                                   "file data/0: file write failed")
            return real_torch_save(obj, f, *a, **k)

        def save_file(tensors, filename, *a, **k):
            if hit(filename):
                raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                      '"No space left on device" })')
            return real_save_file(tensors, filename, *a, **k)

        monkeypatch.setattr(builtins, "open", failing_open(real_open))
        monkeypatch.setattr(io, "open", failing_open(real_io_open))
        monkeypatch.setattr(torch, "save", torch_save)
        monkeypatch.setattr(safetensors.torch, "save_file", save_file)


SLOW = pytest.mark.slow  # one case per writer (safetensors, torch.save, open, pipeline, grid) in the fast tier


@pytest.mark.parametrize(
    "where, named",
    [
        ("checkpoint-4.tmp/unet/diffusion", "checkpoint-4/unet/diffusion_pytorch_model.safetensors (No space left"),
        pytest.param("checkpoint-4.tmp/unet_ema/config", "checkpoint-4/unet_ema/config.json (No space left on device)",
                     marks=SLOW),
        ("checkpoint-4.tmp/optimizer.bin", "checkpoint-4/optimizer.bin (torch.save failed: [enforce fail at"),
        pytest.param("checkpoint-4.tmp/random_states_0", "checkpoint-4/random_states_0.pkl (torch.save failed",
                     marks=SLOW),
        pytest.param("checkpoint-4.tmp/.training_state.json",
                     "checkpoint-4/training_state.json (No space left on device)", marks=SLOW),
        ("checkpoint-4.tmp/.manifest.json", "checkpoint-4/manifest.json (No space left on device)"),
        ("samples/.step-000002", "samples/step-000002.png (No space left on device)"),
        pytest.param("/.pipeline-", "unet/config.json (No space left on device)", marks=SLOW),
        ("tmp/diffusion_pytorch_model", "unet/diffusion_pytorch_model.safetensors (No space left on device)"),
        pytest.param("/.samples.png", "samples.png (No space left on device)", marks=SLOW),
        pytest.param("/.README.md", "README.md (No space left on device)", marks=SLOW),
    ],
)
def test_a_full_disk_during_any_save_ends_in_one_line_naming_the_file(straight, tmp_path, monkeypatch, capsys, where,
                                                                       named):
    out = tmp_path / "out"
    argv = ["--max_train_steps", "6", "--output_dir", str(out)]
    if where.startswith("samples/"):
        argv += ["--save_images_steps", "2"]
    FullDisk(monkeypatch, where)
    code = train_here(argv)
    monkeypatch.undo()
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert code == 1, text[-2000:]
    [line] = error_lines(text)
    assert line.startswith(f"error: could not write {out}/" if "checkpoint" not in where else
                           "error: could not write checkpoint-4: ")
    assert f"{out}/{named}" in line
    left = [p.name for p in out.rglob("*") if ".tmp" in p.name or ".pruning" in p.name or ".old" in p.name]
    assert left == []  # no temporary file or folder behind
    validate(out / "checkpoint-2")  # every earlier file intact: the same bits as the uninterrupted run's
    for sub in ("unet", "unet_ema"):
        assert_same_weights(out / "checkpoint-2", straight / "checkpoint-2", sub)


def test_naming_failed_writes_names_the_file_of_torch_and_safetensors_writers(tmp_path, monkeypatch):
    FullDisk(monkeypatch, "full")
    with pytest.raises(OSError) as e, naming_failed_writes():
        torch.save({"a": 1}, tmp_path / "full.bin")
    assert (e.value.errno, e.value.filename) == (errno.EIO, str(tmp_path / "full.bin"))
    assert "torch.save failed: [enforce fail at inline_container.cc:664]" in e.value.strerror
    with pytest.raises(OSError) as e, naming_failed_writes():
        safetensors.torch.save_file({"w": torch.zeros(1)}, str(tmp_path / "full.safetensors"))
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(tmp_path / "full.safetensors"))
    assert torch.save.__name__ == "torch_save"  # the injected writer is back in place: only the block wraps


_KILL_WHILE_PRUNING = """
import os, shutil, signal, sys
import ddpm_ext.training.checkpoints as checkpoints
import ddpm_ext.training.train as train_ddpm

def rmtree(path, **kwargs):  # delete part of the pruned checkpoint, then die as a SIGKILL kills
    if str(path).endswith(".pruning"):
        os.remove(os.path.join(path, "training_state.json"))
        shutil.rmtree(os.path.join(path, "unet"))
        os.kill(os.getpid(), signal.SIGKILL)
    return shutil.rmtree(path, **kwargs)

checkpoints.shutil = type("Shutil", (), {"rmtree": staticmethod(rmtree)})
sys.exit(train_ddpm.main(ARGV))
"""


@pytest.mark.slow
def test_a_sigkill_while_pruning_leaves_a_folder_that_resumes_exactly(trained, tmp_path):
    out = tmp_path / "pruned"
    argv = TINY + STEPS + ["--checkpoints_total_limit", "1", "--output_dir", str(out)]
    code = _KILL_WHILE_PRUNING.replace("ARGV", repr(argv))
    killed = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, env=ENV, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2.pruning", "checkpoint-4"]
    result = run(argv + ["--resume_from_checkpoint", "latest"])
    assert f"Resumed from {out / 'checkpoint-4'} at step 4" in result.stdout + result.stderr
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-6"]
    assert_same_weights(out, trained)  # the uninterrupted run's final weights, to the bit


@pytest.mark.slow
def test_the_script_refuses_a_checkpoint_with_flipped_bits_naming_the_file(trained, tmp_path):
    out = tmp_path / "flipped"
    out.mkdir()
    ckpt = checkpoint_copy(trained, out, step=4)
    flip_lowest_mantissa_bits(ckpt / "unet" / "diffusion_pytorch_model.safetensors")
    result = run(TINY + STEPS + ["--output_dir", str(out), "--resume_from_checkpoint", "latest"], check=False)
    assert result.returncode == 2
    [line] = error_lines(result.stderr)
    assert line == (f"error: {ckpt / 'unet' / 'diffusion_pytorch_model.safetensors'} is not the file this checkpoint "
                    "saved (its SHA-256 differs from the one the manifest records): it was damaged or replaced (e.g. "
                    "copied in from another checkpoint) since. Resume from another checkpoint, or start a new run.")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-4"]
