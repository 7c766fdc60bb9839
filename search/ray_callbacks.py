"""A Ray Tune callback and stopper of the search (imported only once Ray is set up: it imports ray.tune).

When a run is interrupted, Ray ends every trial on its way out (running ones become TERMINATED,
like trials a scheduler stopped) and tells no callback. So the callback keeps each trial's status
as of the end of every step of the tuning loop: after an interrupted run, the trials whose last
seen status was not TERMINATED or ERROR (running, paused, or pending and never started) are the ones
Ctrl-C cut off. The record is module state keyed by the experiment, not the callback's own: a
resumed Tuner calls its own unpickled copy of the callback, which records into the same place.
"""

from __future__ import annotations

from typing import Any

from ray import tune

_STATUS: dict[str, dict[str, str]] = {}
_ENDED = ("TERMINATED", "ERROR")


class TrialStatuses(tune.Callback):
    """Records the status of every trial of experiment ``key`` after each tuning step."""

    def __init__(self, key: str) -> None:
        self.key = key

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        _STATUS[self.key] = {t.trial_id: str(t.status) for t in trials}


class EpochBudget(tune.Stopper):
    """The search's compute budget in trial-epochs (``--budget``): each result a trial reports is
    one epoch; once ``epochs`` of them were reported, every trial stops and no new one starts (Ray's
    built-in stoppers count one trial's iterations or the whole run's seconds, not this). A
    finished function trainable's last result, which Ray passes again, counts once; an epoch a
    trial repeats after continuing from another trial's checkpoint (PBT) counts again, as it is
    trained again. The count lives in the Tuner's saved state: a resumed search continues from the
    count at the last experiment checkpoint."""

    def __init__(self, epochs: float) -> None:
        self.epochs, self.spent = epochs, 0
        self.last: dict[str, int] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        it = int(result.get("training_iteration", 0))
        if not (result.get("done") and self.last.get(trial_id) == it):
            self.spent += 1
        self.last[trial_id] = it
        return self.spent >= self.epochs

    def stop_all(self) -> bool:
        return self.spent >= self.epochs


def cut_off_trials(key: str) -> set[str]:
    """The trials of ``key`` that had not ended when its run stopped (and forgets the record)."""
    return {tid for tid, status in _STATUS.pop(key, {}).items() if status not in _ENDED}
