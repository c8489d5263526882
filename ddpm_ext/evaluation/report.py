"""Writing an evaluation's results: results.md, results.json and sample grids, and a model card's metrics section.

[`write_results`] writes an [`evaluate`] result into a folder: one sample grid per sampler, [`results_markdown`]
(a bits/dim table and a sample-quality table) as `results.md`, and the result as `results.json`.

The card template (`ddpm_ext/hub/model_card_template.md`) wraps its metrics section in two HTML comments,
[`METRICS_START`] and [`METRICS_END`]. [`update_model_card`] (`ddpm-ext evaluate --update_model_card`) replaces
what lies between them in `<pipeline folder>/README.md` by [`model_card_metrics`] of an [`evaluate`] result (a
compact table: bits/dim per σ², per sampler FID/KID with the feature extractor named, precision/recall and the
digit judge's classifier IS, then the command that produced them and the date), and writes the same numbers into the
card's YAML metadata as the Hub's `model-index` block ([`model_index_results`], huggingface_hub's `EvalResult`s;
`huggingface_hub.ModelCard.load` reads them back). The rest of the metadata is kept (re-serialised by
huggingface_hub), and every byte of the card's text outside the markers is kept. User-given names (the data set,
the split) are escaped for Markdown and HTML ([`ddpm_ext.hub.model_card.escape_markdown`]). Every file is replaced
atomically ([`ddpm_ext.files.atomic_write_text`]).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import shlex
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from huggingface_hub import EvalResult, ModelCard
from huggingface_hub.repocard import REGEX_YAML_BLOCK

from ..files import atomic_write_text
from ..hub.model_card import (  # the card format's owner; the template holds the markers
    METRICS_END,
    METRICS_START,
    escape_markdown,
)
from ..images import save_image_grid
from .config import EvaluationConfig
from .precision_recall import PRDC_KEYS
from .samplers import SamplerSpec, parse_sampler, row_key

__all__ = [
    "METRICS_END",
    "METRICS_START",
    "check_model_card",
    "evaluation_command",
    "model_card_metrics",
    "model_index_results",
    "replace_marked_section",
    "results_markdown",
    "update_model_card",
    "write_results",
]


def replace_marked_section(text: str, content: str, start: str = METRICS_START, end: str = METRICS_END) -> str:
    """`text` with everything between the `start` and `end` markers replaced by `content` (on its own lines).

    The markers themselves and everything outside them are kept byte for byte.

    Raises:
        `ValueError`: When a marker is missing, appears more than once, or `end` comes before `start`.

    Example:

    ```py
    >>> replace_marked_section("a\\n<!-- s -->\\nold\\n<!-- e -->\\nb\\n", "new", "<!-- s -->", "<!-- e -->")
    'a\\n<!-- s -->\\nnew\\n<!-- e -->\\nb\\n'

    ```
    """
    counts = {marker: text.count(marker) for marker in (start, end)}
    bad = {m: c for m, c in counts.items() if c != 1}
    if bad:
        found = ", ".join(f"{m!r} {c} time(s)" for m, c in bad.items())
        raise ValueError(
            f"The model card must contain each metrics marker exactly once ({start!r}, {end!r}); found {found}."
        )
    i, j = text.index(start) + len(start), text.index(end)
    if j < i:
        raise ValueError(f"The model card's metrics markers are out of order: {end!r} comes before {start!r}.")
    return text[:i] + "\n" + content.strip("\n") + "\n" + text[j:]


def check_model_card(pipeline: str | os.PathLike) -> Path:
    """The `README.md` of a local pipeline folder whose metrics section can be replaced; checked before any work.

    Raises:
        `ValueError`: When `pipeline` is not a local folder (a Hub repo id), has no README.md, or the card lacks
            the metrics markers.
    """
    folder = Path(pipeline).expanduser()
    if not folder.is_dir():
        raise ValueError(
            f"`--update_model_card` needs a local pipeline folder, but `pipeline` {str(pipeline)!r} is not a folder "
            "(a Hub repo id's card cannot be edited in place); download it or save it to a folder first."
        )
    card = folder / "README.md"
    if not card.is_file():
        raise ValueError(
            f"`--update_model_card`: the pipeline folder {str(folder)!r} has no README.md (model card); write one "
            "with `ddpm_ext.hub` (its template has the metrics markers) or drop `--update_model_card`."
        )
    try:
        text = card.read_bytes().decode("utf-8")
        replace_marked_section(text, "")
        ModelCard(text)  # the metadata (where the model-index goes) parses
    except ValueError as err:  # UnicodeDecodeError and yaml's errors are ValueErrors too
        raise ValueError(f"`--update_model_card`: {str(card)!r}: {err}") from None
    except Exception as err:  # noqa: BLE001 (yaml.YAMLError: invalid metadata)
        raise ValueError(f"`--update_model_card`: {str(card)!r}: its YAML metadata does not parse: "
                         f"{type(err).__name__}: {err}") from None
    return card


def evaluation_command(config: EvaluationConfig) -> str:
    """The `ddpm-ext evaluate` command line of an [`EvaluationConfig`]: the pipeline and every non-default option.

    Example:

    ```py
    >>> from ddpm_ext.evaluation.config import EvaluationConfig
    >>> evaluation_command(EvaluationConfig("outputs/mnist", num_samples=50, samplers=["ddim:10:0", "ddpm:100"]))
    'ddpm-ext evaluate outputs/mnist --num_samples 50 --samplers ddim:10:0 ddpm:100'

    ```
    """
    defaults = type(config).defaults()
    words = ["ddpm-ext", "evaluate", str(config.pipeline)]
    for f in fields(config):
        if f.name == "pipeline" or f.name == "no_progress":  # no_progress does not change a number
            continue
        value = getattr(config, f.name)
        if f.name == "samplers":
            value, default = [s.spec for s in value], [str(s) for s in defaults["samplers"]]
        else:
            default = defaults[f.name]
        if value == default or value is None:
            continue
        if isinstance(value, bool):
            words.append(f"--{f.name}")
        elif isinstance(value, (list, tuple)):
            words += [f"--{f.name}", *map(str, value)]
        else:
            words += [f"--{f.name}", str(value)]
    return " ".join(shlex.quote(w) for w in words)


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value + 0.0, fmt)  # + 0.0: an entropy of -0.0 prints as 0.000


def model_card_metrics(results: dict[str, Any], date: str | None = None) -> str:
    """The model card's metrics section for an [`evaluate`] result: compact markdown tables, the command, the date.

    Args:
        results (`dict`): What [`evaluate`] returns.
        date (`str`, *optional*): ISO date shown; default today (UTC).
    """
    date = date or datetime.datetime.now(datetime.UTC).date().isoformat()
    md = escape_markdown  # the data set and split are user-given: data, never Markdown or HTML
    lines = [
        (f"Measured with `ddpm-ext evaluate` on {md(date)} against {md(results['dataset'])} (split "
         f"{md(results['split'])}), {results['image_size']}×{results['image_size']}, {results['channels']} "
         "channel(s)."),
    ]
    cond = results.get("conditioning")
    if results["bits_per_dim"]:
        n = results["bits_per_dim"][0]["num_images"]
        null = f" under the null class ∅ (id {cond['num_classes']}), i.e. of the unconditional p(x)" if cond else ""
        lines += ["", f"Bits/dim of {n} held-out images{null} (upper bound, ± standard error):", "",
                  "| σ² (variance_type) | bits/dim | ± s.e. |", "|---|---|---|"]
        lines += [f"| {r['variance_type']} | {r['bits_per_dim']:.4f} | {_num(r['sem'], '.2g')} |"
                  for r in results["bits_per_dim"]]
    if results["samples"]:
        fe, judge = results["feature_extractor"], results.get("digit_judge")
        first = results["samples"][0]
        accuracy = bool(cond) and bool(judge) and not cond["class_accuracy_skipped"]
        head = (["sampler"] + (["w"] if cond else []) + ["FID", "KID ×10³", "precision", "recall"]
                + (["class accuracy"] if accuracy else []) + (["classifier IS"] if judge else []))
        lines += ["", (f"Sample quality of {first['num_fake']} samples per sampler against {first['num_real']} "
                       f"real images; {fe['label']}:"), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        if judge:  # the ceiling first
            ref = judge["reference"]
            dashes = ["–"] * (len(head) - 2)
            lines.append(
                "| " + " | ".join([f"real images ({ref['num_images']})", *dashes, f"{ref['classifier_is']:.2f}"]) + " |"
            )
        for r in results["samples"]:
            cells = [r["sampler"]] + ([f"{r['guidance_scale']:g}"] if cond else []) + [
                f"{r['fid']:.2f}", f"{1e3 * r['kid_mean']:.2f} ± {1e3 * r['kid_std']:.2f}",
                _num(r.get("precision"), ".3f"), _num(r.get("recall"), ".3f")]
            cells += [_num(r.get("class_accuracy"), ".3f")] if accuracy else []
            lines.append("| " + " | ".join(cells + ([_num(r.get("classifier_is"), ".2f")] if judge else [])) + " |")
        if judge:
            lines += ["", f"Classifier IS: {judge['description']}."]
        if cond:
            lines += ["", (f"Class-conditional ({cond['num_classes']} classes): {cond['sample_labels']}; w is the "
                           "classifier-free guidance scale" + ("; class accuracy: the fraction of samples the digit "
                           "judge reads as their requested digit." if accuracy else
                           f"; class accuracy skipped: {cond['class_accuracy_skipped']}."))]
        if first.get("prdc_skipped"):
            lines += ["", f"Precision/recall skipped: {first['prdc_skipped']}."]
        elif first.get("nearest_k"):
            lines += ["", "Precision/recall (Kynkäänniemi et al. 2019) on the same features, "
                          f"k = {first['nearest_k']}."]
    command = " ".join(str(results.get("command", "ddpm-ext evaluate")).splitlines())
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", command)), default=0))  # outlasts any run
    lines += ["", "Command:", "", f"{fence}bash", command, fence]
    return "\n".join(lines)


# (results key, Hub metric type, display name) of each sample-quality number the model-index carries
_SAMPLE_METRICS = (("fid", "fid", "FID"), ("kid_mean", "kid", "KID"), ("precision", "precision", "precision"),
                   ("recall", "recall", "recall"), ("class_accuracy", "accuracy", "class accuracy"),
                   ("classifier_is", "inception_score", "classifier IS"))
TASK_TYPE = "unconditional-image-generation"  # the card's pipeline_tag


def model_index_results(results: dict[str, Any]) -> list[EvalResult]:
    """The Hub's `model-index` entries of an [`evaluate`] result, one `huggingface_hub.EvalResult` per number: the
    bits/dim per σ² (`bits_per_dim`), and per sampler (and guidance scale w) FID, KID (mean), precision, recall,
    class accuracy and classifier IS where measured. Non-finite numbers are left out (YAML has no portable NaN).

    Each metric's name says what the Markdown table says beside the number (the sampler, w, the feature
    extractor), e.g. `FID (ddim:50:0; EfficientNet-Lite0 FID — NOT comparable to ...)` or
    `KID (ddim:50:0; efficientnet-lite0 features)`.
    """
    common = {"task_type": TASK_TYPE, "dataset_type": str(results["dataset"]),
              "dataset_name": str(results["dataset"]), "dataset_split": str(results["split"])}
    out = []
    for r in results.get("bits_per_dim") or []:
        if _finite(r.get("bits_per_dim")):
            out.append(EvalResult(**common, metric_type="bits_per_dim", metric_value=float(r["bits_per_dim"]),
                                  metric_name=f"bits/dim (σ² = {r['variance_type']}, upper bound)"))
    fe = results.get("feature_extractor") or {}
    for r in results.get("samples") or []:
        where = r["sampler"] + (f", w = {r['guidance_scale']:g}" if r.get("guidance_scale") is not None else "")
        for key, metric_type, name in _SAMPLE_METRICS:
            if _finite(r.get(key)):
                # FID names its comparability (the extractor's label); KID, precision, recall the features used
                features = (f"; {fe['label']}" if key == "fid" and fe.get("label") else
                            f"; {fe['name']} features" if key in ("kid_mean", "precision", "recall") and fe.get("name")
                            else "")
                out.append(EvalResult(**common, metric_type=metric_type, metric_value=float(r[key]),
                                      metric_name=f"{name} ({where}{features})"))
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and bool(
        np.isfinite(value))


def update_model_card(pipeline: str | os.PathLike, results: dict[str, Any], date: str | None = None) -> Path:
    """Replace the metrics section of `<pipeline>/README.md` by [`model_card_metrics`]`(results)` and write
    [`model_index_results`]`(results)` into its metadata's `model-index`, atomically.

    The model-index entries of an earlier evaluation of the same data set and split are replaced, others kept; the
    model-index's `name` is the card's `model_name`, else the folder's name.

    Returns:
        `pathlib.Path`: The card.

    Raises:
        `ValueError`: As [`check_model_card`] (not a local folder, no README.md, no markers, metadata that does
            not parse).
    """
    card = check_model_card(pipeline)
    text = card.read_bytes().decode("utf-8")
    data = ModelCard(text).data
    ours = model_index_results(results)
    # an earlier evaluation of the same data and split is replaced, results of other data sets are kept
    same = (TASK_TYPE, str(results["dataset"]), str(results["split"]))
    kept = [e for e in data.eval_results or [] if (e.task_type, e.dataset_type, e.dataset_split) != same]
    data.eval_results = (kept + ours) or None
    if data.eval_results and not data.model_name:
        data.model_name = Path(pipeline).expanduser().resolve().name  # the model-index needs a name
    # the text after the metadata is kept byte for byte (\r\n included), the metadata keeps its order and line break
    match = REGEX_YAML_BLOCK.search(text)
    body = text[match.end():] if match else text
    line_break = match.group(1).split("---", 1)[1] if match else "\n"  # what follows the opening ---
    order = list((yaml.safe_load(match.group(2)) or {}).keys()) if match else None
    front = f"---{line_break}{data.to_yaml(line_break=line_break, original_order=order)}{line_break}---{line_break}"
    atomic_write_text(card, front + replace_marked_section(body, model_card_metrics(results, date)))
    return card


def results_markdown(results: dict[str, Any]) -> str:
    """The results as markdown: a bits/dim table and a FID/KID table (headed by the extractor's label)."""
    env = results.get("environment", {})
    lines = [
        f"# Evaluation of `{results['pipeline']}`",
        "",
        f"Data: `{results['dataset']}` (split `{results['split']}`), "
        f"{results['image_size']}×{results['image_size']}, {results['channels']} channel(s); "
        f"T = {results['num_train_timesteps']}; device {env.get('device', '?')}; "
        f"total {_fmt(results.get('total_time_s'), 3)} s.",
    ]
    cond = results.get("conditioning")
    if cond:
        names = ", ".join(cond["class_names"][:12]) + (", ..." if cond["num_classes"] > 12 else "")
        lines += [
            "",
            f"Class-conditional: {cond['num_classes']} classes ({names}); samples: {cond['sample_labels']}, "
            f"classifier-free guidance w per row (DDIM with {cond['ddim']}); "
            f"bits/dim under {cond['bits_per_dim_label']}."
            + (f" Class accuracy skipped: {cond['class_accuracy_skipped']}." if cond["class_accuracy_skipped"] else ""),
        ]
    if results["bits_per_dim"]:
        n = results["bits_per_dim"][0]["num_images"]
        clip = results["bits_per_dim"][0].get("clip_denoised")
        clipped = "x̂₀ clipped to [−1, 1]" if clip else "x̂₀ not clipped"
        lines += [
            "",
            f"## Bits/dim ({n} held-out images, {clipped}; upper bound on −log₂ p(x₀) per dimension, "
            "± standard error"
            + (f"; class label ∅ = {cond['num_classes']}, the null class)" if cond else ")"),
            "",
            "| σ² (variance_type) | bits/dim | ± s.e. | L_T (prior) | L_0 (decoder) | wall time (s, shared) |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["bits_per_dim"]:
            lines.append(
                f"| {r['variance_type']} | {r['bits_per_dim']:.4f} | {_fmt(r['sem'], 2)} | {r['prior']:.2e} | "
                f"{r['decoder']:.4f} | {r['wall_time_s']:.1f} |"
            )
    if results["samples"]:
        fe = results["feature_extractor"]
        ref = results["reference"]
        judge = results.get("digit_judge")
        first = results["samples"][0]
        prdc = "PRDC skipped: " + first["prdc_skipped"] if first.get("prdc_skipped") else (
            f"precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020) on the same "
            f"features, k = {first.get('nearest_k')}")
        accuracy = bool(cond) and not cond["class_accuracy_skipped"] and bool(judge)
        lines += [
            "",
            f"## Sample quality: {fe['label']}",
            "",
            f"Reference: {ref['num_images']} real images ({'cached' if ref['cache_hit'] else 'computed'}); KID "
            f"(×10³) over {first['kid_subsets']} subsets of {first['kid_subset_size']}; {prdc}; "
            "mean pixel in [0, 1]."
            + (f" Classifier IS, digits present (of 10) and class entropy (normalized): {judge['description']}; "
               "the first row is the real reference images." if judge else "")
            + (" Class accuracy: the fraction of samples the judge reads as their requested digit."
               if accuracy else ""),
            "",
            "| sampler | " + ("w | " if cond else "") + "steps | η | noise z | samples | FID | KID ×10³ | ± std | "
            "precision | recall | density | coverage | mean pixel | "
            + ("class accuracy | " if accuracy else "")
            + ("classifier IS | digits present | class entropy | " if judge else "") + "wall time (s) | grid |",
            "|---|" + ("---|" if cond else "") + "---|---|---|---|---|---|---|---|---|---|---|---|"
            + ("---|" if accuracy else "") + ("---|---|---|" if judge else "") + "---|---|",
        ]
        if judge:
            real = judge["reference"]
            lines.append(
                "| real images | " + ("– | " if cond else "")
                + f"– | – | – | {real['num_images']} | – | – | – | – | "
                f"– | – | – | {real['mean_pixel']:.3f} | " + ("– | " if accuracy else "")
                + f"{real['classifier_is']:.2f} | {real['classes_present']} | "
                f"{_num(real['class_entropy'], '.3f')} | – | – |"
            )
        for r in results["samples"]:
            grid = f"[{r['grid']}]({r['grid']})" if r.get("grid") else "–"
            eta = _fmt(r["eta"]) if r["eta"] is not None else "–"
            new = [_num(r.get(k), ".3f") for k in PRDC_KEYS] + [_num(r.get("mean_pixel"), ".3f")]
            if accuracy:
                new.append(_num(r.get("class_accuracy"), ".3f"))
            if judge:
                spread = f" ± {r['classifier_is_std']:.2f}" if r.get("classifier_is_std") is not None else ""
                new += [f"{r['classifier_is']:.2f}{spread}", str(r["classes_present"]),
                        _num(r["class_entropy"], ".3f")]
            w = f"{r['guidance_scale']:g} | " if cond else ""
            ag = r.get("autoguidance_scale") or 1.0
            sampler = r["sampler"] + (f" (autoguidance {ag:g})" if ag != 1.0 and ":ag=" not in r["sampler"] else "")
            lines.append(
                f"| {sampler} | {w}{r['steps']} | {eta} | {'yes' if r['adds_noise'] else 'no'} | {r['num_fake']} | "
                f"{r['fid']:.2f} | {1e3 * r['kid_mean']:.2f} | {1e3 * r['kid_std']:.2f} | {' | '.join(new)} | "
                f"{r['wall_time_s']:.1f} | {grid} |"
            )
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"


def write_results(
    results: dict[str, Any], grids: dict[str, torch.Tensor], output_dir: str | os.PathLike
) -> dict[str, Any]:
    """Step 5 of [`evaluate`]: one sample grid per sampler (and guidance scale: `samples_<sampler>-w<w>.png`, one
    class per column), `results.md` and `results.json` in `output_dir`, each written atomically; the rows get their
    grid's file name and `results` its `markdown` and `files`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    conditioning = results.get("conditioning")
    for row in results["samples"]:
        key = row_key(parse_sampler(row["sampler"]).slug, row.get("guidance_scale"))
        if key in grids:
            path = out / f"samples_{key}.png"
            # conditional: image i is class i mod K, so K per row puts one class in each column
            nrow = conditioning["num_classes"] if conditioning else math.ceil(math.sqrt(len(grids[key])))
            save_image_grid(grids[key], path, nrow=nrow)
            row["grid"] = path.name
    results["markdown"] = results_markdown(results)
    atomic_write_text(out / "results.md", results["markdown"])
    results["files"] = {**results.get("files", {}), "json": str(out / "results.json"),
                        "markdown": str(out / "results.md"),
                        "grids": [str(out / r["grid"]) for r in results["samples"] if "grid" in r]}
    saved = {k: v for k, v in results.items() if k != "markdown"}
    atomic_write_text(out / "results.json", json.dumps(saved, indent=2, default=_json_default) + "\n")
    return results["files"]


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, SamplerSpec):
        return value.spec
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
