"""The on-disk format of training checkpoints: save, read, validate, list, prune and move aside.

Checkpoints belong to their run, load without unpickling, and fail clearly; which one a run resumes, and what
it must match, is the resume policy ([`ddpm_ext.training.resume`]).

A checkpoint is a folder `checkpoint-<step>` in the output folder:

```
checkpoint-<step>/
  unet/              the trained UNet, diffusers format (config.json + safetensors)
  unet_ema/          the EMA weights, diffusers format (with --use_ema): UNet2DModel.from_pretrained(ckpt, subfolder="unet_ema")
  ema_state.json     the EMA's scalars (optimisation step, decay settings)
  guide_unet/        the autoguidance guide (with --autoguidance_scale > 1, once its step has passed): the EMA
                     weights of that step, diffusers format
  optimizer.bin      accelerate's optimizer / learning-rate scheduler / RNG states, read with
  scheduler.bin      torch.load(weights_only=True): tensors, numbers and strings only, never code
  random_states_<process>.pkl
  training_state.json   run id, position (step, epoch, batch), the flags that must match on resume
```

Guarantees:

- **Atomic**: written into `checkpoint-<step>.tmp`, renamed when complete; an error while writing (a full disk)
  removes the partial folder and leaves every earlier checkpoint as it was ([`CheckpointWriteError`]).
- **Owned**: each run has a run id (in `training_state.json`); pruning (`--checkpoints_total_limit`) only ever
  removes checkpoints of the run that writes, and only once the newest one has produced a finite loss.
  Checkpoints of another run, or newer ones than the one resumed from, are moved aside into
  `<output_dir>/superseded/<time>/`, never deleted.
- **No unpickling**: the weights and the EMA state are safetensors + JSON; accelerate's remaining state files are
  read with `weights_only=True` (PyTorch's restricted unpickler, which builds tensors and plain containers only).
  A checkpoint of the older format (EMA in `custom_checkpoint_0.pkl`, read by accelerate with full unpickling)
  is refused, not loaded.
- **Checked first**: [`validate_checkpoint`] reads every file of a checkpoint before anything is loaded into the
  model and reports a damaged or foreign one naming the file ([`CheckpointError`]).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import load as accelerate_load
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..files import atomic_write_text
from ..pipelines.checkpoint_io import GUIDE_DIR  # the guide's folder: the same name as in a saved pipeline

__all__ = [
    "CHECKPOINT_RE",
    "CheckpointError",
    "CheckpointWriteError",
    "checkpoint_run_id",
    "checkpoint_step",
    "list_checkpoints",
    "prune_checkpoints",
    "read_training_state",
    "register_checkpoint_hooks",
    "save_checkpoint",
    "set_aside",
    "validate_checkpoint",
    "weights_are_finite",
]

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "training_state.json"
EMA_STATE_FILE = "ema_state.json"
SUPERSEDED_DIR = "superseded"
UNET_DIR, EMA_DIR = "unet", "unet_ema"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_LEGACY_PICKLES = ("custom_checkpoint_0.pkl",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (damaged, foreign, of another configuration or format)."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (e.g. a full disk); the partial folder was removed, earlier ones are intact."""


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (`checkpoint-<step>` folders) in `output_dir`, oldest step first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in out.iterdir() if d.is_dir() and (m := CHECKPOINT_RE.match(d.name))]
    return [d for _, d in sorted(found)]


def checkpoint_step(checkpoint: Path) -> int:
    m = CHECKPOINT_RE.match(checkpoint.name)
    return int(m.group(1)) if m else -1


