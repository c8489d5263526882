"""The layout's rules, checked: the core never imports commands, evaluation or training, and every public name
of the package imports from `ddpm_ext` itself."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import ddpm_ext
from ddpm_ext.version import __version__

CORE = [
    "ddpm_ext",
    "ddpm_ext.schedulers",
    "ddpm_ext.pipelines",
    "ddpm_ext.models",
    "ddpm_ext.losses",
    "ddpm_ext.likelihood",
    "ddpm_ext.images",
    "ddpm_ext.seeding",
    "ddpm_ext.validation",
    "ddpm_ext.memory",
    "ddpm_ext.files",
    "ddpm_ext.data",
    "ddpm_ext.version",
]


def test_the_core_imports_no_commands_evaluation_or_training():
    code = (
        "import sys\n"
        f"for m in {CORE!r}: __import__(m)\n"
        "bad = sorted(m for m in sys.modules if m.startswith("
        "('ddpm_ext.commands', 'ddpm_ext.evaluation', 'ddpm_ext.training')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    assert out.strip() == "[]"


def test_every_public_name_of_before_still_imports_from_the_package():
    before = ["BETA_SCHEDULES", "PREDICTION_TYPES", "TIMESTEP_SPACINGS", "VARIANCE_TYPES", "BetaSchedule",
              "PredictionType", "TimestepSpacing", "VarianceType", "make_betas", "BitsPerDimOutput", "bits_per_dim",
              "bits_per_dim_variances", "DDPMExtPipeline", "DDPMExtPipelineOutput", "UNET_PRESETS", "build_unet",
              "unet_config", "DDIMExtScheduler", "DDIMExtSchedulerOutput", "DDPMExtScheduler", "DDPMExtSchedulerOutput",
              "posterior_coefficients"]
    assert all(hasattr(ddpm_ext, name) for name in before) and set(before) <= set(ddpm_ext.__all__)


def test_the_version_has_one_owner_read_by_the_package_and_its_metadata():
    assert ddpm_ext.__version__ == __version__ == version("ddpm_ext")
