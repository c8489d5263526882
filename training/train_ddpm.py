"""Train a DDPM with accelerate: `accelerate launch training/train_ddpm.py --output_dir outputs/mnist`.

A thin launcher: the training lives in the package as [`ddpm_ext.training.train`] (its docstring lists example
commands), so an installed ddpm_ext trains with `ddpm-ext train` (or `accelerate launch -m ddpm_ext train`) and
the same flags too. Run from a checkout, it uses that checkout's ddpm_ext (Python puts `training/`, not the
repository root, first on the import path).
"""

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if (_ROOT / "ddpm_ext" / "__init__.py").is_file() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from ddpm_ext.training.train import main  # noqa: E402 (after the checkout is put on the import path)

if __name__ == "__main__":
    sys.exit(main())
