"""DDPMExtInpaintPipeline (RePaint): the kept region, the reduction to plain sampling, the schedule, the jumps, bad
input."""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, RePaintScheduler
from PIL import Image
from tiny_pipeline import TINY_SIZE, make_tiny_pipeline

from ddpm_ext import DDIMExtScheduler, DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.figures import inpainting_figure
from ddpm_ext.pipelines.pipeline_ddpm_ext_inpaint import (
    DDPMExtInpaintPipeline,
    forward_jump,
    make_mask,
    prepare_mask,
    repaint_schedule,
)
from ddpm_ext.seeding import image_generators

S = TINY_SIZE  # 16


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def inpaint_pipe(scheduler=None, out_channels: int = 1) -> DDPMExtInpaintPipeline:
    torch.manual_seed(0)
    unet = build_unet("tiny", sample_size=S, out_channels=out_channels).eval()
    pipe = DDPMExtInpaintPipeline(unet=unet, scheduler=scheduler or DDPMExtScheduler(num_train_timesteps=20))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def digits(n: int = 2) -> torch.Tensor:
    """n images on the 8-bit grid, (n, 1, 16, 16) in [-1, 1]."""
    u = torch.randint(0, 256, (n, 1, S, S), generator=torch.Generator().manual_seed(7), dtype=torch.uint8)
    return u.float() / 127.5 - 1


