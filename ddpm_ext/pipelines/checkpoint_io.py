"""Checkpoints of [`DDPMExtPipeline`] on disk: diffusers' `DDPMPipeline` layout, which vanilla diffusers loads.

`model_index.json` names `DDPMPipeline`, `UNet2DModel` and diffusers' scheduler class; weights are safetensors.
ddpm_ext's own settings ride along in private (`_`-prefixed) keys that diffusers ignores, so
`DiffusionPipeline.from_pretrained` and `DDPMPipeline.from_pretrained` load the folder or Hub repo with no extra
flag, and `DDPMExtPipeline.from_pretrained` restores ddpm_ext's classes with every setting. This module is the one
place for that on-disk contract, and for the component checks both directions share.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..schedulers.scheduling_ddim_ext import DDIMExtScheduler
from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler

# ddpm_ext scheduler <-> the diffusers class that vanilla diffusers loads in its place
_TO_DIFFUSERS = {"DDPMExtScheduler": "DDPMScheduler", "DDIMExtScheduler": "DDIMScheduler"}
_FROM_DIFFUSERS = {"DDPMScheduler": DDPMExtScheduler, "DDIMScheduler": DDIMExtScheduler}
_EXT_SCHEDULERS = {"DDPMExtScheduler": DDPMExtScheduler, "DDIMExtScheduler": DDIMExtScheduler}


# --------------------------------------------------------------------------------------------------
# Checkpoint layout helpers (one place for the on-disk contract)
# --------------------------------------------------------------------------------------------------
def square_sample_size(unet: UNet2DModel, needed_for: str) -> int:
    """The side of the UNet's square `sample_size`; a `ValueError` naming `needed_for` when it is not square."""
    size = unet.config.sample_size
    if isinstance(size, int):
        return size
    if len(set(size)) != 1:
        raise ValueError(f"{needed_for} need a square UNet `sample_size`, got {tuple(size)}.")
    return int(size[0])


def check_components(unet: Any, scheduler: Any) -> None:
    """Raise `ValueError` unless `unet` is a `UNet2DModel` whose output channels fit the scheduler's variance."""
    if not isinstance(unet, UNet2DModel):
        raise ValueError(f"`unet` must be a diffusers `UNet2DModel`, got {type(unet).__name__}.")
    if not isinstance(scheduler, SchedulerMixin):
        raise ValueError(f"`scheduler` must be a diffusers scheduler (`SchedulerMixin`), got {type(scheduler).__name__}.")
    c_in, c_out = unet.config.in_channels, unet.config.out_channels
    variance = getattr(scheduler.config, "variance_type", "fixed_small")
    learned = variance in ("learned", "learned_range")
    if learned and c_out != 2 * c_in:
        raise ValueError(
            f"The scheduler's `variance_type`={variance!r} needs a UNet with out_channels = 2 x in_channels = "
            f"{2 * c_in}, but the UNet has out_channels={c_out}."
        )
    if not learned and c_out != c_in:
        raise ValueError(
            f"The UNet has in_channels={c_in} and out_channels={c_out}; with `variance_type`={variance!r} they must "
            "be equal (out_channels = 2 x in_channels needs `variance_type='learned_range'`)."
        )


def _diffusers_scheduler_config(scheduler: SchedulerMixin) -> dict[str, Any]:
    """The scheduler config as written to disk: diffusers' class name, ddpm_ext's class in a private key.

    When diffusers' own scheduler would compute other β from these keys (a cosine offset or cap it does not
    know), the β are also written as `trained_betas`, flagged so that ddpm_ext drops them again on load.
    """
    name = type(scheduler).__name__
    config = {k: v for k, v in dict(scheduler.config).items() if k != "_use_default_values"}
    if name not in _TO_DIFFUSERS:
        return config
    diffusers_cls = getattr(diffusers, _TO_DIFFUSERS[name])
    config["_class_name"] = diffusers_cls.__name__
    config["_ddpm_ext_class_name"] = name
    # keys diffusers' class does not know (cosine_s, max_beta) go private, so diffusers loads without warnings
    known = set(inspect.signature(diffusers_cls.__init__).parameters)
    config["_ddpm_ext_config"] = {k: config.pop(k) for k in list(config) if not k.startswith("_") and k not in known}
    vanilla = diffusers_cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    if not torch.allclose(vanilla.betas.double(), torch.from_numpy(scheduler._betas64), rtol=1e-6, atol=1e-9):
        config["trained_betas"] = [float(b) for b in scheduler._betas64]
        config["_ddpm_ext_betas_for_diffusers"] = True
    return config


