"""Pushes of pipeline folders to the Hugging Face Hub (the command line is `ddpm-ext push`).

Only the pipeline (`model_index.json`, `unet/`, `scheduler/`, an autoguidance `guide_unet/`, diffusers'
custom-pipeline file `pipeline.py`), the model card and the sample grid are uploaded: never checkpoints, logs or
anything holding a token. The token is handed to
`huggingface_hub` and nowhere else.
A re-push makes the repo hold exactly these files: files of an earlier push that are no longer part of the output
are deleted in the same commit (`.gitattributes` is kept).

    ddpm-ext push outputs/mnist --repo_id me/ddpm-mnist [--private] [--token hf_...]
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi

__all__ = ["UPLOAD_PATTERNS", "describe_error", "push_pipeline", "reach_repo"]

UPLOAD_PATTERNS = ["model_index.json", "unet/config.json", "unet/*.safetensors", "scheduler/scheduler_config.json",
                   "guide_unet/config.json", "guide_unet/*.safetensors", "pipeline.py", "README.md", "samples.png"]


def push_pipeline(
    folder: str | os.PathLike,
    *,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload DDPM pipeline trained with ddpm_ext",
) -> str:
    """Create `repo_id` (if needed) and upload the pipeline, model card and sample grid of `folder`.

    Every other file of the repo (e.g. an earlier push's weights under another name) is deleted in the same commit.

    Returns:
        `str`: the URL of the repo.

    Raises:
        ValueError: if `folder` is not a saved pipeline.
        huggingface_hub.errors.HfHubHTTPError, OSError: the Hub refused the push or could not be reached.

    Example:

    ```py
    >>> from ddpm_ext.hub import push_pipeline
    >>> push_pipeline("outputs/mnist", repo_id="me/ddpm-mnist")  # doctest: +SKIP
    'https://huggingface.co/me/ddpm-mnist'
    ```
    """
    path = Path(folder)
    if not (path / "model_index.json").is_file():
        raise ValueError(f"`folder` {path} is not a saved pipeline (no model_index.json).")
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        folder_path=str(path), repo_id=repo.repo_id, repo_type="model", allow_patterns=UPLOAD_PATTERNS,
        delete_patterns="*", commit_message=commit_message,
    )
    return str(repo)


def reach_repo(repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Check `token` (the Hub's `whoami`) and create `repo_id` if needed, or reach it if it exists: what a training
    run does before its first step (as diffusers' `train_unconditional.py` does), so a bad token or no network shows
    up before the work, not after it.

    Returns:
        `str`: the URL of the repo.

    Raises:
        huggingface_hub.errors.HfHubHTTPError, huggingface_hub.errors.LocalTokenNotFoundError, OSError: the token was
            refused or missing, the repo could not be created or reached, or the Hub could not be reached.

    Example:

    ```py
    >>> from ddpm_ext.hub import reach_repo
    >>> reach_repo("me/ddpm-mnist", private=True)  # doctest: +SKIP
    'https://huggingface.co/me/ddpm-mnist'
    ```
    """
    api = HfApi(token=token)
    api.whoami()  # a clear "Invalid user token" for a bad token; create_repo alone accepts one for an existing repo
    return str(api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"))


def describe_error(error: BaseException, token: str | None = None) -> str:
    """One line for a failed push: the error's type and first line, with any token masked."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".strip().rstrip(":")
    for secret in {token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")}:
        if secret:
            text = text.replace(secret, "***")
    return text
