"""Loading and saving as diffusers users do: diffusers' arguments, variants, refusals before any work, atomic saves."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import load_file, save_file

import ddpm_ext.pipelines.checkpoint_io as checkpoint_io
from ddpm_ext import DDIMExtScheduler, DDPMExtPipeline, DDPMExtScheduler, build_unet

WEIGHTS = "diffusion_pytorch_model.safetensors"


def make_pipe(**scheduler_kwargs) -> DDPMExtPipeline:
    torch.manual_seed(0)
    pipe = DDPMExtPipeline(unet=build_unet("tiny").eval(), scheduler=DDPMExtScheduler(**scheduler_kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(pipe, seed=0):
    pipe.set_progress_bar_config(disable=True)
    # compared with vanilla diffusers' DDPMPipeline: ours asked for diffusers' "leading" spacing explicitly
    same = {"timestep_spacing": "leading"} if isinstance(pipe, DDPMExtPipeline) else {}
    return pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(seed), output_type="np",
                **same).images


@pytest.fixture()
def saved(tmp_path):
    pipe = make_pipe(beta_schedule="cosine", cosine_s=0.02)
    pipe.save_pretrained(tmp_path / "pipe")
    return pipe, tmp_path / "pipe"


# --------------------------------------------------------------------------------------------------
# diffusers' loading arguments
# --------------------------------------------------------------------------------------------------
def test_variant_round_trip_and_fp16_only_checkpoint(saved, tmp_path):
    pipe, folder = saved
    half = make_pipe(beta_schedule="cosine", cosine_s=0.02)
    half.unet.to(torch.float16)
    half.save_pretrained(tmp_path / "fp16", variant="fp16")
    assert sorted(os.listdir(tmp_path / "fp16" / "unet")) == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    loaded = DDPMExtPipeline.from_pretrained(tmp_path / "fp16", variant="fp16", dtype=torch.float32)
    assert loaded.unet.dtype == torch.float32
    for name, p in pipe.unet.state_dict().items():
        torch.testing.assert_close(loaded.unet.state_dict()[name], p.half().float(), rtol=0, atol=0)
    # diffusers loads the same variant folder, with the same images
    vanilla = DDPMPipeline.from_pretrained(tmp_path / "fp16", variant="fp16")
    np.testing.assert_allclose(images(vanilla), images(loaded), atol=1e-5)
    # diffusers' own wording first (its test_loading_with_incorrect_variants_raises_error), then which files exist
    with pytest.raises(ValueError, match=r"^You are trying to load the model files of the `variant=fp16`, but no "
                       r"such modeling files are available\. .*has no weights for `variant`='fp16'"):
        DDPMExtPipeline.from_pretrained(folder, variant="fp16")


def test_load_logs_every_component_as_diffusers_does(saved):
    """diffusers logs "Loaded <name> as <class> from `<name>` subfolder of <folder>." for each component it loads;
    ddpm_ext loads the scheduler (and a guide) itself and logs the same line (diffusers' test_save_load_local)."""
    _, folder = saved
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        DDPMExtPipeline.from_pretrained(folder)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    for line in (f"Loaded unet as UNet2DModel from `unet` subfolder of {folder}.",
                 f"Loaded scheduler as DDPMExtScheduler from `scheduler` subfolder of {folder}."):
        assert line in records


def test_components_are_the_ones_the_pipeline_was_built_with():
    pipe = make_pipe()
    assert set(pipe.components) == {"unet", "scheduler"}  # no guide: not listed (diffusers' test_components_function)
    guided = DDPMExtPipeline(unet=pipe.unet, scheduler=pipe.scheduler, guide_unet=build_unet("tiny"))
    assert set(guided.components) == {"unet", "scheduler", "guide_unet"}
    assert DDPMExtPipeline(**guided.components).guide_unet is guided.guide_unet


def test_dtype_and_torch_dtype_and_low_cpu_mem_usage(saved):
    pipe, folder = saved
    assert DDPMExtPipeline.from_pretrained(folder, dtype=torch.float64).unet.dtype == torch.float64
    with pytest.warns(FutureWarning, match="torch_dtype"):
        assert DDPMExtPipeline.from_pretrained(folder, torch_dtype=torch.float64).unet.dtype == torch.float64
    for low in (True, False):
        loaded = DDPMExtPipeline.from_pretrained(folder, low_cpu_mem_usage=low)
        # exact by construction: same weights, shapes, process and thread count; weights reloaded bit for bit
        np.testing.assert_array_equal(images(loaded), images(pipe))


def test_name_or_path_log_lines_and_component_overrides(saved, caplog):
    pipe, folder = saved
    diffusers_logging.set_verbosity_info()
    try:
        with caplog.at_level(logging.INFO):
            loaded = DDPMExtPipeline.from_pretrained(folder)
    finally:
        diffusers_logging.set_verbosity_warning()
    assert loaded.name_or_path == str(folder)
    assert "Loaded unet as UNet2DModel" in caplog.text
    other_unet = build_unet("tiny")
    swapped = DDPMExtPipeline.from_pretrained(folder, unet=other_unet, scheduler=DDIMExtScheduler())
    assert swapped.unet is other_unet and isinstance(swapped.scheduler, DDIMExtScheduler)


def test_use_safetensors_and_pickle_policy(saved, tmp_path):
    pipe, folder = saved
    with pytest.raises(ValueError, match=r"has no weights"):
        DDPMExtPipeline.from_pretrained(folder, use_safetensors=False, allow_pickle=True)
    pickled = tmp_path / "pickled"
    DDPMPipeline(unet=pipe.unet, scheduler=DDPMScheduler()).save_pretrained(pickled, safe_serialization=False)
    with pytest.raises(ValueError, match=r"`use_safetensors=True` was passed"):
        DDPMExtPipeline.from_pretrained(pickled, use_safetensors=True)
    with pytest.raises(ValueError, match=r"Pickle files can run arbitrary code.*allow_pickle=True"):
        DDPMExtPipeline.from_pretrained(pickled)
    loaded = DDPMExtPipeline.from_pretrained(pickled, allow_pickle=True)
    torch.testing.assert_close(loaded.unet.state_dict(), pipe.unet.state_dict())
    with pytest.raises(ValueError, match=r"`safe_serialization=False` is not supported.*arbitrary code"):
        pipe.save_pretrained(tmp_path / "x", safe_serialization=False)


def test_unknown_loading_argument_lists_the_accepted_ones(saved):
    with pytest.raises(ValueError, match=r"Unexpected arguments \['custom_pipeline'\].*accepts \[.*'variant'"):
        DDPMExtPipeline.from_pretrained(saved[1], custom_pipeline="x")


# --------------------------------------------------------------------------------------------------
# Refused before anything is built
# --------------------------------------------------------------------------------------------------
def _edit_weights(folder, edit):
    path = folder / "unet" / WEIGHTS
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def test_missing_tensor_is_refused_by_name(saved):
    _, folder = saved
    _edit_weights(folder, lambda t: t.pop("conv_out.bias"))
    with pytest.raises(ValueError, match=r"missing 1 tensor\(s\): conv_out.bias.*damaged"):
        DDPMExtPipeline.from_pretrained(folder)


def test_unexpected_tensor_is_refused_by_name(saved):
    _, folder = saved
    _edit_weights(folder, lambda t: t.__setitem__("extra.weight", torch.zeros(2)))
    with pytest.raises(ValueError, match=r"unexpected 1 tensor\(s\): extra.weight"):
        DDPMExtPipeline.from_pretrained(folder)


@pytest.mark.parametrize("where", ["model_index", "unet_config"])
def test_wrong_unet_class_is_refused_before_it_is_built(saved, monkeypatch, where):
    _, folder = saved
    if where == "model_index":
        path = folder / "model_index.json"
        index = json.loads(path.read_text())
        index["unet"] = ["diffusers", "UNet2DConditionModel"]
    else:
        path = folder / "unet" / "config.json"
        index = json.loads(path.read_text())
        index["_class_name"] = "UNet2DConditionModel"
    path.write_text(json.dumps(index))

    def never(*a, **k):
        raise AssertionError("a model was built")

    for cls in (UNet2DConditionModel, UNet2DModel):
        monkeypatch.setattr(cls, "from_pretrained", never)
        monkeypatch.setattr(cls, "__init__", never)
    with pytest.raises(ValueError, match=r"names the unet class 'UNet2DConditionModel'.*nothing was loaded"):
        DDPMExtPipeline.from_pretrained(folder)


def test_scheduler_config_naming_a_model_is_refused(saved):
    _, folder = saved
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config["_class_name"], config["_ddpm_ext_class_name"] = "UNet2DConditionModel", None
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError,
                       match=r"names 'UNet2DConditionModel', which is not a diffusers or ddpm_ext scheduler"):
        DDPMExtPipeline.from_pretrained(folder)


