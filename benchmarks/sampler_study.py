"""Sampler study (issue 14): sample quality against the number of UNet calls (NFE) for every sampler, one model.

For one pipeline folder, every (sampler, NFE) point is scored with `ddpm-ext evaluate`'s steps
(`ddpm_ext.evaluation.evaluate`: `load_evaluation`, `reference_features`, `sample_images`, `score_samples`) in
one process, so the real images' features are computed (or read from the cache) once. Image i of every point
starts from the same x_T (the package's per-image seeding rule, `ddpm_ext.seeding.image_generators(--seed, i, 1)`),
so the points differ only by the sampler. Default grid:

    ddpm-small  ddpm:N:fixed_small   DDPM, σ² = β̃
    ddpm-large  ddpm:N:fixed_large   DDPM, σ² = β (the DDIM paper's σ̂)
    ddim-eta0   ddim:N:0             DDIM η = 0 (ε̂ consistent with the clipped x̂_0: the pipeline's default)
    ddim-eta0.5 ddim:N:0.5
    ddim-eta1   ddim:N:1             (= DDPM with σ² = β̃)
    dpmpp       dpmpp:N              diffusers' DPM-Solver++(2M), x̂_0 clipped as the model's sampler
    unipc       unipc:N              diffusers' UniPC (x̂_0 prediction), x̂_0 clipped likewise

at N = NFE in 10 20 50 100 250 1000 (1000 only for `--nfe_1000_samplers`), with the pipeline's default spacing
("trailing" for a "leading" config; `--spacing` states one for every point).

Every point's row is appended to `<output_dir>/sampler_study.json` as soon as it is scored (atomically), so a
killed run loses nothing: run the same command again and it skips the points already there (it refuses to mix
points of other settings). `sampler_study.md` (the table) and `sampler_study.png` (classifier IS and FID against
NFE, one line per sampler, log NFE axis, and the wall time per image) are rewritten after every point.

    # the study on the quick-start model (hours on two CPU cores: DDPM-1000 x 500 images dominates)
    python benchmarks/sampler_study.py outputs/mnist --output_dir outputs/mnist/sampler_study

    # a first look: three samplers, NFE 10 and 20, 100 images
    python benchmarks/sampler_study.py outputs/mnist --output_dir /tmp/study \
        --samplers ddpm-small ddim-eta0 dpmpp --nfe 10 20 --num_samples 100 --kid_subset_size 50
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the package, without installing

from ddpm_ext.evaluation import evaluate  # noqa: E402  (its steps looked up at call time, as tests replace them)
from ddpm_ext.evaluation.config import EvaluationConfig  # noqa: E402
from ddpm_ext.evaluation.samplers import parse_sampler  # noqa: E402
from ddpm_ext.files import atomic_write_text, write_with  # noqa: E402
from ddpm_ext.images import save_image_grid  # noqa: E402

SAMPLERS = {  # name -> spec template of `ddpm-ext evaluate`
    "ddpm-small": "ddpm:{n}:fixed_small",
    "ddpm-large": "ddpm:{n}:fixed_large",
    "ddim-eta0": "ddim:{n}:0",
    "ddim-eta0.5": "ddim:{n}:0.5",
    "ddim-eta1": "ddim:{n}:1",
    "dpmpp": "dpmpp:{n}",
    "unipc": "unipc:{n}",
}
DEFAULT_NFE = (10, 20, 50, 100, 250, 1000)
DEFAULT_NFE_1000 = ("ddpm-small", "ddpm-large", "ddim-eta0")  # the DDIM paper's 1000-step references
# settings that must be the same for every point of one study file
SETTINGS = ("pipeline", "dataset", "split", "max_real_images", "num_samples", "seed", "kid_subset_size", "kid_subsets",
            "feature_extractor", "nearest_k", "digit_judge")  # fmt: skip
JSON_NAME, MD_NAME, FIGURE_NAME = "sampler_study.json", "sampler_study.md", "sampler_study.png"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("pipeline", help="The pipeline folder (or Hub repo id) to study.")
    a("--output_dir", required=True,
      help="Where sampler_study.json / .md / .png and the sample grids go; an existing study there is resumed.")
    a("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS), metavar="SAMPLER",
      help=f"Samplers (default: all): {list(SAMPLERS)}.")
    a("--nfe", nargs="+", type=int, default=list(DEFAULT_NFE),
      help=f"UNet calls per image (= steps) (default: {list(DEFAULT_NFE)}).")
    a("--nfe_1000_samplers", nargs="*", default=list(DEFAULT_NFE_1000), choices=list(SAMPLERS), metavar="SAMPLER",
      help=f"The samplers that also run at NFE 1000 when --nfe lists it (default: {list(DEFAULT_NFE_1000)}).")
    a("--spacing", default=None, choices=("leading", "trailing", "linspace"),
      help="Timestep spacing of every point (default: the pipeline's, trailing for a leading config).")
    a("--ddim_eps", default=None, choices=("consistent", "model"),
      help="DDIM's ε̂ (default: the pipeline's, consistent with the clipped x̂_0; model: diffusers' DDIMPipeline).")
    a("--num_samples", type=int, default=500, help="Images per point (default: 500).")
    a("--seed", type=int, default=0,
      help="Seed of the images (image i from the package's per-image rule) and of KID (default: 0).")
    a("--dataset", default="mnist-5k", help="Real images (default: mnist-5k; its 500 held-out test digits).")
    a("--split", default=None, help="Their split (default: test where the data set has one).")
    a("--max_real_images", type=int, default=None, help="Use only this many real images (default: all of the split).")
    a("--kid_subset_size", type=int, default=100, help="KID subset size (default: 100).")
    a("--kid_subsets", type=int, default=100, help="KID subsets (default: 100).")
    a("--feature_extractor", default="efficientnet-lite0",
      help="FID/KID features, as `ddpm-ext evaluate` (default: efficientnet-lite0, offline).")
    a("--nearest_k", type=int, default=5, help="k of precision/recall/density/coverage (default: 5).")
    a("--digit_judge", default="auto", choices=("auto", "on", "off"),
      help="The digit classifier's IS and digits present (default: auto, on for grayscale models).")
    a("--batch_size", type=int, default=100, help="Images per pipeline call (default: 100).")
    a("--grid_images", type=int, default=64, help="Images in each point's sample grid, 0 for none (default: 64).")
    a("--stats_cache_dir", default=None, help="Cache of the real images' features (default: evaluate's).")
    a("--device", default="auto", help="auto, cpu or cuda (default: auto).")
    a("--no_progress", action="store_true", help="No progress bars.")
    args = p.parse_args(argv)
    for name in ("num_samples", "kid_subset_size", "kid_subsets", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("seed", "grid_images", "nearest_k"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    bad = [n for n in args.nfe if n < 1]
    if bad:
        p.error(f"--nfe must be integers >= 1, got {bad}")
    return args


def sampler_specs(args: argparse.Namespace) -> list[tuple[str, int, str]]:
    """(sampler name, NFE, evaluate's spec string) of every point, in sampler then NFE order."""
    suffix = f":spacing={args.spacing}" if args.spacing else ""
    points = []
    for name in args.samplers:
        for n in sorted(set(args.nfe)):
            if n == 1000 and name not in args.nfe_1000_samplers:
                continue
            eps = f":eps={args.ddim_eps}" if args.ddim_eps and name.startswith("ddim") else ""
            points.append((name, n, SAMPLERS[name].format(n=n) + suffix + eps))
    return points


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(getattr(args, k)) if k == "pipeline" else getattr(args, k)) for k in SETTINGS}


