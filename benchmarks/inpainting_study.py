"""Inpainting study: does a completion of half a held-out digit read as the original digit?

For a trained mnist-5k pipeline, held-out digits (the "test" split of `ddpm_ext.data.load_mnist_5k`, never seen in
training) get their top or left half masked; each method fills it in, and a digit classifier trained on the train
split (`ddpm_ext.evaluation.digit_classifier.DigitClassifier`) labels the completion. Reported per mask and method:
the fraction labelled as the original digit, and the wall time. Methods, all on the same UNet, steps and images:

- `ddpm_ext r=1`: [`DDPMExtInpaintPipeline`] without resampling (`jump_n_sample=1`), the pipeline's own scheduler;
- `ddpm_ext r=10`: the same with RePaint's resampling (`jump_length=10`, `jump_n_sample=10`);
- `diffusers r=1`, `diffusers r=10`: diffusers' (deprecated) `RePaintPipeline` + `RePaintScheduler` with the same
  β's (η = 1: DDPM with σ² = β̃); only where it runs: ε-prediction UNets without a learned variance, and a step count
  that divides T (its timesteps are multiples of T // S).

Reference rows: the classifier on the unmasked digits (the ceiling) and on the masked digits with the hole black
(the background; what the half alone says). Seeds: one generator per image (ddpm_ext), one per batch (diffusers
takes a single generator).

    python benchmarks/inpainting_study.py outputs/mnist --num_images 200 --steps 250 --device cuda
    python benchmarks/inpainting_study.py outputs/mnist --num_images 50 --steps 100 --masks left_half

`--classifier module:attribute` names a zero-argument factory of the judge (an object with `predict(images)`,
images (B, 1, H, W) float in [-1, 1], returning labels); the default is the package's digit classifier.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the package, without installing

from ddpm_ext import DDPMExtPipeline  # noqa: E402
from ddpm_ext.data import load_mnist_5k  # noqa: E402
from ddpm_ext.files import atomic_write_text  # noqa: E402
from ddpm_ext.images import from_unit  # noqa: E402
from ddpm_ext.pipelines.pipeline_ddpm_ext_inpaint import DDPMExtInpaintPipeline, make_mask  # noqa: E402
from ddpm_ext.seeding import image_generators  # noqa: E402

DEFAULT_CLASSIFIER = "ddpm_ext.evaluation.digit_classifier:DigitClassifier.pretrained"
MASKS = ("top_half", "left_half")


@dataclass
class StudyRow:
    """One (mask, method) cell: `correct` of `n` completions labelled as the original digit, in `seconds`."""

    mask: str
    method: str
    n: int
    correct: int
    seconds: float | None
    note: str = ""

    @property
    def accuracy(self) -> float:
        return self.correct / self.n


def load_classifier(spec: str) -> Callable[[torch.Tensor], Any]:
    """`module:attr.attr` -> the object that factory returns (called with no arguments)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"--classifier must be 'module:attribute', got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj()


def held_out_digits(num_images: int, seed: int) -> tuple[list, np.ndarray]:
    """`num_images` PIL digits of the mnist-5k test split (a seeded random subset) and their labels."""
    ds = load_mnist_5k(split="test")
    if not 1 <= num_images <= len(ds):
        raise SystemExit(f"--num_images must be in [1, {len(ds)}] (the test split), got {num_images}")
    rows = np.random.default_rng(seed).permutation(len(ds))[:num_images].tolist()
    sub = ds.select(rows)
    return list(sub["image"]), np.asarray(sub["label"])


