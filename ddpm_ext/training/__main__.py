"""`python -m ddpm_ext.training ...` (or `accelerate launch -m ddpm_ext.training ...`): the training script."""

import sys

from .train import main

sys.exit(main())
