"""Classifier-free guidance: the arithmetic against hand-computed combinations, one batched UNet call per step,
label checks, and save/load of conditional and unconditional pipelines (ddpm_ext, vanilla UNet2DModel, DDPMPipeline)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMPipeline, UNet2DModel

from ddpm_ext import DDIMExtScheduler, DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.pipelines.guidance import (
    CLASS_NAMES_KEY,
    ClassGuidance,
    combine_guidance,
    prepare_guidance,
    resolve_class_labels,
    set_class_names,
)

NAMES = ["top", "bottom", "left"]


def conditional_pipe(seed: int = 0, *, learned: bool = False, names=NAMES,
                     scheduler_cls=DDPMExtScheduler) -> DDPMExtPipeline:
    torch.manual_seed(seed)
    unet = build_unet("tiny", num_class_embeds=len(names) + 1, out_channels=2 if learned else 1).eval()
    set_class_names(unet, names)
    scheduler = scheduler_cls(num_train_timesteps=20, variance_type="learned_range" if learned else "fixed_small")
    pipe = DDPMExtPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def fake_model(calls: list):
    """out = x + label (mean channel) and 10 * label (variance channel): every branch's output is known."""

    def model(x, t, class_labels):
        calls.append(class_labels.clone())
        lab = class_labels.float().view(-1, 1, 1, 1)
        return torch.cat([x + lab, torch.zeros_like(x) + 10 * lab], dim=1)

    return model


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5, 4.0])
def test_guided_output_is_the_hand_computed_combination_with_one_call(w):
    calls: list = []
    x = torch.randn(2, 1, 4, 4)
    guide = ClassGuidance(torch.tensor([0, 2]), null_class=3, guidance_scale=w, out_channels_guided=1)
    out = guide.wrap(fake_model(calls))(x, torch.tensor(7))
    assert len(calls) == 1  # one UNet call per step whatever w is
    y = torch.tensor([0.0, 2.0]).view(-1, 1, 1, 1)
    # ε̂ = ε(x, ∅) + w (ε(x, y) − ε(x, ∅)) with ε(x, y) = x + y, ε(x, ∅) = x + 3
    torch.testing.assert_close(out[:, :1], (x + 3) + w * ((x + y) - (x + 3)), rtol=0, atol=1e-6)
    if w == 1.0:  # the conditional branch alone, batch B
        assert calls[0].tolist() == [0, 2]
        torch.testing.assert_close(out[:, 1:], 10 * y.expand(2, 1, 4, 4))
    elif w == 0.0:  # the null class alone
        assert calls[0].tolist() == [3, 3]
    else:  # [x, x] with [y, ∅]: batch 2B; the variance channels are the conditional branch's
        assert calls[0].tolist() == [0, 2, 3, 3]
        torch.testing.assert_close(out[:, 1:], 10 * y.expand(2, 1, 4, 4))


def test_combine_guidance_numbers():
    cond = torch.tensor([[[[1.0]], [[5.0]]]])  # (1, 2, 1, 1): mean 1, variance 5
    uncond = torch.tensor([[[[3.0]], [[7.0]]]])
    assert combine_guidance(cond, uncond, 2.0, 1).flatten().tolist() == [3.0 + 2.0 * (1.0 - 3.0), 5.0]
    assert combine_guidance(cond, uncond, 2.0, 2).flatten().tolist() == [-1.0, 7.0 + 2.0 * (5.0 - 7.0)]


