"""Learning-rate schedules of a run, as functions of the optimizer's step.

- ``cosine`` (the default of a single training): a linear warm-up from 1% of the peak rate, then a
  cosine decay to ``min_lr_ratio`` of it over the rest of ``train.epochs``. Its rate at every step
  depends on the run's length, so a run cannot be made longer once it has started.
- ``wsd`` (warmup-stable-decay; Hägele et al., "Scaling Laws and Compute-Optimal Training Beyond
  Fixed Training Durations", NeurIPS 2024): the same warm-up, then the peak rate held constant,
  then a cool-down over the last ``train.cooldown_epochs`` epochs to ``min_lr_ratio`` of the peak in
  the "1 - sqrt" shape that paper found best. ``cooldown_epochs = 0``: the rate stays constant to
  the end. Until its cool-down starts, a run's rates do not depend on its length, so a run trained
  for some epochs can be continued to a longer one (:func:`continues`) and takes exactly the steps
  it would have taken had it been that long from the start: what a search needs to stop, pause and
  continue trials without throwing away what they learned.

Both are plain Keras ``LearningRateSchedule`` objects computed with ``keras.ops`` (TensorFlow and
JAX backends).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from unet3d.config import SCHEDULES, RunConfig

__all__ = ["SCHEDULES", "WarmupStableDecay", "continues", "make_schedule", "stable_until"]
WARMUP_START = 0.01  # the warm-up starts at this fraction of the peak rate (both schedules)


@keras.saving.register_keras_serializable(package="unet3d")
class WarmupStableDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up over ``warmup_steps`` from ``WARMUP_START`` x ``peak`` to ``peak``, ``peak``
    until ``decay_start``, then ``peak * (min_ratio + (1 - min_ratio) * (1 - sqrt(p)))`` with
    ``p`` the fraction of the ``decay_steps`` done (``min_ratio * peak`` after them).
    ``decay_steps = 0``: no decay (constant after the warm-up)."""

    def __init__(self, peak: float, warmup_steps: int, decay_start: int, decay_steps: int,
                 min_ratio: float) -> None:
        self.peak, self.warmup_steps = float(peak), int(warmup_steps)
        self.decay_start, self.decay_steps = int(decay_start), int(decay_steps)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        rate = ops.full_like(step, self.peak)
        if self.warmup_steps > 0:
            start = self.peak * WARMUP_START
            warm = start + (self.peak - start) * step / float(self.warmup_steps)
            rate = ops.where(step < float(self.warmup_steps), warm, rate)
        if self.decay_steps > 0:
            done = ops.clip((step - float(self.decay_start)) / float(self.decay_steps), 0.0, 1.0)
            decayed = self.peak * (self.min_ratio + (1.0 - self.min_ratio) * (1.0 - ops.sqrt(done)))
            rate = ops.where(step >= float(self.decay_start), decayed, rate)
        return rate

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "decay_start": self.decay_start, "decay_steps": self.decay_steps,
                "min_ratio": self.min_ratio}


def make_schedule(cfg: RunConfig) -> keras.optimizers.schedules.LearningRateSchedule:
    """The learning-rate schedule of ``cfg.train`` (see the module docstring), in optimizer steps."""
    t = cfg.train
    spe = t.steps_per_epoch
    warmup = t.warmup_epochs * spe
    if t.schedule == "wsd":
        cooldown = t.cooldown_epochs * spe
        return WarmupStableDecay(t.learning_rate, warmup, t.epochs * spe - cooldown, cooldown,
                                 t.min_lr_ratio)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=t.learning_rate * WARMUP_START if warmup else t.learning_rate,
        decay_steps=max(1, t.epochs * spe - warmup),
        alpha=t.min_lr_ratio,
        warmup_target=t.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def stable_until(cfg: RunConfig) -> int | None:
    """The last step (exclusive) up to which ``cfg``'s rates do not depend on its length: the start
    of a ``wsd`` cool-down (the end of the run when it has none); None for ``cosine``, whose every
    rate depends on the length."""
    t = cfg.train
    if t.schedule != "wsd":
        return None
    return (t.epochs - t.cooldown_epochs) * t.steps_per_epoch


def continues(saved: RunConfig, new: RunConfig, steps_done: int) -> bool:
    """Whether a run of ``saved`` that has taken ``steps_done`` optimizer steps can go on as a run
    of ``new``: the two differ only in the schedule's length (``train.epochs``,
    ``train.cooldown_epochs``), both are ``wsd`` and neither had started cooling down by then, so
    every step taken so far had the rate ``new`` gives it."""
    a, b = saved.to_dict(), new.to_dict()
    for d in (a, b):
        d["train"].pop("epochs"), d["train"].pop("cooldown_epochs")
    if a != b:
        return False
    ends = (stable_until(saved), stable_until(new))
    return all(e is not None and steps_done <= e for e in ends)
