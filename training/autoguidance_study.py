"""Autoguidance study (issue 15): which earlier EMA weights of a run guide it best, and at which scale w.

Autoguidance (Karras et al. 2024) samples with D_guide + w (D − D_guide), the guide a weaker version of the model.
The training script's guide (`--autoguidance_scale`, `--autoguidance_guide_fraction`) is the run's own EMA weights
at a fraction of its steps. This study takes one run that kept a checkpoint every `--checkpoint_every` steps (so
every candidate guide is on disk), installs each checkpoint's EMA weights as the guide in turn, and scores
`--num_samples` samples of `--sampler` at each w with `ddpm-ext evaluate`'s machinery (the same x_T for every row):
the digit judge's classifier IS with its bootstrap spread, the digits present, FID/KID on the offline features,
precision, recall, density and coverage. w = 1 (the UNet alone) is scored once.

Without a `pipeline` argument the run is trained first: the unconditional recipe's flags (`recipe_study.UNCONDITIONAL`,
on which docs/results/guidance.md's study was measured) plus
`--checkpointing_steps <checkpoint_every>`, on `--threads` threads, into `<output_dir>/run`.

Rows go to `<output_dir>/autoguidance_study.json` as they are scored (atomically) and the table to
`autoguidance_study.md`; run the same command again and the rows already there are skipped.

    # the study of docs/results/guidance.md (about 15 min of training and 20 min of scoring on one core of a 2-core CPU)
    python training/autoguidance_study.py --output_dir outputs/autoguidance-study \\
        --guide_steps 300 500 700 900 1100 1300 --scales 1 2 3 4 6
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from diffusers import UNet2DModel

from ddpm_ext.evaluation import evaluate  # its steps looked up at call time, as tests replace them
from ddpm_ext.evaluation.config import EvaluationConfig
from ddpm_ext.evaluation.samplers import parse_sampler
from ddpm_ext.files import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_study import UNCONDITIONAL, _f, _run, merge_flags, settings_conflict, train_command  # noqa: E402 (the study's recipe, runner, format)

JSON_NAME, MD_NAME = "autoguidance_study.json", "autoguidance_study.md"
# settings that must be the same for every row of one study file
SETTINGS = ("pipeline", "num_samples", "sampler", "seed", "kid_subset_size", "dataset", "max_real_images")
METRICS = ("classifier_is", "classifier_is_std", "classes_present", "fid", "kid_mean", "precision", "recall",
           "density", "coverage", "mean_pixel", "sampling_time_s")  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("pipeline", nargs="?", default=None,
      help="A finished training run with checkpoint-<step>/ folders (default: train <output_dir>/run).")
    a("--output_dir", required=True,
      help="Where autoguidance_study.json / .md (and the trained run, without a pipeline) go.")
    a("--guide_steps", nargs="+", type=int, required=True, metavar="STEP",
      help="Checkpoint steps whose EMA weights are tried as the guide.")
    a("--scales", nargs="+", type=float, default=[1.0, 2.0, 3.0, 4.0, 6.0], metavar="W",
      help="Autoguidance scales w >= 1 (default: 1 2 3 4 6).")
    a("--checkpoint_every", type=int, default=100,
      help="Checkpoint interval of the trained run (without a pipeline; default 100).")
    a("--threads", type=int, default=1, help="CPU threads of the training run and of the scoring (default: 1).")
    a("--num_samples", type=int, default=256, help="Samples scored per row (default: 256).")
    a("--sampler", default="ddpm:50",
      help="`ddpm-ext evaluate` sampler spec, without :ag= (default: ddpm:50, the quick start's).")
    a("--seed", type=int, default=0, help="Seed of the scored samples and of KID (default: 0).")
    a("--kid_subset_size", type=int, default=100, help="KID subset size (default: 100).")
    a("--dataset", default="mnist-5k", help="Real images for FID/KID (default: mnist-5k, its 500 held-out digits).")
    a("--max_real_images", type=int, default=None,
      help="Use only this many real images (default: all of the held-out split).")
    a("--stats_cache_dir", default=None, help="Cache of the real images' features (default: evaluate's).")
    args = p.parse_intermixed_args(argv)  # the optional pipeline path may come after the flags
    for name in ("threads", "num_samples", "kid_subset_size", "checkpoint_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if any(s < 1 for s in args.guide_steps):
        p.error(f"--guide_steps must be checkpoint steps >= 1, got {args.guide_steps}")
    if any(not math.isfinite(w) or w < 1 for w in args.scales):
        p.error(f"--scales must be numbers >= 1 (1: no guidance), got {args.scales}")
    if ":ag=" in args.sampler:
        p.error(f"--sampler {args.sampler!r} must not set ag=: the study sets the scale (--scales)")
    args.guide_steps = sorted(set(args.guide_steps))
    args.scales = sorted(set(args.scales))
    return args


def guide_folder(run: Path, step: int) -> Path:
    """`run/checkpoint-<step>`'s EMA weights (its plain weights for a run without EMA)."""
    ckpt = run / f"checkpoint-{step}"
    for sub in ("unet_ema", "unet"):
        if (ckpt / sub / "config.json").is_file():
            return ckpt / sub
    found = sorted(int(c.name.split("-")[1]) for c in run.glob("checkpoint-*") if c.name.split("-")[1].isdigit())
    raise ValueError(f"--guide_steps {step}: {run} has no checkpoint-{step} with weights; "
                     f"its checkpoints are at steps {found}")


