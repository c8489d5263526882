"""`ddpm-ext push` against the local upload test server: one-line errors, --token, re-push cleanup."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_servers import free_loopback_port

from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # each test starts a Python process that imports torch and diffusers


def push(folder: Path, repo_id: str, *, endpoint: str, token: str | None = None, env_token: str | None = None,
         extra: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(folder.parent / "hf-home"))
    if env_token:
        env["HF_TOKEN"] = env_token
    cmd = [sys.executable, "-m", "ddpm_ext", "push", str(folder), "--repo_id", repo_id] + (extra or [])
    if token:
        cmd += ["--token", token]
    return subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture
def pipeline_folder(tiny_pipeline_dir, tmp_path) -> Path:
    folder = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline_dir, folder)
    (folder / "README.md").write_text("---\nlibrary_name: diffusers\n---\n# tiny\n")
    (folder / "samples.png").write_bytes(b"\x89PNG not really")
    return folder


def assert_one_line_error(result: subprocess.CompletedProcess, *secrets: str) -> str:
    assert result.returncode == 1, result.stderr[-3000:]
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in result.stderr
    for s in secrets:
        assert s not in result.stdout + result.stderr
    return err


def test_wrong_token_is_one_line_without_the_token(pipeline_folder, upload_hub):
    result = push(pipeline_folder, "ddpm-ext-tests/cli-wrong", endpoint=upload_hub.url, token="hf_wrong_secret_token")
    err = assert_one_line_error(result, "hf_wrong_secret_token")
    assert "the push to ddpm-ext-tests/cli-wrong failed" in err and "401" in err
    assert upload_hub.commits_for("ddpm-ext-tests/cli-wrong") == []


def test_unreachable_hub_is_one_line(pipeline_folder):
    port = free_loopback_port()  # nothing listens there: connection refused
    result = push(pipeline_folder, "ddpm-ext-tests/cli-offline", endpoint=f"http://127.0.0.1:{port}",
                  token="hf_x_secret")
    assert_one_line_error(result, "hf_x_secret")


def test_not_a_pipeline_is_exit_2(tmp_path, upload_hub):
    (tmp_path / "empty").mkdir()
    result = push(tmp_path / "empty", "ddpm-ext-tests/none", endpoint=upload_hub.url, token=upload_hub.token)
    assert result.returncode == 2 and "is not a saved pipeline" in result.stderr and "Traceback" not in result.stderr


def test_token_flag_pushes_and_a_repush_removes_files_no_longer_in_the_output(pipeline_folder, upload_hub):
    repo = "ddpm-ext-tests/cli-repush"
    first = push(pipeline_folder, repo, endpoint=upload_hub.url, token=upload_hub.token, extra=["--private"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.strip().endswith(repo)
    [commit] = upload_hub.commits_for(repo)
    assert {"samples.png", "README.md", "model_index.json", "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
            "pipeline.py"} == set(commit.added)
    assert upload_hub.repos[("model", repo)].private

    (pipeline_folder / "samples.png").unlink()  # e.g. a run without sample grid: the old one must not stay online
    second = push(pipeline_folder, repo, endpoint=upload_hub.url, env_token=upload_hub.token)  # HF_TOKEN this time
    assert second.returncode == 0, second.stderr[-3000:]
    commits = upload_hub.commits_for(repo)
    assert len(commits) == 2 and commits[1].deleted_files == ["samples.png"]


def test_an_autoguidance_guide_is_pushed_with_the_pipeline(tmp_path, upload_hub):
    torch.manual_seed(0)
    folder = tmp_path / "guided"
    DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(),
                    guide_unet=build_unet("tiny")).save_pretrained(folder)
    result = push(folder, "ddpm-ext-tests/guided", endpoint=upload_hub.url, token=upload_hub.token)
    assert result.returncode == 0, result.stderr[-3000:]
    [commit] = upload_hub.commits_for("ddpm-ext-tests/guided")
    assert {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json", "guide_unet/config.json",
            "guide_unet/diffusion_pytorch_model.safetensors",
            "pipeline.py"} == set(commit.added)  # the index names the guide; pipeline.py: diffusers' custom loader