@pytest.mark.parametrize("scheduler_cls", [DDPMExtScheduler, DDIMExtScheduler])
@pytest.mark.parametrize("learned", [False, True])
def test_pipeline_equals_a_hand_written_guided_loop(scheduler_cls, learned):
    """The pipeline's samples equal a loop with two separate UNet calls per step, combined by hand."""
    pipe = conditional_pipe(learned=learned, scheduler_cls=scheduler_cls)
    w, labels, steps = 3.0, [2, 0], 6
    forwards = []
    pipe.unet.register_forward_pre_hook(lambda mod, args, kwargs: forwards.append(kwargs["class_labels"].tolist()),
                                        with_kwargs=True)
    got = pipe(batch_size=2, num_inference_steps=steps, class_labels=["left", 0], guidance_scale=w,
               generator=torch.manual_seed(0), output_type="pt").images
    assert forwards == [[2, 0, 3, 3]] * steps  # one batched call per step: [y, ∅]
    # by hand, with the pipeline's defaults: trailing spacing, and DDIM's ε̂ consistent with the clipped x̂_0
    sched = scheduler_cls.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    sched.set_timesteps(steps)
    consistent = {"use_clipped_model_output": True} if scheduler_cls is DDIMExtScheduler else {}
    x = torch.randn((2, 1, 8, 8), generator=torch.manual_seed(0))
    gen = torch.manual_seed(0)
    torch.randn((2, 1, 8, 8), generator=gen)  # the pipeline drew x_T from this generator first
    with torch.no_grad():
        for t in sched.timesteps:
            cond = pipe.unet(x, t, class_labels=torch.tensor(labels)).sample
            uncond = pipe.unet(x, t, class_labels=torch.tensor([3, 3])).sample
            eps = uncond[:, :1] + w * (cond[:, :1] - uncond[:, :1])
            out = torch.cat([eps, cond[:, 1:]], 1) if learned else eps
            x = sched.step(out, int(t), x, generator=gen, **consistent).prev_sample
    torch.testing.assert_close(got, (x / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-5)


def test_w1_and_w0_use_one_branch_of_batch_b():
    pipe = conditional_pipe()
    seen = []
    pipe.unet.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["class_labels"].tolist()),
                                        with_kwargs=True)
    pipe(batch_size=2, num_inference_steps=3, class_labels=[1, 2], guidance_scale=1.0)
    pipe(batch_size=2, num_inference_steps=3, guidance_scale=0.0)  # unconditional: no labels needed
    assert seen == [[1, 2]] * 3 + [[3, 3]] * 3


def test_default_guidance_scale_is_p_x_without_labels_and_p_x_given_y_with_them():
    pipe = conditional_pipe()
    seen = []
    pipe.unet.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["class_labels"].tolist()),
                                        with_kwargs=True)
    run = lambda **kw: pipe(batch_size=2, num_inference_steps=3, generator=torch.manual_seed(4),  # noqa: E731
                            output_type="pt", **kw).images
    no_labels = run()  # a conditional model asked for no class: the null class (id 3), p(x)
    assert seen == [[3, 3]] * 3
    # exact by construction: same weights, shapes, process and thread count (same kernels)
    assert torch.equal(no_labels, run(guidance_scale=0.0))
    with_labels = run(class_labels=[1, 2])  # labels without w: p(x | y), w = 1
    assert torch.equal(with_labels, run(class_labels=[1, 2], guidance_scale=1.0))
    assert not torch.equal(with_labels, no_labels)
    assert seen[-6:] == [[1, 2]] * 6


def test_labels_as_ints_names_strings_tensors_are_the_same():
    unet = conditional_pipe().unet
    expect = [2, 0, 1]
    for given in ([2, 0, 1], ["left", "top", "bottom"], ["2", "top", 1], torch.tensor([2, 0, 1])):
        assert resolve_class_labels(unet, given, 3) == expect
    assert resolve_class_labels(unet, "bottom", 2) == [1, 1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"guidance_scale": 2.0},
         r"`guidance_scale`=2.0 needs `class_labels`: the UNet is class-conditional .*pass `class_labels`"),
        ({"guidance_scale": 1.0}, r"`guidance_scale`=1.0 needs `class_labels`"),
        ({"class_labels": [0]}, "one label per image: 2"),
        ({"class_labels": [0, 1, 2]}, "one label per image: 2"),
        ({"class_labels": [0, 3]}, "holds 3, outside the model's classes 0..2"),
        ({"class_labels": [-1, 0]}, "holds -1, outside"),
        ({"class_labels": ["top", "cat"]}, "unknown class name 'cat'"),
        ({"class_labels": [0, 1.5]}, "ints or class names"),
        ({"class_labels": [True, 0]}, "ints or class names"),
        ({"class_labels": []}, "non-empty list"),
        ({"class_labels": [0, 1], "guidance_scale": -0.5}, "`guidance_scale` must be a number >= 0, got -0.5"),
        ({"class_labels": [0, 1], "guidance_scale": math.inf}, "`guidance_scale` must be a number >= 0, got inf"),
        ({"class_labels": [0, 1], "guidance_scale": math.nan}, "`guidance_scale` must be a number >= 0, got nan"),
        ({"class_labels": [0, 1], "guidance_scale": "2"}, "`guidance_scale` must be a number"),
    ],
)
def test_bad_inputs_fail_before_any_unet_call(kwargs, match):
    pipe = conditional_pipe()
    calls = []
    pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=match):
        pipe(batch_size=2, num_inference_steps=3, **kwargs)
    assert calls == []


