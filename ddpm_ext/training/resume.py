"""The resume policy: which checkpoint a run continues, what must match, what may change, what is set aside.

[`ddpm_ext.training.checkpoints`] holds the on-disk format (save, read, validate, list, prune, move aside); this
module decides, in the order a run meets it:

1. [`plan_resume`] (with the flags, before anything is loaded): the checkpoint to resume from; an output folder
   holding another run's checkpoints, or a trained pipeline, is refused unless `--overwrite_output_dir`.
2. [`check_resume`] (once the model is built): the checkpoint's files (against its manifest), the flags of
   `RESUME_MUST_MATCH`, the autoguidance guide and the training data ([`check_data_on_resume`]: the same data, or
   `--allow_data_change`) are checked; the run's identity ([`RunIdentity`]: its id, those flags, its data, the
   saved state).
   `model_config` is compared as the run has it: picked from the data when the flag was left out (the same data
   picks the same preset again), `None` when fine-tuning.
3. [`prepare_checkpoints`] (main process, before training): other runs' checkpoints and newer ones than the one
   resumed are moved to `<output_dir>/superseded/`, never deleted; what interrupted writes and prunes left is
   cleared.
4. [`resume_training`] loads the checkpoint into the trainer; [`apply_changed_flags`]: every other flag may
   change, its new value is applied to the loaded state.
5. [`set_aside_diverged`] (on a non-finite loss): the checkpoints holding the diverged weights are moved aside,
   and the advice names the last good checkpoint to resume from.
"""

from __future__ import annotations

import argparse
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..pipelines.checkpoint_io import GUIDE_DIR
from .checkpoints import (
    CheckpointError,
    checkpoint_run_id,
    checkpoint_step,
    list_checkpoints,
    read_manifest,
    read_training_state,
    remove_partial_folders,
    set_aside,
    validate_checkpoint,
)

if TYPE_CHECKING:  # the loop's state, set here on resume; train.py imports this module
    from .train import Trainer

__all__ = [
    "RESUME_MUST_MATCH",
    "RunIdentity",
    "apply_changed_flags",
    "check_data_on_resume",
    "check_guide_on_resume",
    "check_resume",
    "plan_resume",
    "prepare_checkpoints",
    "resume_config",
    "resume_training",
    "set_aside_diverged",
]

# Flags that define what a checkpoint is a checkpoint of: a resume must give the same values (or leave them out).
# Every other flag may change on resume (learning rate and its schedule, Adam and EMA settings, clipping, number
# of steps, mixed precision, checkpointing, logging, samples, Hub); the new values are applied to the resumed state.
RESUME_MUST_MATCH = (
    "model_config", "pretrained_model_name_or_path", "ddpm_num_steps", "ddpm_beta_schedule", "variance_type",
    "prediction_type", "loss_type", "snr_gamma", "resolution", "dataset_name", "train_data_dir", "dataset_split",
    "image_column", "max_train_samples", "center_crop", "random_flip", "train_batch_size",
    "gradient_accumulation_steps", "seed", "use_ema", "num_processes", "class_conditional", "label_column",
    "dataset_config_name", "preserve_input_precision", "autoguidance_guide_fraction",
)


@dataclass
class RunIdentity:
    """What a run is: its id, the values of `RESUME_MUST_MATCH` (stored in each of its checkpoints), and the
    training state of the checkpoint it resumes from (None for a new run)."""

    run_id: str
    config: dict[str, Any]
    saved: dict[str, Any] | None = None
    data: dict[str, Any] | None = None  # the training data's identity (ddpm_ext.data.loading.dataset_identity)


def plan_resume(args: argparse.Namespace) -> Path | None:
    """The checkpoint to resume from, after checking the output folder holds no other run's checkpoints."""
    out = Path(args.output_dir)
    existing = list_checkpoints(out)
    if args.resume_from_checkpoint is None:
        resume = None
    elif args.resume_from_checkpoint == "latest":
        resume = existing[-1] if existing else None
    else:
        resume = Path(args.resume_from_checkpoint)
        if not resume.is_dir():
            raise ValueError("--resume_from_checkpoint must be 'latest' or an existing checkpoint folder, got "
                             f"{args.resume_from_checkpoint!r}")
    run_id = None
    if resume is not None:
        try:
            run_id = read_training_state(resume)["run_id"]
        except CheckpointError as e:
            raise ValueError(f"--resume_from_checkpoint: {e}") from None
    foreign = [c for c in existing if c != resume and (run_id is None or checkpoint_run_id(c) != run_id)]
    if foreign and not args.overwrite_output_dir:
        names = ", ".join(c.name for c in foreign)
        hint = "pass --resume_from_checkpoint latest to continue that run, or " if resume is None else ""
        raise ValueError(f"--output_dir {out} holds checkpoints of another run ({names}); {hint}pass "
                         f"--overwrite_output_dir to start anew (they are then moved to {out / 'superseded'}, not "
                         "deleted)")
    if resume is None and (out / "model_index.json").exists() and not args.overwrite_output_dir:
        raise ValueError(f"--output_dir {out} already holds a trained pipeline; pass --overwrite_output_dir or "
                         "--resume_from_checkpoint")
    return resume


