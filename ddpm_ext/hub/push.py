"""Pushes of pipeline folders to the Hugging Face Hub, and `python -m ddpm_ext.hub push` to retry a failed one.

Only the pipeline (`model_index.json`, `unet/`, `scheduler/`), the model card and the sample grid are uploaded:
never checkpoints, logs or anything holding a token. The token is handed to `huggingface_hub` and nowhere else.

    python -m ddpm_ext.hub push outputs/mnist --repo_id me/ddpm-mnist [--private]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["UPLOAD_PATTERNS", "main", "push_pipeline"]

UPLOAD_PATTERNS = ["model_index.json", "unet/config.json", "unet/*.safetensors", "scheduler/scheduler_config.json",
                   "README.md", "samples.png"]


def push_pipeline(
    folder: str | os.PathLike,
    *,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload DDPM pipeline trained with ddpm_ext",
) -> str:
    """Create `repo_id` (if needed) and upload the pipeline, model card and sample grid of `folder`.

    Returns:
        `str`: the URL of the repo.

    Raises:
        ValueError: if `folder` is not a saved pipeline.
    """
    from huggingface_hub import HfApi

    path = Path(folder)
    if not (path / "model_index.json").is_file():
        raise ValueError(f"`folder` {path} is not a saved pipeline (no model_index.json).")
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        folder_path=str(path), repo_id=repo.repo_id, repo_type="model", allow_patterns=UPLOAD_PATTERNS,
        commit_message=commit_message,
    )
    return str(repo)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddpm_ext.hub", description="Push a pipeline folder to the Hub.")
    sub = p.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="Upload a saved pipeline folder with its model card and samples.")
    push.add_argument("folder", help="The pipeline folder (the training script's --output_dir).")
    push.add_argument("--repo_id", required=True, help="The Hub repo id, 'name' or 'org/name'.")
    push.add_argument("--private", action="store_true", help="Create the repo as private.")
    args = p.parse_args(argv)
    try:
        url = push_pipeline(args.folder, repo_id=args.repo_id, private=args.private)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
