"""Model cards of pipelines written by the training script (the template ships inside the package)."""

from __future__ import annotations

import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import validate_repo_id
from safetensors import safe_open

from ..data import BUILTIN_DATASETS
from ..files import atomic_write_text
from ..pipelines.guidance import grid_images_per_class
from ..schedulers.scheduling_common import DEFAULT_SAMPLING_STEPS, lecture_beta_schedule

__all__ = ["METRICS_END", "METRICS_START", "TEMPLATE", "code_span", "data_description", "escape_markdown", "is_repo_id",
           "usage_id", "write_model_card"]

TEMPLATE = Path(__file__).resolve().parent / "model_card_template.md"
# The metrics section of the template; `ddpm-ext evaluate --update_model_card` replaces what lies between them.
METRICS_START = "<!-- ddpm_ext:metrics:start -->"
METRICS_END = "<!-- ddpm_ext:metrics:end -->"
_SECRET_KEYS = {"hub_token", "token"}
# Markdown's inline punctuation that could start emphasis, code, a link, a table cell or a strike-through; `<`, `>`
# and `&` are HTML-escaped first (`#`, `+`, `-`, `.` only act at a line's start, which a value never is).
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\]|~])")


def escape_markdown(value: Any) -> str:
    """`value` as inert Markdown text: user-given data (class and folder names, repo ids, data set names, paths)
    rendered as itself, never as HTML or Markdown.

    HTML's `&`, `<`, `>` become entities, Markdown's inline punctuation is backslash-escaped, and every run of
    white space (line breaks included, which could start a new block) becomes one space.

    Example:

    ```py
    >>> escape_markdown("<img src=x onerror=alert(1)> [a](b)\\n# c_d")
    '&lt;img src=x onerror=alert(1)&gt; \\\\[a\\\\](b) # c\\\\_d'

    ```
    """
    text = html.escape(" ".join(str(value).split()), quote=False)
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)


