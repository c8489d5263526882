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
    from tiny_pipeline import make_tiny_pipeline  # imports ddpm_ext: only after pytest_configure

    folder = tmp_path_factory.mktemp("tiny_pipeline")
    make_tiny_pipeline().save_pretrained(folder)
    return folder
