"""One trial's training, whichever engine runs it (Ray Tune's function trainable,
``search.trainable.train_trial``, or Keras Tuner's ``run_trial``, ``search.kt_engine``): the
engine decides the configuration, the cases and whether the trial resumes; this trains it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from search import faults
from search.context import SearchContext
from unet3d.folders import RunFolder


def fit_trial(ctx: SearchContext, cfg: Any, run: RunFolder, *, trial_id: str,
              sample: dict[str, Any], train_ids: tuple[str, ...], val_ids: tuple[str, ...],
              resume: bool, new: bool, epoch_hook: Callable[[int, dict], None] | None = None,
              log: Callable[[str], None] | None = None, trial_index: int = 0) -> dict[str, Any]:
    """Trains ``cfg`` (the trial's RunConfig) on ``train_ids``, validating on ``val_ids``, in
    ``run`` (its checkpoint, TensorBoard logs), from the run's checkpoint when ``resume``.
    ``new``: a trial that starts (or, the race's continuation, starts again) here gets the
    TensorBoard HParams record of its ``sample``. ``epoch_hook(epoch, record)`` after each
    epoch (the engine reports it); then the faults a test injects into trial ``trial_index``
    fire (``search.faults``). Returns the trainer's metrics (its ``history``)."""
    import keras

    from search.tb import write_hparams
    from unet3d.training.train import Trainer

    if new:
        write_hparams(run.tensorboard, sample, trial_id)

    def hook(epoch: int, record: dict[str, Any]) -> None:
        if epoch_hook is not None:
            epoch_hook(epoch, record)
        faults.after_report(trial_index, epoch, trainer.model)

    keras.backend.clear_session()  # (a trial in a process that trained another: KT's)
    trainer = Trainer(cfg, ctx.cases(train_ids), ctx.cases(val_ids), run.path, resume=resume,
                      log=log, epoch_hook=hook)
    return trainer.fit()
