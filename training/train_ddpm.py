"""Train a DDPM with accelerate: `accelerate launch training/train_ddpm.py --output_dir outputs/mnist`.

A thin launcher: the script lives in the package as [`ddpm_ext.training.train`] (its docstring lists the
commands), so an installed ddpm_ext trains with `python -m ddpm_ext.training` too.
"""

import sys

from ddpm_ext.training.train import main

if __name__ == "__main__":
    sys.exit(main())
