"""What only an accelerator can show: sampling on the device against the CPU, per-image generators on the device,
and exact checkpoint resume on the device (under fp32, bf16 and fp16 mixed precision).

Every test here is marked `gpu` and runs on `DDPM_EXT_TEST_DEVICE` (default `cuda`); without CUDA it is skipped.
`benchmarks/gpu_check.py` runs them with `pytest -m gpu tests/gpu` (and `--cpu` with DDPM_EXT_TEST_DEVICE=cpu, so
that the tests themselves keep running between GPU sessions; on a CPU, "device against CPU" is trivially equal).
Each test records what it measured with `record_property`, which `--junitxml` keeps for the check's table.

Tolerances (max |Δ| in [0, 1] pixel units, one 8-bit level = 3.9e-3):

- strict fp32 (TF32 off for convolutions and matrix products): 1e-3 for device against CPU and for batch 4
  against batch 2 on the device;
- the device's default math (cuDNN convolutions in TF32 on Ampere and later): 2e-2 for device against CPU. This one
  is an estimate from TF32's 10-bit mantissa, not a measurement: no GPU run existed when it was written.
- checkpoint resume: exact (every weight of the pipeline, the checkpoint's UNet and its EMA equal to the bit), with
  `torch.use_deterministic_algorithms(True)` and `CUBLAS_WORKSPACE_CONFIG=:4096:8` in the training processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddpm_ext import DDIMExtScheduler, DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.seeding import image_generators

ROOT = Path(__file__).resolve().parents[2]
DEVICE = os.environ.get("DDPM_EXT_TEST_DEVICE", "cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (or DDPM_EXT_TEST_DEVICE=cpu to run these on the CPU)"),
]

STRICT_TOL = 1e-3  # strict fp32 on both sides: round-off only, far below one 8-bit level
DEFAULT_MATH_TOL = 2e-2  # TF32 convolutions on the device (estimate, see the module docstring)
STEPS = 20  # sampling steps of the comparisons (respaced from T = 1000)


@pytest.fixture
def device() -> torch.device:
    return torch.device(DEVICE)


@pytest.fixture
def strict_fp32():
    """TF32 off for cuDNN convolutions and CUDA matrix products during the test (no-ops on a CPU)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def rgb_pipeline(scheduler) -> DDPMExtPipeline:
    """A `tiny`-preset UNet at 16×16 RGB with random weights (seed 0): seconds on a CPU, the same on every device."""
    torch.manual_seed(0)
    unet = build_unet("tiny", in_channels=3, out_channels=3, sample_size=16).eval()
    pipe = DDPMExtPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


SCHEDULERS = {
    "ddpm": (lambda: DDPMExtScheduler(), {}),
    "ddim": (lambda: DDIMExtScheduler(), {"eta": 0.0}),
}


def sample(pipe: DDPMExtPipeline, device: torch.device, kwargs: dict) -> torch.Tensor:
    """4 images on `device` from CPU generators (the same x_T and z on every device): (4, 3, 16, 16) in [0, 1]."""
    pipe.to(device)
    out = pipe(4, generator=image_generators(0, 0, 4), num_inference_steps=STEPS, output_type="pt", **kwargs)
    return out.images.float().cpu()


