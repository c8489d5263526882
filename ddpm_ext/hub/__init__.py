"""Sharing pipelines on the Hugging Face Hub: model cards ([`write_model_card`]) and pushes ([`push_pipeline`], with
its pre-flight [`reach_repo`])."""

from .model_card import TEMPLATE, write_model_card
from .push import UPLOAD_PATTERNS, describe_error, push_pipeline, reach_repo

__all__ = ["TEMPLATE", "UPLOAD_PATTERNS", "describe_error", "push_pipeline", "reach_repo", "write_model_card"]
