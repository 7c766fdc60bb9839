"""TensorBoard HParams for trials: each trial's run folder becomes one HParams session whose
metrics are the per-epoch scalars the trainer writes there (val_dice_mean, val_dice_<region> for
each region of the label scheme, the lesion-wise scores when the objective is lesion-wise, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search.objective import DEFAULT, METRIC, OBJECTIVES, metric_of
from spaces.space import Choice, Int, SearchSpace


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


def _write_summary(logdir: str | Path, summary: Any) -> None:
    """One event file holding ``summary`` (a ``Summary`` proto) at step 0 in ``logdir``.

    (TensorBoard's own EventFileWriter opens its file through ``tf.io.gfile``, which imports
    TensorFlow when it is installed: seconds of CPU in every trial process, and in a Horovod trial
    the only reason its coordinating process would load TensorFlow. TensorBoard's RecordWriter,
    which frames the records, writes to a plain file here; the name and the first event are
    EventFileWriter's, so TensorBoard reads the file as its own.)"""
    import os
    import socket
    import time
    import uuid

    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    unique = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    name = logdir / f"events.out.tfevents.{int(now):010d}.{unique}"
    writer = RecordWriter(open(name, "wb"))  # noqa: SIM115  (RecordWriter closes it)
    try:
        for event in (event_pb2.Event(wall_time=now, file_version="brain.Event:2"),
                      event_pb2.Event(wall_time=now, step=0, summary=summary)):
            writer.write(event.SerializeToString())
    finally:
        writer.close()


def write_hparams(logdir: str | Path, sample: dict[str, Any], trial_id: str) -> None:
    """Writes the session-start record (the trial's parameters) into ``logdir``."""
    from tensorboard.plugins.hparams import summary_v2 as hp  # (its `api` imports TensorFlow)

    values = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in sample.items()}
    _write_summary(logdir, hp.hparams_pb(values, trial_id=trial_id))


def write_experiment(logdir: str | Path, space: Any, *, scheme: Any,
                     objective: str = DEFAULT) -> None:
    """Declares the experiment's parameters and metrics once at the experiment root, so the
    dashboard lists every parameter and metric column even before trials finish.

    ``scheme``: the trials' label scheme (``unet3d.labels.LabelScheme``; its regions are metric
    columns: the search context's, ``SearchContext.scheme``). ``objective``: the search's
    (``search.objective``).
    """
    from tensorboard.plugins.hparams import summary_v2 as hp


    metrics = hparams_metrics(tuple(scheme.regions), objective)
    _write_summary(logdir, hp.hparams_config_pb(hparams=to_hparams(space),
                                                metrics=[hp.Metric(m) for m in metrics]))


def to_hparams(space: SearchSpace) -> list[Any]:
    """TensorBoard ``HParam`` declarations: a domain per parameter (values TensorBoard can show)."""
    from tensorboard.plugins.hparams import summary_v2 as hp  # (its `api` imports TensorFlow)

    out = []
    for p in space.params:
        if isinstance(p, Choice):
            vals = [v if isinstance(v, (bool, int, float, str)) else str(v) for v in p.values]
            out.append(hp.HParam(p.name, hp.Discrete(vals)))
        elif isinstance(p, Int):
            out.append(hp.HParam(p.name, hp.IntInterval(p.low, p.high)))
        else:
            out.append(hp.HParam(p.name, hp.RealInterval(float(p.low), float(p.high))))
    return out
