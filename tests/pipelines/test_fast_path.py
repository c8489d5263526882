"""The fast paths: lean scheduler steps (same bits, no host-device sync), the pipeline's fast path, training flags."""

from __future__ import annotations

import doctest
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

import ddpm_ext.training.setup as train_setup
import ddpm_ext.training.train as train_ddpm
from ddpm_ext import DDIMExtScheduler, DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.schedulers.scheduling_common import draw_noise
from ddpm_ext.training.flags import parse_args as parse_training_args

ROOT = Path(__file__).resolve().parents[2]


def inputs(dtype=torch.float32, shape=(2, 3, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)


# --------------------------------------------------------------------------------------------------
# Scheduler steps: the same bits as the Python-float formulas of earlier versions
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_ddpm_step_is_bit_identical_to_the_float_formula(dtype, variance_type):
    s = DDPMExtScheduler(variance_type=variance_type, beta_schedule="cosine")
    s.set_timesteps(10)
    x, eps = inputs(dtype)
    for i, t in enumerate(s.timesteps.tolist()):
        c = s._steps[i]
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i)).to(dtype)
        x0 = ((x - (1 - c.alpha_bar) ** 0.5 * eps) / c.alpha_bar**0.5).clamp(-1, 1)
        want = c.coef_x0 * x0 + c.coef_xt * x
        if i < len(s.timesteps) - 1:
            log_var = c.small_log_var if variance_type == "fixed_small" else c.large_log_var
            want = want + float(np.exp(0.5 * log_var)) * z
        out = s.step(eps, t, x, variance_noise=z)
        assert torch.equal(out.pred_original_sample, x0) and torch.equal(out.prev_sample, want), (dtype, t)
        x = out.prev_sample


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_step_is_bit_identical_to_the_float_formula(dtype, eta):
    s = DDIMExtScheduler()
    s.set_timesteps(8)
    x, eps = inputs(dtype)
    for i, t in enumerate(s.timesteps.tolist()):
        ab_t, ab_prev, base_var = s._steps[i]
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i)).to(dtype)
        x0 = ((x - (1 - ab_t) ** 0.5 * eps) / ab_t**0.5).clamp(-1, 1)
        sigma = eta * math.sqrt(base_var)
        want = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            want = want + sigma * z
        out = s.step(eps, t, x, eta=eta, variance_noise=z)
        assert torch.equal(out.prev_sample, want), (dtype, t)
        x = out.prev_sample


def test_noise_is_randn_tensor_for_one_generator_and_for_a_list():
    like = torch.empty(3, 2, 5, 5)
    assert torch.equal(draw_noise(like, torch.Generator().manual_seed(4)),
                       randn_tensor(like.shape, generator=torch.Generator().manual_seed(4), dtype=like.dtype))
    gens = lambda: [torch.Generator().manual_seed(k) for k in range(3)]  # noqa: E731
    assert torch.equal(draw_noise(like, gens()), randn_tensor(like.shape, generator=gens(), dtype=like.dtype))
    assert draw_noise(like.double(), None).dtype == torch.float64


@pytest.mark.parametrize("ours,theirs,kwargs", [
    (DDPMExtScheduler(), DDPMScheduler(), {}),
    (DDPMExtScheduler(variance_type="fixed_large"), DDPMScheduler(variance_type="fixed_large"), {}),
    (DDIMExtScheduler(), DDIMScheduler(), {"eta": 1.0}),
], ids=["ddpm", "ddpm-large", "ddim-eta1"])
def test_one_step_equals_diffusers_with_the_same_generator(ours, theirs, kwargs):
    x, eps = inputs()
    for s in (ours, theirs):
        s.set_timesteps(50)
    t = ours.timesteps[10]
    a = ours.step(eps, t, x, generator=torch.Generator().manual_seed(3), **kwargs)
    b = theirs.step(eps, t, x, generator=torch.Generator().manual_seed(3), **kwargs)
    torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, rtol=0, atol=1e-6)


