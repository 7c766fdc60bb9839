"""The library entry point of a search: ``Search(...).run()``, as a notebook or a script uses it.

    from search import Search
    result = Search(data="BraTS2021", space="demo", budget=48, out="results", name="demo").run()
    result.best.score, result.best.config, result.experiment, result.summary["race"]

``Search`` owns the whole pipeline (like MONAI's AutoRunner): it validates the whole specification
before anything is written (options, space, data, split, output folder, cluster, GPUs), prepares the
preprocessed cache, splits the cases, sets the memory budget (``memory=``, ``--memory``; a search
none of whose configurations fits it is refused before its folder is created, and configurations
predicted over it are recorded as pruned, never started: ``search.memory_budget``), runs the engine
(Ray Tune: with a ``budget`` in trial-epochs the race of ``search.race``, which spends all of it and
continues its winner; otherwise Optuna + ASHA or another scheduler; or Keras Tuner), exports the
final model to ``EXPERIMENT/best``, writes
results and the HTML report, and returns a :class:`SearchResult`. The specification, engine
options included, is saved in ``EXPERIMENT/search.json``, so ``Search.restore(EXPERIMENT).run()``
(the CLI's ``--resume``) and ``retrain-best`` need no option repeated.

The experiment folder (``out/name``): ``search.json`` (with the memory budget used), one
``trial_<id>/`` per trial (its ``run/`` with TensorBoard logs and checkpoint), ``pruned.json`` (the
configurations refused for memory), ``results.csv``, ``trials.json``, ``best/``, ``report.html``.
Library code does not print: progress lines go to the optional ``log`` callable.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search.context import SearchContext
from search.engines import ENGINES, engine_for
from search.objective import split as split_objective
from search.results import TrialRow
from search.spec import (
    DEFAULT_DATA,
    DEFAULT_OUT,
    DEMO_CASES,
    DEMO_DIFFICULTY,
    SearchError,
    SearchSpec,
)
from search.storage import Experiment
from unet3d.config import RunConfig
from unet3d.folders import ExportFolder
from unet3d.labels import LabelScheme
from unet3d.planning.budget import MemoryBudget

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class BestTrial:
    """The winning trial: its RunConfig (as exported), objective score, parameters, export folder."""

    trial_id: str
    score: float
    params: dict[str, Any]
    config: RunConfig
    export: Path | None


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What a finished (or interrupted) search returns.

    experiment: the local experiment folder (a staging copy for a storage URI; ``location`` is the URI).
    trials: one row per trial (status completed | stopped | error | interrupted), then one per
        configuration refused for memory (status pruned, never started).
    best: the best trial, None if no trial finished an epoch or the search was interrupted.
    summary: the summary written to trials.json (trials that ran, trials_pruned, memory_budget,
        trial-epochs run and saved, best).
    retrained: with ``retrain_share``, the retrained winner's export (``retrained/all``).
    """

    experiment: Path
    location: str
    trials: list[TrialRow]
    best: BestTrial | None
    summary: dict[str, Any]
    report: Path | None
    seconds: float
    interrupted: bool = False
    retrained: Path | None = None


