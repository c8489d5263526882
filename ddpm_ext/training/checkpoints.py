"""The on-disk format of training checkpoints: save, read, validate, list, prune and move aside.

Checkpoints belong to their run, load without unpickling, and fail clearly; which one a run resumes, and what
it must match, is the resume policy ([`ddpm_ext.training.resume`]).

A checkpoint is a folder `checkpoint-<step>` in the output folder:

```
checkpoint-<step>/
  unet/              the trained UNet, diffusers format (config.json + safetensors)
  unet_ema/          the EMA weights, diffusers format (with --use_ema):
                     UNet2DModel.from_pretrained(ckpt, subfolder="unet_ema")
  ema_state.json     the EMA's scalars (optimisation step, decay settings)
  guide_unet/        the autoguidance guide (with --autoguidance_scale > 1, once its step has passed): the EMA
                     weights of that step, diffusers format
  optimizer.bin      accelerate's optimizer / learning-rate scheduler / RNG states, read with
  scheduler.bin      torch.load(weights_only=True): tensors, numbers and strings only, never code
  random_states_<process>.pkl
  training_state.json   run id, position (step, epoch, batch), the flags that must match on resume
  manifest.json      written last: every other file's path, size and SHA-256, and the training data's identity
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
- **Proven intact**: `manifest.json` ([`write_manifest`], the last file written, atomically) records every file's
  size and SHA-256; [`verify_manifest`] refuses a checkpoint whose files differ from it (a flipped bit, a file
  copied in from another checkpoint, a file added or missing), naming the file. A checkpoint of the earlier format
  without a manifest is still resumed, with a warning that its files cannot be verified (see `docs/reliability.md`).
- **Finite**: weights holding NaN or ±inf are refused ([`validate_checkpoint`]) and never written (the loop checks
  [`ddpm_ext.validation.weights_are_finite`] before each checkpoint).
- **Kill-safe pruning**: an old checkpoint is renamed to `checkpoint-<step>.pruning` (one atomic rename) before it
  is deleted, so a kill while pruning leaves no half-deleted `checkpoint-<step>`; [`remove_partial_folders`]
  clears what an interrupted write or prune left.
"""

from __future__ import annotations

import copy
import json
import logging
import math
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

from ..files import atomic_write_text, file_sha256, naming_failed_writes, temporary_names_as
from ..pipelines.checkpoint_io import GUIDE_DIR  # the guide's folder: the same name as in a saved pipeline

__all__ = [
    "CHECKPOINT_RE",
    "CheckpointError",
    "CheckpointWriteError",
    "checkpoint_run_id",
    "checkpoint_step",
    "check_ema_state",
    "list_checkpoints",
    "prune_checkpoints",
    "read_manifest",
    "read_training_state",
    "register_checkpoint_hooks",
    "remove_partial_folders",
    "save_checkpoint",
    "set_aside",
    "validate_checkpoint",
    "verify_manifest",
    "write_manifest",
]

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "training_state.json"
EMA_STATE_FILE = "ema_state.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
SUPERSEDED_DIR = "superseded"
UNET_DIR, EMA_DIR = "unet", "unet_ema"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_LEGACY_PICKLES = ("custom_checkpoint_0.pkl",)
PRUNING_SUFFIX, REPLACED_SUFFIX = ".pruning", ".old"


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
        # one atomic rename first: a kill during the deletion leaves `checkpoint-<step>.pruning`, which no resume
        # reads (and the next run removes), never a half-deleted `checkpoint-<step>`
        doomed = old.with_name(old.name + PRUNING_SUFFIX)
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return removed


def remove_partial_folders(output_dir: str | os.PathLike) -> list[Path]:
    """Clear what interrupted writes and prunes left in `output_dir` (main process, before a run writes): partial
    `checkpoint-<step>.tmp` and `.pruning` folders are removed; a `checkpoint-<step>.old` (a kill while replacing
    a checkpoint of the same step) is put back when the new one never arrived, else removed. Returns the removed."""
    out = Path(output_dir)
    removed = []
    for old in sorted(out.glob(f"checkpoint-*{REPLACED_SUFFIX}")):
        final = old.with_name(old.name[: -len(REPLACED_SUFFIX)])
        if CHECKPOINT_RE.match(final.name) and not final.exists():
            os.replace(old, final)
    for suffix in (".tmp", PRUNING_SUFFIX, REPLACED_SUFFIX):
        for partial in sorted(out.glob(f"checkpoint-*{suffix}")):
            shutil.rmtree(partial, ignore_errors=True)
            removed.append(partial)
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
    scalars = check_ema_state(folder / EMA_STATE_FILE)  # checked again: load_state_dict wants floats, not ints
    tensors = load_file(folder / EMA_DIR / WEIGHTS_NAME)
    shadow = [tensors[name] for name, _ in model.named_parameters()]
    ema.load_state_dict({**scalars, "shadow_params": shadow})


