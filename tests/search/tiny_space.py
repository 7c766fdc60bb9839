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

# Three parameters (depth, learning rate, foreground ratio): what the searchers and tracking tests
# sample, so samplers and trackers have something to tell apart.
SPACE3 = """
name: tiny
base: cpu-small
fixed:
  train: {steps_per_epoch: 2, val_every: 1, warmup_epochs: 0}
  data: {crop: [16, 16, 16], max_val_cases: 2}
  model: {base_filters: 4, norm: batch}
params:
  model.depth: {type: int, low: 2, high: 3}
  train.learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  data.foreground_ratio: {type: float, low: 0.2, high: 0.8}
"""
