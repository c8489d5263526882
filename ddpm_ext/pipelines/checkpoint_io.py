"""Checkpoints of [`DDPMExtPipeline`] on disk: diffusers' `DDPMPipeline` layout, which vanilla diffusers loads.

`model_index.json` names `DDPMPipeline`, `UNet2DModel` and diffusers' scheduler class; weights are safetensors.
An autoguidance guide (`guide_unet/`, a second `UNet2DModel`) is named only by the private key
`_ddpm_ext_guide_unet`, so diffusers never loads it.
ddpm_ext's own settings ride along in private (`_`-prefixed) keys that diffusers ignores, so
`DiffusionPipeline.from_pretrained` and `DDPMPipeline.from_pretrained` load the folder or Hub repo with no extra
flag, and `DDPMExtPipeline.from_pretrained` restores ddpm_ext's classes with every setting. This module is the one
place for that on-disk contract, and for the component checks both directions share.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import diffusers
from accelerate import init_empty_weights
from diffusers import UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from huggingface_hub import snapshot_download
from safetensors import safe_open

from ..files import atomic_path, atomic_write_text, temporary_names_as
from ..models.unet_presets import check_unet_config
from ..network import hub_time_limits
from ..schedulers.scheduling_common import ScheduleMixin
from ..schedulers.scheduling_ddim_ext import DDIMExtScheduler
from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler
from ..validation import learns_variance
from ..version import __version__
from .guidance import check_guide_unet

# diffusers' scheduler class -> the ddpm_ext scheduler that loads its config with full fidelity
_FROM_DIFFUSERS = {"DDPMScheduler": DDPMExtScheduler, "DDIMScheduler": DDIMExtScheduler}
WEIGHTS_STEM = "diffusion_pytorch_model"  # diffusers' weights file name (+ .<variant>) + .safetensors / .bin
GUIDE_DIR = "guide_unet"  # the autoguidance guide's folder
GUIDE_INDEX_KEY = "_ddpm_ext_guide_unet"  # model_index.json's private key naming it (diffusers ignores it)
# diffusers' custom-pipeline file (its CUSTOM_PIPELINE_FILE_NAME), saved beside model_index.json: with
# `DiffusionPipeline.from_pretrained(folder_or_repo, custom_pipeline="pipeline", trust_remote_code=True)` diffusers
# runs it, and it imports the installed ddpm_ext's loader class ([`DDPMExtCustomPipeline`]). Without
# `custom_pipeline` diffusers never reads it (the folder loads as its vanilla `DDPMPipeline`).
CUSTOM_PIPELINE_FILE = "pipeline.py"
CUSTOM_PIPELINE_SOURCE = '''"""diffusers' custom-pipeline file of a ddpm_ext model: it loads it as DDPMExtPipeline.

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(folder_or_repo_id, custom_pipeline="pipeline", trust_remote_code=True)

It runs no code of its own: it imports the installed package (pip install ddpm-ext), whose loader restores
ddpm_ext's scheduler and the autoguidance guide. Without custom_pipeline, diffusers loads its vanilla DDPMPipeline.
"""

from ddpm_ext.pipelines.pipeline_ddpm_ext import DDPMExtCustomPipeline

__all__ = ["DDPMExtCustomPipeline"]
'''


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
        raise ValueError(
            f"`scheduler` must be a diffusers scheduler (`SchedulerMixin`), got {type(scheduler).__name__}."
        )
    c_in, c_out = unet.config.in_channels, unet.config.out_channels
    variance = getattr(scheduler.config, "variance_type", "fixed_small")
    learned = learns_variance(variance)
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


def scheduler_config_for_disk(scheduler: SchedulerMixin) -> dict[str, Any]:
    """The scheduler config as written to disk: ddpm_ext's schedulers translate it for diffusers
    ([`ScheduleMixin.to_diffusers_config`]); diffusers' own are written as they are."""
    if isinstance(scheduler, ScheduleMixin):
        return scheduler.to_diffusers_config()
    return {k: v for k, v in dict(scheduler.config).items() if k != "_use_default_values"}


