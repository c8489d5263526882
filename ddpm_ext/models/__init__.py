"""Models: `UNet2DModel` presets (DDPM's CIFAR-10 UNet with sinusoidal time embeddings, and small CPU-sized ones)."""

from .unet_presets import UNET_PRESETS, build_unet, unet_config

__all__ = ["UNET_PRESETS", "build_unet", "unet_config"]
