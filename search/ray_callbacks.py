"""A Ray Tune callback of the search (imported only once Ray is set up: it imports ray.tune).

Ray ends every running trial when a run is interrupted without telling callbacks (a scheduler's
stop or a failure does tell them), so the trials started and not ended when an interrupted run
returns are the ones Ctrl-C cut off. The record is module state keyed by the experiment, not the
callback's own: a resumed Tuner calls its own unpickled copy of the callback, which then records
into the same place.
"""

from __future__ import annotations

from typing import Any

from ray import tune

_LIVE: dict[str, set[str]] = {}


class LiveTrials(tune.Callback):
    """Records the trials of experiment ``key`` that started and have not ended."""

    def __init__(self, key: str) -> None:
        self.key = key

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _LIVE.setdefault(self.key, set()).add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _LIVE.setdefault(self.key, set()).discard(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _LIVE.setdefault(self.key, set()).discard(trial.trial_id)


def cut_off_trials(key: str) -> set[str]:
    """The trials of ``key`` still running when its run returned (and forgets them)."""
    return _LIVE.pop(key, set())