def left_half_fill(n: int = 1) -> torch.Tensor:
    m = torch.zeros(n, 1, S, S)
    m[..., : S // 2] = 1
    return m


# ------------------------------------------------------------------------------------------------
# The RePaint schedule
# ------------------------------------------------------------------------------------------------
def test_schedule_hand_written_T10_j3_r2():
    # RePaint's get_schedule_jump(t_T=10, n_sample=1, jump_length=3, jump_n_sample=2), worked out by hand:
    # jumps at levels 6, 3, 0 (range(0, 10 - 3, 3)), once each (r - 1 = 1), 3 levels up; -1 is x_0.
    expected = [9, 8, 7, 6, 7, 8, 9, 8, 7, 6, 5, 4, 3, 4, 5, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, -1]
    assert repaint_schedule(10, jump_length=3, jump_n_sample=2) == expected
    assert sum(b < a for a, b in zip(expected[:-1], expected[1:])) == 10 + 1 * 3 * 3  # denoising steps


@pytest.mark.parametrize("steps,j,r", [(10, 3, 2), (10, 10, 10), (20, 4, 3), (7, 1, 5), (25, 10, 10), (3, 5, 4)])
def test_schedule_matches_diffusers_repaint_scheduler(steps, j, r):
    sched = RePaintScheduler(num_train_timesteps=steps)
    sched.set_timesteps(steps, jump_length=j, jump_n_sample=r)
    assert repaint_schedule(steps, j, r) == sched.timesteps.tolist() + [-1]


def test_schedule_without_resampling_is_plain_descent():
    assert repaint_schedule(5, jump_length=2, jump_n_sample=1) == [4, 3, 2, 1, 0, -1]


# ------------------------------------------------------------------------------------------------
# The forward jump of the respaced chain
# ------------------------------------------------------------------------------------------------
def test_forward_jump_equals_diffusers_undo_step_on_the_full_chain():
    sched = RePaintScheduler(num_train_timesteps=20, beta_schedule="linear")
    sched.set_timesteps(20, jump_length=3, jump_n_sample=2)
    ours = DDPMExtScheduler(num_train_timesteps=20, beta_schedule="linear")
    ab = ours._alphas_cumprod64
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    t = 6  # diffusers: after the step at t = 6 the sample is x_5; undo_step(x, 6) draws x_6 with β_6
    expected = sched.undo_step(x, t, generator=torch.Generator().manual_seed(3))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    got = forward_jump(x, ab[t - 1], ab[t], z)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_forward_jump_respaced_is_q_of_the_full_chain():
    # x_s = √(ᾱ_s/ᾱ_t) x_t + √(1 - ᾱ_s/ᾱ_t) z composed with x_t ~ q(x_t | x_0) gives mean √ᾱ_s x_0 and
    # variance 1 - ᾱ_s: check the coefficients against the product of the skipped α's of the full chain.
    sch = DDPMExtScheduler(num_train_timesteps=100, beta_schedule="cosine")
    betas = sch._betas64
    t, s = 24, 49
    x, z = torch.ones(1, 1, 1, 1, dtype=torch.float64), torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    mean_coef = float(forward_jump(x, sch._alphas_cumprod64[t], sch._alphas_cumprod64[s], z))
    assert mean_coef == pytest.approx(np.sqrt(np.prod(1 - betas[t + 1 : s + 1])), rel=1e-12)
    std_coef = float(forward_jump(z, sch._alphas_cumprod64[t], sch._alphas_cumprod64[s], x))
    ab_t, ab_s = sch._alphas_cumprod64[t], sch._alphas_cumprod64[s]
    assert mean_coef**2 * (1 - ab_t) + std_coef**2 == pytest.approx(1 - ab_s, rel=1e-12)


# ------------------------------------------------------------------------------------------------
# The kept region, all-keep, all-fill
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "scheduler,out_channels,kwargs",
    [
        (DDPMExtScheduler(num_train_timesteps=20, variance_type="fixed_small"), 1, {}),
        (DDPMExtScheduler(num_train_timesteps=20, variance_type="fixed_large"), 1, {}),
        (DDPMExtScheduler(num_train_timesteps=20, variance_type="learned_range"), 2, {}),
        (DDPMExtScheduler(num_train_timesteps=20, variance_type="learned"), 2, {}),
        (DDIMExtScheduler(num_train_timesteps=20), 1, {"eta": 0.0}),
        (DDIMExtScheduler(num_train_timesteps=20), 1, {"eta": 0.5}),
        (DDPMExtScheduler(num_train_timesteps=20), 1, {"stochastic": False}),
    ],
)
def test_known_region_is_the_input(scheduler, out_channels, kwargs):
    pipe = inpaint_pipe(scheduler, out_channels)
    x = digits(2)
    out = pipe(x, left_half_fill(), num_inference_steps=7, jump_length=2, jump_n_sample=3,
               generator=gens(2), output_type="pt", return_trajectory=True, **kwargs)
    keep = slice(S // 2, None)
    assert torch.equal(out.trajectory[-1][..., keep], x[..., keep])  # x_0 itself, bit for bit
    assert torch.equal(out.images[..., keep], x[..., keep] / 2 + 0.5)
    assert not torch.equal(out.images[..., : S // 2], x[..., : S // 2] / 2 + 0.5)  # the fill is generated
    assert out.timesteps[-1] == -1 and len(out.trajectory) == len(repaint_schedule(7, 2, 3))
    assert out.fill_mask.shape == (2, 1, S, S) and out.fill_mask[..., : S // 2].all()


def test_known_region_pil_round_trip_is_bit_exact():
    pipe = inpaint_pipe()
    u = (digits(1)[0, 0] * 127.5 + 127.5).round().numpy().astype(np.uint8)
    mask = np.zeros((S, S), np.uint8)
    mask[4:12, 4:12] = 255  # centre box to fill
    out = pipe(Image.fromarray(u), Image.fromarray(mask), num_inference_steps=5, jump_length=2, jump_n_sample=2,
               generator=torch.manual_seed(0)).images[0]
    got = np.asarray(out)
    assert out.mode == "L" and got.shape == (S, S)
    np.testing.assert_array_equal(got[mask == 0], u[mask == 0])


def test_all_keep_returns_the_input_with_a_warning():
    pipe = inpaint_pipe()
    x = digits(2)
    with pytest.warns(UserWarning, match="keeps every pixel"):
        out = pipe(x, torch.zeros(1, 1, S, S), num_inference_steps=5, jump_length=2, jump_n_sample=2,
                   generator=torch.manual_seed(0), output_type="pt")
    assert torch.equal(out.images, x / 2 + 0.5)


@pytest.mark.parametrize(
    "scheduler,out_channels,kwargs,steps",
    [
        (DDPMExtScheduler(num_train_timesteps=20, beta_schedule="cosine"), 1, {}, 20),
        (DDPMExtScheduler(num_train_timesteps=20, variance_type="fixed_large"), 1, {}, 7),
        (DDPMExtScheduler(num_train_timesteps=20, variance_type="learned_range"), 2, {}, 6),
        (DDIMExtScheduler(num_train_timesteps=20), 1, {"eta": 0.7}, 5),
        (DDPMExtScheduler(num_train_timesteps=20), 1, {"stochastic": False}, 5),
    ],
)
@pytest.mark.parametrize("per_image", [True, False])
def test_all_fill_without_resampling_is_plain_sampling(scheduler, out_channels, kwargs, steps, per_image):
    pipe = inpaint_pipe(scheduler, out_channels)
    plain = DDPMExtPipeline(unet=pipe.unet, scheduler=pipe.scheduler)
    plain.set_progress_bar_config(disable=True)
    g = (lambda: gens(3, 5)) if per_image else (lambda: torch.Generator().manual_seed(5))
    expected = plain(batch_size=3, generator=g(), num_inference_steps=steps, output_type="pt", **kwargs).images
    with pytest.warns(UserWarning, match="fills every pixel"):
        got = pipe(digits(3), torch.ones(S, S), num_inference_steps=steps, jump_length=3, jump_n_sample=1,
                   generator=g(), output_type="pt", **kwargs).images
    # exact by construction: same weights, shapes, process and thread count; all fill = plain sampling
    assert torch.equal(got, expected)


def test_all_fill_image_in_a_mixed_batch_keeps_its_own_stream():
    pipe = inpaint_pipe()
    plain = DDPMExtPipeline(unet=pipe.unet, scheduler=pipe.scheduler)
    plain.set_progress_bar_config(disable=True)
    masks = torch.stack([torch.ones(1, S, S), left_half_fill()[0]])  # image 0: all fill, image 1: left half
    with pytest.warns(UserWarning, match="fills every pixel"):
        got = pipe(digits(2), masks, num_inference_steps=6, jump_n_sample=1, generator=gens(2), output_type="pt").images
    alone = plain(batch_size=1, generator=gens(1), num_inference_steps=6, output_type="pt").images
    # same numbers drawn; only the UNet's batch-of-2 vs batch-of-1 float rounding differs
    torch.testing.assert_close(got[:1], alone, rtol=0, atol=1e-5)


def test_resampling_changes_the_completion_and_is_reproducible():
    pipe = inpaint_pipe()
    x, m = digits(1), left_half_fill()

    def run(r):
        return pipe(x, m, num_inference_steps=8, jump_length=2, jump_n_sample=r, generator=gens(1),
                    output_type="pt").images

    a, b = run(3), run(3)
    # exact by construction: same weights, shapes, process and thread count (same kernels)
    assert torch.equal(a, b) and not torch.equal(a, run(1))


def test_from_pipe_shares_components_and_other_image_sizes():
    pipe = make_tiny_pipeline()
    inp = DDPMExtInpaintPipeline.from_pipe(pipe)
    assert isinstance(inp, DDPMExtInpaintPipeline) and inp.unet is pipe.unet and inp.scheduler is pipe.scheduler
    inp.set_progress_bar_config(disable=True)
    x = torch.rand(1, 1, 12, 20) * 2 - 1  # not the 16x16 sample_size; the tiny UNet halves once
    m = torch.zeros(1, 1, 12, 20)
    m[..., 6:, :] = 1
    out = inp(x, m, num_inference_steps=4, jump_length=2, jump_n_sample=2, generator=torch.manual_seed(0),
              output_type="np")
    assert out.images.shape == (1, 12, 20, 1)
    np.testing.assert_array_equal(out.images[0, :6, :, 0], (x[0, 0, :6] / 2 + 0.5).numpy())


def test_uint8_numpy_image_and_rgb_mask():
    pipe = inpaint_pipe()
    u = (digits(2) * 127.5 + 127.5).round().to(torch.uint8)  # (2, 1, H, W)
    rgb = np.zeros((2, S, S, 3), np.uint8)
    rgb[:, :, : S // 2, 0] = 255  # red on black: any channel >= half marks the pixel to fill
    out = pipe(u.permute(0, 2, 3, 1).numpy(), rgb, num_inference_steps=4, jump_n_sample=1, generator=gens(2),
               output_type="np")
    assert out.fill_mask[..., : S // 2].all() and not out.fill_mask[..., S // 2 :].any()
    got = np.round(out.images[..., S // 2 :, 0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(got, u[:, 0, :, S // 2 :].numpy())


def test_prepare_mask_reduction_and_threshold():
    m = torch.tensor([[[[0.0, 0.49], [0.5, 1.0]], [[0.6, 0.0], [0.0, 0.0]]]])  # (1, 2, 2, 2)
    fill, binary = prepare_mask(m)
    assert fill.tolist() == [[[[True, False], [True, True]]]] and not binary
    fill, binary = prepare_mask(np.array([[0, 128], [127, 255]], np.uint8))
    assert fill.tolist() == [[[[False, True], [False, True]]]] and not binary
    fill, binary = prepare_mask(Image.fromarray(np.array([[0, 255]], np.uint8)))
    assert fill.tolist() == [[[[False, True]]]] and binary


def test_non_binary_mask_is_thresholded_with_a_warning():
    pipe = inpaint_pipe()
    m = torch.full((1, 1, S, S), 0.3)
    m[..., : S // 2] = 0.8
    with pytest.warns(UserWarning, match="not binary; it was thresholded at 0.5"):
        out = pipe(digits(1), m, num_inference_steps=3, jump_n_sample=1, generator=gens(1), output_type="pt")
    assert torch.equal(out.fill_mask, left_half_fill().bool())


# ------------------------------------------------------------------------------------------------
# Bad input: clear errors before sampling
# ------------------------------------------------------------------------------------------------
def _no_unet_calls(pipe):
    def boom(*a, **k):
        raise AssertionError("the UNet ran before the arguments were checked")

    pipe.unet.forward = boom
    return pipe


@pytest.mark.parametrize(
    "image,mask,kwargs,match",
    [
        (digits(1), torch.zeros(1, 1, 8, 8), {}, r"`mask_image` is 8x8 \(HxW\) but `image` is 16x16"),
        (digits(2), torch.zeros(3, 1, S, S), {}, r"`mask_image` has 3 masks for 2 images; give 1 or 2"),
        (torch.zeros(1, 3, S, S), torch.zeros(1, 1, S, S), {}, r"`image` has 3 channels but the UNet takes 1"),
        (torch.zeros(1, 1, 15, 16), torch.zeros(1, 1, 15, 16), {}, r"`image` is 15x16 .* multiples of 2"),
        (torch.full((1, 1, S, S), 1.5), torch.zeros(1, 1, S, S), {}, r"float `image` must lie in \[-1, 1\]"),
        (torch.zeros(1, 1, S, S), torch.full((1, 1, S, S), 2.0), {}, r"float `mask_image` must lie in \[0, 1\]"),
        (torch.zeros(1, 1, S, S), "mask.png", {}, r"`mask_image` must be a PIL image"),
        (torch.zeros(1, S, S), torch.zeros(1, 1, S, S), {}, r"tensor `image` must be \(B, C, H, W\)"),
        (np.zeros((1, S, S), np.float32), torch.zeros(1, 1, S, S), {}, r"NumPy array of `image` must hold uint8"),
        (digits(1), left_half_fill(), {"jump_length": 0}, r"`jump_length` must be an integer >= 1, got 0"),
        (digits(1), left_half_fill(), {"jump_n_sample": 0}, r"`jump_n_sample` must be an integer >= 1, got 0"),
        (digits(1), left_half_fill(), {"jump_n_sample": 2.5}, r"`jump_n_sample` must be an integer >= 1, got 2.5"),
        (digits(1), left_half_fill(), {"eta": 0.5}, r"`eta`=0.5 needs a DDIM scheduler"),
        (digits(1), left_half_fill(), {"eta": -1}, r"`eta` must be a number in \[0, 1\]"),
        (digits(1), left_half_fill(), {"num_inference_steps": 21},
         r"`num_inference_steps` must be an integer in \[1, 20\]"),
        (digits(1), left_half_fill(), {"generator": gens(2)}, r"list of 2 generators but `batch_size` is 1"),
        (digits(1), left_half_fill(), {"output_type": "jpg"}, r"`output_type` must be one of"),
    ],
)
def test_bad_input(image, mask, kwargs, match):
    pipe = _no_unet_calls(inpaint_pipe())
    with pytest.raises(ValueError, match=match):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe(image, mask, **{"num_inference_steps": 5, **kwargs})


def test_non_ddpm_ext_scheduler_is_refused():
    pipe = _no_unet_calls(inpaint_pipe(DDPMScheduler(num_train_timesteps=20)))
    with pytest.raises(ValueError, match="Inpainting needs a ddpm_ext scheduler"):
        pipe(digits(1), left_half_fill(), num_inference_steps=5)


# ------------------------------------------------------------------------------------------------
# Masks and the figure
# ------------------------------------------------------------------------------------------------
def test_make_mask_kinds():
    assert make_mask("top_half", 4, 2).tolist() == [[[[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]]]
    box = make_mask("centre_box", 8, 12)
    assert box[0, 0, 2:6, 3:9].eq(1).all() and box.sum() == 4 * 6
    a, b = make_mask("strokes", 28, 28, seed=1), make_mask("strokes", 28, 28, seed=1)
    assert torch.equal(a, b) and 0 < a.mean() < 1 and not torch.equal(a, make_mask("strokes", 28, 28, seed=2))
    with pytest.raises(ValueError, match=r"`kind` must be one of \['left_half', 'top_half', 'centre_box', 'strokes'\]"):
        make_mask("circle", 8, 8)


def test_inpainting_figure_draws_what_the_pipeline_gives(tmp_path):
    pipe = make_tiny_pipeline()
    image = digits(1)[0]
    fig = inpainting_figure(pipe, image, tmp_path / "inpaint.png", num_inference_steps=6, jump_length=2,
                            jump_n_sample=2, num_columns=3, seed=4)
    assert fig.path.exists() and Image.open(fig.path).size == fig.size
    assert fig.mask_kinds == ["left_half", "centre_box", "strokes"]
    levels = repaint_schedule(6, 2, 2)[:-1]  # x_T ... the last x before x_0; 3 evenly spread columns
    idx = np.linspace(0, len(levels) - 1, 3).round().astype(int)
    grid = pipe.scheduler.timesteps.tolist()
    assert fig.timesteps == [grid[6 - 1 - levels[i]] for i in idx]
    masks = torch.cat([make_mask(k, S, S, seed=4) for k in fig.mask_kinds])
    assert torch.equal(fig.fill_masks, masks.bool())
    inp = DDPMExtInpaintPipeline.from_pipe(pipe)
    inp.set_progress_bar_config(disable=True)
    expected = inp(image[None].expand(3, -1, -1, -1), masks, num_inference_steps=6, jump_length=2, jump_n_sample=2,
                   generator=[g for _ in range(3) for g in image_generators(4, 0, 1)],
                   output_type="pt").images * 2 - 1
    torch.testing.assert_close(fig.completions, expected, rtol=0, atol=1e-6)
    keep = ~fig.fill_masks
    assert torch.equal(fig.completions[keep], image[None].expand(3, -1, -1, -1)[keep])


# ------------------------------------------------------------------------------------------------
# benchmarks/inpainting_study.py, end to end on the tiny pipeline with a stand-in judge
# ------------------------------------------------------------------------------------------------
def test_inpainting_study_end_to_end_with_a_stand_in_judge(tmp_path, monkeypatch):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "inpainting_study.py"
    spec = importlib.util.spec_from_file_location("inpainting_study", path)
    study = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "inpainting_study", study)  # dataclasses look their module up
    spec.loader.exec_module(study)

    make_tiny_pipeline().save_pretrained(tmp_path / "tiny")
    images, labels = study.held_out_digits(4, seed=0)
    x0 = make_tiny_pipeline().preprocess(images)  # (4, 1, 16, 16): what the study inpaints
    keep_top = ~make_mask("top_half", S, S).bool()

    class Judge:
        """Says the true digit when the kept (bottom) half is the input's, in the study's order; else -1."""

        calls = 0

        def predict(self, x):
            Judge.calls += 1
            assert x.shape == (4, 1, S, S) and x.dtype == torch.float32
            same = ((x - x0).abs() <= 1e-5).masked_select(keep_top).reshape(4, -1).all(dim=1).numpy()
            return np.where(same, labels, -1)

    rows = study.main([str(tmp_path / "tiny"), "--num_images", "4", "--masks", "top_half",
                       "--steps", "5", "--jump_length", "2", "--jump_n_samples", "1", "2", "--batch_size", "3",
                       "--output", str(tmp_path / "rows.json")], classifier=Judge())
    methods = [r.method for r in rows]
    assert methods == ["unmasked digits (ceiling)", "masked, hole black (floor)", "ddpm_ext r=1", "ddpm_ext r=2",
                       "diffusers RePaint r=1", "diffusers RePaint r=2"]
    assert Judge.calls == 6 and all(r.correct == 4 and r.n == 4 for r in rows)
    assert all(r.seconds > 0 for r in rows[2:])
    saved = json.loads((tmp_path / "rows.json").read_text())
    assert [r["method"] for r in saved] == methods and saved[2]["accuracy"] == 1.0
    # diffusers' RePaintScheduler needs S | T: with 6 of T = 20 it is reported as not run, not silently skipped
    rows = study.main([str(tmp_path / "tiny"), "--num_images", "4", "--masks", "top_half",
                       "--steps", "6", "--jump_n_samples", "1"], classifier=Judge())
    assert "does not divide T = 20" in rows[-1].note


@pytest.mark.parametrize("guidance_scale", [1.0, 2.5])
def test_class_conditional_inpainting_with_guidance(guidance_scale):
    """Labels and guidance reach the UNet as in DDPMExtPipeline: an all-fill mask without resampling is the
    pipeline's guided sampling, and the kept pixels of a half mask stay the input's."""
    torch.manual_seed(0)
    unet = build_unet("tiny", sample_size=S, num_class_embeds=3).eval()  # 2 classes + the null class
    pipe = DDPMExtInpaintPipeline(unet=unet, scheduler=DDPMExtScheduler(num_train_timesteps=20))
    pipe.set_progress_bar_config(disable=True)
    plain = DDPMExtPipeline(unet=unet, scheduler=pipe.scheduler)
    plain.set_progress_bar_config(disable=True)
    labels = [0, 1, 1]
    expected = plain(batch_size=3, class_labels=labels, guidance_scale=guidance_scale, generator=gens(3, 5),
                     num_inference_steps=5, output_type="pt").images
    with pytest.warns(UserWarning, match="fills every pixel"):
        got = pipe(digits(3), torch.ones(S, S), num_inference_steps=5, jump_length=2, jump_n_sample=1,
                   class_labels=labels, guidance_scale=guidance_scale, generator=gens(3, 5), output_type="pt").images
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    x = digits(3)
    half = pipe(x, left_half_fill(), num_inference_steps=5, jump_length=2, jump_n_sample=2, class_labels=labels,
                guidance_scale=guidance_scale, generator=gens(3), output_type="pt").images
    keep = ~left_half_fill().bool().expand(3, -1, -1, -1)
    assert torch.equal(half[keep], (x / 2 + 0.5)[keep])


def test_inpainting_label_errors_come_before_sampling():
    with pytest.raises(ValueError, match="class"):
        inpaint_pipe()(digits(1), left_half_fill(), num_inference_steps=4, class_labels=[0])  # unconditional UNet


# ------------------------------------------------------------------------------------------------
# Inputs and results that are never silently wrong (issue 31): shared with DDPMExtPipeline's checks
# ------------------------------------------------------------------------------------------------
def test_inpaint_refuses_an_int_generator_and_a_batch_that_cannot_fit(monkeypatch):
    pipe = inpaint_pipe()
    with pytest.raises(ValueError, match=r"`generator` must be a torch.Generator, a list of them or None, got int"):
        pipe(digits(1), left_half_fill(), num_inference_steps=2, jump_n_sample=1, generator=5)
    monkeypatch.setattr("ddpm_ext.memory.available_memory", lambda device=None: 2**10)  # a device with 1 KiB
    with pytest.raises(ValueError, match=r"`batch_size`=2 of 16x16 images needs about .* cpu has 1\.0 KiB available"):
        pipe(digits(2), left_half_fill(), num_inference_steps=2, jump_n_sample=1)


def test_inpaint_with_non_finite_weights_gives_no_image():
    pipe = inpaint_pipe()
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"non-finite .* the weights of `unet` hold NaN"):
        pipe(digits(1), left_half_fill(), num_inference_steps=2, jump_n_sample=1, output_type="np")


def test_strokes_mask_seed_is_bounded():
    with pytest.raises(ValueError, match=r"`seed` must be an integer in \[0, 4294967295\], got 4294967296"):
        make_mask("strokes", 8, 8, seed=2**32)
