"""Training checkpoints: `checkpoint-<step>` folders of accelerate state, written atomically and pruned."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path

__all__ = ["CHECKPOINT_RE", "list_checkpoints", "resolve_resume", "save_checkpoint"]

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in out.iterdir() if d.is_dir() and (m := CHECKPOINT_RE.match(d.name))]
    return [d for _, d in sorted(found)]


def save_checkpoint(accelerator, output_dir: str, position: dict[str, int], total_limit: int) -> Path:
    """`accelerator.save_state` into checkpoint-<step>.tmp, then an atomic rename; prune to `total_limit`.

    `position` (global_step, epoch, batches_in_epoch) goes into training_state.json beside the state.
    """
    step = position["global_step"]
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = Path(output_dir) / f"checkpoint-{step}.tmp"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "training_state.json").write_text(json.dumps(position))
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(args: argparse.Namespace) -> Path | None:
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "latest":
        found = list_checkpoints(args.output_dir)
        return found[-1] if found else None
    return Path(args.resume_from_checkpoint)