def test_unconditional_model_refuses_labels_and_guidance():
    pipe = DDPMExtPipeline(unet=build_unet("tiny"), scheduler=DDPMExtScheduler(num_train_timesteps=20))
    assert pipe.id2label is None
    with pytest.raises(ValueError, match="the UNet is unconditional"):
        pipe(batch_size=1, num_inference_steps=2, class_labels=[0])
    with pytest.raises(ValueError, match="needs a class-conditional UNet"):
        pipe(batch_size=1, num_inference_steps=2, guidance_scale=2.0)
    assert prepare_guidance(pipe.unet, None, 1.0, 1) is None


def test_class_names_must_fit():
    unet = build_unet("tiny", num_class_embeds=3)
    with pytest.raises(ValueError, match="must hold 2 class names"):
        set_class_names(unet, ["a"])
    with pytest.raises(ValueError, match="distinct"):
        set_class_names(unet, ["a", "a"])
    assert DDPMExtPipeline(unet=unet, scheduler=DDPMExtScheduler()).id2label == {0: "0", 1: "1"}  # no names saved


@pytest.mark.parametrize("conditional", [True, False])
def test_round_trip_through_save_load_and_vanilla_unet(tmp_path, conditional):
    pipe = conditional_pipe() if conditional else DDPMExtPipeline(
        unet=build_unet("tiny").eval(), scheduler=DDPMExtScheduler(num_train_timesteps=20))
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"class_labels": ["left", "top"], "guidance_scale": 2.0} if conditional else {}
    before = pipe(batch_size=2, num_inference_steps=4, generator=torch.manual_seed(1), output_type="pt",
                  **kwargs).images
    pipe.save_pretrained(tmp_path)
    loaded = DDPMExtPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.id2label == ({0: "top", 1: "bottom", 2: "left"} if conditional else None)
    after = loaded(batch_size=2, num_inference_steps=4, generator=torch.manual_seed(1), output_type="pt",
                   **kwargs).images
    # exact by construction: same weights, shapes, process and thread count; weights reloaded bit for bit
    torch.testing.assert_close(after, before, rtol=0, atol=0)

    vanilla = UNet2DModel.from_pretrained(tmp_path / "unet")  # diffusers ignores the private names key
    assert vanilla.config.num_class_embeds == (4 if conditional else None)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor(5)
    labels = {"class_labels": torch.tensor([2, 3])} if conditional else {}
    with torch.no_grad():
        torch.testing.assert_close(vanilla(x, t, **labels).sample, pipe.unet(x, t, **labels).sample)
    assert (vanilla.config.get(CLASS_NAMES_KEY) == NAMES) if conditional else CLASS_NAMES_KEY not in vanilla.config
    ddpm = DDPMPipeline.from_pretrained(tmp_path)  # vanilla loading works ...
    ddpm.set_progress_bar_config(disable=True)
    if conditional:  # ... but DDPMPipeline never passes class labels, so a conditional UNet cannot sample there
        with pytest.raises(ValueError, match="class_labels should be provided"):
            ddpm(batch_size=1, num_inference_steps=2)
    else:
        assert ddpm(batch_size=1, num_inference_steps=2, output_type="np").images.shape == (1, 8, 8, 1)


def test_guidance_goes_through_the_fast_path():
    pipe = conditional_pipe()
    kwargs = dict(batch_size=2, num_inference_steps=4, class_labels=[0, 2], guidance_scale=2.0, output_type="pt")
    default = pipe(generator=torch.manual_seed(0), **kwargs).images
    fast = pipe.enable_fast_path(channels_last=True)(generator=torch.manual_seed(0), **kwargs).images
    torch.testing.assert_close(fast, default, rtol=0, atol=1e-4)
