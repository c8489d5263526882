"""Sampler specs of `ddpm-ext evaluate` (issue 14): dpmpp / unipc, the spacing and DDIM ε̂ suffixes, and what a
spec's results row records."""

from __future__ import annotations

import diffusers
import pytest

from ddpm_ext import DDIMExtScheduler, DDPMExtScheduler
from ddpm_ext.evaluation.samplers import SamplerSpec, parse_sampler


@pytest.mark.parametrize(
    "spec, expected, canonical, slug",
    [
        ("dpmpp:20", SamplerSpec("dpmpp", 20), "dpmpp:20", "dpmpp-20"),
        ("UniPC:10", SamplerSpec("unipc", 10), "unipc:10", "unipc-10"),
        ("ddim:10:0:spacing=leading:eps=model", SamplerSpec("ddim", 10, timestep_spacing="leading", clipped_eps=False),
         "ddim:10:0:spacing=leading:eps=model", "ddim-10-eta0-leading-modeleps"),
        ("ddim:10:eps=consistent", SamplerSpec("ddim", 10, clipped_eps=True), "ddim:10:0:eps=consistent",
         "ddim-10-eta0-consistenteps"),
        ("ddim:50:0.5:spacing=trailing", SamplerSpec("ddim", 50, eta=0.5, timestep_spacing="trailing"),
         "ddim:50:0.5:spacing=trailing", "ddim-50-eta0p5-trailing"),
        ("ddpm:50:fixed_large:spacing=linspace",
         SamplerSpec("ddpm", 50, variance_type="fixed_large", timestep_spacing="linspace"),
         "ddpm:50:fixed_large:spacing=linspace", "ddpm-50-fixed_large-linspace"),
        ("ddpm:50:spacing=leading", SamplerSpec("ddpm", 50, timestep_spacing="leading"), "ddpm:50:spacing=leading",
         "ddpm-50-leading"),
        ("dpmpp:20:spacing=leading", SamplerSpec("dpmpp", 20, timestep_spacing="leading"), "dpmpp:20:spacing=leading",
         "dpmpp-20-leading"),
        ("ddpm:50:ag=2.5", SamplerSpec("ddpm", 50, autoguidance_scale=2.5), "ddpm:50:ag=2.5", "ddpm-50-ag2p5"),
        ("ddim:20:0:eps=model:ag=1", SamplerSpec("ddim", 20, clipped_eps=False, autoguidance_scale=1.0),
         "ddim:20:0:eps=model:ag=1", "ddim-20-eta0-modeleps-ag1"),
        ("ddim:50:0", SamplerSpec("ddim", 50), "ddim:50:0", "ddim-50-eta0"),  # today's specs are unchanged
    ],
)
def test_parse_round_trip_and_slug(spec, expected, canonical, slug):
    parsed = parse_sampler(spec)
    assert parsed == expected and parsed.spec == canonical and parsed.slug == slug
    assert parse_sampler(parsed.spec) == parsed


@pytest.mark.parametrize(
    "spec, why",
    [
        ("dpmpp:20:fixed_small", "wrong number of fields for 'dpmpp'"),
        ("ddim:10:0:spacing=uniform", r"spacing must be one of \['leading', 'trailing', 'linspace'\], got 'uniform'"),
        ("ddim:10:0:eps=clipped", r"eps must be one of \['consistent', 'model'\], got 'clipped'"),
        ("ddpm:10:eps=model", "eps=... applies to ddim only"),
        ("ddim:10:0:spacing=leading:spacing=trailing", "option 'spacing' given twice"),
        ("ddim:10:0:order=2", r"unknown option 'order=2'"),
        ("ddim:10:spacing=leading:0", "unknown option '0'"),
        ("ddpm:50:ag=0.5", "ag must be a number >= 1 \\(the autoguidance scale\\), got '0.5'"),
        ("ddpm:50:ag=nan", "ag must be a number >= 1"),
        ("ddpm:50:ag=two", "ag must be a number >= 1"),
        ("ddpm:50:ag=2:ag=3", "option 'ag' given twice"),
    ],
)
def test_bad_specs_name_the_problem_and_the_grammar(spec, why):
    with pytest.raises(ValueError, match=f"`--samplers` {spec!r}: {why}.*Allowed: ddpm:STEPS"):
        parse_sampler(spec)


def test_built_schedulers_and_call_kwargs():
    config = DDPMExtScheduler().config  # leading, clip_sample=True
    dpmpp = parse_sampler("dpmpp:20").build(config)
    assert type(dpmpp) is diffusers.DPMSolverMultistepScheduler and dpmpp.config.algorithm_type == "dpmsolver++"
    assert dpmpp.config.thresholding and dpmpp.config.sample_max_value == 1.0
    assert type(parse_sampler("unipc:20").build(config)) is diffusers.UniPCMultistepScheduler
    assert isinstance(parse_sampler("ddim:10").build(config), DDIMExtScheduler)
    assert parse_sampler("ddim:10:0:spacing=leading:eps=model").call_kwargs() == {
        "num_inference_steps": 10, "eta": 0.0, "stochastic": True, "timestep_spacing": "leading",
        "use_clipped_model_output": False}  # fmt: skip
    assert parse_sampler("ddpm-noz:5").call_kwargs() == {"num_inference_steps": 5, "eta": 0.0, "stochastic": False}
    assert parse_sampler("ddpm:5:ag=3").call_kwargs() == {"num_inference_steps": 5, "eta": 0.0, "stochastic": True,
                                                          "autoguidance_scale": 3.0}


def test_row_records_the_choices_actually_used():
    config = DDPMExtScheduler().config  # leading, clip ±1
    row = lambda spec: (s := parse_sampler(spec)).describe(s.build(config))  # noqa: E731
    assert row("ddim:10:0") == {"kind": "ddim", "steps": 10, "eta": 0.0, "adds_noise": False, "variance_type": None,
                                "timestep_spacing": "trailing", "use_clipped_model_output": True,
                                "x0_clipping": "clip ±1"}
    leading = row("ddim:10:1:spacing=leading:eps=model")
    assert (leading["timestep_spacing"] == "leading" and leading["use_clipped_model_output"] is False
            and leading["adds_noise"])
    ddpm = row("ddpm:50:fixed_large")
    assert ddpm["variance_type"] == "fixed_large" and ddpm["use_clipped_model_output"] is None and ddpm["eta"] is None
    fast = row("dpmpp:20")
    assert (fast["timestep_spacing"] == "trailing"
            and fast["x0_clipping"] == "clip ±1 (thresholding, sample_max_value 1)")
    assert row("unipc:20")["variance_type"] is None
    linspace = (s := parse_sampler("ddpm:50")).describe(s.build(DDPMExtScheduler(timestep_spacing="linspace").config))
    assert linspace["timestep_spacing"] == "linspace"