def markdown_table(study: dict[str, Any]) -> str:
    s = study["settings"]
    lines = [
        "## Autoguidance study",
        "",
        f"Pipeline `{Path(s['pipeline']).name}` ({study['global_step']} steps); guide = the run's EMA weights at the "
        f"step shown; {s['num_samples']} samples of `{s['sampler']}` (seed {s['seed']}) per row against "
        f"{s['dataset']}'s held-out digits. Classifier IS ± its bootstrap spread; FID/KID on EfficientNet-Lite0 "
        "features.",
        "",
        "| guide step | fraction | w | classifier IS | digits | FID | KID ×10³ | precision | recall | density | "
        "coverage | sampling s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(study["rows"], key=lambda r: (r["guide_step"] or 0, r["w"])):
        step = "– (no guide)" if r["guide_step"] is None else str(r["guide_step"])
        frac = "–" if r["guide_fraction"] is None else f"{r['guide_fraction']:.2f}"
        lines.append(
            f"| {step} | {frac} | {r['w']:g} | {_f(r['classifier_is'], '.2f')} ± {_f(r['classifier_is_std'], '.2f')} | "
            f"{r['classes_present']} | {_f(r['fid'], '.1f')} | {_f(1e3 * r['kid_mean'], '.1f')} | "
            f"{_f(r['precision'], '.3f')} | {_f(r['recall'], '.3f')} | {_f(r['density'], '.3f')} | "
            f"{_f(r['coverage'], '.3f')} | {_f(r['sampling_time_s'], '.0f')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.output_dir).resolve()
    run_dir = Path(args.pipeline).resolve() if args.pipeline else out / "run"
    if args.pipeline is not None:  # a given run is checked before anything is written
        try:
            [guide_folder(run_dir, step) for step in args.guide_steps]
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    out.mkdir(parents=True, exist_ok=True)
    if args.pipeline is None and not (run_dir / "training_info.json").is_file():
        flags = merge_flags(UNCONDITIONAL,
                            f"--checkpointing_steps {args.checkpoint_every} --checkpoints_total_limit 100000")
        command = train_command(flags, run_dir, args.threads)
        print(f"training: {shlex.join(command)}", flush=True)
        _run(command, out / "train.log", args.threads)

    try:
        guides = {step: guide_folder(run_dir, step) for step in args.guide_steps}  # every guide there, before any work
        info = json.loads((run_dir / "training_info.json").read_text())
        base = parse_sampler(args.sampler)
        specs = {w: parse_sampler(f"{base.spec}:ag={w:g}") for w in args.scales}
        config = EvaluationConfig(
            str(run_dir), num_bpd_images=0, num_samples=args.num_samples, samplers=[base.spec], seed=args.seed,
            kid_subset_size=args.kid_subset_size, dataset=args.dataset, max_real_images=args.max_real_images,
            digit_judge="on", cpu_threads=args.threads, no_progress=True,
            **({"stats_cache_dir": args.stats_cache_dir} if args.stats_cache_dir else {}),
        )  # fmt: skip
        run = evaluate.load_evaluation(config)  # the pipeline, the sampler and the data checked before any long work
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    settings = {**{k: getattr(args, k) for k in SETTINGS}, "pipeline": str(run_dir)}
    path = out / JSON_NAME
    study = (json.loads(path.read_text()) if path.exists()
             else {"settings": settings, "global_step": info["global_step"], "rows": []})
    conflict = settings_conflict(path, study, settings)
    if conflict:
        print(f"error: {conflict}", file=sys.stderr)
        return 2
    done = {(r["guide_step"], r["w"]) for r in study["rows"]}
    for spec in specs.values():  # the same sampler, at each w (the guide is installed below)
        run.schedulers[spec.spec] = run.schedulers[base.spec]
    reference = evaluate.reference_features(run)
    plan = [(None, 1.0)] if 1.0 in specs else []
    plan += [(step, w) for step in args.guide_steps for w in args.scales if w != 1.0]
    for step, w in plan:
        if (step, w) in done:
            continue
        if step is not None:
            run.pipe.register_modules(guide_unet=UNet2DModel.from_pretrained(guides[step]).eval().to(run.device))
        row = evaluate.score_samples(run, evaluate.sample_images(run, specs[w]), reference)
        study["rows"].append({"guide_step": step,
                              "guide_fraction": None if step is None else step / info["global_step"],
                              "w": w, "sampler": specs[w].spec, **{k: row.get(k) for k in METRICS}})
        atomic_write_text(path, json.dumps(study, indent=2) + "\n")
        atomic_write_text(out / MD_NAME, markdown_table(study))
        print(f"guide {step}, w {w:g}: classifier IS {_f(row['classifier_is'], '.2f')}, FID {_f(row['fid'], '.1f')}, "
              f"precision {_f(row['precision'], '.3f')}", flush=True)
    if run.threads is not None:
        run.threads.restore()
    atomic_write_text(out / MD_NAME, markdown_table(study))
    print(markdown_table(study))
    return 0


if __name__ == "__main__":
    sys.exit(main())
