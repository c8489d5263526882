"""benchmarks/judge_real_subsets.py: the classifier IS of random real subsets (a grid's yardstick)."""

from __future__ import annotations

import pytest
import torch
from repo_scripts import load_script

from ddpm_ext.evaluation.digit_classifier import classifier_inception_score


def test_subset_scores_hand_made_probabilities():
    script = load_script("benchmarks/judge_real_subsets.py")
    probs = torch.eye(10, dtype=torch.float64).repeat(3, 1)  # 30 confident predictions, 3 per class
    whole = script.subset_scores(probs, 30, draws=1, seed=0)
    assert whole.tolist() == pytest.approx([10.0])  # every class equally often: the maximum
    small = script.subset_scores(probs, 10, draws=50, seed=0)
    assert (small <= 10.0 + 1e-9).all() and small.mean() < 10.0  # 10 of 30 rarely hold one of each digit
    assert small.tolist() == script.subset_scores(probs, 10, draws=50, seed=0).tolist()  # seeded
    assert small[0] == pytest.approx(classifier_inception_score(probs[torch.randperm(30, generator=torch.Generator().manual_seed(0))[:10]]))
    with pytest.raises(ValueError, match=r"`size` must be in \[2, 30\]"):
        script.subset_scores(probs, 31, draws=1, seed=0)
