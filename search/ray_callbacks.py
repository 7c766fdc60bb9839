"""The Ray Tune callbacks and stopper of the search (imported only once Ray is set up: it imports ray.tune).

When a run is interrupted, Ray ends every trial on its way out (running ones become TERMINATED,
like trials a scheduler stopped) and tells no callback. So the callback keeps each trial's status
as of the end of every step of the tuning loop: after an interrupted run, the trials whose last
seen status was not TERMINATED or ERROR (running, paused, or pending and never started) are the ones
Ctrl-C cut off. The record is module state keyed by the experiment, not the callback's own: a
resumed Tuner calls its own unpickled copy of the callback, which records into the same place.

The MLflow and W&B callbacks, which use Ray's private members, are in ``search.ray_adapters``.
"""

from __future__ import annotations

from typing import Any

from ray import tune

# Ray's own entries in a trial's result, and what the trainable adds to say where it ran: not
# metrics of the trial (MLflow got them all as metrics).
RAY_KEYS = frozenset({
    "config", "pid", "timestamp", "done", "should_checkpoint", "training_iteration",
    "time_this_iter_s", "time_total_s", "time_since_restore", "iterations_since_restore",
    "timesteps_total", "episodes_total", "timesteps_since_restore", "checkpoint_dir_name", "date",
    "experiment_tag", "trial_id", "warmup_time", "hostname", "node_ip", "node_id", "trial_index",
    "epoch"})
_STATUS: dict[str, dict[str, str]] = {}
_SAVING: dict[str, set[str]] = {}  # experiment -> trials stopped by the budget, checkpoint pending
_ENDED = ("TERMINATED", "ERROR")


class TrialStatuses(tune.Callback):
    """Records the status of every trial of experiment ``key`` after each tuning step, and tells
    the budget (:class:`EpochBudget`) when a trial's checkpoint has been registered."""

    def __init__(self, key: str) -> None:
        self.key = key

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        _STATUS[self.key] = {t.trial_id: str(t.status) for t in trials}

    def on_trial_save(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        checkpoint_saved(self.key, trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        checkpoint_saved(self.key, trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        checkpoint_saved(self.key, trial.trial_id)


class EpochBudget(tune.Stopper):
    """The search's compute budget in trial-epochs (``--budget``): each result a trial reports is
    one epoch; once ``epochs`` of them were reported, every trial stops and no new one starts (Ray's
    built-in stoppers count one trial's iterations or the whole run's seconds, not this). A
    finished function trainable's last result, which Ray passes again, counts once; an epoch a
    trial repeats after continuing from another trial's checkpoint (PBT) counts again, as it is
    trained again. The count lives in the Tuner's saved state: a resumed search continues from the
    count at the last experiment checkpoint.

    The trial whose result spends the budget is stopped as a scheduler stops one (Ray registers the
    checkpoint that came with the result first); only then does :meth:`stop_all` end the others.
    Ray's stop-all ends every trial at once and drops a checkpoint still being registered, which
    made a trial stopped at its best epoch export the epoch before (its checkpoint folder was
    written, but never became the trial's best). ``key``: the experiment, whose
    :class:`TrialStatuses` callback reports the registered checkpoints (:func:`checkpoint_saved`).
    """

    def __init__(self, epochs: float, key: str = "") -> None:
        self.epochs, self.spent, self.key = epochs, 0, key
        self.last: dict[str, int] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        it = int(result.get("training_iteration", 0))
        if not (result.get("done") and self.last.get(trial_id) == it):
            self.spent += 1
        self.last[trial_id] = it
        if self.spent < self.epochs:
            return False
        if result.get("should_checkpoint"):  # (Ray registers it before it acts on the stop)
            _SAVING.setdefault(self.key, set()).add(trial_id)
        return True

    def stop_all(self) -> bool:
        return self.spent >= self.epochs and not _SAVING.get(self.key)


def checkpoint_saved(key: str, trial_id: str) -> None:
    """Ray has registered ``trial_id``'s checkpoint (or the trial ended): the budget may end the
    rest of the search (:meth:`EpochBudget.stop_all`)."""
    _SAVING.get(key, set()).discard(trial_id)


def cut_off_trials(key: str) -> set[str]:
    """The trials of ``key`` that had not ended when its run stopped (and forgets the record)."""
    return {tid for tid, status in _STATUS.pop(key, {}).items() if status not in _ENDED}
