"""The Ray Tune engine's parts, built from its options: the Optuna sampler behind Ray's OptunaSearch
(multivariate TPE with a constant liar, random, CMA-ES, GP, NSGA-II), the searcher (NVIDIA's
point first, a warm start, the memory guard), the race's searcher, the scheduler (ASHA,
HyperBand, BOHB, PBT / PB2 with their mutations, the median rule, none), PBT's population, and
the Tuner's TuneConfig and RunConfig.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from search.memory_budget import MemoryGuard
from search.objective import METRIC, MODE, metric_of, second_metric
from search.ray_options import RayOptions
from search.spec import SearchError
from search.storage import ExperimentFolder
from search.trainable import MUTABLE
from spaces.presets import first_point
from spaces.space import Float, Int, SearchSpace

RACE_TRIALS = 10_000  # the race's trials are bounded by its budget (its searcher ends the search)


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Ray's default packs every parameter into the name)."""
    return f"trial_{trial.trial_id}"


def trial_name(trial: Any) -> str:
    """``<creation index>_<trial id>``: Ray's experiment tag starts with the index (1, 2, ...), and
    the trainable reports it, so results keep the order the searcher proposed trials in."""
    index = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return f"{index}_{trial.trial_id}" if index.isdigit() else str(trial.trial_id)


def sampler(opts: RayOptions) -> Any:
    """The Optuna sampler of ``opts.sampler``, seeded, its start-up phase ``opts.n_startup``.

    Raises:
        SearchError: the sampler's library is not installed (one line naming --searcher).
    """
    import optuna

    name, seed, n = opts.sampler, opts.seed, opts.n_startup
    try:
        if name == "tpe":  # multivariate: the parameters interact (crop x batch x filters)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n, multivariate=True,
                                              constant_liar=True)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "cmaes":  # categorical parameters: drawn independently, as Optuna does
            import cmaes  # noqa: F401  (CmaEsSampler needs it; fail here, with one line)

            return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=n,
                                                warn_independent_sampling=False)
        if name == "gp":
            import torch  # noqa: F401  (GPSampler needs PyTorch)

            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n,
                                             deterministic_objective=False)
        from search.ray_adapters import PicklableNSGAII

        return PicklableNSGAII(seed=seed, population_size=n)
    except ImportError as e:
        raise SearchError(f"--searcher {name}: needs the Python package {e.name!r} (pip install "
                          f"'unet3d-search[searchers]')") from None


def race_plan(space: Any, opts: RayOptions) -> tuple[Any, Any]:
    """The race's settings and portfolio for ``space``: ``--portfolio`` (else the space's own,
    ``spaces.portfolio``) and its learned race epochs unless --race-epochs is given."""
    from spaces.portfolio import portfolio_for

    portfolio = portfolio_for(space, opts.portfolio)
    return opts.race_settings(portfolio.race_epochs), portfolio


