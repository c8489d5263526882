"""Precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020) through `prdc`: hand-computed
k-NN balls, identical sets, a brute-force check of the definitions, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_ext.evaluation.precision_recall import precision_recall_density_coverage

pytest.importorskip("prdc")


def test_one_dimensional_case_by_hand():
    # k = 1. Real radii (distance to the nearest other real): 0 -> 1, 1 -> 1, 3 -> 2, 7 -> 4, so the real balls
    # are (-1, 1), (0, 2), (1, 5), (3, 11). Fake radii: 0.5 -> 2.1, 2.6 -> 2.1, 12 -> 1, 13 -> 1, so the fake
    # balls are (-1.6, 2.6), (0.5, 4.7), (11, 13), (12, 14).
    real = np.array([[0.0], [1.0], [3.0], [7.0]])
    fake = np.array([[0.5], [2.6], [12.0], [13.0]])
    result = precision_recall_density_coverage(real, fake, nearest_k=1)
    assert result == {
        "precision": 0.5,  # 0.5 and 2.6 lie in a real ball; 12 and 13 do not
        "recall": 0.75,  # 0, 1, 3 lie in a fake ball; 7 does not
        "density": 0.75,  # 0.5 lies in 2 real balls, 2.6 in 1, 12 and 13 in none: (2 + 1) / 4 / k
        "coverage": 0.75,  # nearest fakes: 0 -> 0.5 (< 1), 1 -> 0.5 (< 1), 3 -> 2.6 (< 2), 7 -> 2.6 (4.4 >= 4)
    }
    # Torch tensors, float32, and the sets exchanged (precision <-> recall)
    swapped = precision_recall_density_coverage(torch.tensor(fake, dtype=torch.float32), torch.tensor(real), 1)
    assert swapped["precision"] == 0.75 and swapped["recall"] == 0.5


def test_identical_sets_have_full_precision_recall_and_coverage():
    feats = np.random.default_rng(0).normal(size=(40, 3))
    result = precision_recall_density_coverage(feats, feats.copy(), nearest_k=5)
    assert result["precision"] == 1.0 and result["recall"] == 1.0 and result["coverage"] == 1.0


def _brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """The four definitions, written out with exact pairwise distances."""
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=-1)
    d_rf = np.linalg.norm(real[:, None] - fake[None], axis=-1)  # (N_real, N_fake)
    r_real = np.sort(d_rr, axis=1)[:, k]  # column 0 is the point itself
    r_fake = np.sort(d_ff, axis=1)[:, k]
    inside_real = d_rf < r_real[:, None]  # fake j inside the ball of real i
    return {
        "precision": inside_real.any(axis=0).mean(),
        "recall": (d_rf < r_fake[None, :]).any(axis=1).mean(),
        "density": inside_real.sum(axis=0).mean() / k,
        "coverage": (d_rf.min(axis=1) < r_real).mean(),
    }


def test_matches_the_definitions_on_random_points():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(60, 2))
    fake = rng.normal(loc=0.7, scale=1.3, size=(50, 2))
    for k in (1, 3, 5):
        result = precision_recall_density_coverage(real, fake, nearest_k=k)
        expected = _brute_force(real, fake, k)
        assert result == pytest.approx(expected, abs=1e-12)
        assert 0 < result["precision"] < 1 and 0 < result["recall"] < 1


@pytest.mark.parametrize(
    "real, fake, kwargs, match",
    [
        (np.zeros(8), np.zeros((8, 1)), {}, r"`real_features` must have shape \(N, D\)"),
        (np.zeros((8, 2)), np.zeros((8, 3)), {}, "same feature size D, got 2 and 3"),
        (np.zeros((8, 2)), np.full((8, 2), np.nan), {}, "`fake_features` must be finite"),
        (np.zeros((6, 2)), np.zeros((8, 2)), {}, "`real_features` has 6 rows; `nearest_k`=5 needs at least 7"),
        (np.zeros((8, 2)), np.zeros((2, 2)), {"nearest_k": 1}, "`fake_features` has 2 rows"),
        (np.zeros((8, 2)), np.zeros((8, 2)), {"nearest_k": 0}, "`nearest_k` must be an integer >= 1"),
        ([[0.0]] * 8, np.zeros((8, 1)), {}, "NumPy array or a torch tensor"),
        (np.zeros((8, 2), dtype=bool), np.zeros((8, 2)), {}, "must hold numbers"),
    ],
)
def test_bad_inputs(real, fake, kwargs, match):
    with pytest.raises(ValueError, match=match):
        precision_recall_density_coverage(real, fake, **kwargs)
