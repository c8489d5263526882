"""Evaluation: the scores of a trained pipeline, one job per module.

[`samplers`] the `--samplers` spec grammar; [`config`] [`EvaluationConfig`] and its checks; [`evaluate`] the run
and its steps; [`report`] the results written out (results.md, results.json, grids, the model card's metrics);
[`features`] image features (EfficientNet-Lite0 offline, or Inception-v3); [`metrics`] FID and KID between two
sets of features; [`reference_stats`] the on-disk cache of the real images' statistics; [`precision_recall`]
precision/recall/density/coverage;
[`digit_classifier`] the digit judge (network, shipped weights, input conventions); [`train_digit_classifier`] its
training recipe; [`class_scores`] the scores from class probabilities (classifier IS, class coverage, class
accuracy).

Not imported by the core (schedulers, pipelines, models, likelihood); import it explicitly.
"""
