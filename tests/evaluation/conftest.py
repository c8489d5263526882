"""Fixtures of the digit judge's tests: the shipped judge and the 500 held-out mnist-5k digits it is scored on."""

import pytest

from ddpm_ext.evaluation.digit_classifier import DigitClassifier
from ddpm_ext.evaluation.train_digit_classifier import load_mnist_5k_arrays


@pytest.fixture(scope="module")
def judge():
    return DigitClassifier.pretrained()


@pytest.fixture(scope="module")
def test_digits():
    return load_mnist_5k_arrays("test")  # uint8 (500, 1, 28, 28), int64 (500,)


@pytest.fixture(scope="module")
def test_probs(judge, test_digits):
    return judge.predict_proba(test_digits[0])
