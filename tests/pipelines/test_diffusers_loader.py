"""The whole pipeline through diffusers' own loader: `DiffusionPipeline.from_pretrained(..., custom_pipeline=...)`.

ddpm_ext saves diffusers' custom-pipeline file `pipeline.py` beside `model_index.json`; with `custom_pipeline` and
`trust_remote_code=True` diffusers runs it, and it imports the installed ddpm_ext's `DDPMExtCustomPipeline`, which
restores ddpm_ext's scheduler and the autoguidance guide. Without `custom_pipeline`, the folder stays diffusers'
vanilla `DDPMPipeline` (the interoperability contract).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DiffusionPipeline
from hub_servers import publish_folder

from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.pipelines.checkpoint_io import CUSTOM_PIPELINE_FILE, CUSTOM_PIPELINE_SOURCE
from ddpm_ext.pipelines.guidance import AUTOGUIDANCE_SCALE_KEY


def guided_pipe() -> DDPMExtPipeline:
    """A cosine model (s = 0.02: β that diffusers' own keys cannot express) with an autoguidance guide at w = 2."""
    torch.manual_seed(0)
    unet, guide = build_unet("tiny").eval(), build_unet("tiny").eval()
    guide.register_to_config(**{AUTOGUIDANCE_SCALE_KEY: 2.0})
    scheduler = DDPMExtScheduler(num_train_timesteps=50, beta_schedule="cosine", cosine_s=0.02)
    return DDPMExtPipeline(unet=unet, scheduler=scheduler, guide_unet=guide)


def images(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    return pipe(batch_size=2, num_inference_steps=5, generator=g, output_type="np").images


def check_loaded_as_ours(loaded, reference: DDPMExtPipeline) -> None:
    assert isinstance(loaded, DDPMExtPipeline) and type(loaded.scheduler) is DDPMExtScheduler
    assert loaded.scheduler.config._ddpm_ext_config == reference.scheduler.config._ddpm_ext_config
    assert loaded.guide_unet is not None and loaded.autoguidance_scale == 2.0
    for a, b in zip(reference.guide_unet.state_dict().values(), loaded.guide_unet.state_dict().values()):
        assert torch.equal(a, b)
    # exact by construction: same weights, shapes, process and thread count (same kernels), same scheduler
    np.testing.assert_array_equal(images(loaded), images(reference))


def test_saved_folder_has_the_custom_pipeline_file(tmp_path):
    guided_pipe().save_pretrained(tmp_path)
    assert (tmp_path / CUSTOM_PIPELINE_FILE).read_text() == CUSTOM_PIPELINE_SOURCE
    # the file imports only the installed package: diffusers copies no relative module (no FileNotFoundError)
    assert "from ." not in CUSTOM_PIPELINE_SOURCE and "from ddpm_ext." in CUSTOM_PIPELINE_SOURCE


def test_local_folder_loads_as_ddpm_ext_with_the_guide(tmp_path):
    guided_pipe().save_pretrained(tmp_path)
    reference = DDPMExtPipeline.from_pretrained(tmp_path)
    for custom_pipeline in ("pipeline", str(tmp_path)):  # the file's name, or the folder that holds pipeline.py
        loaded = DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=custom_pipeline, trust_remote_code=True)
        check_loaded_as_ours(loaded, reference)
    # without custom_pipeline: diffusers' vanilla pipeline, the guide not its (the documented contract)
    vanilla = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(vanilla) is DDPMPipeline and set(vanilla.components) == {"unet", "scheduler"}
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline="pipeline")


@pytest.mark.slow  # a fresh interpreter imports diffusers (~14 s on the 2-core machine)
def test_no_import_of_ddpm_ext_by_the_user(tmp_path):
    """In a fresh interpreter that never imports ddpm_ext itself: diffusers' loader alone gives ddpm_ext's pipeline."""
    guided_pipe().save_pretrained(tmp_path)
    script = textwrap.dedent(f"""
        import sys
        from diffusers import DiffusionPipeline
        assert "ddpm_ext" not in sys.modules
        pipe = DiffusionPipeline.from_pretrained({str(tmp_path)!r}, custom_pipeline="pipeline", trust_remote_code=True)
        print(type(pipe).__mro__[1].__name__, type(pipe.scheduler).__name__, pipe.guide_unet is not None)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["DDPMExtPipeline", "DDPMExtScheduler", "True"]


def test_hub_repo_loads_as_ddpm_ext_with_the_guide(olah_hub, tmp_path):
    # diffusers downloads only model_index's components (and pipeline.py): the guide comes from the same commit
    pipe = guided_pipe()
    pipe.save_pretrained(tmp_path / "pipe")
    publish_folder(olah_hub.mirrors_root, "ddpm-ext-tests/custom-pipeline", tmp_path / "pipe")
    reference = DDPMExtPipeline.from_pretrained(tmp_path / "pipe")
    loaded = DiffusionPipeline.from_pretrained("ddpm-ext-tests/custom-pipeline", revision="main",
                                               custom_pipeline="pipeline", trust_remote_code=True)
    check_loaded_as_ours(loaded, reference)
    vanilla = DiffusionPipeline.from_pretrained("ddpm-ext-tests/custom-pipeline", revision="main")
    assert type(vanilla) is DDPMPipeline
