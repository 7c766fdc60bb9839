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
memory budget never becomes a trial (``search.ray_searcher``, ``search.memory_budget``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from search.context import SearchContext
from search.memory_budget import MAX_REFUSALS, MemoryGuard, Placement, load_pruned, with_pruned
from search.objective import DEFAULT, METRIC, MODE, metric_of, second_metric
from search.results import TrialRow, row_from_history
from search.spec import SearchError
from search.storage import ExperimentFolder
from search.trainable import MUTABLE
from unet3d.errors import UserError
from unet3d.text import plural

TIME_ATTRS = ("epochs", "seconds")
RACE_TRIALS = 10_000  # the race's trials are bounded by its budget (its searcher ends the search)
PROPOSALS = "proposals.json"  # trial id -> where its configuration came from (search.ray_searcher)
SEARCHERS = ("tpe", "random", "cmaes", "gp", "nsga2")
SCHEDULERS = ("race", "asha", "hyperband", "bohb", "pbt", "pb2", "median", "none")

_NO_CLUSTER = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's no-cluster mode when "0" (see connect)


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """How Ray Tune runs a search; every field is checked here, before anything starts.

    The fields are the ``search`` command's flags of the same name (``grace_period`` is
    ``--grace-period``), so each message names the flag.
    """

    num_samples: int = 8
    max_epochs: int = 6
    grace_period: int = 1
    reduction_factor: int = 2
    time_attr: str = "epochs"          # "epochs" | "seconds"
    max_trial_seconds: float = 600.0   # ASHA's max_t when time_attr is "seconds"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 2
    max_failures: int = 1
    address: str | None = None         # None: start a local Ray on 127.0.0.1
    num_cpus: int | None = None        # local Ray only
    seed: int = 0
    verbose: int = 1
    searcher: str | None = None        # None: tpe (bohb's own with --scheduler bohb; pbt: random)
    scheduler: str | None = None       # None: race with a --budget in trial-epochs, else asha
    startup_trials: int | None = None  # random start-up trials; None: scaled to num_samples
    warm_start: str | None = None      # an earlier experiment whose trials the sampler is told
    budget: float | None = None        # the whole search's trial-epochs (or seconds); None: none
    race_epochs: int | None = None     # race: epochs each trial races; None: the portfolio's (2)
    race_share: float | None = None    # race: share of the budget challengers may lose (0.15)
    portfolio: str | None = None       # race: a portfolio file, "none", None: the space's own
    final_data: str | None = None      # race: the winner continued on "all" cases (default), "train"

    def __post_init__(self) -> None:
        if self.scheduler is None:  # (resolved once; search.json keeps the options as given)
            race = (self.budget is not None and self.time_attr == "epochs"
                    and self.searcher is None and self.warm_start is None)
            object.__setattr__(self, "scheduler", "race" if race else "asha")
        _at_least("num_samples", self.num_samples, 1)
        _at_least("max_epochs", self.max_epochs, 1)
        _at_least("grace_period", self.grace_period, 1)
        _at_least("reduction_factor", self.reduction_factor, 2)
        _at_least("max_concurrent", self.max_concurrent, 0, "0 means no limit")
        _at_least("max_failures", self.max_failures, 0)
        _at_least("verbose", self.verbose, 0)
        if self.time_attr not in TIME_ATTRS:
            raise SearchError(f"--time-attr {self.time_attr}: must be one of {', '.join(TIME_ATTRS)}")
        budget = self.max_epochs if self.time_attr == "epochs" else self.max_trial_seconds
        if self.grace_period > budget:
            what = "--max-epochs" if self.time_attr == "epochs" else "--max-trial-seconds"
            raise SearchError(f"--grace-period {self.grace_period}: must not exceed {what} {budget:g} "
                              f"(ASHA could never stop a trial)")
        if not _number(self.max_trial_seconds) or self.max_trial_seconds <= 0:
            raise SearchError(f"--max-trial-seconds {self.max_trial_seconds:g}: must be > 0")
        if not _number(self.cpus_per_trial) or self.cpus_per_trial <= 0:
            raise SearchError(f"--cpus-per-trial {self.cpus_per_trial:g}: must be > 0 (a trial needs "
                              f"a CPU share to run)")
        if not _number(self.gpus_per_trial) or self.gpus_per_trial < 0:
            raise SearchError(f"--gpus-per-trial {self.gpus_per_trial:g}: must be >= 0")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise SearchError(f"--gpus-per-trial {self.gpus_per_trial:g}: above 1, a whole number of "
                              f"GPUs")
        if self.num_cpus is not None:
            _at_least("num_cpus", self.num_cpus, 1)
        if self.budget is not None and (not _number(self.budget) or self.budget <= 0):
            raise SearchError(f"--budget {self.budget}: must be > 0 ({self.time_attr} of the whole "
                              f"search)")
        self._check_algorithms()

    def _check_algorithms(self) -> None:
        """The searcher / scheduler combination, as the libraries allow it."""
        if self.searcher is not None and self.searcher not in SEARCHERS:
            raise SearchError(f"--searcher {self.searcher}: must be one of {', '.join(SEARCHERS)}")
        if self.scheduler not in SCHEDULERS:
            raise SearchError(f"--scheduler {self.scheduler}: must be one of {', '.join(SCHEDULERS)}")
        if self.scheduler == "race":
            self._check_race()
        else:
            for name in ("race_epochs", "race_share", "portfolio", "final_data"):
                if getattr(self, name) is not None:
                    raise SearchError(f"--{name.replace('_', '-')}: only with --scheduler race (the "
                                      f"default with a --budget in trial-epochs)")
        if self.scheduler == "bohb" and self.searcher is not None:
            raise SearchError(f"--searcher {self.searcher}: --scheduler bohb samples with its own "
                              f"searcher (TuneBOHB's kernel density model); leave --searcher out")
        if self.population_based and self.searcher not in (None, "random"):
            raise SearchError(f"--searcher {self.searcher}: Ray Tune runs --scheduler "
                              f"{self.scheduler} without a searcher (its population is drawn at "
                              f"random); leave --searcher out")
        if self.startup_trials is not None:
            _at_least("startup_trials", self.startup_trials, 1)
            if self.sampler in ("random", "bohb"):
                raise SearchError(f"--startup-trials {self.startup_trials}: the {self.sampler} "
                                  f"searcher has no start-up phase")
        if self.warm_start is not None and self.sampler == "bohb":
            raise SearchError(f"--warm-start: --scheduler {self.scheduler} brings its own searcher, "
                              f"which cannot be told earlier trials; use an Optuna searcher")
        if self.warm_start is not None and self.population_based:
            raise SearchError(f"--warm-start: --scheduler {self.scheduler} draws its population "
                              f"without a searcher, which cannot be told earlier trials")

    def _check_race(self) -> None:
        """The race spends a --budget in trial-epochs and proposes its own configurations."""
        if self.budget is None or self.time_attr != "epochs":
            raise SearchError("--scheduler race: needs --budget in trial-epochs (--time-attr "
                              "epochs): the race spends it")
        if self.searcher is not None:
            raise SearchError(f"--searcher {self.searcher}: the race proposes its own "
                              f"configurations (the default, the portfolio, neighbours of the "
                              f"incumbent); leave --searcher out or choose another --scheduler")
        if self.warm_start is not None:
            raise SearchError("--warm-start: the race starts from the default and its portfolio; "
                              "use --scheduler asha to start from an earlier search")
        if self.startup_trials is not None:
            raise SearchError("--startup-trials: the race has no random start-up")
        self.race_settings(2)  # (checks --race-epochs, --race-share against --budget)

    def race_settings(self, learned_epochs: int | None = None) -> Any:
        """The race's :class:`search.race.RaceSettings`: --race-epochs (else ``learned_epochs``,
        the portfolio's, else 2) and --race-share (else the race's default) of --budget."""
        from search.race import RACE_SHARE, RaceSettings

        epochs = self.race_epochs if self.race_epochs is not None else (learned_epochs or 2)
        share = self.race_share if self.race_share is not None else RACE_SHARE
        return RaceSettings(budget=self.budget, race_epochs=epochs, race_share=share,
                            final_data=self.final_data or "all")

    @property
    def population_based(self) -> bool:
        """PBT or PB2: Ray runs them without a searcher, over a population drawn up front."""
        return self.scheduler in ("pbt", "pb2")

    def check_objectives(self, second: str) -> None:
        """A second objective needs an Optuna sampler that searches two objectives.

        Raises:
            SearchError: CMA-ES, BOHB or PBT/PB2 with two objectives, or a warm start (its trials
                hold one score).
        """
        if not second:
            return
        if self.scheduler == "race":
            raise SearchError(f"--scheduler race: races one objective; with a second ({second}) "
                              f"use --scheduler asha (the default without --budget)")
        if self.sampler in ("cmaes", "bohb") or self.population_based:
            what = (f"--scheduler {self.scheduler}" if self.sampler == "bohb" or self.population_based
                    else "--searcher cmaes")
            raise SearchError(f"{what}: optimises one objective; with a second ({second}) use "
                              f"--searcher tpe, nsga2, gp or random")
        if self.warm_start is not None:
            raise SearchError(f"--warm-start: tells the sampler one score per earlier trial; a "
                              f"search with a second objective ({second}) cannot start from it")

    def check_space(self, space: Any) -> None:
        """What the sampler and scheduler need, checked before anything is written: their
        libraries, and PBT/PB2's parameters that a running trial may change.

        Raises:
            SearchError: naming --searcher or --scheduler.
        """
        if self.sampler == "bohb":
            try:
                import ConfigSpace  # noqa: F401
                from hpbandster.optimizers.config_generators.bohb import BOHB  # noqa: F401
            except ImportError as e:
                raise SearchError(f"--scheduler bohb: needs the Python package {e.name!r} (pip "
                                  f"install 'unet3d-search[searchers]')") from None
        elif not self.population_based:
            sampler(self)  # (raises when its library is missing)
        if self.population_based:
            _mutations(space, self)

    @property
    def sampler(self) -> str:
        """The searcher that runs: --searcher, else BOHB's own with --scheduler bohb, random for
        PBT/PB2, TPE otherwise."""
        if self.searcher is not None:
            return self.searcher
        return {"bohb": "bohb", "pbt": "random", "pb2": "random"}.get(self.scheduler, "tpe")

    @property
    def expected_trials(self) -> int:
        """The trials this search can run: --num-samples, or fewer when a --budget in trial-epochs
        pays for fewer trials of --max-epochs (a scheduler's early stops make room for more)."""
        if self.budget is not None and self.time_attr == "epochs":
            return max(1, min(self.num_samples, math.ceil(self.budget / self.max_epochs)))
        return self.num_samples

    @property
    def n_startup(self) -> int:
        """Random trials before the model-based sampler proposes (TPE, CMA-ES, GP; NSGA-II's first
        generation): --startup-trials, else a quarter of the trials the search can run, at least 2
        and at most Optuna's default of 10 (which, with 8 trials, would leave TPE nothing to
        propose)."""
        if self.startup_trials is not None:
            # (NSGA-II's population, its first generation, needs two to cross over)
            return max(2, self.startup_trials) if self.searcher == "nsga2" else self.startup_trials
        return min(10, max(2, math.ceil(self.expected_trials / 4)))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _at_least(name: str, value: Any, low: int, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SearchError(f"--{name.replace('_', '-')} {value}: must be an integer >= {low}"
                          + (f" ({note})" if note else ""))


class ClusterError(UserError, RuntimeError):
    """The Ray cluster named by --address cannot be reached or joined."""


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fails fast, with one line, when ``host:port`` does not accept connections (``ray.init`` would
    retry for a minute). "auto" is left to Ray (it reads RAY_ADDRESS or the local cluster file)."""
    import socket

    if address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if address.startswith("ray://"):
        raise ClusterError(f"--address {address}: give the cluster's GCS address HOST:PORT (e.g. "
                           f"10.0.0.5:6379) or 'auto'; Ray Client (ray://) is not supported")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379) or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise ClusterError(f"--address {address}: no Ray cluster answers there "
                           f"({e.strerror or type(e).__name__})") from None


def _is_loopback(address: str) -> bool:
    """True for a cluster on this machine's loopback (127.x.x.x:PORT, localhost:PORT)."""
    host = address.rpartition(":")[0]
    return host == "localhost" or host.startswith("127.")


def cluster_summary() -> str:
    """One line about the connected Ray cluster: alive nodes and their total resources."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = ray.cluster_resources()
    return (f"{len(nodes)} node(s) ({', '.join(sorted({n['NodeManagerAddress'] for n in nodes}))}), "
            f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")


@contextlib.contextmanager
def environment(opts: RayOptions) -> Iterator[None]:
    """Ray's switches for one search, undone afterwards: a search run from a notebook or a test must
    not leave them to later Ray users of the process or to its child processes.

    A local search (or one joining a loopback cluster) needs Ray's no-cluster mode (see
    :func:`connect`). Ray reads that switch once, when it is first imported; when Ray was imported
    before the search (a notebook's own ``import ray``), its module constant is set as well.
    ``verbose`` 0 is silent: Ray Tune's console output prints its "Configuration for experiment"
    box and "View detailed results here" whatever the verbosity; its older reporter, which a
    verbosity of 0 silences, is used then (unless the user chose one with RAY_AIR_NEW_OUTPUT).
    """
    saved = {k: os.environ.get(k) for k in (_NO_CLUSTER, "TUNE_DISABLE_SIGINT_HANDLER",
                                            "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS",
                                            "RAY_AIR_NEW_OUTPUT")}
    if opts.verbose == 0 and saved["RAY_AIR_NEW_OUTPUT"] is None:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    was = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    local = not opts.address or _is_loopback(opts.address)
    if local:
        os.environ[_NO_CLUSTER] = "0"
        if constants is not None:
            constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if local and constants is not None:
            constants.ENABLE_RAY_CLUSTER = was


def connect(opts: RayOptions) -> bool:
    """Connects to ``opts.address``, or starts a local Ray whose every service is on 127.0.0.1.
    Returns True when it started a local Ray (the caller shuts it down), False otherwise.

    Ray 2.60 swaps 127.0.0.1 for the machine's external address and listens on all interfaces,
    unless its "no cluster" mode is on (the switch Ray uses on Windows/macOS, read when Ray is
    imported). A local search needs no cluster, so that mode is set before Ray loads, inherited by
    every Ray process, and checked after start. The same mode lets a driver join a cluster bound to
    loopback (``--address 127.0.0.1:PORT``): otherwise Ray rewrites that address to the external
    one, where nothing listens.
    """
    if not opts.address or _is_loopback(opts.address):
        os.environ[_NO_CLUSTER] = "0"
    import ray

    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, log_to_driver=opts.verbose > 1,
                  configure_logging=True, logging_level="ERROR")
    if opts.address:
        _check_reachable(opts.address)
        try:
            ray.init(address=opts.address, **common)
        except Exception as e:  # noqa: BLE001  (Ray raises ConnectionError, RuntimeError, ...)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ClusterError(f"--address {opts.address}: cannot join the Ray cluster ({msg})") \
                from None
        return False
    # address="local": always a new instance of our own, never a cluster that `ray start` (or
    # RAY_ADDRESS) left on this machine; ray.init() alone would try to join that one.
    ray.init(address="local", num_cpus=opts.num_cpus or os.cpu_count(),
             _node_ip_address="127.0.0.1", **common)
    addresses = {n["NodeManagerAddress"] for n in ray.nodes()}
    if addresses != {"127.0.0.1"}:
        ray.shutdown()
        raise RuntimeError(f"local Ray started on {sorted(addresses)} instead of 127.0.0.1 (was Ray "
                           f"imported before the search set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0?)")
    return True


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Ray's default packs every parameter into the name)."""
    return f"trial_{trial.trial_id}"


def trial_name(trial: Any) -> str:
    """``<creation index>_<trial id>``: Ray's experiment tag starts with the index (1, 2, ...), and
    the trainable reports it, so results keep the order the searcher proposed trials in."""
    index = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return f"{index}_{trial.trial_id}" if index.isdigit() else str(trial.trial_id)


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


def check_resources(opts: RayOptions, workers_per_trial: int, log: Callable[[str], None]) -> None:
    """Fails, before anything is written, when a local Ray lacks the GPUs one trial asks for (Ray
    would wait for them forever). A cluster may still grow (autoscaler): there it is a warning."""
    import ray

    need = opts.gpus_per_trial * (workers_per_trial if workers_per_trial > 1 else 1)
    have = ray.cluster_resources().get("GPU", 0.0)
    if need <= have:
        return
    what = f"--gpus-per-trial {opts.gpus_per_trial:g}"
    if workers_per_trial > 1:
        what += f" with --workers-per-trial {workers_per_trial}"
    if not opts.address:
        raise ClusterError(f"{what}: a trial needs {need:g} GPU(s) and this machine has {have:g}")
    log(f"warning: {what}: a trial needs {need:g} GPU(s), the cluster has {have:g} now; trials wait "
        f"until its autoscaler adds GPU nodes")


def placement(opts: RayOptions, workers_per_trial: int) -> Placement:
    """One training process of a trial, for the default memory budget: its share of a GPU (a
    Horovod worker has a whole one), or on CPUs how many run at once on this machine (trials at
    once, bounded by its CPUs, --max-concurrent and --num-samples, times the workers per trial).
    On a cluster this machine stands for the nodes; give --memory when they differ."""
    n = max(1, workers_per_trial)
    if opts.gpus_per_trial > 0:
        return Placement(gpus=1.0 if n > 1 else min(1.0, opts.gpus_per_trial))
    cpus = opts.num_cpus or os.cpu_count() or 1
    fit = int(cpus // (n if n > 1 else opts.cpus_per_trial))  # a Horovod worker takes one CPU
    at_once = max(1, min(fit, opts.max_concurrent or fit, opts.num_samples))
    what = plural(at_once, "concurrent trial") + (f" x {n} workers" if n > 1 else "")
    return Placement(gpus=0.0, processes=at_once * n, what=what)


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
        from search.ray_searcher import PicklableNSGAII

        return PicklableNSGAII(seed=seed, population_size=n)
    except ImportError as e:
        raise SearchError(f"--searcher {name}: needs the Python package {e.name!r} (pip install "
                          f"'unet3d-search[searchers]')") from None


def default_point(space: Any) -> tuple[dict[str, Any], str]:
    """The configuration every search tries first, and its origin: the plan's for ``auto``
    (the space is built around it), otherwise NVIDIA's projected into the space."""
    from spaces.presets import AUTO
    from spaces.translate import nvidia_point

    if space.name == AUTO:
        return space.default_sample(), "plan"
    return nvidia_point(space), "nvidia"


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
    from search.ray_race import RaceSearcher
    from search.ray_searcher import BudgetedOptunaSearch
    from spaces.translate import to_optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings, portfolio = race_plan(space, opts)
    first, origin = default_point(space)
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
    memory budget become trials (``search.ray_searcher``). ``sink``: where each suggestion's origin
    is recorded (``proposals.json``), the Optuna study kept beside it (``optuna.log``).
    ``second``: a second objective (``search.objective.SECOND``): the Optuna sampler then searches
    both (multi-objective TPE, NSGA-II, GP, random). None for PBT/PB2 (Ray runs them without a
    searcher)."""
    from ray.tune.search import ConcurrencyLimiter

    from spaces.translate import nvidia_point, to_optuna

    if opts.population_based:
        return None
    first = nvidia_point(space)
    if opts.sampler == "bohb":
        from ray.tune.search.bohb import TuneBOHB

        from search.ray_searcher import BudgetedSearcher
        from spaces.translate import to_tune

        alg = BudgetedSearcher(TuneBOHB(space=TuneBOHB.convert_search_space(to_tune(space)),
                                        metric=metric, mode=MODE,
                                        points_to_evaluate=[first], seed=opts.seed), guard)
    else:
        import optuna

        from search.ray_searcher import BudgetedOptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warm = warm_trials(opts.warm_start, space, metric) if opts.warm_start else []
        known = any(p == first for p, _ in warm)
        metrics, modes = metric, MODE
        if second:
            m2, mode2 = second_metric(second)
            metrics, modes = [metric, m2], [MODE, mode2]
        folder = ExperimentFolder(sink.parent) if sink is not None else None
        alg = BudgetedOptunaSearch(space=to_optuna(space), metric=metrics, mode=modes,
                                   points_to_evaluate=[] if known else [first],
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
    from spaces.space import Choice
    from spaces.translate import to_tune

    params = [p for p in mutable(space)
              if not (opts.scheduler == "pb2" and isinstance(p, Choice))]
    if not params:
        kind = "numeric " if opts.scheduler == "pb2" else ""
        raise SearchError(f"--scheduler {opts.scheduler}: the space {space.name!r} has no {kind}"
                          f"parameter a running trial may change ({', '.join(MUTABLE)})")
    if opts.scheduler == "pb2":
        return {p.name: [p.low, p.high] for p in params}
    tune_space = to_tune(space)
    return {p.name: list(p.values) if isinstance(p, Choice) else tune_space[p.name]
            for p in params}


def _within(space: Any) -> Any:
    """PBT's custom explore: its perturbations (x0.8 / x1.2 of a number) clipped to the space's
    bounds, integers rounded, so a perturbed trial stays a configuration of the space."""
    from spaces.space import Choice, Int

    bounds = {p.name: p for p in mutable(space) if not isinstance(p, Choice)}

    def explore(config: dict) -> dict:
        for name, p in bounds.items():
            if name in config:
                v = min(max(config[name], p.low), p.high)
                config[name] = int(round(v)) if isinstance(p, Int) else float(v)
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


@contextlib.contextmanager
def _graceful_ctrl_c() -> Iterator[list[bool]]:
    """Ctrl-C ends the run the way Ray Tune's own handler does (SIGUSR1, which Ray always listens
    to: stop starting trials, save the experiment state, end the trials, return), and the caller
    learns that it happened (Ray's handler tells nobody). A second Ctrl-C interrupts at once."""
    import signal

    seen: list[bool] = []

    def on_sigint(signum: int, frame: Any) -> None:
        if seen:
            raise KeyboardInterrupt
        seen.append(True)
        os.kill(os.getpid(), signal.SIGUSR1)

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def tune_config(space: Any, opts: RayOptions, metric: str = METRIC,
                guard: MemoryGuard | None = None, sink: Path | None = None,
                second: str = "", key: str = "") -> Any:
    """The searcher (with the memory ``guard``, if any) and the scheduler, both maximising the
    objective's ``metric`` (given here, late: the scheduler gets it from the TuneConfig). PBT and
    PB2 get Ray's basic variant generator over a population drawn up front (:func:`population`).
    The race's searcher and scheduler share its state under ``key`` (the experiment)."""
    from ray import tune

    if opts.scheduler == "race":
        from search.ray_race import RaceScheduler

        return tune.TuneConfig(
            metric=metric, mode=MODE, search_alg=race_searcher(space, opts, metric, guard, sink, key),
            scheduler=RaceScheduler(key, metric), num_samples=RACE_TRIALS,
            max_concurrent_trials=opts.max_concurrent or None,
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
        trial_dirname_creator=trial_dirname, trial_name_creator=trial_name)


def _param_space(space: Any, opts: RayOptions) -> dict[str, Any] | None:
    """Ray's own space, for the searchers that take it from the Tuner (PBT's variant generator);
    the Optuna and BOHB searchers hold theirs."""
    if not opts.population_based:
        return None
    from spaces.translate import to_tune

    return to_tune(space)


def population(space: Any, opts: RayOptions, guard: MemoryGuard | None) -> list[dict[str, Any]]:
    """PBT's starting population: NVIDIA's point, then configurations drawn at random (seeded),
    --num-samples of them that fit the memory budget; those that do not are recorded as pruned
    (``guard``), as the searchers do."""
    import optuna

    from spaces.translate import nvidia_point, to_optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=opts.seed))
    study.enqueue_trial(nvidia_point(space))
    dists, points, pruned = to_optuna(space), [], []
    for _ in range(opts.num_samples + MAX_REFUSALS):
        params = study.ask(fixed_distributions=dists).params
        verdict = guard.check(params) if guard is not None else None
        if verdict is None or verdict.fits:
            points.append(params)
            if len(points) == opts.num_samples:
                break
        else:
            guard.refuse(pruned, params, verdict)
    if guard is not None:
        guard.save(pruned, "" if points else guard.give_up(pruned))
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
        t = tune.Tuner(_trainable(ctx, opts), param_space=_param_space(ctx.space, opts),
                       tune_config=tune_config(ctx.space, opts, ctx.metric, guard, sink,
                                               ctx.second_objective, key=location),
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


def horovod_workers_alive(wait_s: float = 10.0) -> int:
    """Horovod worker actors (processes titled ``ray::BaseHorovodWorker``) alive on this machine,
    after giving Ray ``wait_s`` to finish ending those of stopped trials."""
    import time

    import psutil

    deadline = time.monotonic() + wait_s
    while True:
        alive = 0
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any("BaseHorovodWorker" in part for part in (p.info["cmdline"] or [])[:1]):
                    alive += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


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
    from unet3d.checkpoint import CheckpointError, read_state
    from unet3d.folders import RunFolder

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
