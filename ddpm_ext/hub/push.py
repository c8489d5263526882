"""Pushes of pipeline folders to the Hugging Face Hub (the command line is `ddpm-ext push`).

Only the pipeline (`model_index.json`, `unet/`, `scheduler/`, an autoguidance `guide_unet/`, diffusers'
custom-pipeline file `pipeline.py`), the model card and the sample grid are uploaded: never checkpoints, logs or
anything holding a token. The token is handed to `huggingface_hub` and nowhere else.
Every request has a timeout and the push as a whole a deadline (`timeout`, `ddpm-ext push --timeout`, default
[`DEFAULT_PUSH_TIMEOUT`] s; [`ddpm_ext.network`]): a Hub that stops answering ends the push with
[`ddpm_ext.network.HubDeadlineError`], and nothing local is lost.
A card whose usage snippets load the folder by its absolute path (a run trained without `--push_to_hub`) is
pointed at the repo id before the upload, so the pushed card loads the pushed model (and put back if the push
fails).
A re-push makes the repo hold exactly these files: files of an earlier push that are no longer part of the output
are deleted in the same commit (`.gitattributes` is kept).

    ddpm-ext push outputs/mnist --repo_id me/ddpm-mnist [--private] [--timeout 1800] [--token hf_...]
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from huggingface_hub import HfApi

from ..files import atomic_write_text
from ..network import run_with_deadline
from .model_card import is_repo_id, usage_id

__all__ = ["DEFAULT_PUSH_TIMEOUT", "UPLOAD_PATTERNS", "check_push_timeout", "check_repo_id", "describe_error",
           "push_pipeline", "reach_repo", "retry_command"]

# The pipeline's files; `*.py` keeps a pipeline's own code (diffusers' custom-pipeline convention) with it.
UPLOAD_PATTERNS = ["model_index.json", "pipeline.py", "unet/config.json", "unet/*.safetensors",
                   "scheduler/scheduler_config.json", "guide_unet/config.json", "guide_unet/*.safetensors",
                   "unet/*.py", "scheduler/*.py", "guide_unet/*.py", "README.md", "samples.png"]
DEFAULT_PUSH_TIMEOUT = 1800.0  # seconds for a whole push: ample for a few hundred MB, and a hung Hub ends


def check_repo_id(repo_id: str, name: str = "repo_id") -> str:
    """`repo_id` if it is a valid Hub repo id ('name' or 'org/name', huggingface_hub's `validate_repo_id`), else a
    `ValueError` naming the argument `name`, the value and what is allowed.

    Example:

    ```py
    >>> check_repo_id("me/ddpm-mnist")
    'me/ddpm-mnist'
    >>> check_repo_id('x"); import os', "--hub_model_id")
    Traceback (most recent call last):
    ...
    ValueError: `--hub_model_id` must be a Hub repo id, 'name' or 'org/name' ...

    ```
    """
    if not is_repo_id(repo_id):
        raise ValueError(
            f"`{name}` must be a Hub repo id, 'name' or 'org/name' (each part 1 to 96 of the characters A-Z a-z 0-9 "
            f"- _ ., not starting or ending with - or ., without -- or .., not ending in .git), got {repo_id!r}."
        )
    return repo_id


def check_push_timeout(timeout: float, name: str = "timeout") -> float:
    """`timeout` (seconds for a whole push) if it is a finite number > 0, else a `ValueError` naming `name`."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise ValueError(f"`{name}` must be a finite number of seconds > 0 (default {DEFAULT_PUSH_TIMEOUT:g}), "
                         f"got {timeout!r}.")
    return float(timeout)


def retry_command(folder: str | os.PathLike, repo_id: str, *, private: bool = False,
                  timeout: float = DEFAULT_PUSH_TIMEOUT) -> str:
    """The `ddpm-ext push` command that retries a push (never with a token: HF_TOKEN or `hf auth login` give it).

    Example:

    ```py
    >>> retry_command("outputs/my run", "me/ddpm", private=True, timeout=3600)
    "ddpm-ext push 'outputs/my run' --repo_id me/ddpm --private --timeout 3600"

    ```
    """
    words = ["ddpm-ext", "push", os.fspath(folder), "--repo_id", repo_id] + (["--private"] if private else [])
    if timeout != DEFAULT_PUSH_TIMEOUT:
        words += ["--timeout", f"{timeout:g}"]
    return " ".join(shlex.quote(w) for w in words)