def _move_into(src_dir: Path, dst_dir: Path) -> None:
    """Move every file of `src_dir` into `dst_dir`, each one atomically (fsync + rename over the old file)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for src in sorted(src_dir.iterdir()):
        with atomic_path(dst_dir / src.name) as tmp:
            os.replace(src, tmp)


def _save_unet(
    unet: UNet2DModel, out: Path, component: str, variant: str | None, max_shard_size: int | str | None
) -> None:
    """Write `unet` into `out/component` (safetensors), each file atomically; stale weights of the variant go."""
    staging = Path(tempfile.mkdtemp(prefix=f".{component}.", suffix=".tmp", dir=out))
    try:
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
        with temporary_names_as(staging, out / component):  # a failed write names the file of `component`
            unet.save_pretrained(staging, safe_serialization=True, variant=variant, **kwargs)
        written = {f.name for f in staging.iterdir()}
        _move_into(staging, out / component)
        # weights of an earlier save of the same variant that this one does not overwrite (other sharding)
        stem = re.escape(WEIGHTS_STEM + (f".{variant}" if variant else ""))
        for old in (out / component).iterdir():
            if old.name not in written and re.fullmatch(
                stem + r"(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?", old.name
            ):
                old.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_pipeline(
    unet: UNet2DModel,
    scheduler: SchedulerMixin,
    save_directory: str | os.PathLike,
    *,
    guide_unet: UNet2DModel | None = None,
    variant: str | None = None,
    max_shard_size: int | str | None = None,
) -> None:
    """Write `unet/` (safetensors), `scheduler/` and `model_index.json` in diffusers' `DDPMPipeline` layout,
    `guide_unet/` when there is an autoguidance guide, and diffusers' custom-pipeline file `pipeline.py`
    ([`CUSTOM_PIPELINE_FILE`]: `DiffusionPipeline.from_pretrained(..., custom_pipeline="pipeline",
    trust_remote_code=True)` loads the folder as ddpm_ext's pipeline).

    Every file is written atomically (a temporary file, then a rename over the old one), and `model_index.json`
    last: a full disk or a kill while saving leaves each earlier file whole, and the folder's other files
    (a training run's checkpoints, samples) are never touched. The index names the guide (private key) only when
    one was saved; a `guide_unet/` of an earlier save is removed after the new index is written.

    Args:
        unet, scheduler: the components.
        save_directory (`str` or `os.PathLike`): the pipeline folder (created if needed).
        guide_unet ([`UNet2DModel`], *optional*): the autoguidance guide.
        variant (`str`, *optional*): weights saved as `diffusion_pytorch_model.<variant>.safetensors` (diffusers').
        max_shard_size (`int` or `str`, *optional*): diffusers' sharding threshold for the UNet weights.
    """
    check_components(unet, scheduler)
    if guide_unet is not None:
        check_guide_unet(unet, guide_unet)
    out = Path(save_directory)
    if out.is_file():
        raise ValueError(f"`save_directory` {str(out)!r} is a file, not a folder.")
    out.mkdir(parents=True, exist_ok=True)
    _save_unet(unet, out, "unet", variant, max_shard_size)
    if guide_unet is not None:
        _save_unet(guide_unet, out, GUIDE_DIR, variant, max_shard_size)
    config = scheduler_config_for_disk(scheduler)
    atomic_write_text(out / "scheduler" / "scheduler_config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / CUSTOM_PIPELINE_FILE, CUSTOM_PIPELINE_SOURCE)
    index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": diffusers.__version__,
        "_ddpm_ext_version": __version__,
        "_ddpm_ext_pipeline": "DDPMExtPipeline",
        "scheduler": ["diffusers", config.get("_class_name", type(scheduler).__name__)],
        "unet": ["diffusers", "UNet2DModel"],
        **({GUIDE_INDEX_KEY: GUIDE_DIR} if guide_unet is not None else {}),
    }
    atomic_write_text(out / "model_index.json", json.dumps(index, indent=2, sort_keys=True) + "\n")
    if guide_unet is None and (out / GUIDE_DIR).is_dir():  # the guide of an earlier save: no longer this pipeline's
        shutil.rmtree(out / GUIDE_DIR)


def saved_guide(folder: Path) -> bool:
    """Whether `folder`'s `model_index.json` names an autoguidance guide (`guide_unet/`)."""
    return read_json(folder / "model_index.json").get(GUIDE_INDEX_KEY) == GUIDE_DIR


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
    force_download: bool = False,
    proxies: dict[str, str] | None = None,
    allow_pickle: bool = False,
    components: tuple[str, ...] = ("unet", "scheduler"),
) -> Path:
    """A local folder holding the pipeline: the folder itself, or a Hub snapshot of the repo id.

    From the Hub only the configs, the safetensors weights (every variant) and the model card are fetched; the
    pickle weights only with `allow_pickle=True` when there are no safetensors.

    Raises:
        ValueError: when the path is neither an existing folder nor a repo id, the repo cannot be fetched,
            or the folder is not a pipeline (no `model_index.json`, or one of `components` missing).
    """
    name = os.fspath(pretrained_model_name_or_path)
    if os.path.isdir(name):
        folder = Path(name)
    elif os.path.exists(name):
        raise ValueError(f"`pretrained_model_name_or_path` {name!r} is a file, not a pipeline folder.")
    elif _looks_like_repo_id(name):
        def fetch(patterns: list[str]) -> Path:
            return Path(
                snapshot_download(
                    name,
                    revision=revision or "main",  # (a local olah mirror answers 401 without an explicit revision)
                    cache_dir=cache_dir,
                    token=token,
                    local_files_only=local_files_only,
                    force_download=force_download,
                    proxies=proxies,
                    allow_patterns=patterns,
                )
            )

        patterns = ["model_index.json", "*/*.json", "*/*.safetensors", "*.md"]
        try:
            with hub_time_limits():  # every request (the repo info included, which has none of its own) ends
                folder = fetch(patterns)
                if allow_pickle and not any((folder / "unet").glob("*.safetensors")):
                    folder = fetch(patterns + ["unet/*.bin"])
        except Exception as e:  # huggingface_hub raises many types; give one clear message
            raise ValueError(
                f"Could not fetch the pipeline {name!r} (revision {revision or 'main'!r}): it is not a local folder, "
                f"and the Hub or its cache did not have it: {type(e).__name__}: {e}"
            ) from e
    else:
        raise ValueError(
            f"`pretrained_model_name_or_path` {name!r} is neither an existing folder nor a Hub repo id of the form "
            "'org/name'."
        )
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{name!r} is not a pipeline: it has no model_index.json.")
    config_files = {"unet": "config.json", "scheduler": "scheduler_config.json"}
    for component in components:
        config_file = config_files[component]
        if not (folder / component / config_file).is_file():
            raise ValueError(f"{name!r} is missing the `{component}` component ({component}/{config_file} not found).")
    return folder


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path` (a pipeline's `model_index.json` or a component's config); a `ValueError` naming the
    file and the problem for text that is not JSON, or JSON that is not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a text file (UTF-8 JSON expected): {e}.") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}.")
    return value


def check_component_classes(folder: Path) -> None:
    """Refuse, before anything is built, a folder whose components are not a `UNet2DModel` and a scheduler, and a
    UNet config whose sizes cannot build one ([`check_unet_config`])."""
    entry = read_json(folder / "model_index.json").get("unet")
    names = [("model_index.json", entry[-1] if isinstance(entry, list) and entry else entry)]
    for component in ("unet", GUIDE_DIR):
        if (folder / component / "config.json").is_file():
            config = read_json(folder / component / "config.json")
            check_unet_config(config, str(folder / component / "config.json"))
            if component == "unet":
                names.append(("unet/config.json", config.get("_class_name")))
    for where, name in names:
        if name is not None and name != "UNet2DModel":
            raise ValueError(
                f"{folder} is not an unconditional DDPM pipeline: {where} names the unet class {name!r}, but "
                "DDPMExtPipeline needs a diffusers `UNet2DModel` (nothing was loaded)."
            )
    if (folder / "scheduler" / "scheduler_config.json").is_file():
        scheduler_class_of(folder)  # raises for a class that is not a scheduler


def _weights_files(unet_dir: Path, variant: str | None, suffix: str) -> list[Path]:
    """The weights files diffusers would read for `variant`: one file, or the shards its index names."""
    stem = WEIGHTS_STEM + (f".{variant}" if variant else "")
    single = unet_dir / f"{stem}{suffix}"
    if single.is_file():
        return [single]
    index = unet_dir / f"{stem}{suffix}.index.json"
    if index.is_file():
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        return [unet_dir / name for name in shards]
    return []


def check_unet_weights(
    folder: Path, *, variant: str | None, use_safetensors: bool | None, allow_pickle: bool, component: str = "unet"
) -> bool:
    """Check `folder/<component>`'s weights (`unet` or `guide_unet`) before loading; return whether they are
    safetensors.

    The safetensors tensors must be exactly the UNet's parameters and buffers (read from the file headers, no
    weights loaded): diffusers would load a file missing a tensor with that tensor left uninitialised, and only log.

    Raises:
        ValueError: no weights for `variant`; pickle weights without `allow_pickle=True` (or `use_safetensors=True`
            without safetensors); missing or unexpected tensors, named.
    """
    unet_dir = folder / component
    if not (unet_dir / "config.json").is_file():
        raise ValueError(f"{unet_dir / 'config.json'} is missing: the pipeline's `{component}` is incomplete.")
    safe = _weights_files(unet_dir, variant, ".safetensors") if use_safetensors is not False else []
    label = f" for `variant`={variant!r}" if variant else ""
    if not safe:
        pickles = _weights_files(unet_dir, variant, ".bin")
        if use_safetensors:
            raise ValueError(f"{unet_dir} has no safetensors weights{label}, and `use_safetensors=True` was passed.")
        if not pickles:
            found = sorted(p.name for p in unet_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
            # (diffusers' own wording first, for a variant: "You are trying to load the model files of ...")
            theirs = (f"You are trying to load the model files of the `variant={variant}`, but no such modeling files "
                      "are available. ") if variant else ""
            raise ValueError(f"{theirs}{unet_dir} has no weights{label}; its weights files are {found}.")
        if not allow_pickle:
            raise ValueError(
                f"{unet_dir} has no safetensors weights{label} (only the pickle file(s) {[p.name for p in pickles]}). "
                "Pickle files can run arbitrary code when loaded; pass `allow_pickle=True` only for a checkpoint "
                "you trust."
            )
        return False
    missing_files = [p.name for p in safe if not p.is_file()]
    if missing_files:
        raise ValueError(f"{unet_dir} lacks the weights shard(s) {missing_files} named by its index.")
    found: set[str] = set()
    for path in safe:
        with safe_open(path, framework="pt") as f:
            found.update(f.keys())
    config = read_json(unet_dir / "config.json")
    with init_empty_weights():
        expected = set(UNet2DModel.from_config(config).state_dict())
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        def names(keys: list[str]) -> str:
            return ", ".join(keys[:10]) + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")

        problems = ([f"missing {len(missing)} tensor(s): {names(missing)}"] if missing else []) + (
            [f"unexpected {len(unexpected)} tensor(s): {names(unexpected)}"] if unexpected else []
        )
        raise ValueError(
            f"The weights in {unet_dir} do not match its config.json: {'; '.join(problems)}. The file is damaged "
            "or belongs to another model."
        )
    return True


def scheduler_class_of(folder: Path) -> type:
    """The class `folder/scheduler` loads as: ddpm_ext's scheduler for diffusers' DDPM / DDIM configs (and for
    ddpm_ext's own), diffusers' class for the others; a `ValueError` for anything that is not a scheduler."""
    path = folder / "scheduler" / "scheduler_config.json"
    return _scheduler_class_for(read_json(path), str(path))


def _scheduler_class_for(config: dict[str, Any], where: str) -> type:
    name = config.get("_ddpm_ext_class_name") or config.get("_class_name")
    if name in ScheduleMixin._ext_classes:
        return ScheduleMixin._ext_classes[name]
    if name in _FROM_DIFFUSERS:
        return _FROM_DIFFUSERS[name]
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if isinstance(cls, type) and issubclass(cls, SchedulerMixin):
        return cls
    raise ValueError(f"{where} names {name!r}, which is not a diffusers or ddpm_ext scheduler class.")


def as_ext_scheduler(scheduler: SchedulerMixin) -> SchedulerMixin:
    """The scheduler as [`DDPMExtPipeline.from_pretrained`] would have loaded it: diffusers' `DDPMScheduler` /
    `DDIMScheduler` (as diffusers' loader builds them from a saved folder, the private keys kept in their config)
    become ddpm_ext's scheduler with every setting; any other scheduler is returned as it is."""
    if isinstance(scheduler, ScheduleMixin) or type(scheduler).__name__ not in _FROM_DIFFUSERS:
        return scheduler
    cls = _scheduler_class_for({**scheduler.config, "_class_name": type(scheduler).__name__}, "the scheduler config")
    return cls.from_config(scheduler.config)


def _hub_snapshot_of(folder: Path) -> tuple[str, str] | None:
    """`(repo_id, commit)` when `folder` is a snapshot in huggingface_hub's cache
    (`.../models--<org>--<name>/snapshots/<commit>`), else `None`."""
    parts = folder.parts
    for i in range(len(parts) - 2):
        if parts[i].startswith("models--") and parts[i + 1] == "snapshots":
            return parts[i][len("models--"):].replace("--", "/"), parts[i + 2]
    return None


def folder_with_guide(folder: Path, **hub: Any) -> Path:
    """`folder`, or, for a Hub snapshot that lacks the `guide_unet/` its `model_index.json` names (diffusers'
    loader downloads only the components the index lists), the same commit fetched with the guide."""
    if not saved_guide(folder) or (folder / GUIDE_DIR / "config.json").is_file():
        return folder
    snapshot = _hub_snapshot_of(folder)
    if snapshot is None:
        raise ValueError(
            f"{folder}'s model_index.json names an autoguidance guide, but {folder / GUIDE_DIR} is missing."
        )
    repo_id, commit = snapshot
    return resolve_pipeline_folder(repo_id, revision=commit, cache_dir=folder.parents[2], **hub)


def load_scheduler(folder: str | os.PathLike) -> SchedulerMixin:
    """Load `folder/scheduler` as ddpm_ext's scheduler (or the diffusers one it cannot express)."""
    folder = Path(folder)
    config = read_json(folder / "scheduler" / "scheduler_config.json")
    return scheduler_class_of(folder).from_config(config)  # ScheduleMixin.from_config undoes the disk translation