def resume_config(args: argparse.Namespace, resolution: int, num_processes: int) -> dict[str, Any]:
    """The values of `RESUME_MUST_MATCH` for this run (stored in each checkpoint, compared on resume)."""
    values = {**vars(args), "resolution": resolution, "num_processes": num_processes}
    return {k: values.get(k) for k in RESUME_MUST_MATCH}


def check_resume(
    args: argparse.Namespace,
    *,
    unet_config: dict[str, Any],
    resolution: int,
    num_processes: int,
    guide_step: int | None,
    max_steps: int,
    data: dict[str, Any] | None = None,
) -> RunIdentity:
    """The identity of this run: a new one, or that of `args.resume` once every file of that checkpoint has been
    read and its flags, UNet, guide and training data fit this run (nothing is loaded into a model yet).

    Raises:
        CheckpointError: naming the damaged or mismatching file or flag ([`validate_checkpoint`]), the missing
            guide ([`check_guide_on_resume`]) or the changed data ([`check_data_on_resume`]).
    """
    config = resume_config(args, resolution, num_processes)
    if args.resume is None:
        return RunIdentity(uuid.uuid4().hex, config, data=data)
    compared = config
    if args.pretrained_model_name_or_path:
        # --model_config does not apply to fine-tuning (None here); older fine-tuning checkpoints stored its
        # then default, "mnist-small", which is no reason to refuse them
        saved_model_config = read_training_state(args.resume)["config"].get("model_config")
        compared = {**config, "model_config": saved_model_config}
    saved = validate_checkpoint(args.resume, config=compared, unet_config=unet_config, use_ema=args.use_ema,
                                num_processes=num_processes)
    check_guide_on_resume(args, saved, guide_step, max_steps)
    check_data_on_resume(args, data)
    return RunIdentity(saved["run_id"], config, saved, data)


def check_data_on_resume(args: argparse.Namespace, data: dict[str, Any] | None) -> None:
    """Refuse to resume `args.resume` on other training data than its manifest records, unless
    `--allow_data_change` (then the change is logged). A checkpoint without a manifest or data record (the
    earlier format) cannot be compared: [`verify_manifest`] has warned about it already."""
    manifest = read_manifest(args.resume)
    saved = None if manifest is None else manifest.get("data")
    if saved is None or data is None or saved == data:
        return
    changes = "; ".join(f"{k}: {saved.get(k)!r} then, {data.get(k)!r} now"
                        for k in sorted(set(saved) | set(data)) if saved.get(k) != data.get(k))
    what = f"the training data differs from the data {args.resume} was trained on ({changes})"
    if not getattr(args, "allow_data_change", False):
        raise CheckpointError(f"{what}. Resume with the same data, pass --allow_data_change to continue on this "
                              "data, or start a new run.")
    logging.getLogger(__name__).warning("--allow_data_change: %s; training continues on the new data.", what)


def check_guide_on_resume(args: argparse.Namespace, saved: dict[str, Any], guide_step: int | None,
                          max_steps: int) -> None:
    """Refuse (before anything is moved or loaded) to resume with autoguidance past the guide's step from a
    checkpoint that holds no guide: the weights of that step are gone."""
    if guide_step is not None and saved["global_step"] >= guide_step and not (Path(args.resume) / GUIDE_DIR).is_dir():
        raise CheckpointError(
            f"--autoguidance_scale {args.autoguidance_scale:g} needs the guide of step {guide_step} "
            f"(--autoguidance_guide_fraction {args.autoguidance_guide_fraction:g} of {max_steps} steps), but "
            f"{args.resume} is at step {saved['global_step']} and holds no guide (the run was started without "
            "autoguidance). Resume without --autoguidance_scale, or start a new run with it."
        )


