"""The layout's rules, checked: the core never imports commands, evaluation or training, and every module path
of before the subpackage layout still imports (with a FutureWarning naming the new one)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

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
    "ddpm_ext.files",
]


def test_the_core_imports_no_commands_evaluation_or_training():
    code = (
        "import sys\n"
        f"for m in {CORE!r}: __import__(m)\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('ddpm_ext.commands', 'ddpm_ext.evaluation', 'ddpm_ext.training')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("old", ["ddpm_ext.utils", "ddpm_ext.schedules", "ddpm_ext.metrics", "ddpm_ext.evaluate",
                                 "ddpm_ext.cli", "ddpm_ext.sample", "ddpm_ext.unet_presets", "ddpm_ext.pipeline_ddpm_ext",
                                 "ddpm_ext.scheduling_ddpm_ext", "ddpm_ext.scheduling_ddim_ext"])
def test_old_module_paths_alias_the_new_modules(old):
    from ddpm_ext._moved_modules import MOVED_MODULES

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED_MODULES[old])  # the same object, not a copy
    assert any(issubclass(w.category, FutureWarning) and MOVED_MODULES[old] in str(w.message) for w in caught)


def test_every_public_name_of_before_still_imports_from_the_package():
    import ddpm_ext

    before = ["BETA_SCHEDULES", "PREDICTION_TYPES", "TIMESTEP_SPACINGS", "VARIANCE_TYPES", "BetaSchedule", "PredictionType",
              "TimestepSpacing", "VarianceType", "make_betas", "BitsPerDimOutput", "bits_per_dim", "bits_per_dim_variances",
              "DDPMExtPipeline", "DDPMExtPipelineOutput", "UNET_PRESETS", "build_unet", "unet_config", "DDIMExtScheduler",
              "DDIMExtSchedulerOutput", "DDPMExtScheduler", "DDPMExtSchedulerOutput", "posterior_coefficients"]
    assert all(hasattr(ddpm_ext, name) for name in before) and set(before) <= set(ddpm_ext.__all__)