def save_checkpoint(
    accelerator, output_dir: str | os.PathLike, state: dict[str, Any], data: dict[str, Any] | None = None
) -> Path:
    """`accelerator.save_state` into `checkpoint-<step>.tmp`, then `training_state.json` and, last, `manifest.json`
    ([`write_manifest`], recording `data`: the training data's identity), then an atomic rename to
    `checkpoint-<step>`.

    `state` (run_id, global_step, epoch, batches_in_epoch, config, ...) becomes `training_state.json`. An existing
    folder of the same step is replaced only once the new one is complete. Pruning is separate
    ([`prune_checkpoints`]): the training loop prunes once the new checkpoint has proven finite.

    Raises:
        CheckpointWriteError: writing failed (full disk, permissions); the message names the file, the partial
            folder is removed.
    """
    step = state["global_step"]
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = Path(output_dir) / f"checkpoint-{step}.tmp"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()

    def write_all_or_fail(write) -> None:
        error: OSError | None = None
        try:  # PyTorch's and safetensors' write errors become OSErrors naming the file, as in the final folder
            with temporary_names_as(tmp, final), naming_failed_writes():
                write()
        except (OSError, SafetensorError) as e:  # safetensors reports some failures as its own error type
            error = e if isinstance(e, OSError) else OSError(None, str(e))
        # every rank learns whether any rank failed, so all stop together instead of one hanging in a collective
        # (the gather is also the barrier: every rank's files are complete before the manifest is written)
        failed = accelerator.gather(torch.tensor([error is not None], dtype=torch.int32, device=accelerator.device))
        if bool(failed.any()) and error is None:
            error = OSError(None, "another process failed to write its part")
        if error is not None:
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            what = f": {error.filename}" if error.filename else ""
            raise CheckpointWriteError(
                error.errno, f"could not write {final.name}{what} ({error.strerror or error}); the partial folder was "
                f"removed and the earlier checkpoints in {output_dir} are intact"
            ) from error

    write_all_or_fail(lambda: accelerator.save_state(str(tmp)))

    def write_state_and_manifest() -> None:
        if accelerator.is_main_process:
            atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2))
            write_manifest(tmp, data=data)

    write_all_or_fail(write_state_and_manifest)
    if accelerator.is_main_process:
        if final.exists():  # a checkpoint of the same step set aside earlier cannot be here; replace a stale one
            old = final.with_name(final.name + REPLACED_SUFFIX)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def write_manifest(checkpoint: str | os.PathLike, *, data: dict[str, Any] | None = None) -> Path:
    """Record every file of `checkpoint` (path relative to it, size, SHA-256) and the training data's identity
    `data` ([`ddpm_ext.data.loading.dataset_identity`]) in `manifest.json`, atomically; the checkpoint's last file.

    Returns:
        `pathlib.Path`: the manifest.
    """
    ckpt = Path(checkpoint)
    files = {
        p.relative_to(ckpt).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(ckpt.rglob("*")) if p.is_file() and p != ckpt / MANIFEST_FILE
    }
    manifest = {"format": MANIFEST_FORMAT, "files": files, "data": data}
    return atomic_write_text(ckpt / MANIFEST_FILE, json.dumps(manifest, indent=2))


