"""Test setup: the Hub endpoint must be chosen before huggingface_hub is imported (it reads HF_ENDPOINT once)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # hub_servers
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "training"))  # train_ddpm

import hub_servers  # noqa: E402
from hub_servers import olah_hub, upload_hub  # noqa: E402,F401  (fixtures)


def pytest_configure(config):
    hub_servers.reserve_hub_endpoint()
