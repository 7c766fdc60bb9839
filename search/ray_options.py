"""The Ray Tune engine's options (``RayOptions``): every ``search`` flag of the engine, checked before
anything starts, each message naming its flag; which searcher, scheduler and start-up they imply.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from search.spec import SearchError

TIME_ATTRS = ("epochs", "seconds")


SEARCHERS = ("tpe", "random", "cmaes", "gp", "nsga2")


SCHEDULERS = ("race", "asha", "hyperband", "bohb", "pbt", "pb2", "median", "none")


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