def save_pipeline(unet: UNet2DModel, scheduler: SchedulerMixin, save_directory: str | os.PathLike) -> None:
    """Write `unet/` (safetensors), `scheduler/` and `model_index.json` in diffusers' `DDPMPipeline` layout."""
    from .. import __version__

    check_components(unet, scheduler)
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    config = _diffusers_scheduler_config(scheduler)
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    scheduler_class = config.get("_class_name", type(scheduler).__name__)
    index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": diffusers.__version__,
        "_ddpm_ext_version": __version__,
        "_ddpm_ext_pipeline": "DDPMExtPipeline",
        "scheduler": ["diffusers", scheduler_class],
        "unet": ["diffusers", "UNet2DModel"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name


def resolve_pipeline_folder(
    pretrained_model_name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    allow_pickle: bool = False,
) -> Path:
    """A local folder holding the pipeline: the folder itself, or a Hub snapshot of the repo id.

    Raises:
        ValueError: when the path is neither an existing folder nor a repo id, the repo cannot be fetched,
            or the folder is not a pipeline (no `model_index.json`, a missing `unet` or `scheduler`).
    """
    name = os.fspath(pretrained_model_name_or_path)
    if os.path.isdir(name):
        folder = Path(name)
    elif os.path.exists(name):
        raise ValueError(f"`pretrained_model_name_or_path` {name!r} is a file, not a pipeline folder.")
    elif _looks_like_repo_id(name):
        from huggingface_hub import snapshot_download

        patterns = ["model_index.json", "*/*.json", "*/*.safetensors", "*.md"]
        try:
            folder = Path(
                snapshot_download(
                    name,
                    revision=revision or "main",
                    cache_dir=cache_dir,
                    token=token,
                    local_files_only=local_files_only,
                    allow_patterns=patterns,
                )
            )
            if allow_pickle and not any((folder / "unet").glob("*.safetensors")):
                folder = Path(
                    snapshot_download(
                        name,
                        revision=revision or "main",
                        cache_dir=cache_dir,
                        token=token,
                        local_files_only=local_files_only,
                        allow_patterns=patterns + ["unet/*.bin"],
                    )
                )
        except Exception as e:  # huggingface_hub raises many types; give one clear message
            raise ValueError(
                f"Could not fetch the pipeline {name!r} (revision {revision or 'main'!r}): it is not a local folder, "
                f"and the Hub or its cache did not have it: {type(e).__name__}: {e}"
            ) from e
    else:
        raise ValueError(
            f"`pretrained_model_name_or_path` {name!r} is neither an existing folder nor a Hub repo id of the form 'org/name'."
        )
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{name!r} is not a pipeline: it has no model_index.json.")
    for component, config_file in (("unet", "config.json"), ("scheduler", "scheduler_config.json")):
        if not (folder / component / config_file).is_file():
            raise ValueError(f"{name!r} is missing the `{component}` component ({component}/{config_file} not found).")
    return folder


def load_unet(folder: str | os.PathLike, *, allow_pickle: bool = False, torch_dtype: torch.dtype | None = None) -> UNet2DModel:
    """Load `folder/unet` from safetensors; a pickle-only checkpoint needs `allow_pickle=True`."""
    unet_dir = Path(folder) / "unet"
    has_safetensors = any(unet_dir.glob("*.safetensors"))
    if not has_safetensors and not allow_pickle:
        pickles = sorted(p.name for p in unet_dir.glob("*.bin"))
        found = f"only the pickle file(s) {pickles}" if pickles else "no weights file"
        raise ValueError(
            f"{unet_dir} has no safetensors weights ({found}). Pickle files can run arbitrary code when loaded; "
            "pass `allow_pickle=True` only for a checkpoint you trust."
        )
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    return UNet2DModel.from_pretrained(unet_dir, use_safetensors=has_safetensors, **kwargs)


def load_scheduler(folder: str | os.PathLike) -> SchedulerMixin:
    """Load `folder/scheduler` as ddpm_ext's scheduler (or the diffusers one it cannot express)."""
    path = Path(folder) / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    if config.pop("_ddpm_ext_betas_for_diffusers", False):
        config["trained_betas"] = None
    config.update(config.pop("_ddpm_ext_config", {}))
    name = config.get("_ddpm_ext_class_name") or config.get("_class_name")
    if name in _EXT_SCHEDULERS:
        cls = _EXT_SCHEDULERS[name]
    elif name in _FROM_DIFFUSERS:
        cls = _FROM_DIFFUSERS[name]
    elif isinstance(name, str) and isinstance(getattr(diffusers, name, None), type):
        cls = getattr(diffusers, name)
    else:
        raise ValueError(f"{path} names an unknown scheduler class {name!r}.")
    return cls.from_config(config)

