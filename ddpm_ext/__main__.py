"""`python -m ddpm_ext COMMAND ...`, the same as the `ddpm-ext` console script."""

import sys

from .commands.cli import main

sys.exit(main())
