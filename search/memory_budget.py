"""The memory budget of a search: a configuration predicted to need more than it is never started.

The prediction is the memory model (:func:`unet3d.planning.memory.estimate`) of the trial's RunConfig (the one
the trial would train: :meth:`SearchContext.run_config`), on the trial's device, with the largest
validation volume it would hold. The contract with the engines (``search.ray_adapters``,
``search.kt_engine``):

- :meth:`MemoryGuard.check` before a sampled configuration becomes a trial; if it does not fit, the
  engine tells its sampler (Optuna: a pruned trial with an infeasible constraint, so TPE learns the
  region), keeps :meth:`MemoryGuard.pruned_row` in its own saved state (so a resumed search keeps
  the rows, once each) and samples again. Refused configurations do not count against
  ``--num-samples``: they cost nothing. After :data:`MAX_REFUSALS` refusals in a row the engine stops
  sampling (:meth:`MemoryGuard.give_up` says why).
- :meth:`MemoryGuard.save` after each change writes the rows to ``<experiment>/pruned.json``, which
  the engine reads back at the end (:func:`load_pruned`) and the report reads while a search runs.

The budget is per training process (a trial, or one Horovod worker of it): its default is
``unet3d.planning.budget.resolve_budget``'s for where the engine places a trial. Nothing here starts
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from search.context import SearchContext
from search.results import TrialRow, finite
from search.spec import SearchError
from search.storage import ExperimentFolder
from unet3d.io_utils import atomic_write_json
from unet3d.planning.budget import MemoryBudget

PRUNED_FILE = "pruned.json"
MAX_REFUSALS = 50       # refusals in a row before an engine stops sampling
PREFLIGHT_SAMPLES = 256  # random configurations checked before a search starts
CONSTRAINT = "memory_gib"  # the Optuna constraint: predicted GiB over the budget (> 0: infeasible)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A configuration's predicted peak (``gib``; NaN: not predictable) against the budget."""

    gib: float
    fits: bool
    reason: str = ""  # "needs 31.2 GiB > 24.0 GiB" when it does not fit
    excess_gib: float = 0.0  # predicted minus budget (> 0: over)