def load_study(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The study file at `path` (a new one when absent); refuses one written with other settings."""
    if not path.exists():
        return {"settings": settings, "points": [], "reference": None}
    study = json.loads(path.read_text())
    differ = {k: (study["settings"].get(k), v) for k, v in settings.items() if study["settings"].get(k) != v}
    if differ:
        raise ValueError(
            f"{path} holds a study with other settings "
            f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in differ.items())}); "
            "use another --output_dir, or the same settings to resume it."
        )
    return study


def write_outputs(study: dict[str, Any], out: Path) -> None:
    """The JSON (every point so far), the markdown table and the figure, each written atomically."""
    atomic_write_text(out / JSON_NAME, json.dumps(study, indent=2) + "\n")
    atomic_write_text(out / MD_NAME, markdown_table(study))
    if study["points"]:
        plot(study, out / FIGURE_NAME)


def _f(value: Any, fmt: str) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def _spread(row: dict[str, Any]) -> str:
    """' ± std' of the classifier IS where the row has its bootstrap spread (rows of before it have none)."""
    std = row.get("classifier_is_std")
    return "" if std is None else f" ± {std:.2f}"


def markdown_table(study: dict[str, Any]) -> str:
    s = study["settings"]
    lines = [
        f"## Sampler study: {s['pipeline']}",
        "",
        f"{s['num_samples']} samples per point (seed {s['seed']}, the same x_T for every sampler) against "
        f"{s['dataset']} ({study.get('num_real', '?')} real images); {study.get('feature_label', 'FID/KID features')}; "
        f"KID ×10³ ± its std over {s['kid_subsets']} subsets of {s['kid_subset_size']}; precision/recall/density/"
        f"coverage with k = {s['nearest_k']}; wall time of sampling per image on {study.get('device', '?')}.",
        "",
    ]
    ref = study.get("reference")
    if ref:
        lines += [f"Real images: classifier IS {_f(ref.get('classifier_is'), '.2f')}, digits present "
                  f"{ref.get('classes_present', '–')}, mean pixel {_f(ref.get('mean_pixel'), '.3f')}.", ""]  # fmt: skip
    lines += [
        "| sampler | NFE | spec | spacing | DDIM ε̂ | FID | KID ×10³ | precision | recall | density | coverage | "
        "classifier IS | digits present | mean pixel | s / image |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {name: i for i, name in enumerate(SAMPLERS)}
    for r in sorted(study["points"], key=lambda r: (order.get(r["study_sampler"], 99), r["nfe"])):
        eps = {True: "consistent", False: "model", None: "–"}[r.get("use_clipped_model_output")]
        kid = f"{1e3 * r['kid_mean']:.2f} ± {1e3 * r['kid_std']:.2f}"
        lines.append(
            f"| {r['study_sampler']} | {r['nfe']} | `{r['sampler']}` | {r.get('timestep_spacing') or '–'} | {eps} | "
            f"{r['fid']:.2f} | {kid} | {_f(r.get('precision'), '.3f')} | {_f(r.get('recall'), '.3f')} | "
            f"{_f(r.get('density'), '.3f')} | {_f(r.get('coverage'), '.3f')} | "
            f"{_f(r.get('classifier_is'), '.2f')}{_spread(r)} | "
            f"{r.get('classes_present', '–')} | {_f(r.get('mean_pixel'), '.3f')} | {r['seconds_per_image']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(study: dict[str, Any], path: Path) -> None:
    """Classifier IS (when the judge is on) and FID against NFE, and the wall time per image: one line per
    sampler, log NFE axis."""
    points = study["points"]
    has_is = any(r.get("classifier_is") is not None for r in points)
    panels = (["classifier_is"] if has_is else []) + ["fid", "seconds_per_image"]
    titles = {"classifier_is": "classifier IS (higher is better)", "fid": "FID (lower is better)",
              "seconds_per_image": "wall time per image (s)"}  # fmt: skip
    fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, key in zip(axes, panels):
        for name in SAMPLERS:
            rows = sorted((r for r in points if r["study_sampler"] == name and r.get(key) is not None),
                          key=lambda r: r["nfe"])
            if rows:
                ax.plot([r["nfe"] for r in rows], [r[key] for r in rows], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("NFE (UNet calls per image)")
        ax.set_title(titles[key])
        if key == "seconds_per_image":
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    ref = study.get("reference") or {}
    if has_is and ref.get("classifier_is") is not None:
        axes[0].axhline(ref["classifier_is"], color="k", linestyle="--", linewidth=1, label="real images")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{study['settings']['pipeline']}: {study['settings']['num_samples']} samples per point")
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def run_study(args: argparse.Namespace) -> dict[str, Any]:
    """Score every point not yet in the study file, appending each row as soon as it is scored."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    study = load_study(out / JSON_NAME, settings_of(args))
    done = {r["sampler"] for r in study["points"]}
    points = sampler_specs(args)
    todo = [(name, n, spec) for name, n, spec in points if parse_sampler(spec).spec not in done]
    print(f"{len(points) - len(todo)} of {len(points)} points already in {out / JSON_NAME}; {len(todo)} to run.",
          flush=True)
    if not todo:
        write_outputs(study, out)
        return study
    config = EvaluationConfig(
        args.pipeline, dataset=args.dataset, split=args.split, max_real_images=args.max_real_images, num_bpd_images=0,
        num_samples=args.num_samples, samplers=[spec for _, _, spec in todo], kid_subset_size=args.kid_subset_size,
        kid_subsets=args.kid_subsets, feature_extractor=args.feature_extractor, stats_cache_dir=args.stats_cache_dir,
        batch_size=args.batch_size, seed=args.seed, num_grid_images=0, device=args.device,
        no_progress=args.no_progress, nearest_k=args.nearest_k, digit_judge=args.digit_judge,
    )  # fmt: skip
    run = evaluate.load_evaluation(config)  # every check (the pipeline, the data, each sampler) before any sampling
    reference = evaluate.reference_features(run)
    study.update({"num_real": reference.num_images, "feature_label": run.extractor.label, "device": str(run.device),
                  "torch": torch.__version__, "cpu_threads": torch.get_num_threads()})  # fmt: skip
    if run.judge is not None and study.get("reference") is None:
        study["reference"] = evaluate.score_reference(run)
    for name, n, spec in todo:
        t0 = time.perf_counter()
        samples = evaluate.sample_images(run, spec)
        row = evaluate.score_samples(run, samples, reference)
        row.update({"study_sampler": name, "nfe": n, "seconds_per_image": samples.seconds / len(samples.images)})
        if args.grid_images:
            grid = out / "grids" / f"{samples.spec.slug}.png"
            save_image_grid(samples.images[: args.grid_images], grid,
                            nrow=math.ceil(math.sqrt(min(args.grid_images, len(samples.images)))))
            row["grid"] = str(grid.relative_to(out))
        study["points"].append(row)
        write_outputs(study, out)  # after every point: a killed run keeps what it scored
        print(f"{spec}: FID {row['fid']:.2f}, classifier IS {_f(row.get('classifier_is'), '.2f')}, "
              f"{row['seconds_per_image']:.3f} s/image ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    return study


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run_study(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((Path(args.output_dir) / MD_NAME).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