def race_searcher(space: Any, opts: RayOptions, metric: str, guard: MemoryGuard | None,
                  sink: Path | None, key: str) -> Any:
    """The race's searcher (``search.ray_race``): its proposals (the default, the portfolio,
    neighbours of the incumbent, seeded) go through an Optuna searcher with the memory guard and
    the journal; at most --max-concurrent trials at once."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from search.race import Proposals, Race
    from search.ray_adapters import BudgetedOptunaSearch
    from search.ray_race import RaceSearcher

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings, portfolio = race_plan(space, opts)
    first, origin = first_point(space)
    folder = ExperimentFolder(sink.parent) if sink is not None else None
    inner = BudgetedOptunaSearch(space=to_optuna(space), metric=metric, mode=MODE,
                                 sampler=sampler(opts), guard=guard, n_startup=opts.n_startup,
                                 journal=folder.journal if folder else None,
                                 max_epochs=settings.race_epochs)
    race = Race(settings, Proposals(space, first, portfolio.configs, seed=opts.seed,
                                    default_origin=origin),
                sink=folder.race if folder else None)
    alg = RaceSearcher(race, inner, key, sink)
    return ConcurrencyLimiter(alg, max_concurrent=opts.max_concurrent) if opts.max_concurrent else alg


def searcher(space: Any, opts: RayOptions, metric: str = METRIC,
             guard: MemoryGuard | None = None, *, sink: Path | None = None,
             second: str = "") -> Any:
    """The search algorithm: ``opts.sampler`` over the space, NVIDIA's point first (unless a warm
    start already measured it), at most max_concurrent at once, maximising ``metric`` (the search
    objective's, ``search.objective``); with ``guard``, only configurations predicted to fit its
    memory budget become trials (``search.ray_adapters``). ``sink``: where each suggestion's origin
    is recorded (``proposals.json``), the Optuna study kept beside it (``optuna.log``).
    ``second``: a second objective (``search.objective.SECOND``): the Optuna sampler then searches
    both (multi-objective TPE, NSGA-II, GP, random). None for PBT/PB2 (Ray runs them without a
    searcher)."""
    from ray.tune.search import ConcurrencyLimiter


    if opts.population_based:
        return None
    first, origin = first_point(space)
    if opts.sampler == "bohb":
        from ray.tune.search.bohb import TuneBOHB

        from search.ray_adapters import BudgetedSearcher

        alg = BudgetedSearcher(TuneBOHB(space=TuneBOHB.convert_search_space(to_tune(space)),
                                        metric=metric, mode=MODE,
                                        points_to_evaluate=[first], seed=opts.seed), guard)
    else:
        import optuna

        from search.ray_adapters import BudgetedOptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warm = warm_trials(opts.warm_start, space, metric) if opts.warm_start else []
        known = any(p == first for p, _ in warm)
        metrics, modes = metric, MODE
        if second:
            m2, mode2 = second_metric(second)
            metrics, modes = [metric, m2], [MODE, mode2]
        folder = ExperimentFolder(sink.parent) if sink is not None else None
        alg = BudgetedOptunaSearch(space=to_optuna(space), metric=metrics, mode=modes,
                                   points_to_evaluate=[] if known else [first], first_origin=origin,
                                   sampler=sampler(opts), guard=guard, warm=warm,
                                   n_startup=opts.n_startup, origin_sink=sink,
                                   journal=folder.journal if folder else None,
                                   # (a trial stopped before it is PRUNED; with --time-attr
                                   # seconds trials end at any epoch: none is)
                                   max_epochs=opts.max_epochs if opts.time_attr == "epochs" else 0)
    return ConcurrencyLimiter(alg, max_concurrent=opts.max_concurrent) if opts.max_concurrent else alg


def warm_trials(experiment: str, space: Any, metric: str) -> list[tuple[dict[str, Any], float]]:
    """(params, score) of an earlier experiment's trials that scored ``metric`` and lie in
    ``space`` (a parameter it lacks, or a value outside it, leaves the trial out).

    Raises:
        SearchError: no finished search in ``experiment``.
    """
    from search.finish import load_rows

    try:
        rows = load_rows(Path(experiment))
    except FileNotFoundError:
        raise SearchError(f"--warm-start {experiment}: no finished search there (trials.json "
                          f"missing)") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SearchError(f"--warm-start {experiment}: its trials.json cannot be read "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") \
            from None
    out = []
    for r in rows:
        score = r.best_score if metric_of(r.objective) == metric else None
        params = {p.name: r.params.get(p.name) for p in space.params}
        if score is None or not math.isfinite(score) or not space.contains(params):
            continue
        out.append((params, float(score)))
    return out


def mutable(space: Any) -> list[Any]:
    """The space's parameters a PBT/PB2 trial may change while it runs (:data:`MUTABLE`); the loss
    only when none of its choices changes the model's head (``region`` does)."""
    return [p for p in space.params if p.name in MUTABLE
            and not (p.name == "train.loss" and "region" in getattr(p, "values", ()))]


def _mutations(space: Any, opts: RayOptions) -> dict[str, Any]:
    """PBT's hyperparam_mutations (a list of values per choice, the bounds' domain per number) or
    PB2's hyperparam_bounds ([low, high], numbers only) over :func:`mutable` parameters.

    Raises:
        SearchError: the space has none.
    """

    params = [p for p in mutable(space) if not (opts.scheduler == "pb2" and p.kind == "choice")]
    if not params:
        kind = "numeric " if opts.scheduler == "pb2" else ""
        raise SearchError(f"--scheduler {opts.scheduler}: the space {space.name!r} has no {kind}"
                          f"parameter a running trial may change ({', '.join(MUTABLE)})")
    if opts.scheduler == "pb2":
        return {p.name: [p.low, p.high] for p in params}
    tune_space = to_tune(space)
    return {p.name: list(p.values) if p.kind == "choice" else tune_space[p.name] for p in params}


def _within(space: Any) -> Any:
    """PBT's custom explore: its perturbations (x0.8 / x1.2 of a number) projected back into the
    space (clipped to the bounds, integers on their step), so a perturbed trial stays a
    configuration of the space."""
    bounds = {p.name: p for p in mutable(space) if p.kind != "choice"}

    def explore(config: dict) -> dict:
        for name, p in bounds.items():
            if name in config:
                config[name] = p.project(config[name])
        return config

    return explore


def scheduler(opts: RayOptions, space: Any = None) -> Any:
    """The trial scheduler of ``opts.scheduler``, on epochs (Ray's training_iteration: one report
    per epoch) or wall-clock seconds: ASHA, HyperBand, HyperBand for BOHB, PBT / PB2 (perturbing
    every --grace-period, the space's :data:`MUTABLE` parameters), the median stopping rule
    (after --grace-period), or none (FIFO: every trial runs --max-epochs)."""
    from ray.tune import schedulers as s

    epochs = opts.time_attr == "epochs"
    attr = "training_iteration" if epochs else "time_total_s"
    max_t = opts.max_epochs if epochs else opts.max_trial_seconds
    name = opts.scheduler
    if name == "asha":
        return s.ASHAScheduler(time_attr=attr, max_t=max_t, grace_period=opts.grace_period,
                               reduction_factor=opts.reduction_factor)
    if name == "hyperband":
        return s.HyperBandScheduler(time_attr=attr, max_t=max_t,
                                    reduction_factor=opts.reduction_factor)
    if name == "bohb":
        return s.HyperBandForBOHB(time_attr=attr, max_t=max_t,
                                  reduction_factor=opts.reduction_factor)
    if name == "median":
        return s.MedianStoppingRule(time_attr=attr, grace_period=opts.grace_period,
                                    min_samples_required=2)
    if name == "pbt":
        return s.PopulationBasedTraining(time_attr=attr, perturbation_interval=opts.grace_period,
                                         hyperparam_mutations=_mutations(space, opts),
                                         custom_explore_fn=_within(space))
    if name == "pb2":
        from ray.tune.schedulers.pb2 import PB2  # (not in the package's namespace: needs sklearn)

        return PB2(time_attr=attr, perturbation_interval=opts.grace_period,
                   hyperparam_bounds=_mutations(space, opts))
    return s.FIFOScheduler()


def reuse_actors(space: SearchSpace, opts: RayOptions, backend: str) -> bool:
    """Whether one Ray worker process trains trial after trial (Ray's ``reuse_actors``) rather than
    a process per trial: a later trial skips the process start and TensorFlow's import (about 7
    CPU-s each on the 2-core machine; a 6-trial tiny search took 94 CPU-s with a process per trial,
    58 reused; BENCHMARKS.md) and, on a GPU, CUDA's start. A trial's measured peak stays its own
    (the trainer resets it, unet3d.runtime.reset_peak_memory). Not when the space samples
    ``train.backend`` (Keras's backend is fixed once it is loaded in a process), nor under JAX on a
    GPU (its allocator's peak cannot be reset between trials)."""
    if any(p.name == "train.backend" for p in space.params):
        return False
    return not (backend == "jax" and opts.gpus_per_trial > 0)


def tune_config(space: Any, opts: RayOptions, metric: str = METRIC,
                guard: MemoryGuard | None = None, sink: Path | None = None,
                second: str = "", key: str = "", backend: str = "tensorflow") -> Any:
    """The searcher (with the memory ``guard``, if any) and the scheduler, both maximising the
    objective's ``metric`` (given here, late: the scheduler gets it from the TuneConfig). PBT and
    PB2 get Ray's basic variant generator over a population drawn up front (:func:`population`).
    The race's searcher and scheduler share its state under ``key`` (the experiment). Trials of
    ``backend`` (the search's) share worker processes where they can (:func:`reuse_actors`)."""
    from ray import tune

    reuse = reuse_actors(space, opts, backend)
    if opts.scheduler == "race":
        from search.ray_race import RaceScheduler

        return tune.TuneConfig(
            metric=metric, mode=MODE, search_alg=race_searcher(space, opts, metric, guard, sink, key),
            scheduler=RaceScheduler(key, metric), num_samples=RACE_TRIALS,
            max_concurrent_trials=opts.max_concurrent or None, reuse_actors=reuse,
            trial_dirname_creator=trial_dirname, trial_name_creator=trial_name)
    alg, n = searcher(space, opts, metric, guard, sink=sink, second=second), opts.num_samples
    if alg is None:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        points = population(space, opts, guard)
        alg, n = BasicVariantGenerator(points_to_evaluate=points, max_concurrent=opts.max_concurrent,
                                       random_state=opts.seed), len(points)
    seconds = opts.budget if opts.budget is not None and opts.time_attr == "seconds" else None
    return tune.TuneConfig(
        metric=metric, mode=MODE, search_alg=alg, scheduler=scheduler(opts, space),
        num_samples=n, time_budget_s=seconds, max_concurrent_trials=opts.max_concurrent or None,
        reuse_actors=reuse, trial_dirname_creator=trial_dirname, trial_name_creator=trial_name)


def param_space(space: Any, opts: RayOptions) -> dict[str, Any] | None:
    """Ray's own space, for the searchers that take it from the Tuner (PBT's variant generator);
    the Optuna and BOHB searchers hold theirs."""
    if not opts.population_based:
        return None

    return to_tune(space)


def population(space: Any, opts: RayOptions, guard: MemoryGuard | None) -> list[dict[str, Any]]:
    """PBT's starting population: NVIDIA's point, then configurations drawn at random (seeded),
    --num-samples of them that fit the memory budget; those that do not are recorded as pruned
    (``guard``), as the searchers do."""
    import optuna


    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=opts.seed))
    study.enqueue_trial(first_point(space)[0])
    dists, points, pruned = to_optuna(space), [], []

    def draw() -> tuple[dict[str, Any], dict[str, Any]]:
        params = study.ask(fixed_distributions=dists).params
        return params, params

    while len(points) < opts.num_samples:
        params = draw()[0] if guard is None else guard.screen(pruned, draw)[0]
        if params is None:  # (the guard gave up: saved with why)
            break
        points.append(params)
    if guard is not None and len(points) == opts.num_samples:
        guard.save(pruned)
    return points


