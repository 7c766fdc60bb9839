"""The Ray Tune callbacks and stopper of the search (imported only once Ray is set up: it imports ray.tune).

When a run is interrupted, Ray ends every trial on its way out (running ones become TERMINATED,
like trials a scheduler stopped) and tells no callback. So the callback keeps each trial's status
as of the end of every step of the tuning loop: after an interrupted run, the trials whose last
seen status was not TERMINATED or ERROR (running, paused, or pending and never started) are the ones
Ctrl-C cut off. The record is module state keyed by the experiment, not the callback's own: a
resumed Tuner calls its own unpickled copy of the callback, which records into the same place.

:class:`MlflowTrials` logs each trial as an MLflow run (``--mlflow``; ``search.tracking``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback

from search.tracking import allow_file_store, trial_runs, wandb_mode

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
