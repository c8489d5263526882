"""Sharing pipelines on the Hugging Face Hub: model cards ([`write_model_card`]) and pushes ([`push_pipeline`])."""

from .model_card import TEMPLATE, write_model_card
from .push import UPLOAD_PATTERNS, describe_error, push_pipeline

__all__ = ["TEMPLATE", "UPLOAD_PATTERNS", "describe_error", "push_pipeline", "write_model_card"]
