"""Test setup: the Hub endpoint must be chosen before huggingface_hub is imported (it reads HF_ENDPOINT once)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # hub_servers, tiny_pipeline

import hub_servers  # noqa: E402
from hub_servers import olah_hub, upload_hub  # noqa: E402,F401  (fixtures)


def pytest_configure(config):
    hub_servers.reserve_hub_endpoint()


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """The tiny pipeline of `tiny_pipeline.py` (16x16, T = 20, random weights) saved once per test session."""
    from tiny_pipeline import make_tiny_pipeline  # noqa: PLC0415 imports ddpm_ext: only after pytest_configure's HF_ENDPOINT

    folder = tmp_path_factory.mktemp("tiny_pipeline")
    make_tiny_pipeline().save_pretrained(folder)
    return folder


# The digit judge's fixtures (tests/evaluation): the shipped judge and the 500 held-out mnist-5k digits. Their
# imports are local for the same reason as above: ddpm_ext may only be imported after pytest_configure.


@pytest.fixture(scope="module")
def judge():
    from ddpm_ext.evaluation.digit_classifier import DigitClassifier  # noqa: PLC0415 after pytest_configure

    return DigitClassifier.pretrained()


@pytest.fixture(scope="module")
def test_digits():
    from ddpm_ext.evaluation.train_digit_classifier import load_mnist_5k_arrays  # noqa: PLC0415 (as above)

    return load_mnist_5k_arrays("test")  # uint8 (500, 1, 28, 28), int64 (500,)


@pytest.fixture(scope="module")
def test_probs(judge, test_digits):
    return judge.predict_proba(test_digits[0])


# --------------------------------------------------------------------------- #
# Test tiers, as diffusers does it: the fast tier by default, the slow tier (end-to-end training runs, subprocesses,
# long sampling) opted into with `--runslow` or RUN_SLOW=1 (or by selecting it with `-m slow`).
# --------------------------------------------------------------------------- #


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run the slow tier (tests marked `slow`); RUN_SLOW=1 does the same")


def _run_slow(config) -> bool:
    if config.getoption("--runslow") or os.environ.get("RUN_SLOW", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return "slow" in (config.getoption("-m") or "").replace("not slow", "")  # `-m slow` asks for them by name


def pytest_collection_modifyitems(config, items):
    if _run_slow(config):
        return
    skip = pytest.mark.skip(reason="slow tier: run with --runslow or RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
