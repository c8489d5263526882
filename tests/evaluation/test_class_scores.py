"""The scores computed from class probabilities or labels (classifier IS and its bootstrap spread, class coverage,
class accuracy) on hand-computed cases, and their bad inputs."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

import ddpm_ext.evaluation.class_scores as class_scores_mod
from ddpm_ext.evaluation.class_scores import (
    class_accuracy,
    class_coverage,
    classifier_inception_score,
    classifier_inception_score_std,
)

# ----------------------------------------------------------------------------------------------------------
# Classifier Inception Score
# ----------------------------------------------------------------------------------------------------------


def test_inception_score_closed_forms():
    assert classifier_inception_score(np.eye(10)) == pytest.approx(10.0, rel=1e-14)  # one-hot, balanced
    assert classifier_inception_score(torch.eye(10).repeat(3, 1)) == pytest.approx(10.0, rel=1e-14)
    assert classifier_inception_score(np.eye(10)[:3]) == pytest.approx(3.0, rel=1e-14)  # 3 confident classes
    row = np.array([0.7, 0.2, 0.1, 0, 0, 0, 0, 0, 0, 0])
    assert classifier_inception_score(np.tile(row, (6, 1))) == pytest.approx(1.0, abs=1e-14)  # identical rows


def test_inception_score_two_images_by_hand():
    # p(y) = (0.75, 0.25); KL_1 = log(1 / 0.75) = log(4/3); KL_2 = 0.5 log(0.5/0.75) + 0.5 log(0.5/0.25)
    # = 0.5 log(4/3); IS = exp((KL_1 + KL_2) / 2) = (4/3) ** 0.75.
    assert classifier_inception_score([[1.0, 0.0], [0.5, 0.5]]) == pytest.approx((4 / 3) ** 0.75, rel=1e-14)
    # float32 softmax output is accepted (rows sum to 1 within 1e-4)
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float32)
    assert classifier_inception_score(probs) == pytest.approx((4 / 3) ** 0.75, rel=1e-7)


def test_inception_score_std_by_hand():
    # Two images A = (1, 0), B = (0.5, 0.5): a resampled pair is AA or BB (score 1) with probability 1/2, AB or BA
    # (score (4/3) ** 0.75) with 1/2, so the scores' standard deviation is ((4/3) ** 0.75 - 1) / 2.
    std = classifier_inception_score_std([[1.0, 0.0], [0.5, 0.5]], num_resamples=4000, seed=1)
    assert std == pytest.approx(((4 / 3) ** 0.75 - 1) / 2, rel=0.05)
    assert classifier_inception_score_std([[1.0, 0.0], [0.5, 0.5]], num_resamples=300) == \
        classifier_inception_score_std([[1.0, 0.0], [0.5, 0.5]], num_resamples=300)  # seeded
    # every set scores 1
    assert classifier_inception_score_std(np.tile([0.3, 0.7], (40, 1))) == pytest.approx(0.0, abs=1e-12)
    assert classifier_inception_score_std([[0.3, 0.7]]) == 0.0  # one image: nothing to resample


def test_inception_score_std_shrinks_as_one_over_sqrt_n():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(10, 0.3), size=1600)
    small, large = classifier_inception_score_std(probs[:100]), classifier_inception_score_std(probs)
    assert small / large == pytest.approx(4.0, rel=0.3)
    with pytest.raises(ValueError, match="`num_resamples` must be an integer >= 2"):
        classifier_inception_score_std(probs, num_resamples=1)


@pytest.mark.parametrize(
    "probs, match",
    [
        (np.array([0.5, 0.5]), r"shape \(N, K\)"),
        (np.zeros((0, 10)), r"shape \(N, K\)"),
        (np.ones((3, 1)), r"K >= 2"),
        (np.array([[2.0, -1.0]]), ">= 0"),
        (np.array([[np.nan, 1.0]]), "finite"),
        (np.array([[3.1, 0.4]]), "sum to 1.*row 0 sums to 3.5"),
        (np.array([["a", "b"]]), "numbers"),
        ("probs", "NumPy array"),
    ],
)
def test_inception_score_bad_inputs(probs, match):
    with pytest.raises(ValueError, match=match):
        classifier_inception_score(probs)


# ----------------------------------------------------------------------------------------------------------
# Class coverage and class accuracy
# ----------------------------------------------------------------------------------------------------------


def test_class_coverage_by_hand():
    cov = class_coverage(np.array([0, 0, 1, 3]), num_classes=4)
    # f = (1/2, 1/4, 0, 1/4): H = 1/2 log 2 + 2 * 1/4 log 4 = 1.5 log 2; / log 4 = 0.75
    assert cov.counts == (2, 1, 0, 1) and cov.num_present == 3 and cov.num_classes == 4
    assert cov.normalized_entropy == pytest.approx(0.75, rel=1e-14) and cov.fraction_present == 0.75
    assert cov.to_dict() == {"counts": [2, 1, 0, 1], "num_present": 3, "num_classes": 4,
                             "fraction_present": 0.75, "normalized_entropy": cov.normalized_entropy}
    one_class = class_coverage(torch.full((9,), 7))
    assert one_class.num_present == 1 and one_class.normalized_entropy == 0.0
    balanced = class_coverage(np.arange(30) % 10)
    assert balanced.num_present == 10 and balanced.normalized_entropy == pytest.approx(1.0, rel=1e-14)


def test_class_coverage_of_probabilities_uses_the_argmax():
    probs = np.array([[0.6, 0.4, 0.0], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])
    cov = class_coverage(probs, num_classes=3)  # labels 0, 2, 1, 0
    assert cov.counts == (2, 1, 1)
    assert cov.normalized_entropy == pytest.approx(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)) / math.log(3))


def test_class_accuracy_by_hand():
    assert class_accuracy(np.array([3, 1, 4, 1]), np.array([3, 1, 4, 5])) == 0.75
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]], dtype=torch.float64)  # labels 0, 1, 0
    assert class_accuracy(probs, torch.tensor([0, 0, 0]), num_classes=2) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "fn, args, match",
    [
        (class_coverage, (np.array([0.0, 1.0]),), "integer class labels"),
        (class_coverage, (np.array([0, 10]),), r"in \[0, 9\].*\[0, 10\]"),
        (class_coverage, (np.array([-1, 2]),), r"in \[0, 9\]"),
        (class_coverage, (np.array([True, False]),), "integer class labels"),
        (class_coverage, (np.eye(3),), "3 columns but `num_classes` is 10"),
        (class_coverage, (np.zeros((2, 2, 2)),), r"shape \(N,\) or probabilities"),
        (class_coverage, (np.array([], dtype=np.int64),), "N >= 1"),
        (class_coverage, (np.array([0]), 1), "`num_classes` must be an integer >= 2"),
        (class_accuracy, (np.array([0, 1]), np.array([0, 1, 2])), "3 labels but `probs_or_labels` has 2 rows"),
        (class_accuracy, (np.array([0, 1]), np.array([0.0, 1.0])), "`requested` must hold integer"),
        (class_accuracy, (np.array([0, 1]), np.array([0, 12])), "`requested` must hold class labels in"),
        (class_accuracy, (np.full((2, 10), 0.5), np.array([0, 1])), "sum to 1"),
    ],
)
def test_coverage_and_accuracy_bad_inputs(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_docstring_examples():
    result = doctest.testmod(class_scores_mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
