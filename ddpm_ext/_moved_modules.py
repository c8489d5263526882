"""Module paths of before the subpackage layout, kept importable: `import ddpm_ext.utils` gives `ddpm_ext.images`.

Every public name keeps working from `ddpm_ext` itself; these aliases keep code that imported a module by its
old path working too, with a `FutureWarning` naming the new path. The alias is the new module object itself
(no copy), so patching or reading an attribute through either name sees the same thing.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old path -> new path
MOVED_MODULES: dict[str, str] = {
    "ddpm_ext.schedules": "ddpm_ext.schedulers.scheduling_common",
    "ddpm_ext.scheduling_ddpm_ext": "ddpm_ext.schedulers.scheduling_ddpm_ext",
    "ddpm_ext.scheduling_ddim_ext": "ddpm_ext.schedulers.scheduling_ddim_ext",
    "ddpm_ext.unet_presets": "ddpm_ext.models.unet_presets",
    "ddpm_ext.pipeline_ddpm_ext": "ddpm_ext.pipelines.pipeline_ddpm_ext",
    "ddpm_ext.metrics": "ddpm_ext.evaluation.metrics",
    "ddpm_ext.evaluate": "ddpm_ext.evaluation.evaluate",
    "ddpm_ext.cli": "ddpm_ext.commands.cli",
    "ddpm_ext.sample": "ddpm_ext.commands.sample",
    "ddpm_ext.utils": "ddpm_ext.images",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path of [`MOVED_MODULES`] and puts the new module in its place in `sys.modules`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # a throw-away module; `exec_module` replaces it

    def exec_module(self, module) -> None:
        new = MOVED_MODULES[module.__name__]
        warnings.warn(
            f"`{module.__name__}` has moved to `{new}`; import it from there (or the name from `ddpm_ext`).",
            FutureWarning,
            stacklevel=2,
        )
        sys.modules[module.__name__] = importlib.import_module(new)  # importlib returns what sys.modules holds


def install() -> None:
    """Add the finder to `sys.meta_path` once."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