def prepare_checkpoints(args: argparse.Namespace, run_id: str, accelerator: Any) -> None:
    """Move aside what this run must not prune or resume: other runs' checkpoints and newer ones than
    `args.resume`; remove the partial folders of interrupted checkpoint writes."""
    out, resume = Path(args.output_dir), args.resume
    existing = [c for c in list_checkpoints(out) if c != resume]
    foreign = [c for c in existing if checkpoint_run_id(c) != run_id]
    newer = [c for c in existing
             if c not in foreign and resume is not None and checkpoint_step(c) > checkpoint_step(resume)]
    for group, reason in ((foreign, "other-run"), (newer, f"after-step-{checkpoint_step(resume) if resume else 0}")):
        dest = set_aside(group, out, reason)
        if dest is not None:
            accelerator.print(f"Moved {', '.join(c.name for c in group)} to {dest} (kept, not used by this run).")
    remove_partial_folders(out)


def resume_training(trainer: Trainer, saved: dict[str, Any]) -> None:
    """Load the checkpoint `args.resume` (its training state `saved`) into `trainer`, apply the flags that changed
    ([`apply_changed_flags`]) and put the trainer at the checkpoint's position."""
    args, accelerator = trainer.args, trainer.accelerator
    # load_kwargs: accelerate reads optimizer.bin / scheduler.bin with torch.load(weights_only=True)
    accelerator.load_state(str(args.resume), load_kwargs={"weights_only": True})
    apply_changed_flags(saved, args, trainer.optimizer, trainer.lr_scheduler, trainer.ema, accelerator)
    trainer.global_step, trainer.epoch, trainer.skip = saved["global_step"], saved["epoch"], saved["batches_in_epoch"]
    if trainer.guide_step is None:
        trainer.guide_unet = None  # resumed without --autoguidance_scale: the run keeps no guide
    accelerator.print(f"Resumed from {args.resume} at step {trainer.global_step}.")


def apply_changed_flags(saved: dict[str, Any], args: argparse.Namespace, optimizer: torch.optim.Optimizer,
                        lr_scheduler: Any, ema: Any, accelerator: Any) -> None:
    """After `load_state`: the saved optimizer/scheduler/EMA states carry the old run's settings; apply this run's.

    Adam's β, ε and weight decay and the EMA settings are set from the flags (no-ops when unchanged, so an
    unchanged resume stays bit-exact); a changed learning rate becomes the schedule's new peak, and the current
    rate is recomputed from the schedule at the resumed step.
    """
    for group in optimizer.param_groups:
        group["betas"] = (args.adam_beta1, args.adam_beta2)
        group["eps"] = args.adam_epsilon
        group["weight_decay"] = args.adam_weight_decay
    old_lr = saved.get("changeable", {}).get("learning_rate")
    if old_lr != args.learning_rate:
        sched = lr_scheduler.scheduler  # accelerate's wrapper around the LambdaLR
        sched.base_lrs = [args.learning_rate] * len(optimizer.param_groups)
        for group, lam in zip(optimizer.param_groups, sched.lr_lambdas):
            group["initial_lr"] = args.learning_rate
            group["lr"] = args.learning_rate * lam(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in optimizer.param_groups]
        accelerator.print(f"Learning rate changed on resume: peak {old_lr} -> {args.learning_rate} "
                          f"(now {optimizer.param_groups[0]['lr']:.3g}).")
    if ema is not None:
        ema.decay, ema.inv_gamma, ema.power = args.ema_max_decay, args.ema_inv_gamma, args.ema_power


def set_aside_diverged(output_dir: str | os.PathLike, run_id: str, step: int, *, move: bool) -> str:
    """The loss of the weights after `step` steps is not finite: move the checkpoints of run `run_id` from `step`
    on (those weights) aside when `move` (the main process), and return what happened and how to go on."""
    out = Path(output_dir)
    moved = None
    if move:
        bad = [c for c in list_checkpoints(out) if checkpoint_run_id(c) == run_id and checkpoint_step(c) >= step]
        moved = set_aside(bad, out, f"nonfinite-at-step-{step}")
    good = [c for c in list_checkpoints(out) if checkpoint_run_id(c) == run_id]
    where = (f"The last checkpoint with finite weights and loss is {good[-1]}: resume from it with "
             "--resume_from_checkpoint latest and a lower --learning_rate (it may change on resume) or "
             "--mixed_precision no." if good else "No checkpoint of this run had finite weights and loss yet; "
             "start again with a lower --learning_rate.")
    aside = f" The checkpoints holding the diverged weights were moved to {moved}." if moved else ""
    return f"{aside} {where}"
