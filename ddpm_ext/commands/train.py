"""`ddpm-ext train`: train a DDPM with the training script's flags (also under `accelerate launch -m ddpm_ext train`).

The flags are [`ddpm_ext.training.flags`]'s, the run is [`ddpm_ext.training.train.run`]; `training/train_ddpm.py`
is the same training as a script. A bad flag is an `error: ...` with exit status 2 either way.
"""

from __future__ import annotations

import argparse

from ..training import flags
from ..training.train import run as run_training

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every training flag ([`ddpm_ext.training.flags.add_arguments`])."""
    flags.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Check the flags (a `ValueError` naming the bad one, which `ddpm-ext` prints as `error: ...`, exit 2), then
    train; return the training's exit status."""
    flags.check_args(args)
    return run_training(args)
