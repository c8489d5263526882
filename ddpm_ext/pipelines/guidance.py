"""Guided sampling: classifier-free guidance (Ho & Salimans 2022) and autoguidance (Karras et al. 2024).

Legend (code name -> symbol):

| code | symbol |
|---|---|
| `cond` | ε_θ(x_t, t, y), the conditional branch |
| `uncond` | ε_θ(x_t, t, ∅), the unconditional branch (the null class) |
| `guidance_scale` | w |
| result | ε̂ = ε_θ(x_t, t, ∅) + w (ε_θ(x_t, t, y) − ε_θ(x_t, t, ∅)) |

w = 1 is plain conditional sampling (only the conditional branch is run), w = 0 unconditional sampling with
the null class (only that branch is run; a call without class labels samples so by default), w > 1 sharpens
p(y | x)^(w−1) p(x | y) as in the paper. For any other w both branches go through ONE batched UNet call per step:
[x, x] with labels [y, ∅].

Autoguidance ("Guiding a Diffusion Model with a Bad Version of Itself", Karras et al. 2024) takes the same
combination with a second, weaker model of the same kind in place of the null class: D̂ = D_guide + w (D − D_guide).
The guide here is the main model's own EMA weights from earlier in the same training run (`guide_unet`,
`--autoguidance_guide_fraction`): its errors are those of the main model, larger, so extrapolating away from
them removes part of the main model's error without the loss of diversity of classifier-free guidance.

| code | symbol |
|---|---|
| `model` | D(x_t, t), the main model's output (ε, x_0 or v) |
| `guide` | D_guide(x_t, t), the guide model's output |
| `autoguidance_scale` | w (1: the main model alone, the guide is not run) |

Conventions, shared with the training script (`ddpm_ext.training.conditioning`):

- A conditional UNet is a `UNet2DModel` with `num_class_embeds = K + 1` for K classes: ids 0..K−1 are the
  classes, the last id K is the null class ∅ (the label that training dropout substitutes).
- The class names are kept in the UNet config under the private key `_ddpm_ext_class_names` (a list of K
  strings); diffusers ignores private keys, so vanilla `UNet2DModel.from_pretrained` loads the UNet unchanged and
  `DDPMExtPipeline.from_pretrained` gets the names back with the UNet.
- Whatever predicts the UNet (ε, x_0 or v), the same linear combination is taken: each is linear in ε for fixed
  x_t, so guiding x_0 or v is the same as guiding ε. With a learned variance (2C output channels) only the first
  C channels (the mean) are guided; the variance channels of the conditional branch are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from diffusers import UNet2DModel

from ..validation import check_int, check_number

__all__ = [
    "AUTOGUIDANCE_SCALE_KEY",
    "GUIDE_STEP_KEY",
    "CLASS_NAMES_KEY",
    "ClassGuidance",
    "autoguide",
    "balanced_class_labels",
    "grid_images_per_class",
    "check_autoguidance_scale",
    "check_guide_unet",
    "check_guidance_scale",
    "default_autoguidance_scale",
    "num_guided_channels",
    "class_names",
    "combine_guidance",
    "is_class_conditional",
    "num_classes",
    "prepare_guidance",
    "resolve_class_labels",
    "set_class_names",
]

CLASS_NAMES_KEY = "_ddpm_ext_class_names"  # private key of the UNet config (diffusers ignores it)
# private keys of a guide UNet's config: the autoguidance scale w sampling uses by default, and the training step
# whose EMA weights the guide holds (for the record)
AUTOGUIDANCE_SCALE_KEY = "_ddpm_ext_autoguidance_scale"
GUIDE_STEP_KEY = "_ddpm_ext_guide_step"

ModelCall = Callable[..., torch.Tensor]  # (x_t, t, class_labels=...) -> model output


# --------------------------------------------------------------------------------------------------
# The class vocabulary of a UNet
# --------------------------------------------------------------------------------------------------
def is_class_conditional(unet: Any) -> bool:
    """Whether `unet` (a `UNet2DModel`) takes class labels: `num_class_embeds` set, or another class embedding."""
    config = unet.config
    return bool(config.get("num_class_embeds")) or config.get("class_embed_type") is not None


def num_classes(unet: Any) -> int:
    """K, the number of real classes of a conditional UNet (`num_class_embeds` − 1; the last id is ∅).

    Raises:
        ValueError: for an unconditional UNet, or one whose class embedding is not ddpm_ext's (no `num_class_embeds`
            of at least 2, i.e. no room for a class and the null class).
    """
    n = unet.config.get("num_class_embeds")
    if not n:
        raise ValueError(
            "The UNet is unconditional (`num_class_embeds` is not set); it takes no class labels."
            if unet.config.get("class_embed_type") is None
            else f"The UNet's class embedding `class_embed_type`={unet.config.class_embed_type!r} is not supported; "
            "ddpm_ext's conditional UNets use `num_class_embeds` = number of classes + 1 "
            "(the last id is the null class)."
        )
    if n < 2:
        raise ValueError(
            f"A conditional UNet needs `num_class_embeds` >= 2 (the classes + the null class), got {n}."
        )
    return int(n) - 1


def class_names(unet: Any) -> list[str]:
    """The K class names saved with the UNet (`str(i)` for ids when none were saved)."""
    k = num_classes(unet)
    names = unet.config.get(CLASS_NAMES_KEY)
    if isinstance(names, (list, tuple)) and len(names) == k:
        return [str(n) for n in names]
    return [str(i) for i in range(k)]


def set_class_names(unet: Any, names: Sequence[str]) -> None:
    """Store the K class names in the UNet config (private key, saved in unet/config.json).

    Raises:
        ValueError: when the number of names is not K or names repeat.
    """
    names = [str(n) for n in names]
    k = num_classes(unet)
    if len(names) != k:
        raise ValueError(f"`names` must hold {k} class names (the UNet has {k} classes), got {len(names)}.")
    if len(set(names)) != len(names):
        raise ValueError(f"`names` must be distinct, got {names}.")
    unet.register_to_config(**{CLASS_NAMES_KEY: names})


# --------------------------------------------------------------------------------------------------
# Checking the call
# --------------------------------------------------------------------------------------------------
def resolve_class_labels(unet: Any, class_labels: Any, batch_size: int | None = None) -> list[int]:
    """Class ids 0..K−1 from ints, class names or integer strings; one per image.

    A string is looked up among the class names first; a string that is not a name but an integer literal is
    an id. Labels must not be the null class: for unconditional samples use `guidance_scale=0`.

    Args:
        unet: the conditional `UNet2DModel`.
        class_labels: a sequence of ints / names, a 1-D integer tensor or array, or a single int / name (then it
            is repeated `batch_size` times).
        batch_size (`int`, *optional*): the number of images; a sequence must have exactly this length.

    Returns:
        `list[int]`

    Raises:
        ValueError: for labels given to an unconditional UNet, a wrong length, ids out of [0, K−1], unknown names,
            or values that are neither ints nor strings.
    """
    if not is_class_conditional(unet):
        raise ValueError(
            f"`class_labels` were given ({_short(class_labels)}), but the UNet is unconditional "
            "(no `num_class_embeds`); "
            "drop `class_labels` (and `guidance_scale`) or load a class-conditional model."
        )
    k = num_classes(unet)
    names = class_names(unet)
    if isinstance(class_labels, (torch.Tensor, np.ndarray)):
        if class_labels.ndim > 1:
            raise ValueError(f"`class_labels` must be 1-D, got shape {tuple(class_labels.shape)}.")
        class_labels = class_labels.reshape(-1).tolist()
    if isinstance(class_labels, (int, np.integer, str)) and not isinstance(class_labels, bool):
        class_labels = [class_labels] * (batch_size or 1)
    if not isinstance(class_labels, (list, tuple)) or not class_labels:
        raise ValueError(
            f"`class_labels` must be a non-empty list of class ids in [0, {k - 1}] or names, "
            f"got {_short(class_labels)}."
        )
    if batch_size is not None and len(class_labels) != batch_size:
        raise ValueError(
            f"`class_labels` must hold one label per image: {batch_size} (`batch_size`), got {len(class_labels)}."
        )
    ids = []
    for label in class_labels:
        if isinstance(label, str):
            if label in names:
                ids.append(names.index(label))
                continue
            try:
                label = int(label.strip())
            except ValueError:
                raise ValueError(
                    f"`class_labels` holds the unknown class name {label!r}; the classes are {_listing(names)}."
                ) from None
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
            raise ValueError(f"`class_labels` must hold ints or class names, got {label!r} ({type(label).__name__}).")
        if not 0 <= label < k:
            raise ValueError(
                f"`class_labels` holds {int(label)}, outside the model's classes 0..{k - 1} ({_listing(names)}); "
                f"id {k} is the null class, used by `guidance_scale=0`."
            )
        ids.append(int(label))
    return ids


def balanced_class_labels(num_images: int, num_classes: int, start: int = 0) -> list[int]:
    """The requested class of images `start .. start + num_images − 1` when every class is asked for equally often:
    image i gets class i mod K (K = `num_classes`), whatever the batch size. The package's one pairing of image
    index (hence x_T, [`~seeding.image_generators`]) and class: `ddpm-ext evaluate` and the training script's
    sample grids both use it, so a grid's images are evaluate's first ones.

    Example:

    ```py
    >>> from ddpm_ext.pipelines.guidance import balanced_class_labels
    >>> balanced_class_labels(7, 3)
    [0, 1, 2, 0, 1, 2, 0]
    >>> balanced_class_labels(3, 3, start=4)
    [1, 2, 0]

    ```
    """
    num_classes = check_int("num_classes", num_classes, 1)
    return [(start + i) % num_classes for i in range(check_int("num_images", num_images, 0))]


def grid_images_per_class(num_images: int, num_classes: int) -> int:
    """Images per class (one grid row each) of a conditional sample grid asked for `num_images` images: at least
    one, else as many whole rows of K as fit. The training script draws its grids so and the model card says so.

    Example:

    ```py
    >>> from ddpm_ext.pipelines.guidance import grid_images_per_class
    >>> grid_images_per_class(64, 10), grid_images_per_class(4, 10)
    (6, 1)

    ```
    """
    return max(1, check_int("num_images", num_images, 0) // check_int("num_classes", num_classes, 1))


def check_guidance_scale(guidance_scale: Any) -> float:
    """`guidance_scale` as a finite float >= 0 (0: unconditional, 1: conditional, > 1: guided); else a `ValueError`."""
    return check_number("guidance_scale", guidance_scale, 0)


@dataclass
class ClassGuidance:
    """The checked class labels and guidance scale of one call, and the guided model call built from them.

    Args:
        class_labels (`torch.Tensor`): (B,) int64 class ids.
        null_class (`int`): the id of ∅ (K).
        guidance_scale (`float`): w.
        out_channels_guided (`int`): how many leading output channels are guided (C; with a learned variance the
            other C channels are the conditional branch's variance).
    """

    class_labels: torch.Tensor
    null_class: int
    guidance_scale: float
    out_channels_guided: int

    def wrap(self, model: ModelCall) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """`model(x, t, class_labels=...)` -> `(x, t) -> ε̂`, one UNet call per step whatever w is.

        Example:

        ```py
        >>> import torch
        >>> from ddpm_ext import build_unet
        >>> from ddpm_ext.pipelines.guidance import prepare_guidance
        >>> unet = build_unet("tiny", num_class_embeds=3)
        >>> guide = prepare_guidance(unet, [0, 1], 2.0, batch_size=2)
        >>> call = guide.wrap(lambda x, t, class_labels: unet(x, t, class_labels=class_labels).sample)
        >>> call(torch.zeros(2, 1, 8, 8), torch.tensor(5)).shape
        torch.Size([2, 1, 8, 8])

        ```
        """
        w = self.guidance_scale

        def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            labels = self.class_labels.to(x.device)
            if w == 1.0:  # p(x | y): the conditional branch alone
                return model(x, t, class_labels=labels)
            if w == 0.0:  # p(x): the null class alone
                return model(x, t, class_labels=torch.full_like(labels, self.null_class))
            both = model(  # (2B, C_out, H, W): [conditional; unconditional]
                torch.cat([x, x]), t, class_labels=torch.cat([labels, torch.full_like(labels, self.null_class)])
            )
            cond, uncond = both.chunk(2)
            return combine_guidance(cond, uncond, w, self.out_channels_guided)

        return call


def combine_guidance(
    cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float, guided_channels: int
) -> torch.Tensor:
    """ε̂ = uncond + w (cond − uncond) on the first `guided_channels` channels; the rest (a learned variance)
    are `cond`'s. Shapes (B, C_out, H, W)."""
    mean = uncond[:, :guided_channels] + guidance_scale * (cond[:, :guided_channels] - uncond[:, :guided_channels])
    if guided_channels == cond.shape[1]:
        return mean
    return torch.cat([mean, cond[:, guided_channels:]], dim=1)


def prepare_guidance(
    unet: Any, class_labels: Any, guidance_scale: Any, batch_size: int
) -> ClassGuidance | None:
    """Check a call's `class_labels` / `guidance_scale` against the UNet, before any sampling work.

    `guidance_scale=None` is the default of a call: 1 (p(x | y)) when labels are given, and for a conditional
    UNet called without labels 0: p(x), the null class that label dropout trains (no class asked, none imposed).

    Returns:
        [`ClassGuidance`] for a conditional UNet, `None` for an unconditional one called without labels.

    Raises:
        ValueError: a conditional UNet called without labels but with a `guidance_scale` other than 0 (there is
            no class to guide towards), labels for an unconditional UNet, bad labels (see
            [`resolve_class_labels`]) or a `guidance_scale` that is negative, not finite, or not 1 for an
            unconditional UNet.

    Example:

    ```py
    >>> from ddpm_ext import build_unet
    >>> from ddpm_ext.pipelines.guidance import prepare_guidance
    >>> unet = build_unet("tiny", num_class_embeds=3)  # 2 classes and the null class (id 2)
    >>> prepare_guidance(unet, None, None, 2).guidance_scale  # no labels: p(x)
    0.0
    >>> prepare_guidance(unet, [0, 1], None, 2).guidance_scale  # labels: p(x | y)
    1.0

    ```
    """
    conditional = is_class_conditional(unet)
    if guidance_scale is None:
        w = 0.0 if conditional and class_labels is None else 1.0
    else:
        w = check_guidance_scale(guidance_scale)
    if not conditional:
        if class_labels is not None:
            resolve_class_labels(unet, class_labels, batch_size)  # raises the "unconditional" error
        if w != 1.0:
            raise ValueError(
                f"`guidance_scale`={guidance_scale!r} needs a class-conditional UNet; this one is unconditional "
                "(leave `guidance_scale` unset or at 1)."
            )
        return None
    k = num_classes(unet)
    if class_labels is None:
        if w != 0.0:
            raise ValueError(
                f"`guidance_scale`={guidance_scale!r} needs `class_labels`: the UNet is class-conditional "
                f"({k} classes: "
                f"{_listing(class_names(unet))}); pass `class_labels` (one id or name per image), or leave "
                "`guidance_scale` unset (or 0) for unconditional samples p(x) (the null class)."
            )
        ids = [k] * batch_size  # never used: w = 0 calls the null class only
    else:
        ids = resolve_class_labels(unet, class_labels, batch_size)
    return ClassGuidance(torch.tensor(ids, dtype=torch.long), k, w, num_guided_channels(unet))


# --------------------------------------------------------------------------------------------------
# Autoguidance: a weaker version of the model as the guide
# --------------------------------------------------------------------------------------------------
def check_autoguidance_scale(autoguidance_scale: Any) -> float:
    """`autoguidance_scale` as a finite float >= 1 (1: no guidance); else a `ValueError`."""
    return check_number("autoguidance_scale", autoguidance_scale, 1)


# config entries that must agree between a UNet and its guide (same inputs, outputs and conditioning)
_GUIDE_MUST_MATCH = ("sample_size", "in_channels", "out_channels", "num_class_embeds", "class_embed_type")


def check_guide_unet(unet: Any, guide_unet: Any) -> None:
    """Raise `ValueError` unless `guide_unet` is a `UNet2DModel` that takes and gives what `unet` does.

    Both must agree in `sample_size`, `in_channels`, `out_channels` and class conditioning; the guide's width,
    depth or attention may differ (Karras et al. use a smaller model as well as a shorter-trained one).
    """
    if not isinstance(guide_unet, UNet2DModel):
        raise ValueError(f"`guide_unet` must be a diffusers `UNet2DModel` or None, got {type(guide_unet).__name__}.")
    differ = [f"{k}: {guide_unet.config.get(k)!r} (guide) vs {unet.config.get(k)!r} (unet)" for k in _GUIDE_MUST_MATCH
              if _plain(guide_unet.config.get(k)) != _plain(unet.config.get(k))]
    if differ:
        raise ValueError(
            "`guide_unet` must take and give what `unet` does (the same sample_size, channels and class "
            f"conditioning); they differ in {'; '.join(differ)}."
        )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def default_autoguidance_scale(guide_unet: Any) -> float:
    """The w a pipeline samples with when the call does not say: the guide's saved recommendation
    (`AUTOGUIDANCE_SCALE_KEY` of its config; 1 when it has none), or 1 without a guide."""
    if guide_unet is None:
        return 1.0
    saved = guide_unet.config.get(AUTOGUIDANCE_SCALE_KEY)
    return 1.0 if saved is None else check_autoguidance_scale(saved)


def autoguide(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    guide: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    autoguidance_scale: float,
    guided_channels: int,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`(x, t) -> D̂ = D_guide + w (D − D_guide)` from the two model calls; at w = 1 the main model alone.

    Only the first `guided_channels` channels are combined (a learned variance keeps the main model's).

    Example:

    ```py
    >>> import torch
    >>> from ddpm_ext import build_unet
    >>> from ddpm_ext.pipelines.guidance import autoguide
    >>> main, weak = build_unet("tiny"), build_unet("tiny")
    >>> call = autoguide(lambda x, t: main(x, t).sample, lambda x, t: weak(x, t).sample, 2.0, guided_channels=1)
    >>> x, t = torch.randn(2, 1, 8, 8), torch.tensor(5)
    >>> d, g = main(x, t).sample, weak(x, t).sample
    >>> torch.allclose(call(x, t), g + 2.0 * (d - g))
    True

    ```
    """
    w = check_autoguidance_scale(autoguidance_scale)
    if w == 1.0:
        return model

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return combine_guidance(model(x, t), guide(x, t), w, guided_channels)

    return call


def num_guided_channels(unet: Any) -> int:
    """How many leading output channels guidance combines: C (the mean), also when the UNet learns the variance."""
    c_in, c_out = unet.config.in_channels, unet.config.out_channels
    return c_in if c_out == 2 * c_in else c_out


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(f"{i}={n!r}" for i, n in enumerate(names[:limit]))
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
