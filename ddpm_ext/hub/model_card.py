"""Model cards of pipelines written by the training script (the template ships inside the package)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["TEMPLATE", "write_model_card"]

TEMPLATE = Path(__file__).resolve().parent / "model_card_template.md"
_SECRET_KEYS = {"hub_token", "token"}


def _dataset_info(dataset_name: str) -> dict[str, str]:
    """License id (Hub spelling) and attribution of a built-in data set; empty for other data."""
    from ..data import BUILTIN_DATASETS

    info = BUILTIN_DATASETS.get(dataset_name)
    if info is None:
        return {}
    return {"license_id": info.license.lower().replace(" ", "-"), "attribution": info.attribution}


def write_model_card(
    output_dir: str | os.PathLike,
    *,
    args: dict[str, Any],
    info: dict[str, Any],
    dataset_name: str,
    grid_path: str | os.PathLike | None = None,
    template_path: str | os.PathLike = TEMPLATE,
) -> Path:
    """Render the model-card template (`ddpm_ext/hub/model_card_template.md`) into `output_dir/README.md` and return its path.

    Args:
        output_dir: the saved pipeline folder (its `scheduler/` and `unet/` configs are read).
        args: the training flags (tokens are never read from it).
        info: training facts (global_step, num_processes, num_train_images, resolution, ...).
        dataset_name: the data set trained on; built-in ones contribute license and attribution.
        grid_path: the sample grid (copied to `samples.png` beside the card by the training script).
        template_path: a Jinja template with a `{{ card_data }}` front matter.
    """
    from huggingface_hub import ModelCard, ModelCardData

    out = Path(output_dir)
    if not Path(template_path).is_file():
        raise ValueError(f"`template_path` {template_path} does not exist.")
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    unet_config = json.loads((out / "unet" / "config.json").read_text())
    data = _dataset_info(dataset_name)
    metrics_file = out / "metrics.json"
    metrics = "No evaluation has been run yet."
    if metrics_file.is_file():
        rows = json.loads(metrics_file.read_text())
        metrics = "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows.items())
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        license=data.get("license_id", "apache-2.0"),
        datasets=[dataset_name] if dataset_name else None,
        tags=["ddpm_ext", "diffusers", "ddpm", "unconditional-image-generation", f"beta-{scheduler['beta_schedule']}"],
    )
    safe_args = {k: v for k, v in args.items() if k not in _SECRET_KEYS}
    repo_id = safe_args.get("hub_model_id") or out.name
    n_params = _count_parameters(out / "unet")
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        num_samples=safe_args.get("eval_batch_size", ""),
        sample_steps=safe_args.get("ddpm_num_inference_steps", ""),
        seed=safe_args.get("seed", ""),
        num_train_timesteps=scheduler["num_train_timesteps"],
        beta_schedule=_schedule_text(scheduler),
        variance_type=scheduler.get("variance_type", "fixed_small"),
        prediction_type=scheduler.get("prediction_type", "epsilon"),
        loss_type={"simple": "L_simple (Algorithm 1)", "hybrid": "L_hybrid = L_simple + 0.001 L_vlb"}.get(safe_args.get("loss_type"), "L_simple"),
        dataset=dataset_name,
        num_train_images=info.get("num_train_images", ""),
        resolution=info.get("resolution", unet_config.get("sample_size")),
        model_config=safe_args.get("pretrained_model_name_or_path") or safe_args.get("model_config", ""),
        num_parameters=f"{n_params / 1e6:.2f} M",
        global_step=info.get("global_step", ""),
        train_batch_size=safe_args.get("train_batch_size", ""),
        num_processes=info.get("num_processes", 1),
        gradient_accumulation_steps=safe_args.get("gradient_accumulation_steps", 1),
        learning_rate=safe_args.get("learning_rate", ""),
        lr_scheduler=safe_args.get("lr_scheduler", ""),
        lr_warmup_steps=safe_args.get("lr_warmup_steps", ""),
        ema=f"max decay {safe_args.get('ema_max_decay')}" if safe_args.get("use_ema") else "off",
        mixed_precision=safe_args.get("mixed_precision", "no"),
        metrics=metrics,
        attribution=data.get("attribution", ""),
    )
    path = out / "README.md"
    card.save(path)
    return path


def _schedule_text(scheduler: dict[str, Any]) -> str:
    from ..schedulers.scheduling_common import lecture_beta_schedule

    name = lecture_beta_schedule(scheduler["beta_schedule"])
    if name == "cosine":
        extra = scheduler.get("_ddpm_ext_config", {})
        return f"cosine (s = {extra.get('cosine_s', 0.008)}, β cap {extra.get('max_beta', 0.999)})"
    return f"{name} (β from {scheduler['beta_start']} to {scheduler['beta_end']})"


def _count_parameters(unet_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in unet_dir.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            total += sum(math.prod(st.get_slice(key).get_shape()) for key in st.keys())
    return total
