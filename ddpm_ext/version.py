"""The package's version: its one owner (setup.cfg reads it; saved pipelines record it in `model_index.json`)."""

__version__ = "0.1.0"
