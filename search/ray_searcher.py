"""Ray Tune's OptunaSearch with the memory budget as a constraint (imported once Ray is set up).

Ray 2.60's OptunaSearch has no constraint argument, so :class:`BudgetedOptunaSearch` checks each
configuration Optuna asks for (NVIDIA's enqueued point too) before Ray sees it: a configuration
predicted over the budget never becomes a Ray trial. It is told to Optuna as a pruned trial whose
constraint ``memory_gib`` (predicted minus budget, GiB) is positive, so TPE counts it infeasible
and learns to sample elsewhere (Optuna 5's ``Trial.set_constraint``; TPE reads every finished
trial's constraints), and it becomes a "pruned" results row. Every trial that runs carries its
(non-positive) constraint as well.

The rows live in the searcher's state, which Ray saves with the experiment and restores on resume,
so a resumed search keeps them once each; each change is also written to ``pruned.json`` (see
``search.memory_budget``), where the engine reads them back.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search.memory_budget import CONSTRAINT, MAX_REFUSALS, MemoryGuard
from search.results import TrialRow


class BudgetedOptunaSearch(OptunaSearch):
    """OptunaSearch that suggests only configurations predicted to fit ``guard``'s budget
    (``guard`` None: plain OptunaSearch). After :data:`MAX_REFUSALS` refusals in a row it
    suggests no more (``Searcher.FINISHED``: running trials finish, the search ends) and
    :attr:`gave_up` says why."""

    def __init__(self, *args: Any, guard: MemoryGuard | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = guard
        self.pruned: list[TrialRow] = []
        self.gave_up = ""

    def suggest(self, trial_id: str) -> dict | str | None:
        if self._guard is None or trial_id in self._ot_trials or callable(self._space):
            return super().suggest(trial_id)
        for _ in range(MAX_REFUSALS):
            config = super().suggest(trial_id)  # asks Optuna: this trial_id's Optuna trial
            ot_trial = self._ot_trials[trial_id]
            verdict = self._guard.check(ot_trial.params)
            ot_trial.set_constraint(CONSTRAINT, verdict.excess_gib)
            if verdict.fits:
                return config
            del self._ot_trials[trial_id]  # the same trial_id gets the next configuration
            ot_trial.set_user_attr("pruned", verdict.reason)
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            if not any(r.params == ot_trial.params for r in self.pruned):
                self.pruned.append(self._guard.pruned_row(ot_trial.params, verdict,
                                                          len(self.pruned) + 1))
            self._guard.save(self.pruned)
        self.gave_up = self._guard.give_up(self.pruned)
        self._guard.save(self.pruned, self.gave_up)
        return Searcher.FINISHED

    def restore(self, checkpoint_path: str) -> None:
        """Ray's resume: the saved state (Optuna's study and the pruned rows) back, with this run's
        guard (the saved one may point at a folder the experiment was moved from), and the rows
        written again, merged with pruned.json's (a driver that died after its last searcher
        checkpoint had written rows the checkpoint lacks)."""
        guard = self._guard
        super().restore(checkpoint_path)
        self._guard = guard
        rows = self.__dict__.setdefault("pruned", [])
        if guard is None:
            return
        if guard.sink is not None:
            from search.memory_budget import load_pruned

            kept, _ = load_pruned(guard.sink.parent)
            rows.extend(r for r in kept if not any(r.params == q.params for q in rows))
            for number, row in enumerate(rows, 1):  # one name each, in order
                row.trial_id = f"pruned_{number}"
        guard.save(rows, self.__dict__.get("gave_up", ""))
