"""The digit judge's training recipe: bad settings refused, and (slow) retraining with the shipped settings
reproduces the shipped judge on the 500 held-out mnist-5k digits."""

from __future__ import annotations

import json

import pytest

from ddpm_ext.evaluation.class_scores import classifier_inception_score
from ddpm_ext.evaluation.digit_classifier import DigitClassifier
from ddpm_ext.evaluation.train_digit_classifier import train_digit_classifier


@pytest.mark.parametrize(
    "kwargs, match",
    [({"epochs": 0}, "`epochs`"), ({"seed": -1}, "`seed`"), ({"learning_rate": 0.0}, "`learning_rate`"),
     ({"max_shift": 20.0}, "`max_shift`"), ({"num_threads": 0}, "`num_threads`")],
)
def test_train_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_digit_classifier(**kwargs)


@pytest.mark.slow
def test_retraining_with_the_shipped_settings_reproduces_the_judge(test_digits, test_probs):
    # About a minute with 1 thread (35 s on an idle core of the project's machine). The settings come from a
    # fresh load: other tests save the module's shared `judge` with metadata of their own.
    settings = json.loads(DigitClassifier.pretrained().metadata["training"])
    keys = ("seed", "epochs", "batch_size", "learning_rate", "weight_decay", "max_shift", "max_rotation", "max_scale")
    retrained = train_digit_classifier(**{k: settings[k] for k in keys}, num_threads=1)
    pixels, labels = test_digits
    probs = retrained.predict_proba(pixels)
    accuracy = float((probs.argmax(1) == labels).double().mean())
    shipped = float((test_probs.argmax(1) == labels).double().mean())
    # Same PyTorch build and CPU kind: bit-identical weights (checked on the project machine, torch 2.13.0+cpu);
    # elsewhere floating-point differences may move a digit or two.
    assert abs(accuracy - shipped) <= 0.006
    assert classifier_inception_score(probs) == pytest.approx(classifier_inception_score(test_probs), abs=0.1)

