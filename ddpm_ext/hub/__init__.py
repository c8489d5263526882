"""Sharing pipelines on the Hugging Face Hub: model cards ([`write_model_card`]) and pushes ([`push_pipeline`], with
its pre-flight [`reach_repo`]), every request bounded and each push given a deadline ([`ddpm_ext.network`])."""

from .model_card import TEMPLATE, escape_markdown, write_model_card
from .push import (
    DEFAULT_PUSH_TIMEOUT,
    UPLOAD_PATTERNS,
    check_repo_id,
    describe_error,
    push_pipeline,
    reach_repo,
    retry_command,
)

__all__ = ["DEFAULT_PUSH_TIMEOUT", "TEMPLATE", "UPLOAD_PATTERNS", "check_repo_id", "describe_error",
           "escape_markdown", "push_pipeline", "reach_repo", "retry_command", "write_model_card"]