class Search:
    """A whole search; see the module docstring. Constructing one validates the options' values
    (a :class:`SearchError` names the bad option); :meth:`run` checks the data, space, folder and
    cluster before it writes anything."""

    def __init__(self, *, data: str | Path | None = None, space: str | Path = "demo",
                 engine: str = "ray", num_samples: int = 8, max_epochs: int = 8,
                 out: str | Path = DEFAULT_OUT, name: str | None = None, seed: int = 0,
                 fold: int = 0, folds: int = 5, split_seed: int = 0,
                 cache: str | Path | None = None, workers_per_trial: int = 1, verbose: int = 1,
                 objective: str = "dice", labels: str | Path | None = None,
                 memory: float | None = None, retrain_share: float = 0.0,
                 backend: str = "tensorflow", mlflow: str | None = None,
                 wandb: str | None = None, log: Log | None = None,
                 **engine_options: Any) -> None:
        try:
            objective, second = split_objective(objective)
        except ValueError as e:
            raise SearchError(str(e)) from None
        self.spec = SearchSpec(
            data=str(data or ""), cache=str(cache or ""), space=str(space), engine=engine,
            num_samples=num_samples, max_epochs=max_epochs, out=str(out),
            name=name or time.strftime("search-%Y%m%d-%H%M%S"), seed=seed, fold=fold, folds=folds,
            split_seed=split_seed, workers_per_trial=workers_per_trial, verbose=verbose,
            objective=objective, second_objective=second, labels=str(labels or ""), memory=memory,
            retrain_share=retrain_share, backend=backend, mlflow=mlflow or "", wandb=wandb or "",
            engine_options={k: v for k, v in engine_options.items() if v is not None})
        self._engine = engine_for(self.spec)  # the engine's own options, checked now
        self.spec = dataclasses.replace(self.spec, engine_options=self._engine.saved_options())
        # --labels read once, now (a bad scheme is refused before anything is written) and kept:
        # the dataset is read with it. (Not on restore: the context holds the scheme, the file
        # may be gone.)
        self._labels: LabelScheme | None = None
        if self.spec.labels:
            from unet3d.labels import resolve

            self._labels = resolve(self.spec.labels)
        self.log: Log = log or (lambda _msg: None)
        self._resume = False
        self._context: SearchContext | None = None
        self._budget: MemoryBudget | None = None
        self._mlflow: Any = None

    @classmethod
    def restore(cls, experiment: str | Path, *, log: Log | None = None,
                address: str | None = None) -> Search:
        """The search saved in ``experiment`` (a folder or a storage URI), to be continued with
        :meth:`run`: finished trials are kept, cut-off ones resume from their last checkpoint.
        ``address``: the Ray cluster to continue on, when it is not the saved one any more."""
        from search.finish import load_search
        from search.memory_budget import load_budget

        exp = str(experiment).rstrip("/")
        out, _, name = exp.rpartition("/")
        where = Experiment(out or ".", name)
        if not where.exists():
            raise SearchError(f"{where.location}: no search to resume (search.json missing)")
        where.fetch_context()
        spec, ctx = load_search(where.local)
        self = cls.__new__(cls)
        options = {**spec.engine_options, **({"address": address} if address else {})}
        options = ENGINES[spec.engine].load().restored_options(options)
        self.spec = dataclasses.replace(spec, out=out or ".", name=name, engine_options=options)
        self._engine = engine_for(self.spec)
        self.log = log or (lambda _msg: None)
        self._resume, self._context = True, ctx
        self._mlflow = None
        self._budget = load_budget(where.local)  # None (saved before budgets): resolved in run()
        return self

    @property
    def experiment(self) -> Experiment:
        return Experiment(self.spec.out, self.spec.name)

    def run(self) -> SearchResult:
        """Validates, prepares, runs the engine, exports and reports; see the module docstring."""
        from search.finish import finish

        exp = self.experiment
        if self._resume:
            done = self._finished(exp)
            if done is not None:
                return done
        with self._engine.environment():
            try:
                ctx = self._context if self._resume else self._start(exp)
                t0 = time.perf_counter()
                rows, interrupted = self._run_engine(ctx, exp)
            finally:
                self._engine.close()
        summary = finish(rows, ctx, exp.local, self.spec.engine, export=not interrupted,
                         budget=self._budget)
        report = None
        if rows:
            from search.report import build_report

            report = build_report(exp.local).html
        retrained = self._retrain(summary, interrupted)
        if self._mlflow is not None:
            self._mlflow.close(rows, summary, exp.local, interrupted)
        exp.upload()
        return SearchResult(experiment=exp.local, location=exp.location, trials=rows,
                            best=_best(summary), summary=summary, report=report,
                            seconds=time.perf_counter() - t0, interrupted=interrupted,
                            retrained=retrained)

    def _finished(self, exp: Experiment) -> SearchResult | None:
        """The result of a restored search that had finished (not interrupted, its retraining
        done), read from its folder: nothing runs again, Ray does not start, best/ is not
        re-exported. None when there is something left to run."""
        from search.finish import load_rows

        try:
            summary = json.loads(exp.folder.trials.read_text())["summary"]
        except (OSError, ValueError, KeyError):
            return None
        retrained = exp.folder.retrained / "all" if self.spec.retrain_share else None
        if summary.get("interrupted", True) or (
                retrained is not None and "best_trial" in summary and not retrained.exists()):
            return None  # (a summary from before it said so: run as before)
        report = exp.folder.report
        self.log(f"{exp.location}: the search had finished; its result, nothing run again")
        return SearchResult(experiment=exp.local, location=exp.location, trials=load_rows(exp.local),
                            best=_best(summary), summary=summary,
                            report=report if report.exists() else None, seconds=0.0,
                            interrupted=False,
                            retrained=retrained if retrained is not None and retrained.exists()
                            else None)

    def _retrain(self, summary: dict[str, Any], interrupted: bool) -> Path | None:
        """``retrain_share``: the winner trained on every labelled case for the budget's share of
        trial-epochs (``search.retrain``), exported to ``retrained/all``."""
        share = self.spec.retrain_share
        if not share or interrupted or "best_trial" not in summary:
            return None
        from search.retrain import retrain_best

        epochs = self.spec.budget_split()[1]
        self.log(f"retraining the best configuration for {epochs} epochs ({share:.0%} of the "
                 f"budget of {self.spec.engine_options['budget']:g} trial-epochs)")
        return retrain_best(self.experiment.local, epochs=epochs, resume=self._resume,
                            log=self.log)[0]

    # The stages of a new search, in order; nothing is written before _create.

    def _start(self, exp: Experiment) -> SearchContext:
        cases = self._check(exp)
        ctx = self._prepare(cases, exp)
        ctx = self._fit_budget(ctx)
        ctx = self._engine.race(ctx, self.log)
        self._create(exp, ctx)
        return ctx

    def _check(self, exp: Experiment) -> Any:
        """Everything that can be wrong, before anything is written; returns the discovered data."""
        from spaces.presets import AUTO, auto_space, get_space
        from unet3d.config import preset
        from unet3d.data.discover import discover
        from unet3d.io_utils import check_writable_dir

        spec = self.spec
        if exp.exists() or (not exp.remote and exp.local.exists() and any(exp.local.iterdir())):
            raise SearchError(f"{exp.location}: experiment folder exists; resume it "
                              f"(--resume / Search.restore) or choose another --name")
        if not exp.remote:
            check_writable_dir(Path(spec.out), "--out")
        # (auto: centred on NVIDIA's configuration until the plan replaces it, in _fit_budget)
        self._space = auto_space(preset("nvidia")) if spec.space == AUTO else get_space(spec.space)
        if spec.workers_per_trial > 1:
            from unet3d.training import distributed

            if not distributed.horovod_available():
                raise SearchError(f"--workers-per-trial {spec.workers_per_trial}: "
                                  f"{distributed.INSTALL_HINT}")
        dataset = None  # the demo dataset is written later, when the request has been checked
        if spec.data or _demo_written():
            dataset = discover(spec.data_folder.resolve())  # (absolute: Ray tasks may prepare it)
            labelled = len(dataset.labelled)
            if labelled < spec.folds:
                raise SearchError(f"{spec.data_folder}: {labelled} labelled cases, fewer than "
                                  f"--folds {spec.folds}")
        check_writable_dir(spec.cache_folder, "--cache")
        self._check_tracking()
        self._engine.check(self._space, self.log)
        return dataset

    def _check_tracking(self) -> None:
        """--mlflow's URI (saved absolute) and --wandb's package and mode."""
        from search import tracking

        if self.spec.mlflow:
            self.spec = dataclasses.replace(self.spec, mlflow=tracking.check_mlflow(self.spec.mlflow))
        if self.spec.wandb:
            tracking.check_wandb(self.spec.wandb)

    def _tracking(self, exp: Experiment) -> None:
        """The MLflow parent run (opened again on --resume), to which the engine logs the trials;
        W&B runs are the engine's (one per trial)."""
        from search import tracking

        spec = self.spec
        if spec.mlflow:
            options = {k: v for k, v in spec.to_dict().items()
                       if k not in ("engine_options", "mlflow", "wandb", "verbose")}
            self._mlflow = tracking.MlflowSearch.open(
                spec.mlflow, exp.local, spec.name,
                {**options, **spec.engine_options, "experiment": exp.location})
            self.log(f"MLflow: run {self._mlflow.parent} at {spec.mlflow} (artifacts in "
                     f"{self._mlflow.artifact_location})")
        if spec.wandb:
            self.log(f"W&B: project {spec.wandb}, {tracking.wandb_mode()} (a run per trial in its "
                     f"folder)")

    def _prepare(self, dataset: Any, exp: Experiment) -> SearchContext:
        """The demo dataset if needed, the preprocessed cache, and the fold's case IDs."""
        from unet3d import labels as labels_mod
        from unet3d.data.discover import discover
        from unet3d.data.preprocess import prepare_dataset
        from unet3d.data.split import kfold

        spec = self.spec
        if dataset is None:
            from unet3d.data.synthetic import write_synthetic_dataset

            self.log(f"writing the demo dataset ({DEMO_CASES} synthetic 64^3 cases, "
                     f"{DEMO_DIFFICULTY}) to {DEFAULT_DATA}")
            write_synthetic_dataset(DEFAULT_DATA, DEMO_CASES, (64, 64, 64), seed=0,
                                    difficulty=DEMO_DIFFICULTY)
            dataset = discover(DEFAULT_DATA)
        prep = prepare_dataset(dataset, spec.cache_folder, self._labels,
                               mapper=self._engine.mapper())
        entries, scheme = prep.entries, prep.scheme
        self._entries = entries
        self.log(f"{dataset.layout} layout: {len(entries)} cases ({len(dataset.labelled)} labelled) "
                 f"-> {spec.cache_folder} ({len(entries) - prep.reused} preprocessed, "
                 f"{prep.reused} reused)")
        self.log(f"labels: {scheme.describe()} ({'--labels' if spec.labels else 'detected'}); "
                 f"objective: {spec.objective}"
                 + (f" and {spec.second_objective} (Pareto front)" if spec.second_objective else ""))
        self._space = _fit_space(self._space, scheme, self.log)
        labelled = [e.case_id for e in entries if e.meta["labelled"]]
        train_ids, val_ids = kfold(labelled, spec.folds, spec.fold, spec.split_seed)
        return SearchContext(space=self._space, data=str(spec.data_folder),
                             cache=str(spec.cache_folder), train_ids=tuple(train_ids),
                             val_ids=tuple(val_ids), max_epochs=spec.max_epochs, seed=spec.seed,
                             fold=spec.fold, folds=spec.folds, split_seed=spec.split_seed,
                             experiment="" if exp.remote else str(exp.local),
                             workers_per_trial=spec.workers_per_trial, objective=spec.objective,
                             second_objective=spec.second_objective,
                             labels=labels_mod.to_config(scheme), in_channels=prep.channels,
                             backend=spec.backend)

    def _fit_budget(self, ctx: SearchContext) -> SearchContext:
        """The memory budget (``search.memory_budget``), the space moved onto the dataset's plan
        for it (``brats``, ``auto``), and a search none of whose configurations fits the budget
        refused before its folder is created.

        Raises:
            SearchError: no sampled configuration of the space fits (naming --memory).
        """
        from search.memory_budget import MemoryGuard

        self._budget = self.memory_budget()
        ctx = self._plan_space(ctx)
        guard = MemoryGuard.for_search(ctx, self._budget, None)
        if guard is not None:
            guard.preflight(seed=self.spec.seed)
        return ctx

    def _plan_space(self, ctx: SearchContext) -> SearchContext:
        """``brats`` and ``auto`` start from the plan (``unet3d.planning.plan``) of the dataset's fingerprint
        for the budget: ``brats`` takes its crop and batch choices from it, ``auto`` is built
        around it (``spaces.presets``)."""
        from spaces.presets import AUTO, SPACES, around_plan, auto_space
        from unet3d.data.fingerprint import load_or_compute
        from unet3d.planning.plan import PlanError, make_plan

        if self.spec.space not in (AUTO, "brats"):
            return ctx
        budget = self._budget
        if budget.gib is None:  # the GPU's memory could not be read (e.g. a CPU head node)
            if self.spec.space != AUTO:  # brats as defined, as before plans existed
                self.log(f"space {self.spec.space}: not moved onto a plan ({budget.source})")
                return ctx
            raise SearchError(f"--space {self.spec.space} plans for a memory budget and there is "
                              f"none ({budget.source})")
        gib = budget.gib
        fp = load_or_compute(self._entries, ctx.scheme)
        try:
            plan = make_plan(fp, memory_gib=gib, device=budget.device)
        except PlanError as e:
            raise SearchError(f"space {self.spec.space}: {e}") from None
        c = plan.config
        space = (auto_space(c) if self.spec.space == AUTO else around_plan(SPACES["brats"], c))
        space = _fit_space(space, ctx.scheme, self.log)
        self.log(f"plan for {gib:.1f} GiB on {budget.device}: crop {'x'.join(map(str, c.data.crop))}, "
                 f"{c.model.depth} levels, {c.model.base_filters} filters, batch "
                 f"{c.train.batch_size}, {c.train.precision} (predicted {plan.estimate.gib:.1f} GiB); "
                 f"space {space.name} {'around' if self.spec.space == AUTO else 'starts from'} it")
        return dataclasses.replace(ctx, space=space)

    def _create(self, exp: Experiment, ctx: SearchContext) -> None:
        from search.finish import save_search
        from search.tb import write_experiment

        exp.local.mkdir(parents=True, exist_ok=True)
        save_search(self.spec, ctx, exp.local, budget=self._budget)
        write_experiment(exp.local, ctx.space, scheme=ctx.scheme, objective=ctx.objective)
        self.log(f"searching space {ctx.space.name!r} ({len(ctx.space.params)} parameters) with "
                 f"{self.spec.engine}: {len(ctx.train_ids)} train / {len(ctx.val_ids)} validation "
                 f"cases -> {exp.location}")

    def _run_engine(self, ctx: SearchContext, exp: Experiment) -> tuple[list[TrialRow], bool]:
        from search.memory_budget import PRUNED_FILE, MemoryGuard

        if self._resume:
            self.log(f"resuming {self.spec.engine} search {exp.location}")
        if self._budget is None:  # a search saved before budgets: this machine's, as if new
            self._budget = self.memory_budget()
        self.log(self._budget.describe())
        guard = MemoryGuard.for_search(ctx, self._budget, exp.local / PRUNED_FILE)
        self._tracking(exp)
        return self._engine.run(ctx, exp, resume=self._resume, log=self.log, guard=guard,
                                mlflow=self._mlflow)

    def memory_budget(self, **read: Any) -> MemoryBudget:
        """The memory budget: --memory, else the default for where the engine runs a trial
        (``unet3d.planning.budget.resolve_budget``; ``read``: its host_gib / gpu_gib, for tests)."""
        from unet3d.planning.budget import resolve_budget

        return resolve_budget(self.spec.memory, self._engine.placement(), **read)


