"""The smallest search spaces the search tests use (a few seconds per trial): a plain module the
search tests import (not a conftest.py, which would shadow tests/conftest.py)."""


def tiny(params: str, *, model: str = "", steps: int = 3, name: str | None = "tiny") -> str:
    """A space file's text: the cpu-small base with 16^3 crops, ``steps`` steps an epoch,
    validation every epoch on 2 cases, ``model``'s fixed settings (YAML flow mapping's inside) and
    ``params`` (the indented lines of the ``params:`` mapping)."""
    return ((f"name: {name}\n" if name else "") + "base: cpu-small\nfixed:\n"
            f"  train: {{steps_per_epoch: {steps}, val_every: 1, warmup_epochs: 0}}\n"
            "  data: {crop: [16, 16, 16], max_val_cases: 2}\n"
            + (f"  model: {{{model}}}\n" if model else "") + "params:\n" + params)


SPACE = tiny("  train.learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n",
             model="depth: 2, base_filters: 4, norm: batch")

# Three parameters (depth, learning rate, foreground ratio): what the searchers and tracking tests
# sample, so samplers and trackers have something to tell apart.
SPACE3 = tiny("  model.depth: {type: int, low: 2, high: 3}\n"
              "  train.learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
              "  data.foreground_ratio: {type: float, low: 0.2, high: 0.8}\n",
              model="base_filters: 4, norm: batch", steps=2)