def _timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def _diffusers_repaint(pipe, steps: int) -> tuple[Any, str]:
    """diffusers' RePaintPipeline on the same UNet and β's, or None and the reason it cannot run."""
    try:
        from diffusers import RePaintPipeline, RePaintScheduler  # noqa: PLC0415 optional: not in every diffusers (below)
    except ImportError as e:  # removed in a later diffusers
        return None, f"diffusers has no RePaintPipeline here ({e})"
    cfg = pipe.scheduler.config
    if cfg.prediction_type != "epsilon":
        return None, f"RePaintScheduler assumes ε-prediction; the model predicts {cfg.prediction_type!r}"
    if pipe.unet.config.out_channels != pipe.unet.config.in_channels:
        return None, "RePaintScheduler cannot use a learned variance (the UNet has 2C output channels)"
    T = cfg.num_train_timesteps
    if T % steps:
        return None, f"RePaintScheduler's timesteps are multiples of T // S; S = {steps} does not divide T = {T}"
    betas = np.asarray(pipe.scheduler._betas64, dtype=np.float32)  # the same β's, whatever the schedule's name
    sched = RePaintScheduler(num_train_timesteps=T, trained_betas=betas, eta=1.0, clip_sample=bool(cfg.clip_sample))
    theirs = RePaintPipeline(unet=pipe.unet, scheduler=sched)
    theirs.set_progress_bar_config(disable=True)
    return theirs, ""


def run_study(
    pipe,
    images: Sequence,
    labels: np.ndarray,
    predict: Callable[[torch.Tensor], Any],
    *,
    masks: Sequence[str] = MASKS,
    steps: int = 250,
    jump_length: int = 10,
    jump_n_samples: Sequence[int] = (1, 10),
    batch_size: int = 50,
    seed: int = 0,
    with_diffusers: bool = True,
) -> list[StudyRow]:
    """Inpaint every image under every mask with every method; return one [`StudyRow`] per (mask, method).

    Args:
        pipe ([`DDPMExtPipeline`] or [`DDPMExtInpaintPipeline`]): the trained pipeline (on its device).
        images (`Sequence[PIL.Image.Image]`): the held-out digits; prepared as the training transform does.
        labels (`np.ndarray`): their digits.
        predict (`Callable`): images (B, 1, H, W) float in [-1, 1] -> labels (B,).
    """
    inpaint = DDPMExtInpaintPipeline.from_pipe(pipe) if not isinstance(pipe, DDPMExtInpaintPipeline) else pipe
    inpaint.set_progress_bar_config(disable=True)
    device = inpaint._execution_device
    x0 = inpaint.preprocess(list(images)).to(device)  # (N, 1, H, W) in [-1, 1], the model's resolution
    n, h, w = x0.shape[0], x0.shape[-2], x0.shape[-1]
    batches = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]

    def score(x: torch.Tensor) -> int:
        got = np.asarray(predict(x.float().cpu())).reshape(-1)
        return int((got == labels).sum())

    theirs, why_not = _diffusers_repaint(inpaint, steps) if with_diffusers else (None, "not asked (--no_diffusers)")
    rows = [StudyRow("none", "unmasked digits (ceiling)", n, score(x0), None)]
    for kind in masks:
        fill = make_mask(kind, h, w).to(device).bool()  # (1, 1, H, W), True = fill
        rows.append(StudyRow(kind, "masked, hole black (floor)", n, score(torch.where(fill, -1.0, x0)), None))
        for r in jump_n_samples:
            def ours() -> torch.Tensor:
                outs = []
                for b in batches:
                    gens = image_generators(seed, b.start, b.stop - b.start)
                    out = inpaint(x0[b], fill.float(), num_inference_steps=steps, jump_length=jump_length,
                                  jump_n_sample=r, generator=gens, output_type="pt")
                    outs.append(from_unit(out.images))
                return torch.cat(outs)

            done, secs = _timed(ours, device)
            rows.append(StudyRow(kind, f"ddpm_ext r={r}", n, score(done), secs))
        for r in jump_n_samples:
            if theirs is None:
                rows.append(StudyRow(kind, f"diffusers RePaint r={r}", n, 0, None, why_not))
                continue

            def diffusers_repaint() -> torch.Tensor:
                outs = []
                for k, b in enumerate(batches):
                    keep = (~fill).float().expand(b.stop - b.start, -1, -1, -1)  # RePaintPipeline: 1 = keep
                    out = theirs(x0[b], keep, num_inference_steps=steps, jump_length=jump_length, jump_n_sample=r,
                                 eta=1.0, generator=torch.Generator().manual_seed(seed + k), output_type="np")
                    outs.append(from_unit(torch.from_numpy(out.images).permute(0, 3, 1, 2)))
                return torch.cat(outs)

            done, secs = _timed(diffusers_repaint, device)
            rows.append(StudyRow(kind, f"diffusers RePaint r={r}", n, score(done), secs))
    return rows