def push_pipeline(
    folder: str | os.PathLike,
    *,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload DDPM pipeline trained with ddpm_ext",
    timeout: float = DEFAULT_PUSH_TIMEOUT,
    endpoint: str | None = None,
) -> str:
    """Create `repo_id` (if needed) and upload the pipeline, model card and sample grid of `folder`.

    Every other file of the repo (e.g. an earlier push's weights under another name) is deleted in the same commit.
    Every request has a timeout, and the whole push must end within `timeout` seconds ([`ddpm_ext.network`]). A
    card whose snippets load `folder` by its absolute path is first pointed at `repo_id` (rewritten atomically; put
    back as it was if the push fails).

    Args:
        folder: the saved pipeline folder.
        repo_id: the Hub repo, 'name' or 'org/name' (checked before any request).
        private: create the repo as private.
        token: the Hub token (default: HF_TOKEN or the stored login); handed to huggingface_hub only.
        commit_message: the commit's message.
        timeout: seconds the whole push may take (> 0).
        endpoint: the Hub's URL (default: `HF_ENDPOINT`, else https://huggingface.co).

    Returns:
        `str`: the URL of the repo.

    Raises:
        ValueError: if `folder` is not a saved pipeline, `repo_id` is not a valid repo id or `timeout` is not > 0.
        ddpm_ext.network.HubDeadlineError: the push did not end within `timeout` seconds (a `TimeoutError`).
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
    check_repo_id(repo_id)
    check_push_timeout(timeout)
    original_card = _point_card_at_repo(path, repo_id)
    api = HfApi(token=token, endpoint=endpoint)

    def upload() -> str:
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(path), repo_id=repo.repo_id, repo_type="model", allow_patterns=UPLOAD_PATTERNS,
            delete_patterns="*", commit_message=commit_message,
        )
        return str(repo)

    try:
        return run_with_deadline(upload, timeout, what=f"the push to {repo_id}")
    except BaseException:
        if original_card is not None:  # not pushed: the local card loads the folder again
            atomic_write_text(path / "README.md", original_card)
        raise


def _point_card_at_repo(folder: Path, repo_id: str) -> str | None:
    """Replace the card's load-by-absolute-path literal ([`ddpm_ext.hub.model_card.usage_id`]) by the repo id's;
    the card's earlier text if it changed, else None."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    text = card.read_bytes().decode("utf-8")
    local = usage_id(folder)
    if local not in text:
        return None
    atomic_write_text(card, text.replace(local, usage_id(folder, repo_id)))
    return text


def reach_repo(repo_id: str, *, private: bool = False, token: str | None = None,
               timeout: float = DEFAULT_PUSH_TIMEOUT, endpoint: str | None = None) -> str:
    """Check `token` (the Hub's `whoami`) and create `repo_id` if needed, or reach it if it exists: what a training
    run does before its first step (as diffusers' `train_unconditional.py` does), so a bad token or no network shows
    up before the work, not after it.

    Returns:
        `str`: the URL of the repo.

    Like [`push_pipeline`], every request has a timeout and the whole check must end within `timeout` seconds.

    Raises:
        ValueError: `repo_id` is not a valid repo id or `timeout` is not > 0.
        ddpm_ext.network.HubDeadlineError: the Hub did not answer within `timeout` seconds.
        huggingface_hub.errors.HfHubHTTPError, huggingface_hub.errors.LocalTokenNotFoundError, OSError: the token was
            refused or missing, the repo could not be created or reached, or the Hub could not be reached.

    Example:

    ```py
    >>> from ddpm_ext.hub import reach_repo
    >>> reach_repo("me/ddpm-mnist", private=True)  # doctest: +SKIP
    'https://huggingface.co/me/ddpm-mnist'
    ```
    """
    check_repo_id(repo_id)
    api = HfApi(token=token, endpoint=endpoint)

    def reach() -> str:
        api.whoami()  # a clear "Invalid user token" for a bad token; create_repo alone accepts one for an existing repo
        return str(api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"))

    return run_with_deadline(reach, check_push_timeout(timeout), what=f"reaching the Hub repository {repo_id}")


def describe_error(error: BaseException, token: str | None = None) -> str:
    """One line for a failed push: the error's type and first line, with any token masked."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".strip().rstrip(":")
    for secret in {token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")}:
        if secret:
            text = text.replace(secret, "***")
    return text
