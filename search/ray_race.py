"""The race (``search.race``) under Ray Tune: a scheduler that feeds it every result and stops its
losers, and a searcher that starts what it asks for (imported once Ray is set up).

:class:`RaceSearcher` asks the race what to start: a proposal (the default, a portfolio entry, a
neighbour of the incumbent) goes through an Optuna searcher (``search.ray_adapters``) as an
enqueued trial, so the memory budget refuses what does not fit (and Optuna's sampler replaces it),
and the study's journal (``optuna.log``) shows every trial; the winner's continuation is a trial
of its own whose config carries :data:`CONTINUE` (the trainable resumes the winner's checkpoint
under the longer schedule; ``search.trainable``). :class:`RaceScheduler` passes each result's
per-case validation scores to the race and stops a trial the race says lost.

The race lives in the searcher, whose state Ray saves at every experiment checkpoint and restores
on ``--resume``; the scheduler finds it by the experiment's location (:data:`_RACES`), the way
``search.ray_callbacks`` keeps trial statuses.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from search.race import CONTINUE, CONTINUED, Race
from search.storage import ExperimentFolder

_RACES: dict[str, Race] = {}


class RaceScheduler(FIFOScheduler):
    """Feeds the race of experiment ``key`` every result (its epoch, ``val_per_case`` and the
    objective's ``metric``) and stops the trials it says lost; tells it of ended and failed
    trials, with each trial's last checkpoint."""

    def __init__(self, key: str, metric: str) -> None:
        super().__init__()
        self.key, self._metric = key, metric

    def _race(self) -> Race | None:
        return _RACES.get(self.key)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self._metric = metric or self._metric
        return True

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        race = self._race()
        if race is None:
            return TrialScheduler.CONTINUE
        epoch = int(result.get("epoch") or result.get("training_iteration") or 0)
        score = result.get(self._metric)
        keep = race.result(trial.trial_id, epoch, result.get("val_per_case"),
                           float(score) if isinstance(score, (int, float)) else float("nan"))
        return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        race = self._race()
        if race is not None:
            ck = trial.checkpoint
            race.completed(trial.trial_id, ck.path if ck is not None else "")

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        race = self._race()
        if race is not None:
            race.errored(trial.trial_id)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        race = self._race()
        if race is not None:
            race.completed(trial.trial_id)


class RaceSearcher(Searcher):
    """Starts what the race of experiment ``key`` asks for (see the module docstring). ``inner``:
    the Optuna searcher proposals go through (memory refusals, the journal); ``sink``: where
    each trial's origin is recorded (``proposals.json``)."""

    def __init__(self, race: Race, inner: Any, key: str, sink: Path | None = None) -> None:
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.race, self.inner, self.key, self.sink = race, inner, key, sink
        self.origins: dict[str, str] = {}
        _RACES[key] = race

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return False  # (the ConcurrencyLimiter around this searcher bounds it)

    def suggest(self, trial_id: str) -> dict | str | None:
        action, arg = self.race.next_action()
        if action == "wait":
            return None
        if action == "finished":
            return Searcher.FINISHED
        if action == "continue":
            self.race.continuing(trial_id, arg)
            self._origin(trial_id, CONTINUED)
            return {**arg["params"], CONTINUE: {k: arg[k] for k in (
                "trial_id", "checkpoint", "from_epoch", "epochs", "cooldown_epochs", "data")}}
        params, origin = arg
        self.inner.enqueue(params)
        config = self.inner.suggest(trial_id)
        if not isinstance(config, dict):  # (the memory guard gave up: FINISHED)
            self.race.refused()
            return config
        if config != params:  # refused for memory; Optuna's sampler proposed instead
            self.race.refused()
            origin = self.inner.origins.get(trial_id) or "tpe"
        self.race.started(trial_id, config, origin)
        self._origin(trial_id, origin)
        return config

    def _origin(self, trial_id: str, origin: str) -> None:
        self.origins[trial_id] = origin
        if self.sink is not None:
            from unet3d.io_utils import atomic_write_json

            atomic_write_json(self.sink, self.origins)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.inner.holds(trial_id):
            self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if self.inner.holds(trial_id):
            self.inner.on_trial_complete(trial_id, result, error)

    # Ray saves the searcher at every experiment checkpoint and restores it on --resume: the race
    # and the origins with it, the inner searcher through its own save (it keeps its study in
    # the journal).

    def save(self, checkpoint_path: str) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            self.inner.save(str(Path(d) / "inner"))
            inner = (Path(d) / "inner").read_bytes()
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"race": self.race, "origins": self.origins, "inner": inner}, f)

    def restore(self, checkpoint_path: str) -> None:
        import tempfile

        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "inner").write_bytes(state["inner"])
            self.inner.restore(str(Path(d) / "inner"))
        sink = self.race.sink  # (this run's folder: the saved one may have moved)
        self.race, self.origins = state["race"], state["origins"]
        self.race.sink = sink
        _RACES[self.key] = self.race


def write_record(key: str, experiment: Path, proposals: Path) -> None:
    """Writes the race of experiment ``key`` (``race.json``) and its trials' origins
    (``proposals``) once Ray Tune has finished: a resumed search's Ray syncs its staged copy of the
    experiment folder back over it, with the files as they were when it was interrupted."""
    from unet3d.io_utils import atomic_write_json

    race = _RACES.get(key)
    if race is None:
        return
    race.sink = ExperimentFolder(experiment).race
    race.save()
    atomic_write_json(proposals, {t.trial_id: t.origin for t in race.trials.values()})
