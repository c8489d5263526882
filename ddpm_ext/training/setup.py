"""What a run is built from: the accelerator, data, model and scheduler (shaped by the data), loader, class labels,
step plan and resume identity, then the optimizer, learning-rate schedule and EMA prepared with accelerate.

[`build_run`] builds and checks everything the flags describe (every bad path, repo, checkpoint or data set
surfaces there as a `ValueError`, before anything is written); [`prepare_run`] then readies the output folder and
prepares the optimisation state; the loop ([`ddpm_ext.training.train.Trainer`]) only trains what they return.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from ..data import DEFAULT_DATASET, build_transform, collate_fn, infer_channels, load_image_dataset, preprocess_dataset
from ..losses import timestep_proposal
from ..models.unet_presets import build_unet, unet_config
from ..pipelines.checkpoint_io import square_sample_size
from ..pipelines.pipeline_ddpm_ext import DDPMExtPipeline
from ..schedulers.scheduling_common import SAMPLING_TIMESTEP_SPACING
from ..schedulers.scheduling_ddpm_ext import DDPMExtScheduler
from .conditioning import Conditioning, setup_conditioning
from .flags import MODEL_CONFIG_BY_CHANNELS, check_resolution, check_sizes, has_accelerator
from .resume import RunIdentity, check_resume, prepare_checkpoints

__all__ = [
    "EpochSampler",
    "RunParts",
    "build_accelerator",
    "build_data",
    "build_ema",
    "build_loader",
    "build_model_and_scheduler",
    "build_optimizer",
    "build_run",
    "check_channels",
    "guide_step",
    "load_data",
    "pick_model_config",
    "planned_steps",
    "prepare_run",
]


@dataclass
class RunParts:
    """What a run is made of: built and checked from the flags by [`build_run`], its model, loader and
    optimisation state then prepared with accelerate by [`prepare_run`] (the fields left None until then)."""

    accelerator: Accelerator
    unet: torch.nn.Module
    scheduler: DDPMExtScheduler
    transform: Any
    loader: torch.utils.data.DataLoader
    conditioning: Conditioning | None  # class labels and their dropout (--class_conditional), else None
    max_steps: int
    guide_step: int | None  # the step whose EMA weights become the autoguidance guide, or None
    identity: RunIdentity
    num_train_images: int
    resolution: int
    optimizer: torch.optim.Optimizer | None = None
    lr_scheduler: Any = None
    plain_unet: torch.nn.Module | None = None  # the model without DDP/compile wrapper
    ema: EMAModel | None = None
    timestep_proposal: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------------
# The run, built and checked
# --------------------------------------------------------------------------------------------------
def build_run(args: argparse.Namespace, accelerator: Accelerator) -> RunParts:
    """Data, model, class labels, the step plan and the checkpoint to resume, all checked before anything is
    written: every bad path, repo, checkpoint or data set raises a `ValueError` here (a `CheckpointError` is one).

    The data comes first: its channels pick the preset when no model is named ([`pick_model_config`], which sets
    `args.model_config` before the resume check compares it) and must match the model's ([`check_channels`]).
    """
    dataset = load_data(args)
    channels = infer_channels(dataset, args.image_column)
    pick_model_config(args, channels)
    unet, scheduler = build_model_and_scheduler(args)
    check_channels(args, unet.config.in_channels, channels)
    check_sizes(args, dict(unet.config), accelerator.device)  # the batches of the model built (a Hub model too)
    resolution = square_sample_size(unet, "Training images")
    transform, train_data = build_data(args, dataset, resolution, channels)
    unet, conditioning = setup_conditioning(args, dataset, unet)  # (unet, None) without --class_conditional
    if conditioning is not None:
        train_data = conditioning.attach(train_data)  # rows gain "class_label"
    loader = build_loader(args, train_data)
    max_steps = planned_steps(args, len(loader), accelerator.num_processes)
    guide = guide_step(args, max_steps)
    identity = check_resume(args, unet_config=dict(unet.config), resolution=resolution,
                            num_processes=accelerator.num_processes, guide_step=guide, max_steps=max_steps)
    return RunParts(accelerator, unet, scheduler, transform, loader, conditioning, max_steps, guide, identity,
                    num_train_images=len(dataset), resolution=resolution)


def prepare_run(args: argparse.Namespace, parts: RunParts) -> RunParts:
    """`parts` ready to train: the optimizer, learning-rate schedule and EMA built, model and loader prepared with
    accelerate; then the output folder made and its checkpoints sorted out ([`prepare_checkpoints`], main process)."""
    accelerator, unet = parts.accelerator, parts.unet
    if args.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()
    if args.channels_last:
        unet.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(unet.parameters(), args)
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=parts.max_steps * accelerator.num_processes,
    )
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, parts.loader, lr_scheduler)
    plain_unet = accelerator.unwrap_model(unet, keep_torch_compile=False)  # no DDP/compile wrapper
    prepared = replace(
        parts, unet=unet, loader=loader, optimizer=optimizer, lr_scheduler=lr_scheduler, plain_unet=plain_unet,
        ema=build_ema(args, plain_unet),
        timestep_proposal=(timestep_proposal(parts.scheduler, args.snr_gamma)
                           if args.timestep_sampling == "importance" else None),
    )
    if accelerator.is_main_process:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        prepare_checkpoints(args, parts.identity.run_id, accelerator)
    accelerator.wait_for_everyone()
    return prepared


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------
def build_accelerator(args: argparse.Namespace) -> Accelerator:
    """The `Accelerator` of the flags: accumulation, precision, compilation, logging into `--output_dir`."""
    output_dir = Path(args.output_dir)
    return Accelerator(
        # Without any accelerator, `accelerate launch --multi_gpu` processes must be told they are CPU ranks,
        # or each would train alone; with cpu=True accelerate joins them with gloo (DistributedType.MULTI_CPU).
        cpu=not has_accelerator(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        dynamo_backend="inductor" if args.compile else None,
        log_with=None if args.logger == "none" else args.logger,
        project_config=ProjectConfiguration(project_dir=str(output_dir),
                                            logging_dir=str(output_dir / args.logging_dir)),
    )


def load_data(args: argparse.Namespace):
    """The training data set of the data flags ([`ddpm_ext.data.load_image_dataset`]: what a path is, and the
    built-in default when none is given)."""
    return load_image_dataset(
        args.dataset_name, args.train_data_dir, config_name=args.dataset_config_name, split=args.dataset_split,
        cache_dir=args.cache_dir, image_column=args.image_column, max_train_samples=args.max_train_samples,
        seed=args.seed,
    )


def pick_model_config(args: argparse.Namespace, channels: int) -> None:
    """Without --model_config and --pretrained_model_name_or_path, set `args.model_config` to the preset of the
    data's `channels` ([`MODEL_CONFIG_BY_CHANNELS`]: mnist-small for grayscale, rgb32-small for colour), and check
    --resolution against it."""
    if args.model_config is not None or args.pretrained_model_name_or_path:
        return
    args.model_config = MODEL_CONFIG_BY_CHANNELS[channels]
    args.model_config_picked = True  # the run's summary says the preset came from the data
    if args.resolution is not None:
        check_resolution(args.resolution, unet_config(args.model_config))


def check_channels(args: argparse.Namespace, model_channels: int, data_channels: int) -> None:
    """The UNet's `in_channels` must be the data's channels: the images are never converted to fit the model.

    Raises:
        ValueError: naming both numbers, the model flag and what to give instead.
    """
    if model_channels == data_channels:
        return
    data = (f"--train_data_dir {args.train_data_dir}" if args.train_data_dir is not None
            else f"--dataset_name {args.dataset_name or DEFAULT_DATASET}")
    kind = {1: "grayscale", 3: "colour"}
    data_kind = kind.get(data_channels, f"{data_channels}-channel")
    fit = MODEL_CONFIG_BY_CHANNELS.get(data_channels)
    if args.pretrained_model_name_or_path:
        raise ValueError(
            f"--pretrained_model_name_or_path {args.pretrained_model_name_or_path} has a UNet with in_channels "
            f"{model_channels}, but the data ({data}) has {data_channels} channels ({data_kind}); fine-tune it on "
            f"{kind.get(model_channels, f'{model_channels}-channel')} data, or train a new model without "
            f"--pretrained_model_name_or_path (the preset is then picked from the data: {fit})"
        )
    raise ValueError(
        f"--model_config {args.model_config} has in_channels {model_channels}, but the data ({data}) has "
        f"{data_channels} channels ({data_kind}); give --model_config {fit} (in_channels {data_channels}) or a "
        f"config JSON with in_channels {data_channels}, or leave --model_config out to pick it from the data"
    )


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


def build_data(args: argparse.Namespace, dataset: Any, resolution: int, channels: int):
    """The seeded transform of `dataset` ([`load_data`]) and the preprocessed (transformed on access) training
    data."""
    transform = build_transform(resolution, center_crop=args.center_crop, random_flip=args.random_flip,
                                channels=channels, seed=args.seed, preserve_precision=args.preserve_input_precision)
    return transform, preprocess_dataset(dataset, transform, args.image_column)


def build_loader(args: argparse.Namespace, train_data: Any) -> torch.utils.data.DataLoader:
    """Batches of `--train_batch_size` in a seeded order per epoch ([`EpochSampler`]); the last partial batch is
    dropped unless the data is smaller than one batch."""
    return torch.utils.data.DataLoader(
        train_data, batch_size=args.train_batch_size, sampler=EpochSampler(len(train_data), args.seed),
        num_workers=args.dataloader_num_workers, collate_fn=collate_fn,
        drop_last=len(train_data) >= args.train_batch_size,
    )


def planned_steps(args: argparse.Namespace, num_batches: int, num_processes: int) -> int:
    """The run's number of optimisation steps: --max_train_steps, or --num_epochs of `num_batches` batches."""
    per_epoch = max(1, math.ceil(num_batches / num_processes / args.gradient_accumulation_steps))
    return args.max_train_steps or args.num_epochs * per_epoch


def guide_step(args: argparse.Namespace, max_steps: int) -> int | None:
    """The step whose EMA weights become the autoguidance guide (--autoguidance_guide_fraction of `max_steps`,
    at least 1 and before the last), or None without --autoguidance_scale > 1."""
    if args.autoguidance_scale <= 1:
        return None
    if max_steps < 2:  # the guide would be the final model itself: w would change nothing
        raise ValueError(f"--autoguidance_scale {args.autoguidance_scale:g} needs a run of >= 2 optimisation steps, "
                         f"got {max_steps}: the guide is the EMA of an earlier step, and a one-step run has none "
                         "before its last, so the guide would equal the final model and w would do nothing")
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
