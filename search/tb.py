"""TensorBoard HParams for trials: each trial's run folder becomes one HParams session whose
metrics are the per-epoch scalars the trainer writes there (val_dice_mean, val_dice_<region> for
each region of the label scheme, the lesion-wise scores when the objective is lesion-wise, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search.objective import DEFAULT, METRIC, OBJECTIVES, metric_of


def hparams_metrics(regions: Sequence[str], objective: str = DEFAULT) -> tuple[str, ...]:
    """The metric columns of the dashboard: the objective's metric first, then the mean Dice and
    the Dice of every region of the scheme in order (a region outside the mean, e.g. RC, too), the
    lesion-wise scores when the objective is lesion-wise (the trainer computes them only then),
    the loss and the throughput. Only scalars trials write: a declared metric that never appears
    would be an empty column."""
    metric = metric_of(objective)
    names = [metric, METRIC, *(f"val_dice_{r}" for r in regions)]
    if objective == "lesionwise":
        names += [OBJECTIVES["lesionwise"], *(f"val_lesionwise_dice_{r}" for r in regions)]
    return (*dict.fromkeys(names), "loss", "throughput_vps")


def write_hparams(logdir: str | Path, sample: dict[str, Any], trial_id: str) -> None:
    """Writes the session-start record (the trial's parameters) into ``logdir``."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    values = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in sample.items()}
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        hp.hparams(values, trial_id=trial_id)
    writer.close()


def write_experiment(logdir: str | Path, space: Any, *, scheme: Any,
                     objective: str = DEFAULT) -> None:
    """Declares the experiment's parameters and metrics once at the experiment root, so the
    dashboard lists every parameter and metric column even before trials finish.

    ``scheme``: the trials' label scheme (``unet3d.labels.LabelScheme``; its regions are metric
    columns: the search context's, ``SearchContext.scheme``). ``objective``: the search's
    (``search.objective``).
    """
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    from spaces.translate import to_hparams

    metrics = hparams_metrics(tuple(scheme.regions), objective)
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        hp.hparams_config(hparams=to_hparams(space), metrics=[hp.Metric(m) for m in metrics])
    writer.close()