@pytest.fixture
def no_sync(monkeypatch):
    """Make every tensor -> host conversion (the calls that wait for a GPU) raise."""
    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was read back to the host inside step()")

    for name in ("item", "tolist", "numpy", "cpu", "__int__", "__float__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


@pytest.mark.parametrize("make,kwargs", [
    (lambda: DDPMExtScheduler(), {}),
    (lambda: DDPMExtScheduler(variance_type="learned_range"), {}),
    (lambda: DDPMExtScheduler(thresholding=True, prediction_type="v_prediction"), {}),
    (lambda: DDIMExtScheduler(), {"eta": 1.0, "use_clipped_model_output": True}),
], ids=["ddpm", "learned_range", "threshold-v", "ddim"])
def test_step_reads_nothing_back_from_the_device(make, kwargs, request):
    s = make()
    s.set_timesteps(10)
    x, eps = inputs()
    if getattr(s, "learns_variance", False):
        eps = torch.cat([eps, torch.tanh(x)], 1)
    timesteps = s.timesteps.tolist()
    s.step(eps, timesteps[0], x, **kwargs)  # fills the coefficient cache before the check
    request.getfixturevalue("no_sync")
    for t in timesteps[:3]:
        out = s.step(eps, t, x, generator=torch.Generator().manual_seed(0), **kwargs)
    assert out.prev_sample.shape == x.shape


def test_coefficient_cache_follows_set_timesteps():
    s = DDPMExtScheduler()
    x, eps = inputs()
    s.set_timesteps(10)
    s.step(eps, s.timesteps[3], x, stochastic=False)
    s.set_timesteps(20)  # index 3 is another timestep now
    fresh = DDPMExtScheduler()
    fresh.set_timesteps(20)
    t = s.timesteps[3]
    assert torch.equal(s.step(eps, t, x, stochastic=False).prev_sample,
                       fresh.step(eps, t, x, stochastic=False).prev_sample)


def test_output_is_a_full_base_output():
    s = DDPMExtScheduler()
    s.set_timesteps(5)
    x, eps = inputs()
    out = s.step(eps, s.timesteps[0], x)
    assert list(out.keys()) == ["prev_sample", "pred_original_sample"]
    assert out[0] is out.prev_sample and out["pred_original_sample"] is out.pred_original_sample
    assert len(out.to_tuple()) == 2


# --------------------------------------------------------------------------------------------------
# The pipeline's fast path
# --------------------------------------------------------------------------------------------------
def make_pipe(scheduler=None) -> DDPMExtPipeline:
    torch.manual_seed(0)
    pipe = DDPMExtPipeline(unet=build_unet("tiny").eval(), scheduler=scheduler or DDPMExtScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, **kwargs):
    return pipe(batch_size=2, num_inference_steps=6, generator=torch.Generator().manual_seed(0), output_type="pt",
                **kwargs).images


def test_channels_last_gives_the_same_images_and_disable_restores():
    pipe = make_pipe()
    default = sample(pipe)
    assert pipe.fast_path is None
    pipe.enable_fast_path(channels_last=True)
    conv = pipe.unet.down_blocks[0].resnets[0].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    fast = sample(pipe)
    assert (fast - default).abs().max().item() <= 1e-5  # convolutions sum in another order
    assert pipe.fast_path == {"channels_last": True, "autocast_dtype": None, "compile": False, "compile_mode": None}
    pipe.fast_path["channels_last"] = False  # a copy: the settings do not change
    assert pipe.fast_path["channels_last"] is True
    pipe.disable_fast_path()
    assert pipe.fast_path is None and all(p.is_contiguous() for p in pipe.unet.parameters())
    # exact: fast path off, contiguous weights again: the same kernels as `default`
    assert torch.equal(sample(pipe), default)


def test_bf16_autocast_keeps_float32_samples_close():
    pipe = make_pipe()
    default = sample(pipe)
    fast = sample(pipe.enable_fast_path(channels_last=False, autocast_dtype=torch.bfloat16))
    assert fast.dtype == torch.float32
    delta = (fast - default).abs().max().item()
    assert 0 < delta <= 0.1  # bf16 has 8 bits of mantissa: close, not equal


def test_sampling_goes_through_the_compiled_unet(monkeypatch):
    calls = []

    class Compiled(torch.nn.Module):  # stands in for torch.compile's wrapper, which has no truth value
        def __init__(self, module, mode=None):
            super().__init__()
            self.module, self.mode = module, mode

        def __len__(self):
            raise TypeError("no len()")

        def forward(self, *args):
            calls.append(self.mode)
            return self.module(*args)

    monkeypatch.setattr(torch, "compile", Compiled)
    pipe = make_pipe()
    default = sample(pipe)
    compiled = sample(pipe.enable_fast_path(channels_last=False, compile=True, compile_mode="max-autotune"))
    # exact: the stand-in compile wrapper runs the same eager UNet
    assert calls == ["max-autotune"] * 6 and torch.equal(compiled, default)


def test_compile_wraps_the_unet_lazily_and_disable_drops_it():
    pipe = make_pipe()
    pipe.enable_fast_path(channels_last=False, compile=True, compile_mode="reduce-overhead")
    compiled = pipe._fast_path.compiled["unet"]
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled._orig_mod is pipe.unet and pipe.fast_path["compile_mode"] == "reduce-overhead"
    assert set(pipe._fast_path.compiled) == {"unet"}  # no guide, nothing else compiled
    pipe.disable_fast_path()
    assert pipe._fast_path is None  # and with it every compiled UNet


def test_enable_fast_path_docstring_example():
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(DDPMExtPipeline.enable_fast_path, "enable_fast_path", globs={}):
        runner.run(test)
    assert runner.tries >= 5 and runner.failures == 0


@pytest.mark.parametrize("kwargs,message", [
    ({"autocast_dtype": torch.int8}, "`autocast_dtype` must be one of"),
    ({"autocast_dtype": "bf16"}, "`autocast_dtype` must be one of"),
    ({"compile": "yes"}, "`compile` must be True or False, got 'yes'"),
    ({"channels_last": 1}, "`channels_last` must be True or False, got 1"),
    ({"compile": True, "compile_mode": "fast"}, "`compile_mode` must be one of"),
    ({"compile_mode": "default"}, "needs `compile=True`"),
])
def test_bad_fast_path_options(kwargs, message):
    pipe = make_pipe()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pipe.enable_fast_path(**kwargs)
    assert pipe.fast_path is None


def test_timesteps_reach_the_device_once_and_the_step_as_host_ints(monkeypatch):
    pipe = make_pipe()
    seen = {"step": [], "unet": []}
    step, forward = pipe.scheduler.step, pipe.unet.forward

    def spy_step(model_output, timestep, sample, **kw):
        seen["step"].append(timestep)
        return step(model_output, timestep, sample, **kw)

    def spy_forward(sample, timestep, *a, **kw):
        seen["unet"].append(timestep)
        return forward(sample, timestep, *a, **kw)

    monkeypatch.setattr(pipe.scheduler, "step", spy_step)
    monkeypatch.setattr(pipe.unet, "forward", spy_forward)
    steps = []
    sample(pipe, callback_on_step_end=lambda p, i, t, d: steps.append(t))
    assert all(type(t) is int for t in seen["step"]) and seen["step"] == steps == pipe.scheduler.timesteps.tolist()
    assert all(isinstance(t, torch.Tensor) and t.ndim == 0 for t in seen["unet"])


def test_diffusers_scheduler_still_gets_its_own_timesteps():
    torch.manual_seed(0)
    unet = build_unet("tiny").eval()
    ours = DDPMExtPipeline(unet=unet, scheduler=DDPMScheduler())
    theirs = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    for p in (ours, theirs):
        p.set_progress_bar_config(disable=True)
    a = sample(ours, timestep_spacing="leading")  # diffusers' spacing (ddpm_ext's default would be "trailing")
    b = theirs(batch_size=2, num_inference_steps=6, generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_allclose(a.permute(0, 2, 3, 1).numpy(), b, atol=1e-6)


def test_save_with_fast_path_on_writes_the_same_weights(tmp_path):
    pipe = make_pipe().enable_fast_path(channels_last=True)
    pipe.save_pretrained(tmp_path / "p")
    loaded = DDPMExtPipeline.from_pretrained(tmp_path / "p")
    for (name, a), (_, b) in zip(pipe.unet.state_dict().items(), loaded.unet.state_dict().items()):
        assert torch.equal(a, b) and b.is_contiguous(), name


# --------------------------------------------------------------------------------------------------
# Training flags
# --------------------------------------------------------------------------------------------------
def test_training_speed_flags_parse_with_safe_defaults():
    args = parse_training_args([])
    assert (args.channels_last, args.optimizer_impl, args.compile) == (False, "auto", False)
    args = parse_training_args(["--channels_last", "--optimizer_impl", "fused", "--compile"])
    assert (args.channels_last, args.optimizer_impl, args.compile) == (True, "fused", True)
    with pytest.raises(SystemExit):
        parse_training_args(["--optimizer_impl", "fastest"])


def _train(flags: list[str], steps: int = 3) -> list[float]:
    args = parse_training_args(["--learning_rate", "1e-3", *flags])
    torch.manual_seed(0)
    unet = build_unet("tiny")
    if args.channels_last:
        unet.to(memory_format=torch.channels_last)
    scheduler = DDPMExtScheduler(num_train_timesteps=100)
    optimizer = train_setup.build_optimizer(unet.parameters(), args)
    clean = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    losses = []
    for step in range(steps):
        x = clean.contiguous(memory_format=torch.channels_last) if args.channels_last else clean
        loss = train_ddpm.training_step(unet, scheduler, x, train_ddpm.StepRandomness(0).generator(step, 0, 0),
                                        loss_type="simple")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_optimizer_impl_and_channels_last_train_the_same():
    args = parse_training_args([])
    group = train_setup.build_optimizer(build_unet("tiny").parameters(), args).param_groups[0]
    assert group["foreach"] is None and group["fused"] is None  # auto: PyTorch's own choice, as before
    default = _train([])
    assert _train(["--optimizer_impl", "for-loop"]) == default  # what auto picks on a CPU: the same bits
    np.testing.assert_allclose(_train(["--optimizer_impl", "foreach"]), default, rtol=0, atol=1e-6)
    np.testing.assert_allclose(_train(["--optimizer_impl", "fused"]), default, rtol=0, atol=1e-5)
    np.testing.assert_allclose(_train(["--channels_last"]), default, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# The benchmark scripts run
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("script", ["bench_scheduler.py", "bench_sampling.py"])
def test_benchmark_script_runs_quick(script):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--rounds", "1", "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) >= 3 and "Machine: CPU" in result.stdout and "max |Δ|" in result.stdout.replace("\\|", "|")
    assert "(> " not in result.stdout  # every agreement check is within its stated tolerance


@pytest.mark.slow
def test_contention_benchmark_runs_and_reports_the_thread_count():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_contention.py"), "--steps", "2", "--warmup", "1",
         "--load", "1", "--model_config", "tiny", "--batch_size", "4",
         "--choices", "1 thread", "all cores, OMP_WAIT_POLICY=PASSIVE"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines()
            if line.startswith("| ") and "threading" not in line]
    assert [r[0].strip() for r in rows] == ["1 thread", "all cores, OMP_WAIT_POLICY=PASSIVE"]
    assert int(rows[0][1]) == 1 and int(rows[1][1]) >= 1  # the child saw the environment it was given
    for r in rows:
        assert float(r[4].strip().rstrip("×")) > 0 and float(r[7].strip().rstrip("×")) > 0
