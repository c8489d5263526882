"""Recipe study (issue 15): train variants of the quick-start recipe and score every one the same way.

A variant is a base recipe with some flags changed: the quick start (`QUICK_START`, the flags of the README's
main-job command, class-conditional) for `--variant` and the `quick-start` row, the unconditional recipe
(`UNCONDITIONAL`) for the named variants, which were measured on it. Each is trained by `training/train_ddpm.py`
on a fixed number of threads (`--threads`, default 1, so `--jobs 2` variants train at once on a 2-core machine
without disturbing each other's thread count) and scored by `ddpm-ext evaluate` on `--num_samples` samples of
`--sampler` from the same seeds: the digit judge's classifier IS with its bootstrap spread and the digits
present, FID/KID on the offline features, precision and recall. A class-conditional variant's samples are asked
for every digit equally often (evaluate's rule), so its classifier IS compares with balanced real subsets
(`benchmarks/judge_real_subsets.py --balanced`), an unconditional one's with random ones. The training time is
the script's own (`training_info.json`), so a variant's s / step is comparable only with variants trained on the
same thread count.

One row per variant goes to `<output_dir>/recipe_study.json` as soon as it is scored (atomically), and the table
to `recipe_study.md`: run the same command again and the variants already scored with the same flags and
settings are skipped; a variant whose training finished but was not scored is only scored. A variant folder
holding a run of other flags is refused, never overwritten.

    # the variants of the recipe table of docs/results/recipe.md, two at a time (about 15 min per pair on a 2-core CPU)
    python training/recipe_study.py --output_dir outputs/recipe-study --jobs 2

    # your own variant: NAME=FLAGS, the flags replacing the quick start's (the named variants change the
    # unconditional recipe, `UNCONDITIONAL`, on which they were measured)
    python training/recipe_study.py --output_dir outputs/recipe-study \\
        --variant bs48="--train_batch_size 48 --max_train_steps 2200"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from ddpm_ext.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "training" / "train_ddpm.py"

# The unconditional recipe: the README's main job until 2026-12-02 (grid IS 7.97), the base of the named
# variants below, which were measured on it. Chosen with this study; docs/results/recipe.md lists the variants tried.
UNCONDITIONAL = (
    "--ddpm_beta_schedule cosine --prediction_type v_prediction --snr_gamma 5 --train_batch_size 64 "
    "--learning_rate 3e-3 --lr_warmup_steps 50 --max_train_steps 1700 --autoguidance_scale 3"
)
# The training flags of the README's quick-start command (tests/training/test_recipe_study.py checks that the
# README runs exactly these): the same recipe, class-conditional on the digits (label dropout 0.1), its grid ten
# images of each digit (one row per digit).
QUICK_START = f"{UNCONDITIONAL} --class_conditional --eval_batch_size 100"
# Every study run saves no intermediate checkpoint (they do not change the training, only cost time).
STUDY_FLAGS = "--checkpointing_steps 100000"
# Named variants: (base recipe, flags that replace the base's: a flag given here overrides the same flag there).
# The widened UNet (16, 32, 96 channels) costs 1.29x mnist-small's time per step: it gets fewer steps.
# The batch-32 rows keep 100 warm-up steps (the same number of images as batch 64's 50).
BS32 = "--train_batch_size 32 --lr_warmup_steps 100"
# The variants on UNCONDITIONAL were measured before the recipe gained autoguidance: they keep it off
# (--autoguidance_scale 1, the UNet alone), so that they train and score as docs/results/recipe.md reports.
NO_AG = "--autoguidance_scale 1"
BASES = {"quick start": QUICK_START, "unconditional": UNCONDITIONAL}
VARIANTS: dict[str, tuple[str, str]] = {
    "quick-start": ("quick start", ""),
    "unconditional": ("unconditional", ""),
    "bs64-1600": ("unconditional", f"--max_train_steps 1600 --timestep_sampling uniform {NO_AG}"),
    "bs64-1600-lr6e-3": ("unconditional",
                         f"--max_train_steps 1600 --learning_rate 6e-3 --timestep_sampling uniform {NO_AG}"),
    "bs32-3200": ("unconditional", f"{BS32} --max_train_steps 3200 --timestep_sampling uniform {NO_AG}"),
    "bs32-3200-seed1": ("unconditional", f"{BS32} --max_train_steps 3200 --timestep_sampling uniform --seed 1 {NO_AG}"),
    "bs32-3200-lr2e-3": ("unconditional",
                         f"{BS32} --max_train_steps 3200 --learning_rate 2e-3 --timestep_sampling uniform {NO_AG}"),
    "bs32-3200-adam-beta2-0.99": ("unconditional", f"{BS32} --max_train_steps 3200 --adam_beta2 0.99 "
                                                   f"--timestep_sampling uniform {NO_AG}"),
    "bs16-6400": ("unconditional", "--train_batch_size 16 --max_train_steps 6400 --lr_warmup_steps 200 "
                                   f"--timestep_sampling uniform {NO_AG}"),
    "bs32-3200-importance": ("unconditional", f"{BS32} --max_train_steps 3200 --timestep_sampling importance {NO_AG}"),
    "bs32-2500-unet-16-32-96": ("unconditional", f"{BS32} --max_train_steps 2500 --timestep_sampling uniform "
                                                 f"--model_config training/configs/unet-16-32-96.json {NO_AG}"),
}
DEFAULT_VARIANTS = tuple(VARIANTS)
# settings that must be the same for every row of one study file
SETTINGS = ("threads", "num_samples", "sampler", "seed", "kid_subset_size", "dataset", "max_real_images")
JSON_NAME, MD_NAME = "recipe_study.json", "recipe_study.md"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--output_dir", required=True,
      help="Where each variant's run folder and recipe_study.json / .md go; an existing study there is resumed.")
    a("--variants", nargs="+", default=None, choices=list(VARIANTS), metavar="NAME",
      help=f"Named variants to run (default: all of them, {list(DEFAULT_VARIANTS)}, unless --variant is given).")
    a("--variant", action="append", default=[], metavar="NAME=FLAGS",
      help="Also run this variant: the quick start with FLAGS replacing its own (repeatable).")
    a("--threads", type=int, default=1, help="CPU threads of each training and scoring run (default: 1).")
    a("--jobs", type=int, default=1,
      help="Variants trained at once (default: 1; --jobs 2 --threads 1 fills a 2-core machine).")
    a("--num_samples", type=int, default=256, help="Samples scored per variant (default: 256).")
    a("--sampler", default="ddpm:50",
      help="`ddpm-ext evaluate` sampler spec of the scored samples (default: ddpm:50, the quick start's grid sampler).")
    a("--seed", type=int, default=0,
      help="Seed of the scored samples and of KID (default: 0); training keeps --seed of the recipe.")
    a("--kid_subset_size", type=int, default=100, help="KID subset size (default: 100).")
    a("--dataset", default="mnist-5k", help="Real images for FID/KID (default: mnist-5k, its 500 held-out digits).")
    a("--max_real_images", type=int, default=None,
      help="Use only this many real images (default: all of the held-out split).")
    a("--stats_cache_dir", default=None, help="Cache of the real images' features (default: evaluate's).")
    a("--dry_run", action="store_true", help="Print each variant's commands and stop.")
    args = p.parse_args(argv)
    for name in ("threads", "jobs", "num_samples", "kid_subset_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    if args.kid_subset_size > args.num_samples:
        p.error(f"--kid_subset_size ({args.kid_subset_size}) must not exceed --num_samples ({args.num_samples})")
    if args.variants is None:
        args.variants = [] if args.variant else list(DEFAULT_VARIANTS)
    args.plan = {name: VARIANTS[name] for name in args.variants}  # name -> (base, changes)
    for item in args.variant:
        name, sep, flags = item.partition("=")
        if not sep or not name.strip() or "/" in name or name.startswith("."):
            p.error(f"--variant must look like NAME=FLAGS with a plain folder name, got {item!r}")
        try:
            merge_flags(QUICK_START, flags)
        except ValueError as e:
            p.error(f"--variant {item!r}: {e}")
        args.plan[name.strip()] = ("quick start", flags)
    return args


def _split(flags: str) -> list[tuple[str, list[str]]]:
    """'--a 1 --b --c x y' -> [('--a', ['1']), ('--b', []), ('--c', ['x', 'y'])]."""
    items: list[tuple[str, list[str]]] = []
    for token in shlex.split(flags):
        if token.startswith("--"):
            items.append((token, []))
        elif not items:
            raise ValueError(f"flags must start with a --flag, got {token!r}")
        else:
            items[-1][1].append(token)
    return items


def merge_flags(base: str, changes: str) -> list[str]:
    """The argument list of `base` with every flag of `changes` replacing the same flag of `base` (new flags
    appended), e.g. merge_flags('--a 1 --b 2', '--b 3 --c') == ['--a', '1', '--b', '3', '--c']."""
    merged = dict(_split(base))
    for flag, values in _split(changes):
        if flag in ("--output_dir", "--cpu_threads"):
            raise ValueError(f"{flag} is set by the study (--output_dir / --threads), not by a variant")
        merged[flag] = values
    return [part for flag, values in merged.items() for part in (flag, *values)]


def train_command(flags: list[str], run_dir: Path, threads: int) -> list[str]:
    return [sys.executable, str(TRAIN_SCRIPT), *flags, "--output_dir", str(run_dir), "--cpu_threads", str(threads)]


def evaluate_command(run_dir: Path, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "ddpm_ext", "evaluate", str(run_dir), "--output_dir", str(run_dir / "recipe_eval"),
               "--num_bpd_images", "0", "--num_samples", str(args.num_samples), "--samplers", args.sampler,
               "--kid_subset_size", str(args.kid_subset_size), "--seed", str(args.seed), "--dataset", args.dataset,
               "--digit_judge", "on", "--cpu_threads", str(args.threads), "--no_progress"]  # fmt: skip
    if args.max_real_images is not None:
        command += ["--max_real_images", str(args.max_real_images)]
    if args.stats_cache_dir:
        command += ["--stats_cache_dir", str(Path(args.stats_cache_dir).resolve())]
    return command


def _run(command: list[str], log: Path, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "a") as f:
        f.write("$ " + shlex.join(command) + "\n")
        f.flush()
        code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                              cwd=ROOT).returncode
    if code != 0:
        raise RuntimeError(f"{shlex.join(command[:3])} ... failed with exit status {code}; its output is in {log}")


def run_variant(name: str, flags: list[str], out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train (unless this folder already holds the finished run of these flags), score, return the row."""
    run_dir = out / name
    record = run_dir / "recipe_flags.json"
    if record.exists():
        recorded = json.loads(record.read_text())
        if recorded != {"flags": flags, "threads": args.threads}:
            raise ValueError(f"{run_dir} holds a run of other flags ({recorded}); "
                             "remove it or name the variant differently")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(f"{run_dir} exists and is not a run of this study; remove it or name the variant differently")
    log = out / f"{name}.log"
    if not (run_dir / "model_index.json").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps({"flags": flags, "threads": args.threads}) + "\n")
        command = train_command(flags, run_dir, args.threads)
        if (run_dir / "checkpoints").exists() or any(run_dir.glob("checkpoint-*")):
            command.append("--overwrite_output_dir")  # an interrupted run: start again (its checkpoints are kept aside)
        _run(command, log, args.threads)
    _run(evaluate_command(run_dir, args), log, args.threads)
    info = json.loads((run_dir / "training_info.json").read_text())
    results = json.loads((run_dir / "recipe_eval" / "results.json").read_text())
    sample = results["samples"][0]
    steps, seconds = info["global_step"], info["train_seconds_this_run"]
    batch = int(flags[flags.index("--train_batch_size") + 1])
    keys = ("classifier_is", "classifier_is_std", "classes_present", "fid", "kid_mean", "kid_std", "precision",
            "recall", "mean_pixel")
    return {"name": name, "flags": shlex.join(flags), "steps": steps, "batch_size": batch, "images_seen": steps * batch,
            "train_seconds": seconds, "seconds_per_step": seconds / steps, "final_loss": info.get("final_loss"),
            **{k: sample.get(k) for k in keys}}  # fmt: skip


