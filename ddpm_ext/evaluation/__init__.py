"""Evaluation: FID/KID on pluggable features ([`metrics`]) and the evaluation of a pipeline ([`evaluate`]).

Not imported by the core (schedulers, pipelines, models, likelihood); import it explicitly.
"""
