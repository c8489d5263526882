"""The training flags and their checks: every flag of `ddpm-ext train` / `training/train_ddpm.py`, checked before
any model or data is loaded.

[`add_arguments`] adds the flags to a given parser (the `ddpm-ext train` subcommand reuses it), [`parse_args`] is
the training script's parser built on it, and [`check_args`] checks a parsed namespace, raising a `ValueError`
that names the flag. Flag names follow diffusers' `train_unconditional.py` where the concept is the same.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cpu_threads import parse_cpu_threads
from ..data import BUILTIN_DATASETS
from ..hub.push import DEFAULT_PUSH_TIMEOUT, check_push_timeout, check_repo_id
from ..losses import LOSS_TYPES, TIMESTEP_SAMPLINGS
from ..memory import check_fits, sampling_bytes, schedule_bytes
from ..models.unet_presets import UNET_PRESETS, check_unet_config, unet_config
from ..pipelines.checkpoint_io import read_json
from ..schedulers.scheduling_common import BETA_SCHEDULES, DEFAULT_SAMPLING_STEPS, PREDICTION_TYPES, VARIANCE_TYPES
from ..validation import check_number, check_path, check_seed
from .conditioning import DEFAULT_LABEL_COLUMN
from .resume import plan_resume

__all__ = [
    "LOGGERS",
    "LR_SCHEDULERS",
    "MODEL_CONFIG_BY_CHANNELS",
    "MAX_RESOLUTION",
    "MIXED_PRECISION",
    "OPTIMIZER_IMPLS",
    "SCHEDULER_FLAGS",
    "add_arguments",
    "add_conditioning_arguments",
    "check_args",
    "check_conditioning_args",
    "check_output_dir",
    "check_resolution",
    "check_sizes",
    "has_accelerator",
    "parse_args",
]

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
LOGGERS = ("none", "tensorboard", "wandb")
MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZER_IMPLS = ("auto", "foreach", "fused", "for-loop")
MAX_RESOLUTION = 4096  # a 100000-pixel side needs ~40 GB per image: refuse instead of a MemoryError
# Scheduler flags a pretrained pipeline fixes (its model learned that schedule); refused with
# --pretrained_model_name_or_path, else filled in with these defaults.
SCHEDULER_FLAGS = {
    "ddpm_num_steps": 1000, "ddpm_beta_schedule": "linear", "variance_type": "fixed_small",
    "prediction_type": "epsilon",
}
# The preset of a run from scratch without --model_config, by the data's channels (1 grayscale, 3 colour).
MODEL_CONFIG_BY_CHANNELS = {1: "mnist-small", 3: "rgb32-small"}
DESCRIPTION = "Train a DDPM with the simplified loss (Ho et al. 2020, Algorithm 1)."


# --------------------------------------------------------------------------------------------------
# The flags
# --------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every training flag to `parser` (checked afterwards by [`check_args`])."""
    a = parser.add_argument
    parser.set_defaults(model_config_picked=False)  # set by setup.pick_model_config, not a flag
    # data
    a("--dataset_name", default=None,
      help=f"A built-in data set {sorted(BUILTIN_DATASETS)}, a Hub data set name, a folder written by "
      "Dataset.save_to_disk or DatasetDict.save_to_disk (its train split, or its only one), or a folder of parquet, "
      "csv, json or image files (default, only when training from scratch: mnist-5k).")
    a("--dataset_config_name", default=None,
      help="The configuration (subset) of a Hub --dataset_name, passed to datasets.load_dataset (refused for "
      "built-in data sets and --train_data_dir).")
    a("--dataset_split", default="train",
      help="Split to train on (mnist-5k: train = 4,500 images, test = the 500 held out, all).")
    a("--train_data_dir", default=None,
      help="A folder of images (loaded with the `imagefolder` builder), or a save_to_disk folder, instead of "
      "--dataset_name.")
    a("--image_column", default=None,
      help="The column holding the images (default: 'image', 'img' or the first image column).")
    a("--cache_dir", default=None, help="Where Hub data sets and models are cached.")
    a("--resolution", type=int, default=None,
      help="Image size: sets the UNet's sample_size (as diffusers does) and the training crops (default: the "
      "model's sample_size).")
    a("--center_crop", action="store_true", help="Center-crop to --resolution (default: random crop).")
    a("--random_flip", action="store_true",
      help="Randomly flip images horizontally (seeded by (seed, epoch, image), so resume is exact).")
    a("--preserve_input_precision", action="store_true",
      help="Keep 16-bit and float images at their precision (x = 2 v − 1 from v = sample / 65535) instead of "
      "converting them to 8 bits; 8-bit images are unchanged. Bits/dim (a likelihood on the 8-bit grid) does not "
      "apply to such data.")
    a("--max_train_samples", type=int, default=None,
      help="Use only this many training images (shuffled with --seed first).")
    a("--dataloader_num_workers", type=int, default=0,
      help="DataLoader worker processes (0 keeps loading in the main process).")
    # model and diffusion
    a("--model_config", default=None,
      help=f"A UNet preset {sorted(UNET_PRESETS)} or a UNet2DModel config JSON path; its in_channels must match "
      "the data's channels. Default (without --pretrained_model_name_or_path): picked from the data, mnist-small "
      "for grayscale images and rgb32-small for colour ones, at --resolution if given, else the preset's size.")
    a("--pretrained_model_name_or_path", default=None,
      help="Fine-tune this pipeline (folder or Hub repo id) instead of a fresh --model_config (refused with it); "
      "its scheduler is kept, so the four scheduler flags below are refused with it. Name the data with "
      "--train_data_dir or --dataset_name; its channels must match the UNet's in_channels.")
    a("--ddpm_num_steps", type=int, default=None, help="T, the number of diffusion steps (default 1000).")
    a("--ddpm_beta_schedule", default=None, choices=BETA_SCHEDULES, help="The β_t schedule (default linear).")
    a("--variance_type", default=None, choices=VARIANCE_TYPES,
      help="σ_t²: fixed_small = β̃_t (default), fixed_large = β_t, learned_range = improved DDPM.")
    a("--prediction_type", default=None, choices=PREDICTION_TYPES,
      help="What the UNet predicts: ε (default), x_0 or v.")
    a("--snr_gamma", type=float, default=None,
      help="Weight the loss by min-SNR-γ (Hang et al. 2023; 5 is the paper's choice): min(SNR, γ) ‖x_0 − x̂_0‖² "
      "for any prediction type. Default: none (L_simple's uniform weight, as in DDPM and diffusers).")
    a("--timestep_sampling", default="uniform", choices=TIMESTEP_SAMPLINGS,
      help="How t is drawn: uniform = U{0..T−1} (Algorithm 1); importance = in proportion to the min-SNR-γ weight "
      "of t, each loss scaled by 1 / (T p(t)) — the same objective, a less noisy loss per batch (needs "
      "--snr_gamma; ddpm_ext.losses.timestep_proposal). docs/results/recipe.md compares the two.")
    a("--loss_type", default="simple", choices=LOSS_TYPES,
      help="simple = L_simple; hybrid = L_simple + 0.001 L_vlb (needs learned_range).")
    add_conditioning_arguments(parser)
    a("--autoguidance_scale", type=float, default=1.0,
      help="Autoguidance (Karras et al. 2024, 'Guiding a Diffusion Model with a Bad Version of Itself'): keep the "
      "EMA weights of step --autoguidance_guide_fraction × the run's steps as a guide model, saved with the "
      "pipeline (guide_unet/), and sample with D_guide + w (D − D_guide) at this w by default (the grids and every "
      "later pipeline call that gives no autoguidance_scale). 1 (default): no guide. The quick start uses it: "
      "docs/sampling.md, 'Autoguidance'.")
    a("--autoguidance_guide_fraction", type=float, default=0.5,
      help="When the guide is taken, as a fraction in (0, 1) of the run's optimisation steps (with "
      "--autoguidance_scale > 1).")
    a("--ddpm_num_inference_steps", type=int, default=DEFAULT_SAMPLING_STEPS,
      help="Sampling steps for the sample grids (respaced DDPM, trailing spacing; diffusers: 1000; "
      "docs/results/samplers.md compares step counts).")
    # optimisation
    a("--train_batch_size", type=int, default=128, help="Batch size per device (diffusers: 16; 128 as in Ho et al.).")
    a("--eval_batch_size", type=int, default=64, help="Number of images in each sample grid.")
    a("--num_epochs", type=int, default=100, help="Epochs (ignored when --max_train_steps is set).")
    a("--max_train_steps", type=int, default=None, help="Total optimisation steps; overrides --num_epochs.")
    a("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches accumulated per optimisation step.")
    a("--learning_rate", type=float, default=2e-3,
      help="Peak learning rate (diffusers: 1e-4 for large UNets; 2e-3 suits the small presets here). May change "
      "on resume.")
    a("--lr_scheduler", default="cosine", choices=LR_SCHEDULERS, help="Learning-rate schedule after warm-up.")
    a("--lr_warmup_steps", type=int, default=200, help="Linear warm-up steps (diffusers: 500).")
    a("--adam_beta1", type=float, default=0.9, help="Adam β1 (diffusers: 0.95; 0.9 is Adam's and Ho et al.'s).")
    a("--adam_beta2", type=float, default=0.999, help="Adam β2.")
    a("--adam_weight_decay", type=float, default=0.0, help="AdamW weight decay (diffusers: 1e-6; Ho et al. use none).")
    a("--adam_epsilon", type=float, default=1e-8, help="Adam ε.")
    a("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (0 disables; Ho et al. clip at 1).")
    a("--use_ema", action=argparse.BooleanOptionalAction, default=True,
      help="Keep an exponential moving average of the weights, saved as the pipeline (diffusers: off; on here as "
      "in Ho et al., who sample from the EMA weights).")
    a("--ema_inv_gamma", type=float, default=1.0, help="EMA warm-up inverse gamma (> 0).")
    a("--ema_power", type=float, default=3 / 4, help="EMA warm-up power (> 0).")
    a("--ema_max_decay", type=float, default=0.999,
      help="Largest EMA decay (diffusers: 0.9999, which averages over ~10k steps; 0.999 over ~1k, for short runs).")
    a("--mixed_precision", default="no", choices=MIXED_PRECISION,
      help="Mixed precision: fp16 needs a GPU (refused on a machine without one, where accelerate would silently "
      "train in fp32); bf16 runs everywhere (autocast on CPUs, fast only with AVX512-BF16 / AMX).")
    a("--enable_xformers_memory_efficient_attention", action="store_true",
      help="Use xformers' attention (needs `pip install xformers` and a GPU).")
    # speed (docs/speed.md; the defaults keep the arithmetic of earlier versions exactly)
    a("--channels_last", action="store_true",
      help="Keep the UNet's weights and the batches in NHWC (torch.channels_last).")
    a("--optimizer_impl", default="auto", choices=OPTIMIZER_IMPLS,
      help="AdamW implementation: auto = PyTorch's choice for the device (foreach on GPUs, for-loop on CPUs), or "
      "force one.")
    a("--cpu_threads", default="auto",
      help="CPU threads of the training step: 'auto' (default) uses every core while the machine is otherwise idle "
      "and gives cores back while other processes need them (ddpm_ext.cpu_threads; off when you set "
      "OMP_NUM_THREADS yourself — `accelerate launch` sets it too, and then it is the most threads used); N: "
      "exactly N threads. Pass N (or OMP_NUM_THREADS outside accelerate launch) for bit-exact reruns on a shared "
      "machine.")
    a("--compile", action="store_true",
      help="torch.compile the UNet (through accelerate's dynamo_backend='inductor'); the first steps compile.")
    a("--seed", type=int, default=0,
      help="Seed of every random choice: weights, data order, t, ε, flips; an integer in [0, 2**32).")
    a("--local_rank", type=int, default=-1,
      help="Set by torch.distributed launchers (accelerate reads LOCAL_RANK itself).")
    # checkpoints, logs, outputs
    a("--output_dir", default="outputs/ddpm-mnist", help="Where the pipeline, sample grids, logs and checkpoints go.")
    a("--overwrite_output_dir", action="store_true",
      help="Start a new run in a folder holding an earlier pipeline or checkpoints (the checkpoints are moved to "
      "<output_dir>/superseded/, never deleted).")
    a("--checkpointing_steps", type=int, default=500, help="Save the full training state every this many steps.")
    a("--checkpoints_total_limit", type=int, default=2,
      help="Keep at most this many checkpoints of this run (diffusers: unlimited; 2 bounds the disk use while a "
      "finite one is always kept).")
    a("--resume_from_checkpoint", default=None,
      help="A checkpoint folder, or 'latest' in --output_dir. Newer checkpoints of the run are moved to "
      "<output_dir>/superseded/.")
    a("--allow_data_change", action="store_true",
      help="Resume on training data other than the checkpoint's (refused otherwise); the change is logged.")
    a("--save_images_steps", type=int, default=0,
      help="Also write a sample grid every this many steps (0: only at the end).")
    a("--save_images_epochs", type=int, default=0,
      help="Also write a sample grid every this many epochs (diffusers: 10; 0: off).")
    a("--save_model_epochs", type=int, default=0,
      help="Also save the pipeline every this many epochs (diffusers: 10; 0: only at the end — checkpoints cover "
      "interruptions).")
    a("--logger", default="none", choices=LOGGERS, help="Log scalars and sample grids to tensorboard or wandb.")
    a("--logging_dir", default="logs",
      help="Log folder: a relative path is inside --output_dir (one that leaves it, such as ../logs, is refused); an "
      "absolute path is used as it is, outside the run's folder.")
    # Hub
    a("--push_to_hub", action="store_true",
      help="Upload the pipeline, a sample grid and a model card to the Hub at the end; the token and the repo are "
      "checked (the repo created) before the first step.")
    a("--hub_model_id", default=None, help="The Hub repo id (default: the --output_dir folder name).")
    a("--hub_private_repo", action="store_true", help="Create the Hub repo as private.")
    a("--hub_push_timeout", type=float, default=DEFAULT_PUSH_TIMEOUT,
      help=f"Seconds the push at the end (and the Hub check before the first step) may take (default "
      f"{DEFAULT_PUSH_TIMEOUT:g}); each request also stops after 60 s without progress. A push past it ends with "
      "the `ddpm-ext push` command that retries it; the trained pipeline stays on disk.")
    a("--hub_license", default=None,
      help="License of the trained model for the model card (default: the built-in data set's, none for your own "
      "data).")
    a("--hub_token", default=None,
      help="Hub token. Prefer HF_TOKEN or `hf auth login`: a token on the command line is visible to other users "
      "and shown by `accelerate launch` when the script fails.")