def read_manifest(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The parsed `manifest.json` of `checkpoint`, checked; None for a checkpoint of the earlier format (none).

    Raises:
        CheckpointError: the manifest is unreadable or malformed (naming it).
    """
    path = Path(checkpoint) / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is damaged ({e}).") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    ok = (isinstance(files, dict) and manifest.get("format") == MANIFEST_FORMAT
          and all(isinstance(e, dict) and isinstance(e.get("size"), int) and not isinstance(e["size"], bool)
                  and isinstance(e.get("sha256"), str) and _inside(name) for name, e in files.items())
          and (manifest.get("data") is None or isinstance(manifest["data"], dict)))
    if not ok:
        raise CheckpointError(f"{path} is damaged: it must hold format {MANIFEST_FORMAT} and, for each file of the "
                              "checkpoint (a relative path inside it), its integer size and sha256.")
    return manifest


def _inside(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


def verify_manifest(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """Check every file of `checkpoint` against its `manifest.json`: each listed file present with its size and
    SHA-256, no file unlisted. Returns the manifest, or None (with a logged warning) for a checkpoint of the earlier
    format, which has none and is accepted unverified.

    Raises:
        CheckpointError: naming the first file that is missing, changed or not part of the checkpoint.
    """
    ckpt = Path(checkpoint)
    manifest = read_manifest(ckpt)
    if manifest is None:
        logger.warning(
            "%s has no %s (written by ddpm_ext before checkpoints recorded one): its files cannot be verified "
            "against what was saved, nor its training data against this run's. Resuming from it anyway; the "
            "checkpoints this run writes are verifiable.", ckpt, MANIFEST_FILE,
        )
        return None
    listed = manifest["files"]
    for name, entry in listed.items():
        path = ckpt / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: {ckpt / MANIFEST_FILE} lists it as part of the checkpoint.")
        size = path.stat().st_size
        if size != entry["size"] or file_sha256(path) != entry["sha256"]:
            why = (f"its size is {size} bytes, the manifest records {entry['size']}" if size != entry["size"]
                   else "its SHA-256 differs from the one the manifest records")
            raise CheckpointError(
                f"{path} is not the file this checkpoint saved ({why}): it was damaged or replaced (e.g. copied in "
                "from another checkpoint) since. Resume from another checkpoint, or start a new run."
            )
    unlisted = sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*")
                      if p.is_file() and p != ckpt / MANIFEST_FILE and p.relative_to(ckpt).as_posix() not in listed)
    if unlisted:
        raise CheckpointError(
            f"{ckpt / unlisted[0]} is not part of this checkpoint (not in {MANIFEST_FILE}): it was added since the "
            "checkpoint was written. Remove it, or resume from another checkpoint."
        )
    return manifest


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
                f"{ckpt / legacy} is a pickle (the EMA state of an older ddpm_ext); it is not loaded because "
                "unpickling can execute code. Resume from a checkpoint written by this version, or start a new run."
            )
    verify_manifest(ckpt)
    state = read_training_state(ckpt)
    if (m := CHECKPOINT_RE.match(ckpt.name)) and int(m.group(1)) != state["global_step"]:
        raise CheckpointError(f"{ckpt / STATE_FILE} is at step {state['global_step']}, but the folder is "
                              f"{ckpt.name}: the file belongs to another checkpoint.")
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
        differ = sorted(
            k for k in unet_config if not k.startswith("_") and _jsonable(unet_config[k]) != saved_cfg.get(k)
        )
        if differ:
            raise CheckpointError(
                f"{cfg_path} describes another UNet (differs in {differ}); it cannot be resumed here."
            )
        weights = ckpt / sub / WEIGHTS_NAME
        try:
            with safe_open(str(weights), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    f.get_slice(key).get_shape()
        except Exception as e:  # noqa: BLE001 (safetensors raises its own types for truncated or garbled files)
            raise CheckpointError(f"{weights} is missing or damaged ({type(e).__name__}: {e}).") from None
        if os.path.getsize(weights) < _expected_size(weights):
            raise CheckpointError(f"{weights} is truncated.")
        _check_finite(weights)
    if use_ema:
        check_ema_state(ckpt / EMA_STATE_FILE)
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


def _check_finite(weights: Path) -> None:
    """Refuse a safetensors file holding NaN or ±inf (naming it and the first such tensor)."""
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            tensor = f.get_tensor(key)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise CheckpointError(
                    f"{weights} holds non-finite weights ({bad} of {tensor.numel()} values of {key} are NaN or "
                    "inf): the training had diverged. Resume from an earlier checkpoint with a lower --learning_rate."
                )


# The EMA's scalars as diffusers' EMAModel.state_dict writes them: name -> (kind, low, high)
_EMA_SCALARS = {
    "decay": ("number", 0.0, 1.0), "min_decay": ("number", 0.0, 1.0), "optimization_step": ("int", 0, None),
    "update_after_step": ("int", 0, None), "use_ema_warmup": ("bool", None, None),
    "inv_gamma": ("positive", 0.0, None), "power": ("positive", 0.0, None),
}


def check_ema_state(path: str | os.PathLike) -> dict[str, Any]:
    """The EMA's scalars from `ema_state.json`, checked: every key of diffusers' `EMAModel.state_dict` (but the
    weights) with its type and range; the numbers as floats, the counters as integers.

    Raises:
        CheckpointError: naming the file and the first missing or bad value.
    """
    path = Path(path)
    try:
        scalars = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path} is missing or damaged ({e}).") from None
    if not isinstance(scalars, dict):
        raise CheckpointError(f"{path} is damaged: it must hold an object of {sorted(_EMA_SCALARS)}.")
    checked = {}
    for key, (kind, low, high) in _EMA_SCALARS.items():
        value = scalars.get(key)
        if kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        else:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                  and (value > low if kind == "positive" else low <= value <= high))
            value = float(value) if ok else value
        if not ok:
            allowed = ("true or false" if kind == "bool" else f"an integer >= {low}" if kind == "int"
                       else "a finite number > 0" if kind == "positive" else f"a number in [{low:g}, {high:g}]")
            got = "missing" if key not in scalars else f"got {json.dumps(scalars[key])}"
            raise CheckpointError(f"{path} is damaged: {key} must be {allowed} ({got}).")
        checked[key] = value
    return checked