def read_training_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The parsed `training_state.json` of `checkpoint`, checked; a [`CheckpointError`] naming the file otherwise."""
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {checkpoint} is not a complete ddpm_ext checkpoint.")
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is damaged ({e}).") from None
    ints = ("global_step", "epoch", "batches_in_epoch")
    if not isinstance(state, dict) or any(not isinstance(state.get(k), int) or state[k] < 0 for k in ints):
        raise CheckpointError(f"{path} is damaged: it must hold non-negative integers {list(ints)}.")
    if not isinstance(state.get("run_id"), str) or not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path} has no run id or config: it was not written by this version of ddpm_ext.")
    return state


def checkpoint_run_id(checkpoint: Path) -> str | None:
    """The run id of a checkpoint, or None when its state file is missing or unreadable."""
    try:
        return read_training_state(checkpoint)["run_id"]
    except CheckpointError:
        return None


def set_aside(checkpoints: list[Path], output_dir: str | os.PathLike, reason: str) -> Path | None:
    """Move `checkpoints` into `<output_dir>/superseded/<time>-<reason>/` (never deleted); return that folder."""
    if not checkpoints:
        return None
    dest = Path(output_dir) / SUPERSEDED_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{reason}"
    n = 1
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{dest.name.rsplit('.', 1)[0]}.{n}")
    dest.mkdir(parents=True)
    for c in checkpoints:
        os.replace(c, dest / c.name)
    return dest


def prune_checkpoints(output_dir: str | os.PathLike, run_id: str, keep: int) -> list[Path]:
    """Remove the oldest checkpoints of run `run_id` beyond the newest `keep`; others' are never touched."""
    own = [c for c in list_checkpoints(output_dir) if checkpoint_run_id(c) == run_id]
    removed = own[:-keep] if keep > 0 else own
    for old in removed:
        shutil.rmtree(old, ignore_errors=True)
    return removed


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------
def register_checkpoint_hooks(accelerator, ema, guide_holder: Any = None) -> None:
    """Make `accelerator.save_state`/`load_state` write and read `unet/`, `unet_ema/` and `guide_unet/` in
    diffusers format.

    As diffusers' train_unconditional.py does: the save hook writes the model with `save_pretrained` and takes it
    off accelerate's list (no `model.safetensors`); the EMA is saved here too instead of being registered for
    checkpointing (which accelerate would pickle into `custom_checkpoint_0.pkl`). `guide_holder` (the trainer)
    has a `guide_unet` attribute: the autoguidance guide once taken (saved when set), set again on load when
    the checkpoint has one.
    """

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            model = accelerator.unwrap_model(models[0], keep_torch_compile=False)
            model.save_pretrained(os.path.join(output_dir, UNET_DIR), safe_serialization=True)
            if ema is not None:
                _save_ema(ema, model, Path(output_dir))
            guide = getattr(guide_holder, "guide_unet", None)
            if guide is not None:
                guide.save_pretrained(os.path.join(output_dir, GUIDE_DIR), safe_serialization=True)
        while weights:
            weights.pop()

    def load_hook(models, input_dir):
        model = accelerator.unwrap_model(models.pop(), keep_torch_compile=False)
        state = load_file(os.path.join(input_dir, UNET_DIR, WEIGHTS_NAME))
        model.load_state_dict(state, strict=True)
        if ema is not None:
            _load_ema(ema, model, Path(input_dir))
        if guide_holder is not None and os.path.isdir(os.path.join(input_dir, GUIDE_DIR)):
            guide = copy.deepcopy(model).eval()
            guide.load_state_dict(load_file(os.path.join(input_dir, GUIDE_DIR, WEIGHTS_NAME)), strict=True)
            guide.requires_grad_(False)
            guide_holder.guide_unet = guide

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _save_ema(ema, model, folder: Path) -> None:
    shadow = copy.deepcopy(model)
    ema.copy_to(shadow.parameters())
    shadow.save_pretrained(folder / EMA_DIR, safe_serialization=True)
    scalars = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
    (folder / EMA_STATE_FILE).write_text(json.dumps(scalars, indent=2))


def _load_ema(ema, model, folder: Path) -> None:
    scalars = json.loads((folder / EMA_STATE_FILE).read_text())
    tensors = load_file(folder / EMA_DIR / WEIGHTS_NAME)
    shadow = [tensors[name] for name, _ in model.named_parameters()]
    ema.load_state_dict({**scalars, "shadow_params": shadow})