def _f(value: Any, fmt: str) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def markdown_table(study: dict[str, Any]) -> str:
    s = study["settings"]
    lines = [
        "## Recipe study",
        "",
        f"Every variant: its base recipe's flags with the ones shown changed (quick start: `{QUICK_START}`; "
        f"unconditional: `{UNCONDITIONAL}`), trained "
        f"by training/train_ddpm.py on {s['threads']} thread(s); scored on {s['num_samples']} samples of "
        f"`{s['sampler']}` (seed {s['seed']}) against {s['dataset']}'s held-out digits. Classifier IS ± its bootstrap "
        "spread; FID/KID on EfficientNet-Lite0 features (not comparable to published FIDs).",
        "",
        "| variant | changed flags | batch | steps | images seen | train s | s / step | classifier IS | digits | FID | "
        "KID ×10³ | precision | recall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in study["rows"]:
        lines.append(
            f"| {r['name']} | {r.get('base', 'unconditional')}: `{r['changes'] or '(none)'}` | {r['batch_size']} | "
            f"{r['steps']} | {r['images_seen']:,} | "
            f"{r['train_seconds']:.0f} | {r['seconds_per_step']:.3f} | {_f(r['classifier_is'], '.2f')} ± "
            f"{_f(r['classifier_is_std'], '.2f')} | {r['classes_present']} | {_f(r['fid'], '.1f')} | "
            f"{_f(1e3 * r['kid_mean'], '.1f')} | {_f(r['precision'], '.2f')} | {_f(r['recall'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def settings_conflict(path: Path, study: dict[str, Any], settings: dict[str, Any]) -> str | None:
    """Why the study file at `path` cannot be resumed with `settings` (the settings that differ), or None."""
    differ = {k: (study["settings"].get(k), v) for k, v in settings.items() if study["settings"].get(k) != v}
    if not differ:
        return None
    return (f"{path} holds a study with other settings "
            f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in differ.items())}); use another --output_dir")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.output_dir).resolve()
    settings = {k: getattr(args, k) for k in SETTINGS}
    plan = {name: merge_flags(f"{BASES[base]} {STUDY_FLAGS}", changes) for name, (base, changes) in args.plan.items()}
    if args.dry_run:
        for name, flags in plan.items():
            print(f"# {name}\n{shlex.join(train_command(flags, out / name, args.threads))}\n"
                  f"{shlex.join(evaluate_command(out / name, args))}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    path = out / JSON_NAME
    study = json.loads(path.read_text()) if path.exists() else {"settings": settings, "rows": []}
    conflict = settings_conflict(path, study, settings)
    if conflict:
        raise SystemExit(f"error: {conflict}")
    done = {r["name"]: r["flags"] for r in study["rows"]}
    for name, flags in plan.items():
        if name in done and done[name] != shlex.join(flags):
            raise SystemExit(f"error: variant {name!r} is in {path} with other flags ({done[name]}); "
                             "name it differently")
    todo = {name: flags for name, flags in plan.items() if name not in done}
    lock = threading.Lock()

    def one(name: str) -> None:
        row = run_variant(name, todo[name], out, args)
        row["base"], row["changes"] = args.plan[name]
        with lock:
            study["rows"].append(row)
            atomic_write_text(path, json.dumps(study, indent=2) + "\n")
            atomic_write_text(out / MD_NAME, markdown_table(study))
            print(f"{name}: classifier IS {_f(row['classifier_is'], '.2f')}, FID {_f(row['fid'], '.1f')}, "
                  f"{row['train_seconds']:.0f} s of training", flush=True)

    failures = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for name, future in [(n, pool.submit(one, n)) for n in todo]:
            try:
                future.result()
            except (RuntimeError, ValueError) as e:
                failures.append(f"{name}: {e}")
    atomic_write_text(out / MD_NAME, markdown_table(study))
    print(markdown_table(study))
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
