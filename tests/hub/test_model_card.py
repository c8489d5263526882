"""The model card: Hub metadata that tells the truth (data sets, license, base model), the final loss, a usage
snippet that runs for the trained model, and the metrics markers `ddpm-ext evaluate` replaces."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml
from diffusers import DDPMPipeline

from ddpm_ext import DDIMExtScheduler, DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.evaluation import report
from ddpm_ext.hub import model_card, write_model_card
from ddpm_ext.pipelines.guidance import set_class_names

ARGS = {"seed": 0, "eval_batch_size": 4, "ddpm_num_inference_steps": 100, "use_ema": True, "ema_max_decay": 0.999,
        "loss_type": "simple", "model_config": "tiny", "hub_token": "hf_must_not_appear", "learning_rate": 2e-3}
INFO = {"global_step": 12, "final_loss": 0.123456, "num_train_images": 48, "resolution": 16, "num_processes": 1}


@pytest.fixture
def folder(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline_dir, out)
    return out


def card(folder, args=None, **kwargs):
    path = write_model_card(folder, args={**ARGS, **(args or {})}, info=INFO, **kwargs)
    text = path.read_text()
    meta = yaml.safe_load(text.split("---")[1])
    return text, meta


def test_local_image_folder_claims_no_dataset_and_no_license(folder):
    text, meta = card(folder, dataset_name=None, train_data_dir="/home/me/photos")
    assert "datasets" not in meta and "license" not in meta  # today: datasets [imagefolder], license apache-2.0
    assert "a local image folder (not published)" in text and "none stated" in text
    assert "hf_must_not_appear" not in text


def test_builtin_dataset_keeps_its_real_license_and_is_not_a_hub_id(folder):
    text, meta = card(folder, dataset_name="mnist-5k")
    assert meta["license"] == "cc-by-sa-3.0" and "datasets" not in meta  # today: datasets [mnist-5k]
    assert "mnist-5k, built into ddpm_ext" in text and "LeCun" in text


def test_hub_dataset_id_license_flag_and_base_model(folder, tmp_path):
    _, meta = card(folder, dataset_name="someone/faces",
                   args={"hub_license": "mit", "pretrained_model_name_or_path": "google/ddpm-cifar10-32"})
    assert meta["datasets"] == ["someone/faces"] and meta["license"] == "mit"
    assert meta["base_model"] == "google/ddpm-cifar10-32"
    # a local pretrained folder is no Hub id: no base_model
    _, meta = card(folder, dataset_name="someone/faces", args={"pretrained_model_name_or_path": str(tmp_path)})
    assert "base_model" not in meta and "license" not in meta


def test_final_loss_and_metrics_markers(folder):
    text, _ = card(folder, dataset_name="mnist-5k")
    assert "| final training loss | 0.1235 |" in text
    start, end = text.index("<!-- ddpm_ext:metrics:start -->"), text.index("<!-- ddpm_ext:metrics:end -->")
    assert start < end


def test_usage_snippet_runs_for_the_trained_model(folder):
    """The tiny pipeline has T = 20: today's hard-coded num_inference_steps=100 raises for it."""
    text, _ = card(folder, dataset_name="mnist-5k")
    snippets = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(snippets) == 2
    for code in snippets:
        code = code.replace(f'"{folder.name}"', repr(str(folder))).replace("batch_size=16", "batch_size=1")
        namespace = {"DDPMExtPipeline": DDPMExtPipeline, "DDIMExtScheduler": DDIMExtScheduler,
                     "DDPMPipeline": DDPMPipeline}
        exec(compile(code, "snippet", "exec"), namespace)  # noqa: S102 the card's own code, on the saved pipeline
        assert len(namespace["images"]) == 1
    assert "num_inference_steps=20)" in text


def test_template_holds_the_metrics_markers_that_evaluate_replaces():
    text = model_card.TEMPLATE.read_text()
    assert text.count(model_card.METRICS_START) == 1 and text.count(model_card.METRICS_END) == 1
    assert text.index(model_card.METRICS_START) < text.index(model_card.METRICS_END)
    assert (report.METRICS_START, report.METRICS_END) == (model_card.METRICS_START, model_card.METRICS_END)


def test_conditional_card_names_the_classes_and_its_snippet_samples_a_class(tmp_path):
    unet = build_unet("tiny", num_class_embeds=3)  # 2 classes + the null class
    set_class_names(unet, ["cat", "dog"])
    folder = tmp_path / "cond"
    DDPMExtPipeline(unet=unet, scheduler=DDPMExtScheduler(num_train_timesteps=10)).save_pretrained(folder)
    info = {**INFO, "num_classes": 2, "class_names": ["cat", "dog"], "class_dropout_prob": 0.1}
    args = {**ARGS, "eval_batch_size": 5, "guidance_scale": 1.5}
    text = write_model_card(folder, args=args, info=info, dataset_name=None, train_data_dir="/data/pets").read_text()
    assert "A class-conditional image-generation" in text
    # the training grid: eval_batch_size // K images per class, one row per class (sample_grid_call)
    assert "*4 samples, one row of 2 per class, guidance w = 1.5, 100 respaced DDPM steps, seed 0.*" in text
    assert "class_labels=['cat', 'dog'], guidance_scale=1.5," in text
    assert "| classes | 2: cat, dog (null class id 2, label dropout 0.1) |" in text
    assert "cannot sample it" in text  # vanilla DDPMPipeline never passes labels
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    code = code.replace(f'"{folder.name}"', repr(str(folder)))
    namespace = {"DDPMExtPipeline": DDPMExtPipeline, "DDIMExtScheduler": DDIMExtScheduler}
    exec(compile(code, "snippet", "exec"), namespace)  # noqa: S102 the card's own code, on the saved pipeline
    assert len(namespace["images"]) == 2  # class_labels=['cat', 'dog']
