"""Opt-in fault injection, to test that a search survives failing trials.

``UNET3D_INJECT_FAULT`` in the environment of the processes that run trials (the driver's for a
local Ray, the ``ray start`` processes' on a cluster) holds ``;``-separated faults, each
``KIND:TRIAL:EPOCH:FOLDER`` where TRIAL is the trial's creation index (1 = first):

- ``crash``: the trial raises :class:`InjectedFault` right after it reported EPOCH (its checkpoint
  is saved), once: a marker file in FOLDER records that the fault fired, so the retried trial goes on.
- ``nan``: from EPOCH on, every time the trial reports an epoch its weights are set to NaN, so the
  next epoch's loss is NaN (the trainer's own divergence check then stops it): a configuration that
  always fails. FOLDER gets a marker per firing.

Unset (the default), nothing happens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ENV = "UNET3D_INJECT_FAULT"


class InjectedFault(RuntimeError):
    """The failure ``UNET3D_INJECT_FAULT`` asked for."""


def _faults() -> list[tuple[str, int, int, Path]]:
    spec = os.environ.get(ENV, "").strip()
    out = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        try:
            kind, index, at, folder = item.split(":", 3)
            out.append((kind, int(index), int(at), Path(folder)))
        except ValueError:
            raise ValueError(f"{ENV}={spec!r}: expected KIND:TRIAL:EPOCH:FOLDER") from None
        if kind not in ("crash", "nan"):
            raise ValueError(f"{ENV}={spec!r}: unknown fault {kind!r} (crash or nan)")
    return out


def after_report(trial_index: int, epoch: int, model: Any = None) -> None:
    """Fires the faults configured for this trial at this epoch (see the module docstring)."""
    for kind, index, at, folder in _faults():
        if index != trial_index:
            continue
        if kind == "crash" and epoch == at:
            try:
                fd = os.open(folder / f"crash_trial{index}_epoch{at}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue  # fired before: the retried trial goes on
            os.close(fd)
            raise InjectedFault(f"injected crash of trial {trial_index} after epoch {epoch}")
        if kind == "nan" and epoch >= at and model is not None:
            import numpy as np

            for v in model.trainable_variables:
                v.assign(np.full(v.shape, np.nan, dtype=v.dtype))
            (folder / f"nan_trial{index}_epoch{epoch}").touch()