def code_span(value: Any) -> str:
    """`value` as an inline code span: shown verbatim (`fixed_large` keeps its underscore), never as HTML or
    Markdown. The backtick fence outlasts any run of backticks in the value, and white space collapses to one space.

    Example:

    ```py
    >>> code_span("fixed_large"), code_span("a`b")
    ('`fixed_large`', '``a`b``')

    ```
    """
    text = " ".join(str(value).split())
    fence = "`" * (1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def usage_id(output_dir: str | os.PathLike, repo_id: str | None = None) -> str:
    """What the card's usage snippets load, as a Python string literal (`repr`, so no id or path can end the
    string): the Hub repo id when the pipeline is pushed, else the folder's absolute path (the snippet then works
    from any working directory)."""
    return repr(repo_id if repo_id else str(Path(output_dir).resolve()))


def _dataset_info(dataset_name: str | None) -> dict[str, str]:
    """License id (Hub spelling), attribution and description of a built-in data set; empty for other data."""
    info = BUILTIN_DATASETS.get(dataset_name) if dataset_name else None
    if info is None:
        return {}
    return {"license_id": info.license.lower().replace(" ", "-"), "attribution": info.attribution,
            "description": info.description}


def is_repo_id(name: Any) -> bool:
    """Whether `name` is a valid Hub repo id ('name' or 'org/name', huggingface_hub's `validate_repo_id`)."""
    try:
        validate_repo_id(name)
    except ValueError:
        return False
    return isinstance(name, str) and bool(name)


def _is_hub_id(name: str | None) -> bool:
    """Whether `name` is a Hub repo id rather than a local path."""
    return is_repo_id(name) and not os.path.exists(name)


def data_description(dataset_name: str | None, train_data_dir: str | None = None) -> tuple[str, list[str] | None]:
    """The card's text for where the data came from, and the `datasets:` metadata (real Hub ids only)."""
    builtin = _dataset_info(dataset_name)
    if train_data_dir:
        return "a local image folder (not published)", None
    if builtin:
        return f"{escape_markdown(dataset_name)}, built into ddpm_ext: {builtin['description']}", None
    if _is_hub_id(dataset_name):  # a valid id holds only A-Z a-z 0-9 - _ . /: safe in the URL as it is
        return (f"the Hub data set [{escape_markdown(dataset_name)}](https://huggingface.co/datasets/{dataset_name})",
                [dataset_name])
    return "a local data set (not published)", None


def write_model_card(
    output_dir: str | os.PathLike,
    *,
    args: dict[str, Any],
    info: dict[str, Any],
    dataset_name: str | None,
    train_data_dir: str | None = None,
    grid_path: str | os.PathLike | None = None,
    template_path: str | os.PathLike = TEMPLATE,
) -> Path:
    """Render the model-card template (`ddpm_ext/hub/model_card_template.md`) into `output_dir/README.md` and return
    its path.

    The card's metadata follows the Hub's rules: `datasets:` lists only real Hub data set ids (a built-in or local
    data set is described in the text instead), `base_model:` names the pretrained pipeline when fine-tuning from a
    Hub repo, and `license:` is `args["hub_license"]` when given, else the built-in data set's license, else absent
    (no license is asserted for your own data). The file is written atomically.

    Args:
        output_dir: the saved pipeline folder (its `scheduler/` and `unet/` configs are read).
        args: the training flags (tokens are never read from it).
        info: training facts (global_step, final_loss, num_processes, num_train_images, resolution, ...).
        dataset_name: the data set trained on (a built-in name or a Hub id); None with `train_data_dir`.
        train_data_dir: the local image folder trained on, if any.
        grid_path: the sample grid (copied to `samples.png` beside the card by the training script).
        template_path: a Jinja template with a `{{ card_data }}` front matter.

    Every user-given string in the card's text (class names, ids, data set names, paths) is escaped for Markdown
    and HTML ([`escape_markdown`]); the usage snippets load a Python literal (`repr`) of the repo id when
    `args["push_to_hub"]` is set, else of the folder's absolute path ([`usage_id`]), so they run from any working
    directory and no id can end the string.

    Raises:
        ValueError: when the template is missing, or `args["push_to_hub"]` is set and the repo id (`hub_model_id`,
            else the folder's name) is not a valid Hub repo id.

    Example:

    ```py
    >>> from ddpm_ext.hub import write_model_card
    >>> write_model_card(
    ...     "outputs/mnist", args={"seed": 0}, info={"global_step": 10}, dataset_name="mnist-5k"
    ... )  # doctest: +SKIP
    PosixPath('outputs/mnist/README.md')
    ```
    """
    out = Path(output_dir)
    if not Path(template_path).is_file():
        raise ValueError(f"`template_path` {template_path} does not exist.")
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    unet_config = json.loads((out / "unet" / "config.json").read_text())
    data = _dataset_info(None if train_data_dir else dataset_name)
    data_text, hub_datasets = data_description(dataset_name, train_data_dir)
    metrics_file = out / "metrics.json"
    metrics = "No evaluation has been run yet (`ddpm-ext evaluate` writes its results here)."
    if metrics_file.is_file():
        rows = json.loads(metrics_file.read_text())
        metrics = "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows.items())
    safe_args = {k: v for k, v in args.items() if k not in _SECRET_KEYS}
    pretrained = safe_args.get("pretrained_model_name_or_path")
    license_id = safe_args.get("hub_license") or data.get("license_id")
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        license=license_id,
        datasets=hub_datasets,
        base_model=pretrained if _is_hub_id(pretrained) else None,
        tags=["ddpm_ext", "diffusers", "ddpm", "unconditional-image-generation", f"beta-{scheduler['beta_schedule']}"],
    )
    repo_id = safe_args.get("hub_model_id") or out.name  # the push's repo (ddpm_ext.training.outputs.hub_repo_id)
    if safe_args.get("push_to_hub") and not is_repo_id(repo_id):
        raise ValueError(f"`args['hub_model_id']` must be a Hub repo id ('name' or 'org/name' of A-Z a-z 0-9 - _ .) "
                         f"when `args['push_to_hub']` is set, got {repo_id!r}.")
    n_params = _count_parameters(out / "unet")
    T = scheduler["num_train_timesteps"]
    final_loss = info.get("final_loss")
    guidance_scale = float(safe_args.get("guidance_scale") or 1.0)  # the conditional grids' w (training default 1)
    class_names = [str(n) for n in info.get("class_names") or []] or None
    md = escape_markdown  # every user-given string in the card's text: data, never HTML or Markdown
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=md(repo_id.split("/")[-1]),
        # the snippets' Python literal: the repo id once pushed, else the folder's absolute path (any cwd)
        load_id=usage_id(out, repo_id if safe_args.get("push_to_hub") else None),
        grid_text=_grid_text(safe_args.get("eval_batch_size", ""), class_names, guidance_scale),
        sample_steps=md(safe_args.get("ddpm_num_inference_steps", "")),
        inference_steps=min(int(safe_args.get("ddpm_num_inference_steps") or DEFAULT_SAMPLING_STEPS), T),
        ddim_steps=min(20, T),  # the card's DDIM example: 20 deterministic steps (or T, if fewer)
        seed=md(safe_args.get("seed", "")),
        num_train_timesteps=T,
        beta_schedule=md(_schedule_text(scheduler)),
        variance_type=code_span(scheduler.get("variance_type", "fixed_small")),  # config names, shown as written
        prediction_type=code_span(scheduler.get("prediction_type", "epsilon")),
        loss_type={"simple": "L_simple (Algorithm 1)", "hybrid": "L_hybrid = L_simple + 0.001 L_vlb"}.get(
            safe_args.get("loss_type"), "L_simple"
        )
        + (f", min-SNR-γ weighted (γ = {md(safe_args['snr_gamma'])})" if safe_args.get("snr_gamma") else ""),
        dataset=data_text,
        num_train_images=md(info.get("num_train_images", "")),
        resolution=md(info.get("resolution", unet_config.get("sample_size"))),
        model_config=md(f"fine-tuned from {pretrained}" if pretrained else safe_args.get("model_config", "")),
        num_parameters=f"{n_params / 1e6:.2f} M",
        global_step=md(info.get("global_step", "")),
        final_loss=(
            f"{final_loss:.4f}" if isinstance(final_loss, (int, float)) and math.isfinite(final_loss)
            else "not recorded"
        ),
        train_batch_size=md(safe_args.get("train_batch_size", "")),
        num_processes=md(info.get("num_processes", 1)),
        gradient_accumulation_steps=md(safe_args.get("gradient_accumulation_steps", 1)),
        learning_rate=md(safe_args.get("learning_rate", "")),
        lr_scheduler=md(safe_args.get("lr_scheduler", "")),
        lr_warmup_steps=md(safe_args.get("lr_warmup_steps", "")),
        ema=f"max decay {md(safe_args.get('ema_max_decay'))}" if safe_args.get("use_ema") else "off",
        mixed_precision=md(safe_args.get("mixed_precision", "no")),
        metrics=metrics,
        license_text=(md(license_id) if license_id else "none stated (the data are the trainer's own; ask them)"),
        attribution=data.get("attribution", ""),
        class_names=class_names and [md(n) for n in class_names],
        # Python literals in the snippets (repr: no name can end the string or the comment's line)
        class_names_code=", ".join(repr(n) for n in class_names or []),
        class_dropout_prob=md(info.get("class_dropout_prob")),
        example_labels=", ".join(repr(n) for n in (class_names or [])[:2]),
        example_count=len((class_names or [])[:2]),
        guidance_scale=f"{guidance_scale:g}",
        autoguidance=info.get("autoguidance"),
    )
    return atomic_write_text(out / "README.md", str(card))


def _grid_text(num_images: Any, class_names: list[str] | None, guidance_scale: float) -> str:
    """What the training grid shows: its image count (a conditional grid: one row per class, the training
    script's `sample_grid_call`) and its classifier-free guidance."""
    if not class_names or not isinstance(num_images, int):
        return f"{escape_markdown(num_images)} samples"
    per_class = grid_images_per_class(num_images, len(class_names))
    return f"{per_class * len(class_names)} samples, one row of {per_class} per class, guidance w = {guidance_scale:g}"


def _schedule_text(scheduler: dict[str, Any]) -> str:
    name = lecture_beta_schedule(scheduler["beta_schedule"])
    if name == "cosine":
        extra = scheduler.get("_ddpm_ext_config", {})
        return f"cosine (s = {extra.get('cosine_s', 0.008)}, β cap {extra.get('max_beta', 0.999)})"
    return f"{name} (β from {scheduler['beta_start']} to {scheduler['beta_end']})"


def _count_parameters(unet_dir: Path) -> int:
    total = 0
    for f in unet_dir.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            total += sum(math.prod(st.get_slice(key).get_shape()) for key in st.keys())
    return total
