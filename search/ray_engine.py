"""Ray Tune engine: an Optuna sampler picks configurations, a Ray Tune scheduler stops weak trials.

The searcher (``--searcher``) is one of Optuna's samplers behind Ray's OptunaSearch: multivariate
TPE with a constant liar for trials that run at once and its random start-up scaled to the budget
(the default), random, CMA-ES, a Gaussian process, NSGA-II. The scheduler (``--scheduler``) is one
of Ray Tune's: ASHA (the default), synchronous HyperBand, BOHB (HyperBand with its own searcher,
TuneBOHB), PBT and PB2 (population-based training; Ray runs them without a searcher, so the
population is drawn up front), the median stopping rule, or none. Combinations the libraries do not
support are refused with one line, before anything starts. ``--warm-start`` tells the sampler an
earlier experiment's trials (Ray's ``add_evaluated_point``, Optuna's ``add_trial``).

NVIDIA's configuration (projected into the space) is the first point evaluated. Trials get
``cpus_per_trial`` / ``gpus_per_trial`` (fractional GPUs share a card: TensorFlow memory growth is
on), at most ``max_concurrent`` run at once, and a failing trial is retried ``max_failures`` times
from its last checkpoint. ASHA's time attribute is the epoch count or wall-clock seconds (so faster
configurations can earn more epochs in the same budget). A configuration predicted over the
memory budget never becomes a trial (``search.ray_adapters``, ``search.memory_budget``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from search.context import SearchContext
from search.engine import Engine, Log
from search.memory_budget import MemoryGuard, load_pruned, with_pruned
from search.objective import DEFAULT, MODE, metric_of
from search.ray_cluster import ClusterError, cluster_summary, connect, horovod_workers_alive
from search.ray_factories import param_space, run_config, tune_config
from search.ray_options import RayOptions
from search.results import TrialRow, row_from_history
from unet3d.planning.budget import Placement

PROPOSALS = "proposals.json"  # trial id -> where its configuration came from (search.ray_adapters)


def _trainable(ctx: SearchContext, opts: RayOptions):
    from ray import tune

    from search.trainable import train_trial

    trainable = tune.with_parameters(train_trial, ctx=ctx)  # the parsed space travels along
    n = ctx.workers_per_trial
    if n <= 1 and opts.scheduler == "race":
        return tune.with_resources(trainable, _race_resources(opts))
    if n <= 1:
        return tune.with_resources(trainable, {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})
    # The trial itself only coordinates: its bundle reserves memory, no CPU (Ray refuses all-zero
    # bundles). Then one bundle per Horovod worker: 1 CPU, or 1 GPU.
    worker = {"CPU": 1.0}
    if opts.gpus_per_trial:
        worker["GPU"] = 1.0
    return tune.with_resources(trainable, tune.PlacementGroupFactory(
        [{"memory": 256 * 2**20}] + [dict(worker) for _ in range(n)], strategy="PACK"))


def _race_resources(opts: RayOptions) -> Callable[[dict], Any]:
    """A race trial's resources, or for the winner's continuation, which trains alone once the
    race is over, the CPUs of every trial that raced at once (as many as one node has)."""
    import ray
    from ray.tune import PlacementGroupFactory

    from search.race import CONTINUE

    node_cpus = max((n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")),
                    default=opts.cpus_per_trial)
    alone = max(opts.cpus_per_trial, min(opts.cpus_per_trial * max(1, opts.max_concurrent),
                                         node_cpus))

    def resources(config: dict) -> Any:
        bundle = {"CPU": alone if CONTINUE in config else opts.cpus_per_trial}
        if opts.gpus_per_trial:
            bundle["GPU"] = opts.gpus_per_trial
        return PlacementGroupFactory([bundle])

    return resources


@contextlib.contextmanager
def _graceful_ctrl_c() -> Iterator[list[bool]]:
    """Ctrl-C ends the run the way Ray Tune's own handler does (SIGUSR1, which Ray always listens
    to: stop starting trials, save the experiment state, end the trials, return), and the caller
    learns that it happened (Ray's handler tells nobody). A second Ctrl-C interrupts at once.

    SIGTERM (``kill``, ``scancel``, a batch system's time limit) does the same as the first Ctrl-C
    (Ray's own handler in the driver aborts the process); a repeated SIGTERM is ignored: SLURM
    signals every process of a job, and the job's shell passes the signal on as well."""
    import signal

    seen: list[bool] = []

    def on_signal(signum: int, frame: Any) -> None:
        if seen:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        seen.append(True)
        os.kill(os.getpid(), signal.SIGUSR1)

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield seen
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run(ctx: SearchContext, location: str, opts: RayOptions, *, resume: bool = False,
        log: Callable[[str], None] = print, guard: MemoryGuard | None = None,
        callbacks: list[Any] | None = None) -> tuple[list[TrialRow], bool]:
    """Runs (or resumes) the search at ``location`` (an absolute path or a URI).

    Returns a row per trial and whether Ctrl-C ended the run: Ray Tune then saves its state first,
    the trials cut off get status "interrupted", and ``run(..., resume=True)`` continues them.
    With ``guard`` (the memory budget), configurations predicted over it never reach Ray: they
    are rows with status "pruned" after the trials' (read back from ``guard.sink``), and every
    row has its predicted memory. A resumed search keeps the guard it was created with, and the
    ``callbacks`` (tracking) it was created with: Ray restores them with the Tuner.
    """
    # Ray's TensorBoardX logger would write a second HParams session per trial (at trial end only);
    # the trials write their own, from the first epoch. CSV/JSON loggers are added explicitly.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    from ray import tune

    connect(opts)
    if opts.address:
        log(f"joined the Ray cluster at {opts.address}: {cluster_summary()}")
    if resume:
        if not tune.Tuner.can_restore(location):
            raise ClusterError(f"{location}: the search stopped before Ray Tune saved any state; "
                               f"start it again under another name")
        t = tune.Tuner.restore(location, trainable=_trainable(ctx, opts), resume_unfinished=True,
                               resume_errored=True)
    else:
        sink = Path(ctx.experiment) / PROPOSALS if ctx.experiment else None
        t = tune.Tuner(_trainable(ctx, opts), param_space=param_space(ctx.space, opts),
                       tune_config=tune_config(ctx.space, opts, ctx.metric, guard, sink,
                                               ctx.second_objective, key=location,
                                               backend=ctx.backend),
                       run_config=run_config(location, opts, ctx.metric, callbacks))
    with _graceful_ctrl_c() as interrupted:
        grid = t.fit()
    if opts.scheduler == "race" and ctx.experiment:
        from search.ray_race import write_record

        write_record(location, Path(ctx.experiment), Path(ctx.experiment) / PROPOSALS)
    from search.ray_callbacks import cut_off_trials

    cut_off = cut_off_trials(location) if interrupted else set()
    if ctx.workers_per_trial > 1:
        left = horovod_workers_alive()
        if left:
            log(f"warning: {left} Horovod worker process(es) still alive after the search")
    uri = location.split("://", 1)[0] + "://" if "://" in location else ""
    rows = rows_from_grid(grid, ctx.max_epochs, uri, objective=ctx.objective,
                          regions=ctx.scheme.region_names, last=opts.scheduler == "race")
    if interrupted:
        for r in rows:
            if r.trial_id in cut_off and r.status == "stopped":
                r.status = "interrupted"
    _mark_origins(rows, Path(ctx.experiment) / PROPOSALS if ctx.experiment else None)
    if guard is not None and guard.sink is not None:
        pruned, gave_up = load_pruned(guard.sink.parent)
        if gave_up:
            log(f"warning: {gave_up}")
        rows = with_pruned(rows, pruned, guard)
    return rows, bool(interrupted)


def _mark_origins(rows: list[TrialRow], path: Path | None) -> None:
    """Each row's ``proposed_by``, from the searcher's record (none for BOHB or PBT)."""
    import json

    if path is None or not path.exists():
        return
    origins = json.loads(path.read_text())
    for r in rows:
        r.proposed_by = origins.get(r.trial_id, "")


def rows_from_grid(grid: Any, max_epochs: int, uri: str = "", *, objective: str = DEFAULT,
                   regions: tuple[str, ...] = (), last: bool = False) -> list[TrialRow]:
    """Rows from Ray's ResultGrid, ranked by ``objective``, their region scores in the order of
    ``regions`` (the label scheme's); checkpoint paths get ``uri`` (a URI scheme, ``s3://``)
    back for remote storage. ``last``: each trial's scores and checkpoint are its last epoch's
    (the race compares, continues and exports trials at their last epoch); otherwise its best
    epoch's by the objective."""
    from search.race import sampled
    metric = metric_of(objective)
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        history: list[dict[str, Any]] = []
        if df is not None and len(df):
            keep = [c for c in df.columns if c.startswith(("val_", "loss", "learning_rate",
                                                          "throughput", "epoch", "timestamp",
                                                          "node_ip", "node_id", "workers",
                                                          "memory_peak_gib", "latency_s",
                                                          "params"))]
            history = df[keep].to_dict("records")
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name.split("_")[1]
        params = sampled(result.config or {})
        best_ckpt = ""
        try:
            ck = None if last else result.get_best_checkpoint(metric, MODE)
        except Exception:  # noqa: BLE001  (no scored checkpoint)
            ck = None
        if ck is None:
            ck = result.checkpoint
        if ck is not None:
            best_ckpt = uri + ck.path if uri else ck.path
            if not uri and not last:
                best_ckpt = _checkpoint_of_best_epoch(best_ckpt, history, metric)
        m = result.metrics or {}
        error = ""
        if result.error is not None:
            error = str(result.error).strip().splitlines()[-1][:300] if str(result.error) else \
                type(result.error).__name__
        rows.append(row_from_history(
            trial_id, params, history, max_epochs, objective=objective, regions=regions, error=error,
            index=int(m.get("trial_index", 0)), wall_s=float(m.get("time_total_s", 0.0)),
            node=str(m.get("node_ip", "")), node_id=str(m.get("node_id", "")), checkpoint=best_ckpt,
            run_dir=uri + result.path if uri else str(result.path), best_is_last=last))
    return rows


def _checkpoint_of_best_epoch(path: str, history: list[dict[str, Any]], metric: str) -> str:
    """The trial's checkpoint folder holding its best epoch (by ``metric``): ``path`` (Ray's best
    checkpoint) when it does, else the sibling ``checkpoint_*`` folder that does. Ray drops a
    checkpoint still being registered when it stops every trial at once (a time budget; before
    :class:`search.ray_callbacks.EpochBudget` waited for it, the epoch budget too): its folder is
    written but never becomes the trial's best, and the best epoch would be exported from the
    epoch before. ``path`` as it is when no folder holds that epoch."""
    from unet3d.folders import RunFolder
    from unet3d.training.checkpoint import CheckpointError, read_state

    scored = [h for h in history if isinstance(h.get(metric), (int, float))
              and math.isfinite(h[metric])]
    if not scored:
        return path
    epoch = int(max(scored, key=lambda h: h[metric]).get("epoch", 0))

    def holds(folder: Path) -> bool:
        try:
            return int(read_state(folder / RunFolder.CHECKPOINT)["epoch"]) == epoch
        except CheckpointError:
            return False

    given = Path(path)
    if holds(given):
        return path
    found = next((f for f in sorted(given.parent.glob("checkpoint_*")) if holds(f)), None)
    return str(found) if found is not None else path


class RayEngine(Engine):
    """Ray Tune as the search's engine (see the module docstring): a local Ray on 127.0.0.1 it
    starts and ends, or a cluster it joins (``--address``)."""

    name = "ray"

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self._own_ray = False

    @classmethod
    def options_of(cls, spec: Any) -> RayOptions:
        options = dict(spec.engine_options)
        if spec.retrain_share:  # the search spends the rest; the winner's retraining the share
            options["budget"] = spec.budget_split()[0]
        if options.get("scheduler") is None and (spec.retrain_share or spec.second_objective):
            # (the race is the default with a budget; it spends all of it and races one objective)
            options["scheduler"] = "asha"
        opts = RayOptions(num_samples=spec.num_samples, max_epochs=spec.max_epochs, seed=spec.seed,
                          verbose=spec.verbose, **options)
        opts.check_objectives(spec.second_objective)
        return opts

    def saved_options(self) -> dict[str, Any]:
        # The scheduler the defaults chose is saved with the search (search.json), so a resumed
        # search keeps it whatever a later release's default is.
        return {**self.spec.engine_options, "scheduler": self.settings.scheduler}

    @classmethod
    def restored_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"scheduler": "asha", **options}  # (saved before the race: asha was the default)

    def environment(self) -> contextlib.AbstractContextManager:
        from search.ray_cluster import environment

        return environment(self.settings)

    def check(self, space: Any, log: Log) -> None:
        """The sampler's and scheduler's libraries and needs, the portfolio of a race, the
        warm start's trials; then joins the cluster (or starts the local Ray) and checks that it
        has the GPUs a trial asks for."""
        from search.ray_cluster import check_resources
        from search.ray_factories import check_space, race_plan

        opts, spec = self.settings, self.spec
        check_space(opts, space)  # (libraries, PBT's parameters)
        if opts.scheduler == "race" and spec.space not in ("auto", "brats"):
            race_plan(space, opts)  # (--portfolio checked against the space, early)
        if opts.warm_start:
            self._check_warm_start(space)
        self._own_ray = connect(opts) or self._own_ray
        check_resources(opts, spec.workers_per_trial, log)

    def _check_warm_start(self, space: Any) -> None:
        """--warm-start names a finished search with trials inside this search's space."""
        from search.ray_factories import warm_trials
        from search.spec import SearchError

        metric = metric_of(self.spec.objective)
        usable = warm_trials(self.settings.warm_start, space, metric)  # (no trials.json: refused)
        if not usable and self.spec.space not in ("auto", "brats"):  # (those move onto a plan)
            raise SearchError(f"--warm-start {self.settings.warm_start}: none of its trials scored "
                              f"{metric} inside space {space.name!r}")

    def mapper(self) -> Any:
        """On a cluster (``--address``), cases are preprocessed as Ray tasks on its nodes (the
        cache is on shared storage); otherwise in local processes."""
        if not self.settings.address:
            return None
        from search.ray_tasks import task_mapper

        return task_mapper()

    def placement(self) -> Placement:
        from search.ray_cluster import placement

        return placement(self.settings, self.spec.workers_per_trial)

    def race(self, ctx: SearchContext, log: Log) -> SearchContext:
        """With the race (``search.race``; the default of a --budget in trial-epochs), trials
        train its race epochs under warmup-stable-decay, which the race continues; its portfolio
        is checked here, before anything is written."""
        if self.settings.scheduler != "race":
            return ctx
        from search.ray_factories import race_plan
        from unet3d.text import plural

        settings, portfolio = race_plan(ctx.space, self.settings)
        log(f"race: the default first, then {portfolio.describe()}, then neighbours of the "
            f"incumbent; {plural(settings.race_epochs, 'epoch')} each, challengers may lose "
            f"{settings.race_share:.0%} of the budget of {settings.budget:g} trial-epochs; "
            f"the winner is continued to the budget")
        return dataclasses.replace(ctx, max_epochs=settings.race_epochs, schedule="wsd")

    def run(self, ctx: SearchContext, exp: Any, *, resume: bool, log: Log,
            guard: MemoryGuard | None, mlflow: Any = None) -> tuple[list[TrialRow], bool]:
        self._own_ray = connect(self.settings) or self._own_ray
        return run(ctx, exp.location, self.settings, resume=resume, log=log, guard=guard,
                   callbacks=self._callbacks(mlflow))

    def _callbacks(self, mlflow: Any) -> list[Any]:
        """Ray callbacks that log each trial: to the search's MLflow run, to W&B (--wandb)."""
        callbacks: list[Any] = []
        if mlflow is not None:
            from search.ray_adapters import MlflowTrials

            callbacks.append(MlflowTrials(mlflow.uri, mlflow.experiment_id, mlflow.parent))
        if self.spec.wandb:
            from search.ray_adapters import wandb_callback

            callbacks.append(wandb_callback(self.spec.wandb, self.spec.name))
        return callbacks

    def close(self) -> None:
        if self._own_ray:  # a local Ray this search started ends with it
            import ray

            ray.shutdown()
            self._own_ray = False
