"""benchmarks/judge_real_subsets.py: the classifier IS of random real subsets (a grid's yardstick)."""

from __future__ import annotations

import pytest
import torch
from repo_scripts import load_script

from ddpm_ext.evaluation.class_scores import classifier_inception_score


def test_subset_scores_hand_made_probabilities():
    script = load_script("benchmarks/judge_real_subsets.py")
    probs = torch.eye(10, dtype=torch.float64).repeat(3, 1)  # 30 confident predictions, 3 per class
    whole = script.subset_scores(probs, 30, draws=1, seed=0)
    assert whole.tolist() == pytest.approx([10.0])  # every class equally often: the maximum
    small = script.subset_scores(probs, 10, draws=50, seed=0)
    assert (small <= 10.0 + 1e-9).all() and small.mean() < 10.0  # 10 of 30 rarely hold one of each digit
    assert small.tolist() == script.subset_scores(probs, 10, draws=50, seed=0).tolist()  # seeded
    assert small[0] == pytest.approx(
        classifier_inception_score(probs[torch.randperm(30, generator=torch.Generator().manual_seed(0))[:10]]))
    with pytest.raises(ValueError, match=r"`size` must be in \[2, 30\]"):
        script.subset_scores(probs, 31, draws=1, seed=0)


def test_balanced_subsets_hold_every_class_equally_often():
    script = load_script("benchmarks/judge_real_subsets.py")
    labels = torch.arange(10).repeat(3)  # 3 images per class
    probs = torch.eye(10, dtype=torch.float64)[labels]
    probs[0] = torch.full((10,), 0.1, dtype=torch.float64)  # one image of class 0 the judge cannot read
    balanced = script.subset_scores(probs, 10, draws=40, seed=0, labels=labels)
    # one image of each class: only two subsets' scores are possible, with and without the unreadable image
    clean = classifier_inception_score(torch.eye(10, dtype=torch.float64))
    with_unreadable = classifier_inception_score(torch.cat([probs[:1], torch.eye(10, dtype=torch.float64)[1:]]))
    assert clean == pytest.approx(10.0) and with_unreadable < 9.5
    seen = {min((clean, with_unreadable), key=lambda v: abs(v - s)) for s in balanced.tolist()}
    assert all(min(abs(s - clean), abs(s - with_unreadable)) < 1e-9 for s in balanced.tolist())
    assert seen == {clean, with_unreadable}  # 40 draws hit the unreadable one (1 in 3) and miss it
    random = script.subset_scores(probs, 10, draws=40, seed=0)
    assert balanced.mean() > random.mean()  # random subsets of 10 rarely hold one of each digit
    with pytest.raises(ValueError, match="needs 4 images of class 0, but only 3 are held out"):
        extra = torch.tensor([1])  # 31 images, class 1 four times: 31 balanced asks for four 0s
        script.subset_scores(torch.cat([probs, probs[extra]]), 31, draws=1, seed=0, labels=torch.cat([labels, extra]))
