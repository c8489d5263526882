"""The sampler-spec grammar of `ddpm-ext evaluate --samplers`: a spec string parsed into a [`SamplerSpec`].

Specs: `ddpm:STEPS[:VARIANCE]` (ancestral DDPM, σ² of the pipeline or VARIANCE = fixed_small / fixed_large /
learned_range), `ddpm-noz:STEPS` (DDPM's mean only, without the added noise z), `ddim:STEPS[:ETA]` (DDIM with η in
[0, 1], default 0), `dpmpp:STEPS` (DPM-Solver++(2M)) and `unipc:STEPS` (UniPC), diffusers' solvers with the model's
x̂_0 clipping ([`ddpm_ext.fast_sampler`]). Optional suffixes: `:spacing=leading|trailing|linspace` (default: the
pipeline's, "trailing" for a "leading" config), for DDIM `:eps=consistent|model` (default: consistent, ε̂
recomputed from the clipped x̂_0; `model` is diffusers' DDIMPipeline), and `:ag=W` (autoguidance scale W >= 1 with
the pipeline's guide). A [`SamplerSpec`] builds its scheduler from the pipeline's scheduler config
([`DDPMExtScheduler`] / [`DDIMExtScheduler`]`.from_config`, [`ddpm_ext.fast_sampler`]), gives the pipeline's call
arguments, names itself in results rows and file names, and describes the spacing, the ε̂ and the x̂_0 clipping
actually used ([`SamplerSpec.describe`]), which each results row records.

Example:

```py
>>> spec = parse_sampler("ddim:10:0:spacing=leading")
>>> spec.spec, spec.slug, spec.call_kwargs()["timestep_spacing"]
('ddim:10:0:spacing=leading', 'ddim-10-eta0-leading', 'leading')

```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..pipelines.chain_start import resolve_timestep_spacing
from ..schedulers import (
    VARIANCE_TYPES,
    DDIMExtScheduler,
    DDPMExtScheduler,
    fast_sampler,
)
from ..validation import check_number

__all__ = ["SAMPLER_GRAMMAR", "SAMPLER_KINDS", "SamplerSpec", "parse_sampler", "row_key"]

SAMPLER_KINDS = ("ddpm", "ddpm-noz", "ddim", "dpmpp", "unipc")
SAMPLER_GRAMMAR = (
    "ddpm:STEPS[:VARIANCE], ddpm-noz:STEPS, ddim:STEPS[:ETA], dpmpp:STEPS or unipc:STEPS, each optionally followed "
    "by :spacing=leading|trailing|linspace, (ddim) :eps=consistent|model and :ag=W (autoguidance scale W >= 1 "
    "with the pipeline's guide; default: the pipeline's own) "
    "(e.g. ddpm:1000, ddpm-noz:100, ddim:50:0, ddim:10:0:spacing=leading:eps=model, dpmpp:20, ddpm:50:ag=1)"
)
_SAMPLER_OPTIONS = {"spacing": ("leading", "trailing", "linspace"), "eps": ("consistent", "model"), "ag": None}


# ----------------------------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler to evaluate: `kind` in [`SAMPLER_KINDS`], `steps`, DDIM's `eta`, DDPM's `variance_type`, and
    the pipeline options `timestep_spacing`, (DDIM) `clipped_eps` (`use_clipped_model_output`) and
    `autoguidance_scale`; `None` leaves the pipeline's default ("trailing" for a "leading" config, the consistent
    ε̂, the guide's saved w). `dpmpp` is DPM-Solver++(2M) and
    `unipc` UniPC, diffusers' solvers swapped in with the model's x̂_0 clipping ([`ddpm_ext.fast_sampler`])."""

    kind: str
    steps: int
    eta: float = 0.0
    variance_type: str | None = None
    timestep_spacing: str | None = field(default=None, repr=False)
    clipped_eps: bool | None = field(default=None, repr=False)
    autoguidance_scale: float | None = field(default=None, repr=False)

    def _options(self) -> list[tuple[str, str]]:
        options = [("spacing", self.timestep_spacing)] if self.timestep_spacing else []
        if self.clipped_eps is not None:
            options.append(("eps", "consistent" if self.clipped_eps else "model"))
        if self.autoguidance_scale is not None:
            options.append(("ag", f"{self.autoguidance_scale:g}"))
        return options

    @property
    def spec(self) -> str:
        """The canonical spec string, e.g. `"ddim:50:0"` or `"ddim:10:0:spacing=leading:eps=model"`."""
        if self.kind == "ddim":
            head = f"ddim:{self.steps}:{self.eta:g}"
        else:
            head = f"{self.kind}:{self.steps}" + (f":{self.variance_type}" if self.variance_type else "")
        return head + "".join(f":{k}={v}" for k, v in self._options())

    @property
    def slug(self) -> str:
        """A file-name-safe form of the spec, e.g. `"ddim-50-eta0"` or `"ddim-10-eta0-leading-modeleps"`."""
        if self.kind == "ddim":
            head = f"ddim-{self.steps}-eta{self.eta:g}".replace(".", "p")
        else:
            head = f"{self.kind}-{self.steps}" + (f"-{self.variance_type}" if self.variance_type else "")
        suffix = {"spacing": "{v}", "eps": "{v}eps", "ag": "ag{v}"}
        return head + "".join("-" + suffix[k].format(v=v).replace(".", "p") for k, v in self._options())

    def build(self, scheduler_config: Any) -> SchedulerMixin:
        """The scheduler for this sampler, from a pipeline's scheduler config."""
        if self.kind == "ddim":
            return DDIMExtScheduler.from_config(scheduler_config)
        if self.kind in ("dpmpp", "unipc"):
            return fast_sampler(self.kind, scheduler_config)
        overrides = {"variance_type": self.variance_type} if self.variance_type else {}
        return DDPMExtScheduler.from_config(scheduler_config, **overrides)

    def call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of [`DDPMExtPipeline.__call__`] for this sampler."""
        kwargs: dict[str, Any] = {
            "num_inference_steps": self.steps, "eta": self.eta, "stochastic": self.kind != "ddpm-noz"
        }
        if self.timestep_spacing is not None:
            kwargs["timestep_spacing"] = self.timestep_spacing
        if self.clipped_eps is not None:
            kwargs["use_clipped_model_output"] = self.clipped_eps
        if self.autoguidance_scale is not None:
            kwargs["autoguidance_scale"] = self.autoguidance_scale
        return kwargs

    def describe(self, scheduler: SchedulerMixin) -> dict[str, Any]:
        """What this sampler does with `scheduler` (the one [`build`] made), as a results row records it: `kind`,
        `steps`, `eta`, `adds_noise`, `variance_type`, and the choices actually used: `timestep_spacing` (the
        pipeline's rule applied, [`resolve_timestep_spacing`]), `use_clipped_model_output` (DDIM's ε̂; None for
        the others) and `x0_clipping` (how x̂_0 is clipped)."""
        cfg = scheduler.config
        if cfg.get("thresholding"):
            max_value = float(cfg.get("sample_max_value", 1.0))
            clipping = ("clip ±1 (thresholding, sample_max_value 1)" if max_value == 1.0 else
                        f"dynamic thresholding (ratio {cfg.get('dynamic_thresholding_ratio')}, max {max_value:g})")
        elif cfg.get("clip_sample"):
            clipping = f"clip ±{float(cfg.get('clip_sample_range', 1.0)):g}"
        else:
            clipping = "none"
        ddpm = self.kind in ("ddpm", "ddpm-noz")
        return {
            "kind": self.kind, "steps": self.steps, "eta": self.eta if self.kind == "ddim" else None,
            "adds_noise": self.kind == "ddpm" or (self.kind == "ddim" and self.eta > 0),
            "variance_type": cfg.get("variance_type") if ddpm else None,
            "timestep_spacing": resolve_timestep_spacing(scheduler, self.timestep_spacing),
            "use_clipped_model_output": (
                (True if self.clipped_eps is None else self.clipped_eps) if self.kind == "ddim" else None),
            "x0_clipping": clipping,
        }  # fmt: skip


def parse_sampler(spec: str | SamplerSpec) -> SamplerSpec:
    """Parse `KIND:STEPS[:ARG][:OPTION=VALUE...]`: `ddpm:STEPS[:VARIANCE]`, `ddpm-noz:STEPS`, `ddim:STEPS[:ETA]`,
    `dpmpp:STEPS`, `unipc:STEPS`; options `spacing=leading|trailing|linspace` (any kind), `eps=consistent|model`
    (DDIM's ε̂: recomputed from the clipped x̂_0, or the model's) and `ag=W` (autoguidance scale, a number >= 1),
    each at most once.

    Raises:
        `ValueError`: For any other form (the spec and the grammar are given).
    """
    if isinstance(spec, SamplerSpec):
        return spec

    def bad(why: str) -> ValueError:
        return ValueError(f"Bad sampler spec `--samplers` {spec!r}: {why}. Allowed: {SAMPLER_GRAMMAR}.")

    if not isinstance(spec, str) or not spec.strip():
        raise bad("empty")
    fields_ = spec.strip().split(":")
    kind = fields_[0].strip().lower()
    if kind not in SAMPLER_KINDS:
        raise bad(f"unknown kind {fields_[0]!r} (allowed kinds: {list(SAMPLER_KINDS)})")
    n_positional = next((i for i, f in enumerate(fields_) if "=" in f), len(fields_))
    parts, option_fields = fields_[:n_positional], fields_[n_positional:]
    if len(parts) < 2 or len(parts) > (3 if kind in ("ddpm", "ddim") else 2):
        raise bad(f"wrong number of fields for {kind!r}")
    options: dict[str, str] = {}
    for f in option_fields:
        name, _, value = f.partition("=")
        name, value = name.strip().lower(), value.strip().lower()
        if name not in _SAMPLER_OPTIONS:
            raise bad(f"unknown option {f!r} (allowed: spacing=..., eps=..., ag=...; options come after the "
                      "positional fields)")
        if name in options:
            raise bad(f"option {name!r} given twice")
        if name == "ag":
            try:
                check_number("ag", float(value), 1)
            except ValueError:
                raise bad(f"ag must be a number >= 1 (the autoguidance scale), got {value!r}") from None
        elif value not in _SAMPLER_OPTIONS[name]:
            raise bad(f"{name} must be one of {list(_SAMPLER_OPTIONS[name])}, got {value!r}")
        if name == "eps" and kind != "ddim":
            raise bad(f"eps=... applies to ddim only (the consistent ε̂ of a DDIM step), not to {kind!r}")
        options[name] = value
    try:
        steps = int(parts[1])
    except ValueError:
        raise bad(f"STEPS must be an integer >= 1, got {parts[1]!r}") from None
    if steps < 1:
        raise bad(f"STEPS must be an integer >= 1, got {steps}")
    extra = {"timestep_spacing": options.get("spacing"),
             "clipped_eps": None if "eps" not in options else options["eps"] == "consistent",
             "autoguidance_scale": None if "ag" not in options else float(options["ag"])}  # fmt: skip
    if kind == "ddim":
        try:
            eta = float(parts[2]) if len(parts) == 3 else 0.0
        except ValueError:
            raise bad(f"ETA must be a number in [0, 1], got {parts[2]!r}") from None
        if not 0.0 <= eta <= 1.0:
            raise bad(f"ETA must be a number in [0, 1], got {eta:g}")
        return SamplerSpec("ddim", steps, eta=eta, **extra)
    variance = parts[2] if len(parts) == 3 else None
    if variance is not None and variance not in VARIANCE_TYPES:
        raise bad(f"VARIANCE must be one of {list(VARIANCE_TYPES)}, got {variance!r}")
    return SamplerSpec(kind, steps, variance_type=variance, **extra)


def row_key(slug: str, guidance_scale: float | None) -> str:
    """A file-name-safe name of a results row: a sampler's [`SamplerSpec.slug`], plus `-w<w>` when it has a
    guidance scale w (a class-conditional pipeline), e.g. `"ddim-50-eta0-w1p5"`."""
    return slug if guidance_scale is None else f"{slug}-w{guidance_scale:g}".replace(".", "p")
