"""Keras Tuner engine: the same space searched on one machine without Ray.

Hyperband (its own early stopping: brackets of trials trained for growing epoch budgets) or Bayesian
optimisation. Trials run one after another in this process; each trains with the same Trainer as a
Ray trial, into ``<experiment>/trial_<id>/run``. Keras Tuner's own state lives in
``<experiment>/keras_tuner/``, so an interrupted search is continued by constructing the tuner again
with ``overwrite=False``; a trial that was cut off resumes from its last epoch checkpoint.
NVIDIA's configuration (projected into the space) is the first point the oracle proposes. The
oracle maximises the search objective's metric (``ctx.metric``: ``val_dice_mean`` or
``val_lesionwise_dice_mean``), and rows report every region of the context's label scheme.
A configuration predicted over the memory budget is never trained (:class:`_Proposals`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from search.context import SearchContext
from search.engine import Engine, Log
from search.memory_budget import MemoryGuard, with_pruned
from search.objective import MODE
from search.results import TrialRow, row_from_history
from search.spec import SearchError
from search.storage import ExperimentFolder
from spaces.presets import first_point
from spaces.space import Float, Int, SearchSpace
from unet3d.planning.budget import Placement

ALGORITHMS = ("hyperband", "bayesian", "random")


@dataclasses.dataclass(frozen=True)
class KerasTunerOptions:
    algorithm: str = "hyperband"   # "hyperband" | "bayesian" | "random"
    max_epochs: int = 6
    factor: int = 2                # Hyperband's reduction factor
    hyperband_iterations: int = 1
    max_trials: int = 8            # Bayesian only
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise SearchError(f"--kt-algorithm {self.algorithm}: must be one of {', '.join(ALGORITHMS)}")
        for flag, v, low in (("--reduction-factor", self.factor, 2),
                             ("--hyperband-iterations", self.hyperband_iterations, 1),
                             ("--num-samples", self.max_trials, 1), ("--max-epochs", self.max_epochs, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise SearchError(f"{flag} {v}: must be an integer >= {low}")


class _Proposals:
    """What our oracles add to Keras Tuner's (composed with one in :func:`_oracle`), through the
    oracle's public hook ``populate_space`` and its saved state:

    - NVIDIA's point first: a proposal that starts a configuration (not a Hyperband round continuing
      an earlier trial, which carries ``tuner/trial_id``) gets NVIDIA's values until a trial has
      them (or they were pruned), so a resumed search does not repeat it.
    - The memory budget (``guard``, ``search.memory_budget``): a configuration predicted over it
      never becomes a trial (so it costs no training and no --num-samples); it becomes a pruned row
      (kept in the oracle's state, so a resumed search keeps it once) and another is proposed.
      Hyperband gets the refused proposal's bracket slot back; Bayesian optimisation, whose
      Gaussian process knows nothing of the budget, proposes random configurations instead.
      After ``MAX_REFUSALS`` refusals in a row the oracle stops (``gave_up`` says why).
    """

    _first: dict[str, Any]
    _names: list[str]
    _guard: MemoryGuard | None
    _log: Callable[[str], None]
    pruned: list[TrialRow]
    gave_up: str

    def populate_space(self, trial_id):
        first_draw = super().populate_space
        retry = getattr(self, "_random_populate_space", None)  # Bayesian: its GP would repeat
        drawn: list[bool] = []

        def draw() -> tuple[dict[str, Any], dict[str, Any] | None]:
            proposal = retry() if drawn and retry is not None else first_draw(trial_id)
            drawn.append(True)
            proposal = self._default_first(proposal)
            starts = _starts_configuration(proposal)
            return proposal, {n: proposal["values"][n] for n in self._names} if starts else None

        def judged(proposal: dict[str, Any], verdict: Any) -> None:
            if not verdict.fits:
                self._withdraw(trial_id, proposal["values"])

        if self._guard is None:
            return draw()[0]
        proposal, self.gave_up = self._guard.screen(self.pruned, draw, judged, self._log)
        return {"status": "STOPPED", "values": None} if proposal is None else proposal

    def _default_first(self, proposal: dict[str, Any]) -> dict[str, Any]:
        if not _starts_configuration(proposal):
            return proposal
        seen = [t.hyperparameters.values for t in self.trials.values()]
        seen += [r.params for r in self.pruned]
        if any(all(v.get(k) == x for k, x in self._first.items()) for v in seen):
            return proposal
        return {**proposal, "values": {**proposal["values"], **self._first}}

    def _withdraw(self, trial_id: str, values: dict[str, Any]) -> None:
        """A refused proposal is never proposed again; Hyperband gets its bracket slot back."""
        self._tried_so_far.add(self._compute_values_hash(values))
        for bracket in getattr(self, "_brackets", ()):
            bracket["rounds"][0][:] = [e for e in bracket["rounds"][0] if e["id"] != trial_id]

    def get_state(self):
        return {**super().get_state(), "pruned": [r.to_dict() for r in self.pruned],
                "gave_up": self.gave_up}

    def set_state(self, state):
        super().set_state(state)
        self.pruned = [TrialRow.from_dict(r) for r in state.get("pruned", [])]
        self.gave_up = state.get("gave_up", "")
        if self._guard is not None:  # pruned.json as the oracle continues (a resumed search)
            self._guard.save(self.pruned, self.gave_up)


def _starts_configuration(proposal: dict[str, Any]) -> bool:
    values = proposal.get("values")
    return proposal.get("status") == "RUNNING" and bool(values) and "tuner/trial_id" not in values


def _oracle(ctx: SearchContext, opts: KerasTunerOptions, hp: Any, guard: MemoryGuard | None,
            log: Callable[[str], None]) -> Any:
    """The Hyperband, Bayesian or random-search oracle with :class:`_Proposals`, maximising
    ``ctx.metric``."""
    import keras_tuner as kt


    objective = kt.Objective(ctx.metric, direction=MODE)  # the search objective's
    if opts.algorithm == "hyperband":
        klass = type("UNetHyperband", (_Proposals, kt.oracles.HyperbandOracle), {})
        oracle = klass(objective=objective, max_epochs=opts.max_epochs, factor=opts.factor,
                       hyperband_iterations=opts.hyperband_iterations, seed=opts.seed,
                       hyperparameters=hp)
    else:
        base = (kt.oracles.BayesianOptimizationOracle if opts.algorithm == "bayesian"
                else kt.oracles.RandomSearchOracle)
        klass = type(f"UNet{base.__name__}", (_Proposals, base), {})
        oracle = klass(objective=objective, max_trials=opts.max_trials, seed=opts.seed,
                       hyperparameters=hp)
    oracle._first, oracle._names = first_point(ctx.space)[0], [p.name for p in ctx.space.params]
    oracle._guard, oracle._log, oracle.pruned, oracle.gave_up = guard, log, [], ""
    return oracle


def _tuner(ctx: SearchContext, experiment: Path, opts: KerasTunerOptions, overwrite: bool,
           log: Callable[[str], None], ctrl_c: list[bool] | None = None,
           guard: MemoryGuard | None = None, tracker: Any = None):
    import keras_tuner as kt


    space = ctx.space
    hp = kt.HyperParameters()
    define_keras_tuner(space, hp)
    metric = ctx.metric  # the search objective's (search.objective)
    oracle = _oracle(ctx, opts, hp, guard, log)

    class UNetTuner(kt.engine.base_tuner.BaseTuner):
        def run_trial(self, trial, *args, **kwargs):
            from search.trial import fit_trial
            from unet3d.folders import RunFolder

            values = trial.hyperparameters.values
            sample = {p.name: values[p.name] for p in space.params}
            epochs = int(values.get("tuner/epochs", opts.max_epochs))
            cfg = ctx.run_config(sample).with_epochs(epochs)
            run_dir = run_dir_of(experiment, trial.trial_id)
            resume = (run_dir / RunFolder.CHECKPOINT).exists()
            log(f"trial {trial.trial_id}: {epochs} epochs {sample}"
                + (" (resuming)" if resume else ""))
            t0 = time.perf_counter()
            _stop_if(ctrl_c)

            def epoch_end(epoch: int, record: dict[str, Any]) -> None:
                if tracker is not None:
                    tracker.log_epoch(trial.trial_id, epoch, record)
                _stop_if(ctrl_c)

            if tracker is not None:  # (MLflow: search.tracking; Ray's trials log through Ray)
                tracker.start_trial(trial.trial_id, sample)
            try:
                metrics = fit_trial(ctx, cfg, RunFolder(run_dir), trial_id=trial.trial_id,
                                    sample=sample, train_ids=ctx.train_ids, val_ids=ctx.val_ids,
                                    resume=resume, new=not resume, epoch_hook=epoch_end,
                                    log=lambda m: log(f"  {trial.trial_id} {m}"))
            except BaseException as e:
                if tracker is not None:
                    tracker.end_trial(trial.trial_id,
                                      "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
                raise
            if tracker is not None:
                tracker.end_trial(trial.trial_id, "FINISHED")
            (run_dir / "wall_s").write_text(f"{time.perf_counter() - t0:.3f}\n")
            scored = [h for h in metrics["history"] if metric in h]
            if not scored:
                raise RuntimeError(f"trial {trial.trial_id}: no epoch reported {metric} (the "
                                   f"objective {ctx.objective!r} of this search)")
            # The exported weights are the last epoch's: score the trial by that epoch, honestly.
            return {metric: float(scored[-1][metric])}

    # Keras Tuner's overwrite deletes its whole project folder: keep it a subfolder of ours.
    return UNetTuner(oracle=oracle, directory=str(experiment), project_name="keras_tuner",
                     overwrite=overwrite)


def placement() -> Placement:
    """One trial at a time, in this process, on the GPU if one is visible (the default memory
    budget's input; ``search.memory_budget``)."""
    return Placement(gpus=None, processes=1, what="1 trial at a time")


def run_dir_of(experiment: Path, trial_id: str) -> Path:
    return ExperimentFolder(experiment).trial_run(f"trial_{trial_id}").path


def run(ctx: SearchContext, experiment: Path, opts: KerasTunerOptions, *, resume: bool = False,
        log: Callable[[str], None] = print,
        guard: MemoryGuard | None = None, tracker: Any = None) -> tuple[list[TrialRow], bool]:
    """Runs (or resumes) the search in ``experiment``: a row per trial, and whether Ctrl-C ended it
    (the trial cut off is then "interrupted"; ``run(..., resume=True)`` continues it from its last
    epoch checkpoint). With ``guard`` (the memory budget), configurations predicted over it are
    never trained: rows with status "pruned" after the trials' (see :class:`_Proposals`).
    ``tracker``: logs each trial and its epochs (``search.tracking.MlflowSearch``; --mlflow)."""
    ctrl_c: list[bool] = []
    tuner = _tuner(ctx, experiment, opts, overwrite=not resume, log=log, ctrl_c=ctrl_c, guard=guard,
                   tracker=tracker)
    with _recording_ctrl_c(ctrl_c, log):
        try:
            tuner.search()
        except KeyboardInterrupt:
            return rows(tuner, ctx, experiment, opts, interrupted=True), True
    if tuner.oracle.gave_up:
        log(f"warning: {tuner.oracle.gave_up}")
    return rows(tuner, ctx, experiment, opts), False


@contextlib.contextmanager
def _recording_ctrl_c(ctrl_c: list[bool], log: Callable[[str], None]) -> Iterator[None]:
    """The first Ctrl-C is recorded and the trial stops at its next epoch end (its checkpoint
    written), by a KeyboardInterrupt raised there; a second one interrupts at once. Raising from the
    handler itself is not safe: Python drops an exception raised while a finalizer runs (a weakref
    callback, ``__del__``), and TensorFlow runs many, so the Ctrl-C would be lost."""
    def on_sigint(signum: int, frame: Any) -> None:
        if ctrl_c:
            raise KeyboardInterrupt
        ctrl_c.append(True)
        log("Ctrl-C: stopping at the end of this epoch (Ctrl-C again stops at once)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_if(ctrl_c: list[bool] | None) -> None:
    if ctrl_c:
        raise KeyboardInterrupt


def rows(tuner: Any, ctx: SearchContext, experiment: Path, opts: KerasTunerOptions, *,
         interrupted: bool = False) -> list[TrialRow]:
    from unet3d.folders import RunFolder
    from unet3d.training.checkpoint import read_checkpoint

    names = [p.name for p in ctx.space.params]
    out = []
    for tid, trial in sorted(tuner.oracle.trials.items()):
        run_dir = run_dir_of(experiment, tid)
        history: list[dict[str, Any]] = []
        if (run_dir / RunFolder.CHECKPOINT).exists():
            history = read_checkpoint(run_dir / RunFolder.CHECKPOINT)[2]["history"]
        values = trial.hyperparameters.values
        wall = float((run_dir / "wall_s").read_text()) if (run_dir / "wall_s").exists() else 0.0
        cut_off = interrupted and trial.status == "RUNNING"
        error = "" if history or cut_off else f"no epoch finished (trial status {trial.status})"
        # Keras Tuner scores a trial by its last epoch (the weights it keeps): that is its best.
        out.append(row_from_history(
            tid, {n: values.get(n) for n in names}, history, ctx.max_epochs, error=error,
            wall_s=wall, node=socket.gethostname(), checkpoint=str(run_dir) if history else "",
            run_dir=str(run_dir), index=int(tid) + 1 if tid.isdigit() else 0, interrupted=cut_off,
            objective=ctx.objective, regions=ctx.scheme.region_names, best_is_last=True))
    guard = tuner.oracle._guard
    return with_pruned(out, tuner.oracle.pruned, guard) if guard is not None else out


class KerasTunerEngine(Engine):
    """Keras Tuner as the search's engine (see the module docstring): trials one after another
    in this process, whose Keras backend is fixed."""

    name = "keras-tuner"

    @classmethod
    def options_of(cls, spec: Any) -> KerasTunerOptions:
        opts = dict(spec.engine_options)
        if "reduction_factor" in opts:
            opts["factor"] = opts.pop("reduction_factor")
        return KerasTunerOptions(max_trials=spec.num_samples, max_epochs=spec.max_epochs,
                                 seed=spec.seed, **opts)

    def check(self, space: Any, log: Log) -> None:
        from search.engines import supporting
        from unet3d.runtime import use_backend

        if "train.backend" in {p.name for p in space.params}:
            raise SearchError(f"space {space.name!r} samples train.backend: a backend per trial "
                              f"needs {supporting('backend_per_trial')} (Keras Tuner trains in "
                              f"this process, whose Keras backend is fixed)")
        use_backend(self.spec.backend)  # (raises BackendError where Keras runs on another)

    def placement(self) -> Placement:
        return placement()

    def run(self, ctx: SearchContext, exp: Any, *, resume: bool, log: Log,
            guard: MemoryGuard | None, mlflow: Any = None) -> tuple[list[TrialRow], bool]:
        return run(ctx, exp.local, self.settings, resume=resume, log=log, guard=guard,
                   tracker=mlflow)


def define_keras_tuner(space: SearchSpace, hp: Any) -> dict[str, Any]:
    """Registers every parameter on a ``keras_tuner.HyperParameters`` and returns the sample."""
    sample: dict[str, Any] = {}
    for p in space.params:
        if isinstance(p, Int):
            # Keras Tuner's log-scale step is a multiplier (> 1); no step = every integer.
            sample[p.name] = hp.Int(p.name, p.low, p.high, step=None if p.log else p.step,
                                    sampling="log" if p.log else "linear")
        elif isinstance(p, Float):
            sample[p.name] = hp.Float(p.name, p.low, p.high, sampling="log" if p.log else "linear")
        elif len(p.values) == 1:
            # hp.Boolean would also offer the other boolean; hp.Choice turns True into 1.
            sample[p.name] = hp.Fixed(p.name, p.values[0])
        elif set(p.values) == {False, True} and all(isinstance(v, bool) for v in p.values):
            sample[p.name] = hp.Boolean(p.name)
        else:
            sample[p.name] = hp.Choice(p.name, list(p.values))
    return sample
