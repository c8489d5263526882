"""`ddpm-ext`: the command line (also `python -m ddpm_ext`).

Each subcommand is a module with `add_arguments(parser)` and `run(args) -> int`, listed in [`COMMANDS`] and
imported only when it runs, so a command starts without importing the others' dependencies, and an
`ImportError` of one command's module is reported for that command alone. A `ValueError` from a command is
printed as `error: ...` with exit status 2, as argparse does for bad options.

Examples:

```bash
ddpm-ext train --output_dir outputs/mnist --max_train_steps 1700      # or: accelerate launch -m ddpm_ext train ...
ddpm-ext sample outputs/mnist --num_images 64 --steps 100 --output samples.png
ddpm-ext sample outputs/mnist --scheduler ddim --steps 50 --eta 0.0 --images_dir samples/
ddpm-ext figures outputs/mnist --output_dir figures
ddpm-ext evaluate outputs/mnist --num_samples 100 --samplers ddpm:1000 ddim:50:0 --output_dir eval
ddpm-ext push outputs/mnist --repo_id me/ddpm-mnist
```
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from ..cpu_threads import parse_cpu_threads
from ..validation import MAX_SEED, check_seed

__all__ = [
    "COMMANDS", "main", "build_parser", "int_at_least", "positive_int", "nonnegative_int", "seed_int", "nonempty_path",
    "add_overwrite_argument", "check_output_dir",
]

# name -> (help, module exposing add_arguments(parser) and run(args) -> int)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("Train a DDPM with accelerate and save it as a pipeline.", "ddpm_ext.commands.train"),
    "sample": ("Sample images from a trained pipeline into a PNG grid.", "ddpm_ext.commands.sample"),
    "figures": ("Write the lecture's figures (forward and reverse process, schedules, samplers, inpainting, classes).",
                "ddpm_ext.commands.figures"),
    "evaluate": ("Score a pipeline: bits/dim on held-out images, FID/KID of samples per sampler.",
                 "ddpm_ext.commands.evaluate"),
    "inpaint": ("Fill the masked part of an image with a trained pipeline (RePaint).", "ddpm_ext.commands.inpaint"),
    "push": ("Upload a saved pipeline folder with its model card and samples to the Hub.", "ddpm_ext.commands.push"),
}


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= `low`, else an argparse error naming the value and the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def seed_int(text: str) -> int:
    """An argparse `type` for seeds: an integer in [0, 2**32) ([`ddpm_ext.validation.check_seed`])."""
    try:
        return check_seed("seed", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_SEED}], got {text!r}") from None


seed_int.__name__ = "seed"


def nonempty_path(text: str) -> str:
    """An argparse `type` for paths: not empty (an empty path would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must be a non-empty path, got {text!r}")
    return text


nonempty_path.__name__ = "path"


def add_overwrite_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """`--overwrite`: replace existing output files (without it, a command refuses to write over `what`)."""
    parser.add_argument(
        "--overwrite", action="store_true",
        help=f"Replace {what} that already exist (default: refuse, writing nothing).",
    )


def cpu_threads_option(text: str) -> str | int:
    """An argparse `type` for `--cpu_threads`: 'auto' or an integer >= 1
    ([`ddpm_ext.cpu_threads.parse_cpu_threads`])."""
    try:
        return parse_cpu_threads(text, "--cpu_threads")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_cpu_threads_argument(parser: argparse.ArgumentParser) -> None:
    """`--cpu_threads auto|N` (default auto: [`ddpm_ext.cpu_threads.AdaptiveThreads`] gives cores back to other
    processes while they need them; off when OMP_NUM_THREADS is set)."""
    parser.add_argument(
        "--cpu_threads", type=cpu_threads_option, default="auto",
        help="CPU threads: 'auto' (default) uses every core while the machine is otherwise idle and fewer while other "
        "processes need them; N: exactly N threads (as OMP_NUM_THREADS, which also turns 'auto' off).",
    )


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """A folder to write into: raise `ValueError` when it, or a parent, exists as something other than a folder."""
    out = Path(path)
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            raise ValueError(f"`{option}` {str(out)!r} cannot be a folder: {str(p)!r} exists and is not a folder.")
    return out


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, object]:
    """The parser with every command listed, and the module of `command` (imported now, with its arguments).

    Only `command`'s module is imported; the others are listed by name and help. An `ImportError` of that
    module is returned in place of the module so that `main` can report it.
    """
    parser = argparse.ArgumentParser(
        prog="ddpm-ext",
        description="DDPM / DDIM for diffusers: train a model, sample from it, evaluate it, draw the lecture's "
        "figures, inpaint, push it to the Hub.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    loaded: object = None
    for name, (help_text, module_name) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != command:
            continue
        try:
            loaded = importlib.import_module(module_name)
        except ImportError as e:  # e.g. matplotlib missing: the other commands still work
            loaded = e
        else:
            loaded.add_arguments(p)
    return parser, loaded


def main(argv: Sequence[str] | None = None) -> int:
    """Run `ddpm-ext` with `argv` (default: `sys.argv[1:]`); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser, module = build_parser(command if command in COMMANDS else None)
    if isinstance(module, ImportError):
        print(f"error: `ddpm-ext {command}` needs a package that is not installed: {module}", file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse's own errors (status 2) and --help (status 0)
        return e.code if isinstance(e.code, int) else 1
    try:
        return int(module.run(args) or 0)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
