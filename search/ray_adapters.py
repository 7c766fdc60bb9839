"""Every use of Ray's private members, in one place (the Keras Tuner ones are in ``search.kt_engine``):
Ray Tune's classes extended with what Ray 2.60 lacks, and Ray core's no-cluster switch.
``tests/search/test_library_privates.py`` checks that the installed Ray still has each member.
Imported only once Ray is set up (it imports ray.tune).

- :class:`BudgetedOptunaSearch` (Ray's OptunaSearch: its Optuna study and trials) and
  :class:`BudgetedSearcher` (any other Ray searcher): the memory budget as a constraint.
- :class:`MlflowTrials` (Ray's MLflow callback: MLflow's client) and :func:`wandb_callback` (Ray's
  W&B callback: its logging actors).
- :func:`set_no_cluster` (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``).

**The memory budget.** Ray 2.60's OptunaSearch has no constraint argument, so
:class:`BudgetedOptunaSearch` checks each configuration Optuna asks for (NVIDIA's enqueued point
too) before Ray sees it: a configuration
predicted over the budget never becomes a Ray trial. It is told to Optuna as a pruned trial whose
constraint ``memory_gib`` (predicted minus budget, GiB) is positive, so TPE counts it infeasible
and learns to sample elsewhere (Optuna 5's ``Trial.set_constraint``; TPE reads every finished
trial's constraints), and it becomes a "pruned" results row. Every trial that runs carries its
(non-positive) constraint as well.

The rows live in the searcher's state, which Ray saves with the experiment and restores on resume,
so a resumed search keeps them once each; each change is also written to ``pruned.json`` (see
``search.memory_budget``), where the engine reads them back.

It also records where each trial's configuration came from (``proposals.json``: enqueued NVIDIA
point, the sampler's random start-up, or the sampler's model), so a search shows whether TPE (or
CMA-ES, GP, NSGA-II) proposed any of its trials, and takes an earlier experiment's trials as a warm
start (Ray's ``add_evaluated_point``: finished Optuna trials the sampler learns from).

The Optuna study lives in the experiment folder (``optuna.log``, Optuna's journal file storage:
``optuna-dashboard EXPERIMENT/optuna.log`` opens it, during the search too), named after the
experiment; a resumed search opens the same study again, and a trial the journal holds but Ray's
saved state does not (the driver died between Ray's checkpoints; Ray starts such a trial afresh
under a new ID) is marked failed.

:class:`BudgetedSearcher` puts the same memory check in front of any other Ray searcher (BOHB's).
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import threading
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search.memory_budget import CONSTRAINT, MemoryGuard
from search.ray_callbacks import RAY_KEYS
from search.results import TrialRow
from search.tracking import allow_file_store, trial_runs, wandb_mode


class PicklableNSGAII(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II sampler, which Ray Tune can save with the searcher: since Optuna 5.1 the
    genetic samplers hold a ``threading.Lock`` (their generation cache), which cannot be pickled,
    and Ray pickles the search algorithm when the Tuner starts and at every checkpoint. The lock
    guards a cache only, so a restored sampler gets a new one."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()




def journal_storage(path: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


class BudgetedOptunaSearch(OptunaSearch):
    """OptunaSearch that suggests only configurations predicted to fit ``guard``'s budget
    (``guard`` None: plain OptunaSearch). After :data:`MAX_REFUSALS` refusals in a row it
    suggests no more (``Searcher.FINISHED``: running trials finish, the search ends) and
    :attr:`gave_up` says why."""

    def __init__(self, *args: Any, guard: MemoryGuard | None = None,
                 warm: list[tuple[dict[str, Any], float]] | None = None, n_startup: int = 0,
                 origin_sink: Path | None = None, journal: Path | None = None,
                 max_epochs: int = 0, first_origin: str = "nvidia", **kwargs: Any) -> None:
        self._warm = list(warm or [])
        self._journal = str(journal or "")
        if journal is not None:
            kwargs.update(storage=journal_storage(journal), study_name=journal.parent.name)
        super().__init__(*args, **kwargs)
        self._guard = guard
        self.pruned: list[TrialRow] = []
        self.gave_up = ""
        self._n_startup, self._origin_sink = n_startup, origin_sink
        self.origins: dict[str, str] = {}
        self._asked_origin = ""
        self._max_epochs = max_epochs
        self._first_origin = first_origin  # (spaces.presets.first_point's)

    def enqueue(self, params: dict[str, Any]) -> None:
        """``params`` is the next configuration Optuna hands out (the race's next challenger)."""
        self._ot_study.enqueue_trial(params, skip_if_exists=False)

    def holds(self, trial_id: str) -> bool:
        """Whether ``trial_id`` is one of this searcher's Optuna trials."""
        return trial_id in self._ot_trials

    def _setup_study(self, mode: Any) -> None:
        super()._setup_study(mode)
        for params, score in self._warm:
            self.add_evaluated_point(params, score)

    def _origin(self) -> str:
        """Where the next ask's configuration comes from: an enqueued point (NVIDIA's), the
        sampler's random start-up (fewer finished or pruned trials than its start-up count, as
        Optuna's samplers count them), or the sampler itself."""
        study = self._ot_study
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return self._first_origin
        optuna_class = next(c for c in type(study.sampler).__mro__  # (ours subclass Optuna's)
                            if c.__module__.startswith("optuna."))
        name = optuna_class.__name__.removesuffix("Sampler").lower()
        # TPE's start-up counts pruned trials (the memory-refused ones too); GP's and CMA-ES's,
        # like NSGA-II's first generation, only finished ones.
        states = (TrialState.COMPLETE, TrialState.PRUNED) if name == "tpe" else (TrialState.COMPLETE,)
        done = study.get_trials(deepcopy=False, states=states)
        if name == "nsgaii":  # (its generations count the trials it sampled, not warm-started ones)
            done = [t for t in done if any(k.endswith(":generation") for k in t.system_attrs)]
        return "random" if name == "random" or len(done) < self._n_startup else name

    def suggest(self, trial_id: str) -> dict | str | None:
        fresh = trial_id not in self._ot_trials and not callable(self._space)
        config = self._suggest(trial_id)
        if fresh and isinstance(config, dict):
            ot_trial = self._ot_trials.get(trial_id)
            if hasattr(ot_trial, "set_user_attr"):  # (Optuna Dashboard: which Ray trial it is)
                ot_trial.set_user_attr("ray_trial_id", trial_id)
            self.origins[trial_id] = self._asked_origin
            if self._origin_sink is not None:
                from unet3d.io_utils import atomic_write_json

                atomic_write_json(self._origin_sink, self.origins)
        return config

    def _ask(self, trial_id: str) -> dict | str | None:
        """OptunaSearch's suggestion, noting where it comes from (:meth:`_origin`) when it asks
        Optuna for a new configuration."""
        if trial_id not in self._ot_trials and not callable(self._space):
            self._asked_origin = self._origin()
        return super().suggest(trial_id)

    def _suggest(self, trial_id: str) -> dict | str | None:
        if self._guard is None or trial_id in self._ot_trials or callable(self._space):
            return self._ask(trial_id)

        def draw() -> tuple[Any, dict[str, Any]]:
            config = self._ask(trial_id)  # asks Optuna: this trial_id's Optuna trial
            return config, self._ot_trials[trial_id].params

        def judged(_config: Any, verdict: Any) -> None:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_constraint(CONSTRAINT, verdict.excess_gib)
            if not verdict.fits:
                del self._ot_trials[trial_id]  # the same trial_id gets the next configuration
                ot_trial.set_user_attr("pruned", verdict.reason)
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)

        config, self.gave_up = self._guard.screen(self.pruned, draw, judged)
        return Searcher.FINISHED if config is None else config

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """As OptunaSearch, but the study sees what the search saw (single objective): the last
        epoch's objective as an intermediate value too (Ray reports a result to the searcher only
        when the trial goes on, so the epoch that ends a trial was missing), and a trial stopped
        before ``max_epochs`` (by ASHA or the budget) PRUNED at its last epoch rather than
        COMPLETE as if it had trained to the end: Optuna Dashboard then matches results.csv, and
        TPE ranks stopped trials by how far they got, as with Optuna's own pruners."""
        ot_trial = self._ot_trials.get(trial_id)
        value = (result or {}).get(self.metric) if isinstance(self.metric, str) else None
        step = (result or {}).get("training_iteration")
        if (error or value is None or step is None or not hasattr(ot_trial, "report")
                or trial_id in self._completed_trials or not math.isfinite(value)):
            super().on_trial_complete(trial_id, result, error)
            return
        frozen = next(t for t in self._ot_study.get_trials(deepcopy=False)
                      if t.number == ot_trial.number)
        if step not in frozen.intermediate_values:
            ot_trial.report(value, step)
        if self._max_epochs and step < self._max_epochs:
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

    # With a journal, the saved state holds the trials' IDs in it rather than the study (which
    # would replay the journal from the path it was saved with): Ray pickles the searcher with the
    # Tuner (tuner.pkl) and saves it with save() at each experiment checkpoint.

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if state.get("_journal"):
            state["_ot_study"] = state["_storage"] = None
            state["_ot_trials"] = {k: getattr(t, "_trial_id", t)
                                   for k, t in self._ot_trials.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if state.get("_journal") and Path(state["_journal"]).exists():
            # (Ray's restore() follows, with the trials of its last checkpoint: only it can tell
            # which of the journal's unfinished trials Ray lost)
            self._open_journal(Path(state["_journal"]), lost=False)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def _open_journal(self, path: Path, *, lost: bool = True) -> None:
        """The study from the journal at ``path``, the trials Ray knows bound to it, and
        (``lost``) any other unfinished trial in it marked failed (see the module docstring)."""
        sampler = self._sampler or (self._ot_study.sampler if self._ot_study else None)
        study = optuna.load_study(study_name=self._study_name, storage=journal_storage(path),
                                  sampler=sampler)
        # (Optuna's Trial is a handle: the study and the trial's ID in its storage)
        ids = {k: getattr(t, "_trial_id", t) for k, t in self._ot_trials.items()}
        self._ot_trials = {k: optuna.Trial(study, i) for k, i in ids.items()}
        known = set(ids.values())
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if lost and t._trial_id not in known:
                study.tell(t.number, state=TrialState.FAIL)
        self._ot_study, self._storage, self._journal = study, study._storage, str(path)

    def restore(self, checkpoint_path: str) -> None:
        """Ray's resume: the saved state (Optuna's study and the pruned rows) back, with this run's
        guard (the saved one may point at a folder the experiment was moved from), the study
        opened from the journal in the experiment folder, and the rows written again, merged with
        pruned.json's (a driver that died after its last searcher checkpoint had written rows the
        checkpoint lacks)."""
        guard, sink = self._guard, getattr(self, "_origin_sink", None)
        super().restore(checkpoint_path)
        self._guard, self._origin_sink = guard, sink
        if self.__dict__.get("_journal"):  # (checkpoint_path is in a staging copy: not there)
            self._open_journal(Path(self._journal))
        for name, default in (("origins", {}), ("_n_startup", 0), ("_warm", []),
                              ("_asked_origin", ""), ("_first_origin", "nvidia")):
            # (a search saved before these existed)
            self.__dict__.setdefault(name, default)
        rows = self.__dict__.setdefault("pruned", [])
        if guard is not None:
            guard.restore_rows(rows, self.__dict__.get("gave_up", ""))


class BudgetedSearcher(Searcher):
    """Any Ray searcher (TuneBOHB's) behind the memory check: a configuration predicted over
    ``guard``'s budget is withdrawn from the searcher as if its trial had ended without a result
    (it learns nothing from it), recorded as pruned, and the same trial id asks again; after
    :data:`MAX_REFUSALS` refusals in a row, no more suggestions. ``guard`` None: the searcher as
    it is. The pruned rows are in ``pruned.json`` (a resumed search reads them from there)."""

    def __init__(self, inner: Searcher, guard: MemoryGuard | None) -> None:
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner, self._guard = inner, guard
        self.pruned: list[TrialRow] = []

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.inner.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str) -> dict | str | None:
        def draw() -> tuple[Any, dict[str, Any] | None]:
            config = self.inner.suggest(trial_id)
            if isinstance(config, dict):  # ConfigSpace hands numpy scalars (not JSON, not config)
                config = {k: v.item() if hasattr(v, "item") else v for k, v in config.items()}
            return config, config if isinstance(config, dict) else None

        def judged(_config: Any, verdict: Any) -> None:
            if not verdict.fits:
                self.inner.on_trial_complete(trial_id, None, True)

        if self._guard is None:
            return draw()[0]
        config, _ = self._guard.screen(self.pruned, draw, judged)
        return Searcher.FINISHED if config is None else config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        self.inner.on_trial_complete(trial_id, result, error)

    def on_pause(self, trial_id: str) -> None:  # HyperBandForBOHB pauses and resumes trials
        self.inner.on_pause(trial_id)

    def on_unpause(self, trial_id: str) -> None:
        self.inner.on_unpause(trial_id)

    def save(self, checkpoint_path: str) -> None:
        self.inner.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        """The inner searcher's state; the pruned rows from pruned.json (the inner searcher's
        checkpoint does not hold them)."""
        self.inner.restore(checkpoint_path)
        if self._guard is not None:
            self.pruned = self._guard.restore_rows([])