def markdown(rows: Sequence[StudyRow]) -> str:
    lines = ["| mask | method | labelled as the original digit | wall time |", "|---|---|---|---|"]
    for r in rows:
        if r.note:
            lines.append(f"| {r.mask} | {r.method} | not run: {r.note} | |")
            continue
        secs = "" if r.seconds is None else f"{r.seconds:.1f} s ({r.seconds / r.n * 1e3:.0f} ms/image)"
        lines.append(f"| {r.mask} | {r.method} | {r.accuracy:.1%} ({r.correct}/{r.n}) | {secs} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("pipeline", help="A pipeline trained on mnist-5k (folder or Hub repo id).")
    p.add_argument("--num_images", type=int, default=200, help="Held-out digits (of 500; default: 200).")
    p.add_argument("--masks", nargs="+", choices=MASKS, default=list(MASKS), help="Halves to mask (default: both).")
    p.add_argument("--steps", type=int, default=250, help="Steps of the respaced chain (default: 250, RePaint's).")
    p.add_argument("--jump_length", type=int, default=10, help="RePaint's j (default: 10).")
    p.add_argument("--jump_n_samples", type=int, nargs="+", default=[1, 10], help="RePaint's r values (default: 1 10).")
    p.add_argument("--batch_size", type=int, default=50, help="Images per pipeline call (default: 50).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the subset and of the generators (default: 0).")
    p.add_argument("--device", default="cpu", help="Torch device (default: cpu).")
    p.add_argument("--no_diffusers", action="store_true", help="Skip diffusers' RePaintPipeline.")
    p.add_argument("--classifier", default=DEFAULT_CLASSIFIER,
                   help=f"Judge factory 'module:attr' (default: {DEFAULT_CLASSIFIER}).")
    p.add_argument("--output", default=None, help="Also write the rows as JSON here.")
    args = p.parse_args(argv)
    for name in ("num_images", "steps", "jump_length", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if min(args.jump_n_samples) < 1:
        p.error(f"--jump_n_samples must all be >= 1, got {args.jump_n_samples}")
    return args


def main(argv: Sequence[str] | None = None, classifier: Any = None) -> list[StudyRow]:
    """Run the study from the command line; `classifier` (an object with `predict`) replaces `--classifier`."""
    args = parse_args(argv)
    judge = classifier if classifier is not None else load_classifier(args.classifier)
    pipe = DDPMExtPipeline.from_pretrained(args.pipeline).to(args.device)
    images, labels = held_out_digits(args.num_images, args.seed)
    rows = run_study(
        pipe, images, labels, judge.predict, masks=args.masks, steps=args.steps, jump_length=args.jump_length,
        jump_n_samples=args.jump_n_samples, batch_size=args.batch_size, seed=args.seed,
        with_diffusers=not args.no_diffusers,
    )
    cfg = pipe.scheduler.config
    print(f"pipeline {args.pipeline}: T = {cfg.num_train_timesteps}, {type(pipe.scheduler).__name__} "
          f"({cfg.beta_schedule}, {getattr(cfg, 'variance_type', '-')}); {args.steps} steps, j = {args.jump_length}; "
          f"{args.num_images} held-out digits, seed {args.seed}, device {args.device}")
    print(markdown(rows))
    if args.output:
        atomic_write_text(args.output, json.dumps([{**asdict(r), "accuracy": r.accuracy} for r in rows], indent=2))
    return rows


if __name__ == "__main__":
    main()
