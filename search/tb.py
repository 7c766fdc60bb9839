"""TensorBoard HParams for trials: each trial's run folder becomes one HParams session whose
metrics are the per-epoch scalars the trainer writes there (val_dice_mean, val_dice_WT, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from search.objective import METRIC

METRICS = (METRIC, "val_dice_WT", "val_dice_TC", "val_dice_ET", "loss", "throughput_vps")


def write_hparams(logdir: str | Path, sample: dict[str, Any], trial_id: str) -> None:
    """Writes the session-start record (the trial's parameters) into ``logdir``."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    values = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in sample.items()}
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        hp.hparams(values, trial_id=trial_id)
    writer.close()


def write_experiment(logdir: str | Path, space: Any) -> None:
    """Declares the experiment's parameters and metrics once at the experiment root, so the
    dashboard lists every parameter and metric column even before trials finish."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    from spaces.translate import to_hparams

    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        hp.hparams_config(hparams=to_hparams(space), metrics=[hp.Metric(m) for m in METRICS])
    writer.close()
