"""The smallest search space the search tests use (a few seconds per trial): a plain module the
cluster and fault tests import (not a conftest.py, which would shadow tests/conftest.py)."""

SPACE = """
name: tiny
base: cpu-small
fixed:
  train: {steps_per_epoch: 3, val_every: 1, warmup_epochs: 0}
  data: {crop: [16, 16, 16], max_val_cases: 2}
  model: {depth: 2, base_filters: 4, norm: batch}
params:
  train.learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
"""