def save_checkpoint(accelerator, output_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """`accelerator.save_state` into `checkpoint-<step>.tmp`, then an atomic rename to `checkpoint-<step>`.

    `state` (run_id, global_step, epoch, batches_in_epoch, config, ...) becomes `training_state.json`. An existing
    folder of the same step is replaced only once the new one is complete. Pruning is separate
    ([`prune_checkpoints`]): the training loop prunes once the new checkpoint has proven finite.

    Raises:
        CheckpointWriteError: writing failed (full disk, permissions); the partial folder is removed.
    """
    step = state["global_step"]
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = Path(output_dir) / f"checkpoint-{step}.tmp"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    error: OSError | None = None
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2))
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error type
        error = e if isinstance(e, OSError) else OSError(None, str(e))
    # every rank learns whether any rank failed, so all stop together instead of one hanging in a collective
    failed = accelerator.gather(torch.tensor([error is not None], dtype=torch.int32, device=accelerator.device))
    if bool(failed.any()) and error is None:
        error = OSError(None, "another process failed to write its part")
    if error is not None:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(
            error.errno, f"could not write {final.name} ({error.strerror or error}); the partial folder was removed "
            f"and the earlier checkpoints in {output_dir} are intact"
        ) from error
    if accelerator.is_main_process:
        if final.exists():  # a checkpoint of the same step set aside earlier cannot be here; replace a stale one
            old = final.with_name(final.name + ".old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


# --------------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------------
def validate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    config: dict[str, Any],
    unet_config: dict[str, Any],
    use_ema: bool,
    num_processes: int,
) -> dict[str, Any]:
    """Read every file of `checkpoint` (nothing is loaded into a model) and return its training state.

    Args:
        checkpoint: the `checkpoint-<step>` folder.
        config: the flags that must match (`ddpm_ext.training.resume.RESUME_MUST_MATCH`), as this run has them.
        unet_config: the config of the UNet this run built; the checkpoint's `unet/config.json` must agree.
        use_ema: whether `unet_ema/` and `ema_state.json` must be there.
        num_processes: the number of processes (one `random_states_<i>.pkl` each).

    Raises:
        CheckpointError: naming the damaged, missing or mismatching file or flag.
    """
    ckpt = Path(checkpoint)
    for legacy in _LEGACY_PICKLES:
        if (ckpt / legacy).exists():
            raise CheckpointError(
                f"{ckpt / legacy} is a pickle (the EMA state of an older ddpm_ext); it is not loaded because unpickling "
                "can execute code. Resume from a checkpoint written by this version, or start a new run."
            )
    state = read_training_state(ckpt)
    mismatched = [f"--{k} is {config.get(k)!r} here but {v!r} in the checkpoint" for k, v in state["config"].items()
                  if config.get(k) != v]
    if mismatched:
        raise CheckpointError(
            f"{ckpt} belongs to a different training configuration: " + "; ".join(mismatched) + ". These flags must "
            "match on resume; start a new run (another --output_dir, or --overwrite_output_dir) to change them."
        )
    folders = [UNET_DIR] + ([EMA_DIR] if use_ema else []) + ([GUIDE_DIR] if (ckpt / GUIDE_DIR).is_dir() else [])
    for sub in folders:
        cfg_path = ckpt / sub / "config.json"
        try:
            saved_cfg = json.loads(cfg_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{cfg_path} is missing or damaged ({e}).") from None
        differ = sorted(k for k in unet_config if not k.startswith("_") and _jsonable(unet_config[k]) != saved_cfg.get(k))
        if differ:
            raise CheckpointError(f"{cfg_path} describes another UNet (differs in {differ}); it cannot be resumed here.")
        weights = ckpt / sub / WEIGHTS_NAME
        try:
            with safe_open(str(weights), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    f.get_slice(key).get_shape()
        except Exception as e:  # noqa: BLE001 (safetensors raises its own types for truncated or garbled files)
            raise CheckpointError(f"{weights} is missing or damaged ({type(e).__name__}: {e}).") from None
        if os.path.getsize(weights) < _expected_size(weights):
            raise CheckpointError(f"{weights} is truncated.")
    if use_ema:
        path = ckpt / EMA_STATE_FILE
        try:
            scalars = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"{path} is missing or damaged ({e}).") from None
        if not isinstance(scalars, dict) or not isinstance(scalars.get("optimization_step"), int):
            raise CheckpointError(f"{path} is damaged (no integer optimization_step).")
    names = ["optimizer.bin", "scheduler.bin"] + [f"random_states_{i}.pkl" for i in range(num_processes)]
    for name in names:
        path = ckpt / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: {ckpt} is incomplete.")
        try:
            # weights_only=True: PyTorch's restricted unpickler (tensors, numbers, strings, containers; no code)
            accelerate_load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 (any failure to read means a damaged file)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CheckpointError(
                f"{path} is damaged or holds objects other than tensors and plain data, and was not loaded "
                f"({type(e).__name__}: {first[:200]})."
            ) from None
    return state


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value)) if isinstance(value, (list, tuple, dict)) else value


def _expected_size(path: Path) -> int:
    """The size a safetensors file must have: 8 + header length + the largest data offset."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return 8 + n + max(ends, default=0)


def weights_are_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter of `model` is finite (checked before a checkpoint is written)."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())