def add_conditioning_arguments(parser: argparse.ArgumentParser) -> None:
    """`--class_conditional`, `--label_column`, `--class_dropout_prob`, `--guidance_scale` (see
    [`ddpm_ext.training.conditioning`])."""
    a = parser.add_argument
    a("--class_conditional", action="store_true",
      help="Train a class-conditional UNet (num_class_embeds = classes + 1; the last id is the null class) for "
      "classifier-free guidance.")
    a("--label_column", default=None,
      help=f"The column holding the class labels (default: {DEFAULT_LABEL_COLUMN!r}; an image folder's "
      "sub-folders give it).")
    a("--class_dropout_prob", type=float, default=0.1,
      help="Probability of replacing a label by the null class, so the model also learns p(x) (Ho & Salimans 2022).")
    a("--guidance_scale", type=float, default=1.0,
      help="Classifier-free guidance w of the sample grids of a conditional model (one row per class).")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The training script's flags ([`add_arguments`]), checked by [`check_args`].

    A flag argparse refuses (an unknown one, a bad choice) gives argparse's usage error; a flag [`check_args`]
    refuses gives `error: <message>`; both exit with status 2, as `ddpm-ext train` does.
    """
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    return args


# --------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------
def check_args(args: argparse.Namespace) -> None:
    """Check every flag before any model or data is loaded; a `ValueError` naming the flag otherwise.

    Fills in `--local_rank` from `LOCAL_RANK`, the scheduler defaults, and `args.resume` (the checkpoint to resume
    from, or None: [`ddpm_ext.training.resume.plan_resume`]).
    """
    env_rank = int(os.environ.get("LOCAL_RANK", "-1"))
    if env_rank != -1:
        args.local_rank = env_rank
    for name in ("train_batch_size", "eval_batch_size", "num_epochs", "gradient_accumulation_steps",
                 "ddpm_num_inference_steps", "checkpointing_steps", "checkpoints_total_limit"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("max_train_steps", "max_train_samples", "resolution", "ddpm_num_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    for name in ("lr_warmup_steps", "save_images_steps", "save_images_epochs", "save_model_epochs",
                 "dataloader_num_workers"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}")
    args.cpu_threads = parse_cpu_threads(args.cpu_threads, "--cpu_threads")
    check_seed("--seed", args.seed)
    _check_paths(args)
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
    _check_flag_number("autoguidance_guide_fraction", args.autoguidance_guide_fraction, 0, 1,
                       low_open=True, high_open=True)
    if args.resolution is not None and args.resolution > MAX_RESOLUTION:
        raise ValueError(f"--resolution must be <= {MAX_RESOLUTION}, got {args.resolution} (one image alone would "
                         "not fit in memory)")
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise ValueError("give either --dataset_name or --train_data_dir, not both")
    _check_model_flags(args)
    _check_mixed_precision(args.mixed_precision)
    if args.autoguidance_scale > 1 and args.max_train_steps is not None and args.max_train_steps < 2:
        raise ValueError(f"--autoguidance_scale {args.autoguidance_scale:g} needs --max_train_steps >= 2, got "
                         f"{args.max_train_steps}: the guide is the EMA of an earlier step, and a run of one step has "
                         "none before its last, so the guide would equal the final model and w would do nothing")
    if args.timestep_sampling == "importance" and args.snr_gamma is None:
        raise ValueError("--timestep_sampling importance draws t in proportion to the min-SNR-γ weight: it needs "
                         "--snr_gamma (without it every t has the same weight and uniform sampling is already the "
                         "proposal)")
    if args.timestep_sampling == "importance" and args.loss_type != "simple":
        raise ValueError(f"--timestep_sampling importance needs --loss_type simple, got {args.loss_type!r} (the "
                         "proposal follows the min-SNR-γ weight of L_simple, not L_vlb's terms)")
    if args.loss_type == "hybrid" and args.variance_type not in (None, "learned_range"):
        raise ValueError("--loss_type hybrid needs --variance_type learned_range (the variance it learns)")
    if args.logger != "none" and not _importable(args.logger):
        raise ValueError(f"--logger {args.logger} needs the {args.logger} package: pip install {args.logger}")
    if args.enable_xformers_memory_efficient_attention and not _importable("xformers"):
        raise ValueError("--enable_xformers_memory_efficient_attention needs xformers, which is not installed "
                         "(pip install xformers; it needs a GPU)")
    if args.push_to_hub:  # before any work: a bad id would otherwise be found by the push, after training
        check_push_timeout(args.hub_push_timeout, "--hub_push_timeout")
        if args.hub_model_id is not None:
            check_repo_id(args.hub_model_id, "--hub_model_id")
        else:
            try:
                check_repo_id(Path(args.output_dir).name, "--hub_model_id")
            except ValueError:
                raise ValueError(f"--push_to_hub without --hub_model_id pushes to the --output_dir folder's name "
                                 f"{Path(args.output_dir).name!r}, which is not a Hub repo id (1 to 96 of A-Z a-z "
                                 "0-9 - _ .); give --hub_model_id 'name' or 'org/name'") from None
    if args.hub_token is not None:
        warnings.warn("--hub_token on the command line is visible to other users and is printed by `accelerate "
                      "launch` if the script fails; prefer HF_TOKEN or `hf auth login`.", stacklevel=2)
    check_conditioning_args(args)
    check_output_dir(args.output_dir)
    _check_sizes_before_loading(args)
    args.resume = plan_resume(args)


def _check_model_flags(args: argparse.Namespace) -> None:
    """The scheduler flags (refused with a pretrained pipeline, else defaulted) and the UNet preset's flags; with a
    pretrained pipeline, --model_config is refused and a data flag is needed."""
    if args.pretrained_model_name_or_path:
        given = [f"--{k}" for k in SCHEDULER_FLAGS if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} cannot apply to --pretrained_model_name_or_path: fine-tuning keeps "
                             "the pretrained scheduler, whose schedule the model learned; leave them out")
        if args.model_config is not None:
            raise ValueError(f"--model_config {args.model_config} cannot apply to --pretrained_model_name_or_path "
                             f"{args.pretrained_model_name_or_path}: fine-tuning keeps the pretrained UNet; give one "
                             "of the two")
        if args.dataset_name is None and args.train_data_dir is None:
            raise ValueError(f"--pretrained_model_name_or_path {args.pretrained_model_name_or_path} needs the data to "
                             "fine-tune on: give --train_data_dir (a folder of images or a save_to_disk folder) or "
                             f"--dataset_name (a built-in data set {sorted(BUILTIN_DATASETS)}, a Hub data set or a "
                             "local folder); the built-in default mnist-5k applies only to training from scratch")
        return
    for k, default in SCHEDULER_FLAGS.items():
        if getattr(args, k) is None:
            setattr(args, k, default)
    if args.ddpm_num_inference_steps > args.ddpm_num_steps:
        raise ValueError(f"--ddpm_num_inference_steps ({args.ddpm_num_inference_steps}) must not exceed "
                         f"--ddpm_num_steps ({args.ddpm_num_steps})")
    if args.model_config is None:
        return  # picked from the data's channels once it is loaded (ddpm_ext.training.setup.pick_model_config)
    if args.model_config not in UNET_PRESETS and not os.path.isfile(args.model_config):
        raise ValueError(f"--model_config must be one of {sorted(UNET_PRESETS)} or an existing JSON file, got "
                         f"{args.model_config!r}")
    try:
        config = unet_config(args.model_config)  # its sizes checked (models.unet_presets.check_unet_config)
    except ValueError as e:
        raise ValueError(f"--model_config: {e}") from None
    if args.resolution is not None:
        check_resolution(args.resolution, config)


def check_conditioning_args(args: argparse.Namespace) -> None:
    """`ValueError` for bad conditioning flags (the script turns it into a usage error, exit 2)."""
    if not 0.0 <= args.class_dropout_prob < 1.0:
        raise ValueError(f"--class_dropout_prob must be in [0, 1), got {args.class_dropout_prob}")
    if not (np.isfinite(args.guidance_scale) and args.guidance_scale >= 0):
        raise ValueError(f"--guidance_scale must be a finite number >= 0, got {args.guidance_scale}")
    if not args.class_conditional:
        for flag, value, default in (("label_column", args.label_column, None),
                                     ("class_dropout_prob", args.class_dropout_prob, 0.1),
                                     ("guidance_scale", args.guidance_scale, 1.0)):
            if value != default:
                raise ValueError(f"--{flag} needs --class_conditional")


def _check_flag_number(name: str, value: Any, low: float, high: float | None = None, *, low_open: bool = False,
                       high_open: bool = False) -> None:
    """A finite `--name` in its range (validation.check_number; an open upper end is checked here)."""
    check_number(f"--{name}", value, low, None if high_open else high, low_open=low_open)
    if high_open and value >= high:
        raise ValueError(f"`--{name}` must be a number in {'(' if low_open else '['}{low}, {high}), got {value!r}.")


# path flags that an empty string would silently turn into the current folder (or nothing)
PATH_FLAGS = ("output_dir", "logging_dir", "cache_dir", "train_data_dir", "dataset_name", "model_config",
              "pretrained_model_name_or_path", "resume_from_checkpoint")


def _check_paths(args: argparse.Namespace) -> None:
    """Path flags: none empty; `--logging_dir` relative stays inside `--output_dir` (an absolute one is the user's)."""
    for name in PATH_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            check_path(f"--{name}", value)
    logs = Path(args.logging_dir)
    if not logs.is_absolute():
        out = Path(os.path.abspath(args.output_dir))
        if not Path(os.path.abspath(out / logs)).is_relative_to(out):
            raise ValueError(f"--logging_dir {args.logging_dir!r} leaves --output_dir {args.output_dir!r}: a relative "
                             "--logging_dir is a folder inside --output_dir (give an absolute path for logs elsewhere)")


def has_accelerator() -> bool:
    """Whether accelerate will train on a GPU (CUDA, MPS or XPU) rather than the CPU."""
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def _check_mixed_precision(mode: str) -> None:
    """fp16 without a GPU is refused: accelerate would train in fp32 without a word while the card says fp16. bf16
    is kept: on a CPU accelerate runs the model under torch.autocast(cpu, bfloat16)."""
    if mode == "fp16" and not has_accelerator():
        raise ValueError("--mixed_precision fp16 needs a GPU, and this machine has none (accelerate would train in "
                         "fp32 and the model card would say fp16); use --mixed_precision bf16 (runs on CPUs) or no")


def _run_device(args: argparse.Namespace) -> torch.device:
    """The device this process will train on (as accelerate picks it), for the memory checks before it exists."""
    if torch.cuda.is_available():
        return torch.device("cuda", max(args.local_rank, 0))
    return torch.device("cpu")


def check_sizes(args: argparse.Namespace, config: dict[str, Any], device: torch.device | str) -> None:
    """Refuse a batch whose memory cannot fit `device` ([`ddpm_ext.memory`]): the sample grids' `--eval_batch_size`
    images, and `--train_batch_size` (a training step needs at least its forward pass's activations; gradients and
    the optimizer come on top)."""
    h, w = _config_hw(config)
    for flag, when in (("eval_batch_size", "the sample grid"), ("train_batch_size", "at least, a training step")):
        batch = getattr(args, flag)
        factor = 2 if flag == "eval_batch_size" and getattr(args, "class_conditional", False) else 1
        check_fits(sampling_bytes(config, batch, unet_batch_factor=factor), device,
                   f"--{flag} {batch} ({when} of {h}x{w} images)", f"lower --{flag}")


def _config_hw(config: dict[str, Any]) -> tuple[int, int]:
    size = config.get("sample_size", 32)
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[-1]))