@pytest.mark.parametrize("math", ["strict_fp32", "default_math"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_sampling_on_the_device_matches_the_cpu(name, math, device, request, record_property):
    make_scheduler, kwargs = SCHEDULERS[name]
    pipe = rgb_pipeline(make_scheduler())
    on_cpu = sample(pipe, torch.device("cpu"), kwargs)
    if math == "strict_fp32":
        request.getfixturevalue("strict_fp32")
    on_device = sample(pipe, device, kwargs)
    delta = (on_device - on_cpu).abs().max().item()
    record_property("max_abs_diff", delta)
    tol = STRICT_TOL if math == "strict_fp32" else DEFAULT_MATH_TOL
    record_property("tolerance", tol)
    assert on_cpu.std() > 0.05  # real images, not a constant that would match anywhere
    assert delta <= tol, f"{name} on {device} ({math}) differs from the CPU by {delta:.2e} > {tol}"


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_per_image_generators_on_the_device_give_image_i_whatever_the_batch(name, device, strict_fp32,
                                                                               record_property):
    make_scheduler, kwargs = SCHEDULERS[name]
    pipe = rgb_pipeline(make_scheduler()).to(device)

    def run(start: int, count: int):
        gens = image_generators(5, start, count, device=device)
        return pipe(count, generator=gens, num_inference_steps=STEPS, output_type="pt", return_trajectory=True,
                    **kwargs)

    four, last_two = run(0, 4), run(2, 2)
    # x_T of images 2 and 3 comes from their own generators: the same draws, to the bit, in either batch
    torch.testing.assert_close(four.trajectory[0][2:], last_two.trajectory[0], rtol=0, atol=0)
    delta = (four.images[2:] - last_two.images).abs().max().item()
    record_property("max_abs_diff", delta)
    record_property("tolerance", STRICT_TOL)
    assert delta <= STRICT_TOL, f"image i depends on the batch on {device}: {delta:.2e} > {STRICT_TOL}"
    if device.type == "cuda":  # a CUDA generator draws its own stream: the device's generators were really used
        on_cpu_gens = pipe(2, generator=image_generators(5, 2, 2), num_inference_steps=STEPS, output_type="pt",
                           return_trajectory=True, **kwargs)
        assert not torch.equal(on_cpu_gens.trajectory[0], last_two.trajectory[0].cpu())


# --------------------------------------------------------------------------------------------------
# Checkpoint resume on the device
# --------------------------------------------------------------------------------------------------
# A tiny UNet on 8×8 MNIST crops: seconds per run. 6 steps, checkpoints at 3 and 6.
TINY = ["--model_config", "tiny", "--resolution", "8", "--train_batch_size", "8", "--max_train_samples", "48",
        "--eval_batch_size", "4", "--ddpm_num_inference_steps", "4", "--ddpm_num_steps", "100",
        "--lr_warmup_steps", "2", "--max_train_steps", "6", "--checkpointing_steps", "3",
        "--checkpoints_total_limit", "3", "--cpu_threads", "1"]

# The training runs in a fresh process each, with deterministic kernels: on CUDA, cuDNN's backward convolutions and
# cuBLAS's split reductions may otherwise add in a different order from run to run.
_TRAIN = """
import sys
import torch
torch.backends.cudnn.benchmark = False
torch.use_deterministic_algorithms(True)
from accelerate import PartialState
from ddpm_ext.training.train import main
code = main(sys.argv[1:])
print(f"training device: {PartialState().device.type}")
sys.exit(code)
"""


def train(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if DEVICE == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the training picks the accelerator itself: keep it on the CPU here
    result = subprocess.run([sys.executable, "-c", _TRAIN, *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, f"training failed ({result.returncode}):\n{result.stderr[-4000:]}"
    return result


def safetensors_of(folder: Path, sub: str) -> dict[str, torch.Tensor]:
    return load_file(folder / sub / "diffusion_pytorch_model.safetensors")


PRECISIONS = ["no", "bf16", "fp16"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_checkpoint_resume_on_the_device_is_exact(precision, device, tmp_path, record_property):
    if precision == "fp16" and device.type != "cuda":
        pytest.skip("fp16 mixed precision trains with a gradient scaler on CUDA only")
    if precision == "no" and device.type == "cpu":  # keeps the CPU smoke run of gpu_check.py short
        pytest.skip("on the CPU: tests/training/test_training.py::test_resume_after_sigkill_equals_uninterrupted_run")
    straight = tmp_path / "straight"
    result = train(TINY + ["--mixed_precision", precision, "--output_dir", str(straight)])
    assert f"training device: {device.type}" in result.stdout
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    # resume the copy at step 3: steps 4..6 are trained again in a new process, checkpoint-6 is set aside first
    log = train(TINY + ["--mixed_precision", precision, "--output_dir", str(resumed),
                        "--resume_from_checkpoint", str(resumed / "checkpoint-3")])
    assert "Resumed from" in log.stdout + log.stderr
    compared = 0
    for a, b, sub in [(straight, resumed, "unet"),  # the pipeline: the EMA weights
                      (straight / "checkpoint-6", resumed / "checkpoint-6", "unet"),
                      (straight / "checkpoint-6", resumed / "checkpoint-6", "unet_ema")]:
        wa, wb = safetensors_of(a, sub), safetensors_of(b, sub)
        assert wa.keys() == wb.keys()
        for k in wa:
            # exact by construction: same device, deterministic kernels, randomness keyed by the step number
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=f"{b}/{sub}: {k} differs")
            compared += 1
    ema = safetensors_of(resumed / "checkpoint-6", "unet_ema")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in ema.values()), "EMA not finite fp32"
    record_property("tensors_compared", compared)