def run_config(location: str, opts: RayOptions, metric: str = METRIC,
               callbacks: list[Any] | None = None) -> Any:
    """Where trials go, retries, the one checkpoint kept per trial: its best epoch's (by the
    objective's ``metric``), which is what best/ exports; the search's budget in trial-epochs
    (``--budget`` with --time-attr epochs; in seconds it is the TuneConfig's time budget); and
    ``callbacks`` besides our own (MLflow's, W&B's: ``search.tracking``)."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from search.ray_callbacks import EpochBudget, TrialStatuses

    storage, name = location.rstrip("/").rsplit("/", 1)
    epochs = opts.budget if opts.budget is not None and opts.time_attr == "epochs" else None
    if opts.scheduler == "race":
        epochs = None  # (the race spends its budget exactly; a stopper would hide its last result)
    return tune.RunConfig(
        name=name, storage_path=storage, verbose=opts.verbose,
        stop=EpochBudget(epochs, location) if epochs else None,
        callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), TrialStatuses(location),
                   *(callbacks or [])],
        failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        # PBT/PB2 continue trials from other trials' checkpoints, which must outlive the donor's
        # next epochs (Ray warns below 3). The race compares and continues trials at their last
        # epoch: it keeps the latest.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1) if opts.scheduler == "race" else
        tune.CheckpointConfig(num_to_keep=4 if opts.population_based else 1,
                              checkpoint_score_attribute=metric, checkpoint_score_order=MODE))


def check_space(opts: RayOptions, space: Any) -> None:
    """What the sampler and scheduler need, checked before anything is written: their
    libraries, and PBT/PB2's parameters that a running trial may change.

    Raises:
        SearchError: naming --searcher or --scheduler.
    """
    if opts.sampler == "bohb":
        try:
            import ConfigSpace  # noqa: F401
            from hpbandster.optimizers.config_generators.bohb import BOHB  # noqa: F401
        except ImportError as e:
            raise SearchError(f"--scheduler bohb: needs the Python package {e.name!r} (pip "
                              f"install 'unet3d-search[searchers]')") from None
    elif not opts.population_based:
        sampler(opts)  # (raises when its library is missing)
    if opts.population_based:
        _mutations(space, opts)


# The space in Optuna's and Ray Tune's terms (this engine's translation of spaces.space).


def to_optuna(space: SearchSpace) -> dict[str, Any]:
    """{name: optuna distribution}."""
    from optuna import distributions as d

    out: dict[str, Any] = {}
    for p in space.params:
        if isinstance(p, Int):
            out[p.name] = d.IntDistribution(p.low, p.high, step=p.step, log=p.log)
        elif isinstance(p, Float):
            out[p.name] = d.FloatDistribution(p.low, p.high, log=p.log)
        else:
            out[p.name] = d.CategoricalDistribution(list(p.values))
    return out


def to_tune(space: SearchSpace) -> dict[str, Any]:
    """{name: Ray Tune domain} (``tune.choice`` / ``randint`` / ``qrandint`` / ``uniform``, log
    variants where the parameter is on a log scale)."""
    from ray import tune

    out: dict[str, Any] = {}
    for p in space.params:
        if not p.movable:  # (one value: ConfigSpace, BOHB's, refuses a range with low == high)
            out[p.name] = tune.choice([p.extremes()[0]])
        elif isinstance(p, Int):
            if p.log:
                out[p.name] = tune.lograndint(p.low, p.high + 1)
            elif p.step == 1:
                out[p.name] = tune.randint(p.low, p.high + 1)
            else:
                out[p.name] = tune.qrandint(p.low, p.high, p.step)
        elif isinstance(p, Float):
            out[p.name] = (tune.loguniform if p.log else tune.uniform)(p.low, p.high)
        else:
            out[p.name] = tune.choice(list(p.values))
    return out