def _check_sizes_before_loading(args: argparse.Namespace) -> None:
    """The memory checks that need no data: the schedule's T, and the batches where the UNet config is known now (a
    preset or JSON file, or both default presets; a pretrained folder's own). Hub models are checked once built."""
    if args.ddpm_num_steps is not None:
        check_fits(schedule_bytes(args.ddpm_num_steps), "cpu", f"--ddpm_num_steps {args.ddpm_num_steps}",
                   "DDPM uses 1000")
    size = {"sample_size": args.resolution} if args.resolution is not None else {}
    if args.pretrained_model_name_or_path:
        path = Path(args.pretrained_model_name_or_path) / "unet" / "config.json"
        configs = [{**check_unet_config(read_json(path), str(path)), **size}] if path.is_file() else []
    elif args.model_config is not None:
        configs = [unet_config(args.model_config, **size)]
    else:  # picked from the data's channels later: the smaller of the two candidates (never refuse what may fit)
        configs = [min((unet_config(p, **size) for p in MODEL_CONFIG_BY_CHANNELS.values()),
                       key=lambda c: sampling_bytes(c, 1))]
    for config in configs:
        check_sizes(args, config, _run_device(args))


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_resolution(resolution: int, config: dict[str, Any]) -> None:
    """`resolution` must be divisible by the UNet's total downsampling, 2^(number of down blocks − 1)."""
    factor = 2 ** (len(config.get("down_block_types", ())) - 1)
    if resolution % factor:
        raise ValueError(f"--resolution must be a multiple of {factor} (each of the UNet's "
                         f"{len(config['down_block_types']) - 1} downsampling steps halves the image), got "
                         f"{resolution}")


def check_output_dir(output_dir: str) -> None:
    """`--output_dir` must be a folder, or creatable, and writable."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file, not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--output_dir {output_dir} is not writable ({existing} is read-only)")
