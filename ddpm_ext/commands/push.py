"""`ddpm-ext push`: upload a saved pipeline folder to the Hub (or retry a training run's failed push).

Only the pipeline, its model card and its sample grid are uploaded ([`ddpm_ext.hub.push_pipeline`]); the token
goes to `huggingface_hub` and nowhere else, and a failure is one line with any token masked: exit status 2 for a
folder that is not a pipeline or a bad argument, 1 when the Hub refuses the push, cannot be reached, or does not
finish within `--timeout` seconds (the line then ends with the command that retries it).

```bash
ddpm-ext push outputs/mnist --repo_id me/ddpm-mnist
ddpm-ext push outputs/mnist --repo_id me/ddpm-mnist --private --timeout 3600
```
"""

from __future__ import annotations

import argparse
import sys

from ..hub.push import (
    DEFAULT_PUSH_TIMEOUT,
    check_push_timeout,
    check_repo_id,
    describe_error,
    push_pipeline,
    retry_command,
)
from ..network import HubDeadlineError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `ddpm-ext push`."""
    parser.add_argument("pipeline", help="The pipeline folder (e.g. the training script's --output_dir).")
    parser.add_argument("--repo_id", required=True, help="The Hub repo id, 'name' or 'org/name'.")
    parser.add_argument("--private", action="store_true", help="Create the repo as private.")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_PUSH_TIMEOUT,
        help=f"Seconds the whole push may take (default {DEFAULT_PUSH_TIMEOUT:g}); each request also stops after "
        "60 s without progress. A Hub that stops answering ends the push with the command that retries it.",
    )
    parser.add_argument(
        "--token", default=None,
        help="Hub token (default: HF_TOKEN or the stored `hf auth login`; a token on the command line is visible to "
        "other users of the machine).",
    )


def run(args: argparse.Namespace) -> int:
    """Push `args.pipeline`; print the repo's URL. A bad folder or argument raises `ValueError` (exit 2), a Hub
    failure or a passed deadline exits 1."""
    try:
        check_repo_id(args.repo_id, "--repo_id")
        check_push_timeout(args.timeout, "--timeout")
        url = push_pipeline(args.pipeline, repo_id=args.repo_id, private=args.private, token=args.token,
                            timeout=args.timeout)
    except ValueError as e:
        raise ValueError(describe_error(e, args.token).split(": ", 1)[-1]) from None
    except HubDeadlineError:
        retry = retry_command(args.pipeline, args.repo_id, private=args.private, timeout=args.timeout)
        print(f"error: the push to {args.repo_id} did not finish within {args.timeout:g} s (the Hub did not answer "
              f"in time); the local folder is intact; retry with: {retry}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 HfHubHTTPError (refused token, 404...), OSError/httpx errors (offline)
        print(f"error: the push to {args.repo_id} failed ({describe_error(e, args.token)}).", file=sys.stderr)
        return 1
    print(url)
    return 0