# --------------------------------------------------------------------------------------------------
# Saving: atomic files, the scheduler's own save
# --------------------------------------------------------------------------------------------------
def test_failed_save_keeps_the_earlier_pipeline_and_other_files(saved, monkeypatch):
    pipe, folder = saved
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "state.json").write_text("{}")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    other = make_pipe(beta_schedule="linear")
    torch.nn.init.constant_(other.unet.conv_out.bias, 3.0)

    real_write = checkpoint_io.atomic_write_text

    def disk_full(path, text, *a, **k):  # the scheduler config fails after the weights were written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_io, "atomic_write_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        other.save_pretrained(folder)
    monkeypatch.setattr(checkpoint_io, "atomic_write_text", real_write)
    # every file is whole: the new weights replaced the old ones atomically, the old config and index remain,
    # and nothing else in the folder was touched or left behind
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert set(after) == set(before)
    changed = {p.relative_to(folder).as_posix() for p in after if after[p] != before[p]}
    assert changed == {f"unet/{WEIGHTS}"}
    assert load_file(folder / "unet" / WEIGHTS)["conv_out.bias"].eq(3.0).all()


def test_failed_weights_write_leaves_no_partial_file(saved, monkeypatch):
    pipe, folder = saved
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(UNet2DModel, "save_pretrained", fail)
    with pytest.raises(OSError):
        make_pipe().save_pretrained(folder)
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before and not [p for p in folder.iterdir() if p.name.startswith(".")]
    # exact by construction: same weights, shapes, process and thread count; old weights kept
    np.testing.assert_array_equal(images(DDPMExtPipeline.from_pretrained(folder)), images(pipe))