def _demo_written() -> bool:
    """Whether the demo dataset is complete (a run stopped while writing it left fewer cases, or a
    case without all its files: the next run completes it, keeping the complete cases)."""
    from unet3d.data.discover import discover
    from unet3d.errors import UserError

    if not DEFAULT_DATA.is_dir():
        return False
    try:
        return len(discover(DEFAULT_DATA.resolve()).labelled) >= DEMO_CASES
    except UserError:
        return False


def _fit_space(space: Any, scheme: Any, log: Log) -> Any:
    """The space without choices the dataset's label scheme cannot train: a region loss needs
    regions that nest (BraTS 2024 PED's do not), so such a trial would silently train dice_ce.

    Raises:
        SearchError: the space offers nothing else.
    """
    from spaces.space import SpaceError

    if scheme.region_head or not any(p.name == "train.loss" for p in space.params):
        return space
    try:
        fitted = space.without_value("train.loss", "region")
    except SpaceError as e:
        raise SearchError(f"{e} (the regions of {scheme.name} do not nest)") from None
    if fitted != space:
        log(f"space {space.name}: train.loss without 'region' (the regions of {scheme.name} do not nest)")
    return fitted


def _best(summary: dict[str, Any]) -> BestTrial | None:
    if "best_trial" not in summary:
        return None
    export = ExportFolder(summary["export"])
    return BestTrial(trial_id=summary["best_trial"],
                     score=summary.get("best_score", summary["best_dice_mean"]),
                     params=summary["best_params"], config=RunConfig.load(export.config),
                     export=export.path)
