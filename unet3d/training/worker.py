"""What a Horovod worker process runs (``train --workers``, a search trial's workers): kept apart from
the trainer so that unpickling it, which the worker does first, loads no TensorFlow yet."""

from __future__ import annotations

from typing import Any


def train_in_worker(**kwargs: Any) -> Any:
    """:func:`unet3d.training.train.train_worker` in a Horovod worker process: the launching process
    pickles this function by reference, so the worker imports the trainer (TensorFlow) here, after
    :func:`unet3d.runtime.lean_keras`."""
    from unet3d.runtime import lean_keras

    lean_keras()
    from unet3d.training.train import train_worker

    return train_worker(**kwargs)