def test_resave_with_other_sharding_removes_stale_shards(saved):
    pipe, folder = saved
    pipe.save_pretrained(folder, max_shard_size="20KB")
    names = sorted(os.listdir(folder / "unet"))
    assert WEIGHTS not in names and f"{WEIGHTS}.index.json" in names
    # exact by construction: same weights, shapes, process and thread count; re-sharded weights
    np.testing.assert_array_equal(images(DDPMExtPipeline.from_pretrained(folder)), images(pipe))
    pipe.save_pretrained(folder)
    assert sorted(os.listdir(folder / "unet")) == ["config.json", WEIGHTS]


def test_scheduler_saved_alone_loads_in_diffusers_with_the_same_betas(tmp_path):
    ours = DDPMExtScheduler(beta_schedule="cosine", cosine_s=0.02)
    ours.save_pretrained(tmp_path)
    theirs = DDPMScheduler.from_pretrained(tmp_path)
    torch.testing.assert_close(theirs.betas, ours.betas, rtol=0, atol=0)
    back = DDPMExtScheduler.from_pretrained(tmp_path)
    # β: a stand-in for diffusers
    assert back.config._ddpm_ext_config["cosine_s"] == 0.02 and back.config._ddpm_ext_betas_for_diffusers
    np.testing.assert_array_equal(back._betas64, ours._betas64)
    recomputed = DDPMExtScheduler.from_pretrained(tmp_path, cosine_s=0.05)  # β recomputed, not frozen
    assert recomputed.config._ddpm_ext_config["cosine_s"] == 0.05
    assert not np.array_equal(DDPMExtScheduler.from_pretrained(tmp_path, cosine_s=0.05)._betas64, ours._betas64)
    # the pipeline writes the same file
    make_pipe(beta_schedule="cosine", cosine_s=0.02).save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text()) == json.loads(
        (tmp_path / "scheduler_config.json").read_text()
    )
    # a DDIM scheduler too
    DDIMExtScheduler(beta_schedule="cosine", max_beta=0.5).save_pretrained(tmp_path / "ddim")
    torch.testing.assert_close(DDIMScheduler.from_pretrained(tmp_path / "ddim").betas, DDIMExtScheduler(
        beta_schedule="cosine", max_beta=0.5).betas, rtol=0, atol=0)  # fmt: skip
