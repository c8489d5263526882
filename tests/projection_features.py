"""A cheap deterministic stand-in feature extractor for the tests of the sample-quality scores."""

from __future__ import annotations

import torch

from ddpm_ext.evaluation.features import FeatureExtractor


class ProjectionFeatures(FeatureExtractor):
    """A cheap deterministic extractor for the tests: a fixed random projection of the pixels, counting calls."""

    name = "projection"
    num_features = 6

    def __init__(self, pixels: int = 3 * 8 * 8):
        super().__init__()
        self.proj = torch.nn.Linear(pixels, self.num_features, bias=False)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))
        self.calls = 0

    def _features(self, pixels):
        self.calls += 1
        return torch.tanh(self.proj(pixels.flatten(1).float() / 255.0))