# -- tracking ---------------------------------------------------------------------------------------

class MlflowTrials(MLflowLoggerCallback):
    """Ray Tune's MLflow callback with each trial's run a child of the search's parent run
    (``search.tracking.MlflowSearch``), tagged with its trial ID and the node that ran it, its
    metrics stepped by epoch, and found again by that tag when a resumed search continues the
    trial (Ray's callback would open a second run: its record of runs is not part of the Tuner's
    saved state)."""

    def __init__(self, uri: str, experiment_id: str, parent: str) -> None:
        super().__init__(uri, tags={"mlflow.parentRunId": parent})
        self.experiment_id, self.parent = experiment_id, parent

    def setup(self, *args: Any, **kwargs: Any) -> None:
        allow_file_store(self.tracking_uri)
        self.mlflow_util.setup_mlflow(tracking_uri=self.tracking_uri,
                                      experiment_id=self.experiment_id)
        self._trial_runs: dict[Any, str] = {}
        self._nodes: set[tuple[str, str]] = set()

    def log_trial_start(self, trial: Any) -> None:
        if trial not in self._trial_runs:
            client = self.mlflow_util._get_client()
            found = trial_runs(client, self.experiment_id, self.parent, trial.trial_id)
            if found:
                self._trial_runs[trial] = found[trial.trial_id]
                client.update_run(found[trial.trial_id], status="RUNNING")
                return  # (its parameters are logged: MLflow refuses to log them twice)
            from search.race import continuation_of

            self.tags = {"mlflow.parentRunId": self.parent, "trial_id": trial.trial_id}
            cont = continuation_of(trial.config)
            if cont is not None:  # (the race's winner continued: its parameters are the winner's)
                self.tags["continues"] = str(cont["trial_id"])
            tags = {**self.tags, "trial_name": str(trial)}
            run = self.mlflow_util.start_run(tags=tags, run_name=str(trial))
            self._trial_runs[trial] = run.info.run_id
        from search.race import sampled

        self.mlflow_util.log_params(run_id=self._trial_runs[trial],
                                    params_to_log=sampled(trial.config))

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        # The step is the trial's epoch, not Ray's iteration count: a trial resumed from an earlier
        # epoch's checkpoint than its last report (Ctrl-C mid-save, a retry) counts on in Ray.
        # Only what a user compares is logged: the trainer's metrics, not Ray's bookkeeping
        # (config/..., pid, timestamp, done, ...: the configuration is the run's parameters).
        run_id = self._trial_runs[trial]
        metrics = {k: v for k, v in result.items() if k not in RAY_KEYS
                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.mlflow_util.log_metrics(run_id=run_id, metrics_to_log=metrics,
                                     step=int(result.get("epoch") or iteration))
        # (the host name, as the parent run's node tag has it; the IP where there is none)
        node = result.get("hostname") or result.get("node_ip")
        if node and (trial.trial_id, node) not in self._nodes:
            self._nodes.add((trial.trial_id, node))
            self.mlflow_util._get_client().set_tag(self._trial_runs[trial], "node", node)


WANDB_FINISH_S = 120  # how long a trial's end waits for its W&B run to be written and finished


def wandb_callback(project: str, group: str) -> Any:
    """Ray Tune's W&B callback: a W&B run per trial (named and identified as the trial, grouped
    by the search), offline unless WANDB_MODE says otherwise.

    Ray's callback hands each trial's results to a logging actor and, at the trial's end, tells it
    to finish without waiting. The trial that ends a search (stopped by the budget or ASHA at its
    first epoch, say) then lost its results: the actor was gone before it wrote them (its offline
    run held the configuration only, unfinished). Here a trial's end waits for its run to finish
    (at most WANDB_FINISH_S seconds).

    In a local experiment folder the run is written in the trial's folder there, not in Ray's
    staging folder for the trial: Ray copies that folder to the experiment in the background, and a
    copy started while the run was being written could land after the run's last records and leave
    a run file holding its header only (seen once in the suite, 2026-12-06)."""
    import ray
    from ray.air.integrations.wandb import WandbLoggerCallback

    class FinishingWandb(WandbLoggerCallback):
        def log_trial_start(self, trial: Any) -> None:
            # Ray makes the logging actors restartable, and Ray's core then prints an error line
            # ("... has constructor arguments in the object store and max_restarts > 0") on every
            # W&B search; a restarted actor would start a new W&B run anyway. Ours are not
            # restarted (the same class and options as Ray's otherwise).
            if not self._remote_logger_class:
                from ray.air.util.node import _force_on_current_node

                env = {k: os.environ[k] for k in ("WANDB_API_KEY",) if k in os.environ}
                self._remote_logger_class = ray.remote(
                    num_cpus=0, **_force_on_current_node(), runtime_env={"env_vars": env},
                    max_restarts=0, max_task_retries=0)(self._logger_actor_cls)
            dest = str(trial.path)
            if "://" in dest:  # (remote storage: written in the staging folder, synced by Ray)
                self.kwargs.pop("dir", None)
            else:  # (wandb.init's dir; the trials start one at a time, in this thread)
                Path(dest).mkdir(parents=True, exist_ok=True)
                self.kwargs["dir"] = dest
            super().log_trial_start(trial)

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            self._signal_logging_actor_stop(trial=trial)
            future = self._trial_logging_futures.get(trial)
            if future is not None:
                ray.wait([future], timeout=WANDB_FINISH_S)
            self._cleanup_logging_actors()

    os.environ.setdefault("WANDB_MODE", wandb_mode())  # (Ray checks for a key unless offline)
    os.environ.setdefault("WANDB_SILENT", "true")
    return FinishingWandb(project=project, group=group, mode=wandb_mode(),
                          excludes=["time_since_restore", "iterations_since_restore"])


# -- Ray core -------------------------------------------------------------------------------------

def set_no_cluster(off: bool | None) -> bool | None:
    """Sets Ray's module constant for its no-cluster mode (``off`` True: no cluster; None: leaves it)
    and returns its previous value. Ray reads the environment switch once, on its first import: a
    process that imported Ray before a search (a notebook) needs the constant set too."""
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is None:
        return None
    was = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if off is not None:
        constants.ENABLE_RAY_CLUSTER = not off
    return was