@dataclasses.dataclass(frozen=True)
class MemoryGuard:
    """Checks sampled configurations against ``budget`` (plain data: it travels inside Ray's saved
    searcher state). ``val_shapes``: (D, H, W) of the validation cases in the trainer's order;
    ``sink``: where :meth:`save` writes (``<experiment>/pruned.json``), or None."""

    ctx: SearchContext
    budget: MemoryBudget
    val_shapes: tuple[tuple[int, ...], ...] = ()
    sink: Path | None = None

    @classmethod
    def for_search(cls, ctx: SearchContext, budget: MemoryBudget | None,
                   sink: Path | None) -> MemoryGuard | None:
        """The guard of a search, or None when it has no budget."""
        if budget is None or budget.gib is None:
            return None
        from unet3d.errors import UserError

        try:  # the cached shapes; a driver that cannot read the cache predicts with the crop
            shapes = tuple(tuple(c.meta["shape"]) for c in ctx.cases(ctx.val_ids))
        except (UserError, OSError, KeyError):
            shapes = ()
        return cls(ctx=ctx, budget=budget, val_shapes=shapes, sink=sink)

    def check(self, sample: Mapping[str, Any]) -> Verdict:
        """The verdict on one sampled configuration (the engine's parameter values)."""
        from unet3d.planning.memory import estimate

        try:
            cfg = self.ctx.run_config(dict(sample))
        except ValueError:  # not a configuration at all: the trial fails and says why, as before
            return Verdict(gib=math.nan, fits=True)
        shapes = self.val_shapes[: cfg.data.max_val_cases or None]
        volume = max(shapes, key=math.prod) if shapes else None
        need = estimate(cfg, device=self.budget.device, volume_shape=volume)
        budget = float(self.budget.gib)
        if need.fits(budget):
            return Verdict(gib=need.gib, fits=True, excess_gib=need.gib - budget)
        return Verdict(gib=need.gib, fits=False, reason=need.reason(budget),
                       excess_gib=need.gib - budget)

    def pruned_row(self, sample: Mapping[str, Any], verdict: Verdict, number: int) -> TrialRow:
        """The results row of the ``number``-th refused configuration (1 = first)."""
        return TrialRow(trial_id=f"pruned_{number}", params=dict(sample), status="pruned", epochs=0,
                        objective=self.ctx.objective, reason=verdict.reason, memory_gib=verdict.gib)

    def refuse(self, rows: list[TrialRow], sample: Mapping[str, Any], verdict: Verdict) -> bool:
        """Records a refused configuration: a new pruned row in ``rows`` (once per configuration),
        all of them saved to the sink. True when the row is new."""
        new = not any(r.params == dict(sample) for r in rows)
        if new:
            rows.append(self.pruned_row(sample, verdict, len(rows) + 1))
        self.save(rows)
        return new

    def screen(self, rows: list[TrialRow], draw: Callable[[], tuple[Any, Mapping[str, Any] | None]],
               judged: Callable[[Any, Verdict], None] | None = None,
               log: Callable[[str], None] | None = None) -> tuple[Any, str]:
        """The memory refusal every engine's searcher puts its proposals through: ``draw()`` gives
        a proposal and its parameter values (None: nothing to check, e.g. a Hyperband round
        continuing a trial) until one fits the budget. ``judged(proposal, verdict)`` lets the
        searcher learn each verdict (withdraw a refused proposal, tell Optuna the constraint);
        each refusal becomes a pruned row in ``rows`` (:meth:`refuse`; ``log``-ged when new).

        Returns:
            (the proposal that fits, "") or, after :data:`MAX_REFUSALS` refusals in a row,
            (None, why: :meth:`give_up`), the rows saved with it.
        """
        for _ in range(MAX_REFUSALS):
            proposal, params = draw()
            if params is None:
                return proposal, ""
            verdict = self.check(params)
            if not verdict.fits and self.refuse(rows, params, verdict) and log is not None:
                log(f"{rows[-1].trial_id}: not started, {verdict.reason} {dict(params)}")
            if judged is not None:
                judged(proposal, verdict)
            if verdict.fits:
                return proposal, ""
        why = self.give_up(rows)
        self.save(rows, why)
        return None, why

    def restore_rows(self, rows: list[TrialRow], gave_up: str = "") -> list[TrialRow]:
        """A resumed searcher's pruned rows merged with those in the sink's pruned.json (a driver
        that died after its last searcher checkpoint had written rows the checkpoint lacks),
        renumbered in order and saved again."""
        if self.sink is not None:
            kept, _ = load_pruned(self.sink.parent)
            rows.extend(r for r in kept if not any(r.params == q.params for q in rows))
        for number, row in enumerate(rows, 1):  # one name each, in order
            row.trial_id = f"pruned_{number}"
        self.save(rows, gave_up)
        return rows

    def give_up(self, rows: Sequence[TrialRow]) -> str:
        """Why an engine stopped sampling after :data:`MAX_REFUSALS` refusals in a row."""
        least = min((r.memory_gib for r in rows), default=math.nan)
        return (f"stopped sampling: {MAX_REFUSALS} configurations in a row of space "
                f"{self.ctx.space.name!r} did not fit {self.budget.flag()} (the smallest needs "
                f"{least:.1f} GiB)")

    def save(self, rows: Sequence[TrialRow], gave_up: str = "") -> None:
        """Writes the refused configurations' rows (all of them, atomically) to the sink."""
        if self.sink is not None and self.sink.parent.is_dir():
            atomic_write_json(self.sink, {"pruned": [r.to_dict() for r in rows], "gave_up": gave_up})

    def preflight(self, seed: int = 0, samples: int = PREFLIGHT_SAMPLES) -> None:
        """Fails before the search starts when no configuration of the space fits: NVIDIA's point,
        the space's default and ``samples`` random configurations are predicted.

        Raises:
            SearchError: none fits (naming --memory and the smallest prediction).
        """
        import numpy as np

        from spaces.presets import nvidia_point

        space = self.ctx.space
        rng = np.random.default_rng(seed)
        candidates = [nvidia_point(space), space.default_sample()]
        candidates += [space.sample(rng) for _ in range(samples)]
        least = math.inf
        for sample in candidates:
            verdict = self.check(sample)
            if verdict.fits:
                return
            least = min(least, verdict.gib)
        raise SearchError(f"no configuration of space {space.name!r} fits {self.budget.flag()}: the "
                          f"smallest of {len(candidates)} sampled needs {least:.1f} GiB")


def load_pruned(experiment: Path) -> tuple[list[TrialRow], str]:
    """The refused configurations' rows saved in ``experiment`` (none if the file is absent), and
    why sampling stopped early ("" if it did not)."""
    try:
        d = json.loads((experiment / PRUNED_FILE).read_text())
    except FileNotFoundError:
        return [], ""
    return [TrialRow.from_dict(r) for r in d.get("pruned", [])], str(d.get("gave_up", ""))


def load_budget(experiment: Path) -> MemoryBudget | None:
    """The budget a search saved in its search.json (None for a search saved before budgets)."""
    d = json.loads(ExperimentFolder(experiment).search.read_text()).get("memory_budget")
    return MemoryBudget.from_dict(d) if isinstance(d, dict) else None


def with_pruned(rows: Sequence[TrialRow], pruned: Sequence[TrialRow],
                guard: MemoryGuard) -> list[TrialRow]:
    """The rows of the trials that ran, each with its predicted memory, then the pruned rows."""
    for r in rows:
        if not finite(r.memory_gib):
            r.memory_gib = guard.check(r.params).gib
    return [*rows, *pruned]
