"""The race: how ``search --budget N`` spends N trial-epochs so that its model never loses much to
the default configuration trained alone, and beats it when a better configuration exists.

The default configuration (NVIDIA's point projected into the space, or the plan's for ``auto``)
is the *incumbent*. It trains first. *Challengers* follow: the configurations of a portfolio
learned offline (``spaces/portfolios``), then neighbours of the incumbent (one or two parameters
one step away, :meth:`spaces.space.SearchSpace.neighbour`). Every trial of the race trains
``race_epochs`` epochs under warmup-stable-decay at its constant rate (no cool-down: whatever
wins is continued), validating every epoch; each validation's per-case scores are what the race
compares, always at the same epoch on the same cases:

- a challenger behind the incumbent by more than one standard error of the per-case differences
  at an epoch before its last is stopped (a loser; what it trained is lost);
- at its last epoch a challenger replaces the incumbent only if it is ahead by more than
  ``margin`` on average and a one-sided paired t-test over the cases says so at ``alpha``
  (:func:`compare`); otherwise it is a loser. Noise does not pass this rule; a clearly better
  configuration does.

Challengers may lose at most ``race_share`` of the budget (their epochs, and a dethroned
incumbent's): a challenger starts only when its whole race fits in what is left of that share.
When no challenger can start and none runs, the race ends and its winner is *continued* from its
last checkpoint to the end of the budget (``budget`` minus every epoch the race trained), the last
``cooldown`` of its epochs cooling down: no retraining from scratch, so at worst the search loses
the losers' epochs. It is continued on every labelled case by default (``final_data``): a model
trained alone would use the validation cases too (on hard synthetic data, 18 instead of 24 cases
cost 0.003-0.034 held-out Dice at 24 epochs). The state is plain data (saved with the searcher, and written to
``race.json`` after every change for people and the report).

Engine-neutral: ``search.ray_race`` drives it from Ray Tune's scheduler and searcher.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search.spec import SearchError
from search.storage import ExperimentFolder

RACE_SHARE = 0.15  # of the budget, what challengers may lose by default
FINAL_DATA = ("all", "train")  # what the winner is continued on (RaceSettings.final_data)
CONTINUED = "continued"  # proposed_by of the winner's continuation trial
CONTINUE = "__race_continue"  # the config key that makes a trial the winner's continuation


def continuation_of(config: dict[str, Any]) -> dict[str, Any] | None:
    """The continuation a trial's config carries (None for any other trial): the winner's
    ``trial_id``, ``checkpoint`` (folder) and ``from_epoch``, the ``epochs`` and
    ``cooldown_epochs`` it is continued to, and on what ``data`` ("all" | "train")."""
    spec = config.get(CONTINUE)
    return spec if isinstance(spec, dict) else None


def sampled(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's sampled parameters: its config without the continuation."""
    return {k: v for k, v in config.items() if k != CONTINUE}


@dataclasses.dataclass(frozen=True)
class RaceSettings:
    """How the race spends the budget (checked when built; messages name the CLI flags).

    Attributes:
        budget: trial-epochs of the whole search, the winner's continuation included.
        race_epochs: epochs every trial of the race trains (the incumbent's first epochs).
        race_share: the share of the budget challengers may lose.
        margin: what a challenger must be ahead by, mean over the validation cases.
        alpha: the one-sided paired t-test's level.
        cooldown: the share of the winner's final epochs that cool down.
        final_data: what the winner is continued on: "all" (every labelled case: the validation
            cases too, as the default trained alone would use them; then no held-out cases are
            left to choose a post-processing or an ensemble on) or "train" (the training cases;
            the validation cases stay held out for those choices).
    """

    budget: float
    race_epochs: int = 2
    race_share: float = RACE_SHARE
    margin: float = 0.02
    alpha: float = 0.05
    cooldown: float = 0.2
    final_data: str = "all"

    def __post_init__(self) -> None:
        if self.final_data not in FINAL_DATA:
            raise SearchError(f"--final-data {self.final_data}: must be one of "
                              f"{', '.join(FINAL_DATA)}")
        if not (isinstance(self.race_epochs, int) and not isinstance(self.race_epochs, bool)
                and self.race_epochs >= 1):
            raise SearchError(f"--race-epochs {self.race_epochs}: must be an integer >= 1")
        if not (_number(self.race_share) and 0 <= self.race_share < 1):
            raise SearchError(f"--race-share {self.race_share}: must be a fraction in [0, 1) of "
                              f"--budget")
        if not (_number(self.budget) and self.budget >= self.race_epochs + 1):
            raise SearchError(f"--budget {self.budget}: the race needs at least --race-epochs + 1 "
                              f"= {self.race_epochs + 1} trial-epochs (the default trains "
                              f"{self.race_epochs} and is continued)")
        for name in ("margin", "alpha", "cooldown"):
            v = getattr(self, name)
            if not (_number(v) and 0 <= v < 1):
                raise SearchError(f"race {name}={v!r}: must be in [0, 1)")

    @property
    def lost_budget(self) -> float:
        """Trial-epochs challengers may lose."""
        return self.race_share * self.budget


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A challenger's per-case scores against the incumbent's at one epoch.

    ``mean``, ``se``: the mean and standard error of the per-case differences (challenger -
    incumbent); ``p``: a one-sided paired t-test's p-value for "the challenger is better"
    (1.0 when the differences cannot be tested: fewer than two cases, or all equal and not above
    zero); ``cases``: how many cases both scored.
    """

    epoch: int
    cases: int
    mean: float
    se: float
    p: float

    def better(self, margin: float, alpha: float) -> bool:
        """Ahead by more than ``margin`` and significantly so at ``alpha``."""
        return self.mean > margin and self.p < alpha

    def behind(self) -> bool:
        """Behind by more than one standard error (clearly a worse start)."""
        return self.mean + self.se < 0

    def describe(self) -> str:
        return (f"epoch {self.epoch}: {self.mean:+.4f} +- {self.se:.4f} over {self.cases} cases "
                f"(p {self.p:.3f})")


def compare(challenger: Sequence[float], incumbent: Sequence[float], epoch: int) -> Comparison:
    """The paired comparison of two trials' per-case scores at ``epoch`` (on the cases both
    scored: the first ``min(len)``, as every trial scores the validation cases in one order)."""
    n = min(len(challenger), len(incumbent))
    d = np.asarray(challenger[:n], float) - np.asarray(incumbent[:n], float)
    if n == 0:
        return Comparison(epoch, 0, math.nan, math.nan, 1.0)
    mean = float(d.mean())
    if n < 2:
        return Comparison(epoch, n, mean, math.inf, 1.0)
    se = float(d.std(ddof=1) / math.sqrt(n))
    if se == 0:
        return Comparison(epoch, n, mean, 0.0, 0.0 if mean > 0 else 1.0)
    from scipy import stats

    p = float(stats.t.sf(mean / se, df=n - 1))
    return Comparison(epoch, n, mean, se, p)


@dataclasses.dataclass
class RaceTrial:
    """One trial of the race: its configuration, where it came from, its per-epoch per-case
    validation scores, whether its process still trains (``alive``), the race's verdict on it
    ("" undecided, "lost", "error"; the incumbent is :attr:`Race.incumbent`) and why, and its
    last checkpoint."""

    trial_id: str
    params: dict[str, Any]
    origin: str
    epochs: int = 0
    alive: bool = True
    verdict: str = ""
    why: str = ""
    per_case: dict[int, list[float]] = dataclasses.field(default_factory=dict)
    scores: dict[int, float] = dataclasses.field(default_factory=dict)
    checkpoint: str = ""

    @property
    def racing(self) -> bool:
        """A race trial (not the continuation) with no verdict yet."""
        return self.origin != CONTINUED and not self.verdict


class Race:
    """The race's state and decisions (see the module docstring). An engine calls
    :meth:`next_action` when it can start a trial, :meth:`started` (or :meth:`refused`) after,
    :meth:`result` after every epoch (it stops the trial when that returns False), and
    :meth:`completed` / :meth:`errored` when a trial ends."""

    def __init__(self, settings: RaceSettings, proposals: Proposals, *,
                 sink: Path | None = None) -> None:
        self.settings, self.proposals, self.sink = settings, proposals, sink
        self.trials: dict[str, RaceTrial] = {}
        self.incumbent: str | None = None
        self.events: list[str] = []
        self.continuation: dict[str, Any] | None = None  # the winner's continuation, once started
        self._pending: tuple[dict[str, Any], str] | None = None

    # -- budget ----------------------------------------------------------------------------------

    def _race_trials(self) -> list[RaceTrial]:
        return [t for t in self.trials.values() if t.origin != CONTINUED]

    @property
    def spent(self) -> int:
        """Trial-epochs the race has trained (the continuation's not included)."""
        return sum(t.epochs for t in self._race_trials())

    @property
    def lost(self) -> int:
        """Trial-epochs of race trials that are not the incumbent: losers, a dethroned incumbent,
        challengers still racing. At worst what the search loses to the default trained alone."""
        return sum(t.epochs for t in self._race_trials() if t.trial_id != self.incumbent)

    def _challenger_fits(self) -> bool:
        """Whether one more challenger's whole race fits in what challengers may still lose, and
        leaves the winner at least one epoch of continuation."""
        s, r = self.settings, self.settings.race_epochs
        committed = sum(r - t.epochs for t in self._race_trials()
                        if t.alive and t.trial_id != self.incumbent)
        inc = self.trials[self.incumbent]  # type: ignore[index]
        inc_left = r - inc.epochs if inc.alive else 0
        return (self.lost + committed + r <= s.lost_budget + 1e-9
                and self.spent + committed + inc_left + r <= s.budget - 1 + 1e-9)

    # -- what to start next ----------------------------------------------------------------------

    def next_action(self) -> tuple[str, Any]:
        """("propose", (params, origin)): a trial to start; ("continue", spec): the winner's
        continuation (:meth:`continuation_spec`); ("wait", None): nothing now, ask again after a
        trial reports or ends; ("finished", None): the search is over."""
        if self.continuation is not None:
            return "finished", None
        alive = any(t.alive for t in self.trials.values())
        if self.incumbent is None:
            if not self.trials:
                return "propose", self._proposal()
            if alive:
                return "wait", None
            if any(t.verdict != "error" for t in self.trials.values()):
                return "wait", None  # (cannot happen: a scored trial takes a failed one's place)
            return "finished", None  # every trial failed
        if self._challenger_fits():
            proposal = self._proposal()
            if proposal is not None:
                return "propose", proposal
        if alive or any(t.racing and t.trial_id != self.incumbent for t in self._race_trials()):
            return "wait", None
        return "continue", self.continuation_spec()

    def _proposal(self) -> tuple[dict[str, Any], str] | None:
        if self._pending is None:
            inc = self.trials.get(self.incumbent or "")
            self._pending = self.proposals.next(inc.params if inc is not None else None)
        return self._pending

    def started(self, trial_id: str, params: dict[str, Any], origin: str) -> None:
        """A trial of the last proposal started (``params`` as the engine gives them: a memory
        refusal may have replaced the proposal with another configuration)."""
        self._pending = None
        self.proposals.seen(params)
        self.trials[trial_id] = RaceTrial(trial_id, dict(params), origin)
        if self.incumbent is None:
            self.incumbent = trial_id
            self._event(f"{trial_id} ({origin}) is the incumbent")
        self.save()

    def refused(self) -> None:
        """The engine could not start the last proposal (e.g. over the memory budget): the next
        :meth:`next_action` proposes another."""
        if self._pending is not None:
            self.proposals.seen(self._pending[0])
        self._pending = None

    def continuation_spec(self) -> dict[str, Any]:
        """The winner's continuation: its trial, checkpoint and last epoch, the epochs it is
        continued to (its own plus what the race left of the budget) and the cool-down."""
        inc = self.trials[self.incumbent]  # type: ignore[index]
        left = max(0, int(math.floor(self.settings.budget - self.spent + 1e-9)))
        total = inc.epochs + left
        cooldown = min(max(1, round(self.settings.cooldown * total)), left)
        score = inc.scores.get(max(inc.scores)) if inc.scores else math.nan
        return {"trial_id": inc.trial_id, "checkpoint": inc.checkpoint, "from_epoch": inc.epochs,
                "epochs": total, "cooldown_epochs": cooldown, "data": self.settings.final_data,
                "score": score, "params": dict(inc.params)}

    def continuing(self, trial_id: str, spec: dict[str, Any]) -> None:
        """The continuation started as trial ``trial_id``."""
        self.continuation = {**spec, "continuation_trial": trial_id}
        self.trials[trial_id] = RaceTrial(trial_id, dict(spec["params"]), CONTINUED)
        self._event(f"{spec['trial_id']} wins the race after {self.spent} trial-epochs "
                    f"({self.lost} lost); continued as {trial_id} from epoch "
                    f"{spec['from_epoch']} to {spec['epochs']} (cool-down "
                    f"{spec['cooldown_epochs']})")
        self.save()

    # -- results ---------------------------------------------------------------------------------

    def result(self, trial_id: str, epoch: int, per_case: Sequence[float] | None,
               score: float) -> bool:
        """Records a trial's epoch; False when the trial is to stop (it lost)."""
        t = self.trials.get(trial_id)
        if t is None:
            return True
        t.epochs = max(t.epochs, int(epoch))
        if t.origin != CONTINUED and per_case and math.isfinite(score):
            t.per_case[int(epoch)] = [float(v) for v in per_case]
            t.scores[int(epoch)] = float(score)
            if t.racing and trial_id != self.incumbent and epoch < self.settings.race_epochs:
                c = self._against_incumbent(t)
                if c is not None and c.behind():
                    self._lose(t, f"behind the incumbent at {c.describe()}")
            self._resolve()
        self.save()
        # (a trial judged at its last race epoch ends by itself: stop only those cut short)
        return t.verdict != "lost" or epoch >= self.settings.race_epochs

    def completed(self, trial_id: str, checkpoint: str = "") -> None:
        t = self.trials.get(trial_id)
        if t is None:
            return
        t.alive, t.checkpoint = False, checkpoint or t.checkpoint
        self._resolve()
        self.save()

    def errored(self, trial_id: str) -> None:
        t = self.trials.get(trial_id)
        if t is None:
            return
        t.alive, t.verdict, t.why = False, "error", "failed"
        if trial_id == self.incumbent:
            self._replace_failed_incumbent()
        self._resolve()
        self.save()

    def _against_incumbent(self, t: RaceTrial) -> Comparison | None:
        """``t`` against the incumbent at the latest epoch both have scores for."""
        inc = self.trials[self.incumbent]  # type: ignore[index]
        common = sorted(set(t.per_case) & set(inc.per_case))
        if not common:
            return None
        e = common[-1]
        return compare(t.per_case[e], inc.per_case[e], e)

    def _resolve(self) -> None:
        """Judges every challenger that has finished its race once the incumbent has its last
        epoch too (in the order they started: a promotion makes the next ones race the new
        incumbent); a challenger that ended before its last epoch lost."""
        if self.incumbent is None:
            return
        r = self.settings.race_epochs
        inc = self.trials[self.incumbent]
        if not inc.alive and r not in inc.per_case and inc.verdict != "error":
            # (ended short of its race, e.g. a retried trial that gave up: as if it failed)
            inc.verdict, inc.why = "error", f"ended at epoch {inc.epochs} without a score at epoch {r}"
            self._replace_failed_incumbent()
            if self.incumbent is None:
                return
        for t in self._race_trials():
            if not t.racing or t.trial_id == self.incumbent:
                continue
            inc = self.trials[self.incumbent]
            if r in t.per_case and r in inc.per_case:
                c = compare(t.per_case[r], inc.per_case[r], r)
                if c.better(self.settings.margin, self.settings.alpha):
                    self._promote(t, c)
                else:
                    self._lose(t, f"not better than {inc.trial_id} at the end of its race: "
                                  f"{c.describe()}")
            elif not t.alive and r not in t.per_case:
                self._lose(t, f"ended at epoch {t.epochs} without a score at epoch {r}")

    def _promote(self, t: RaceTrial, c: Comparison) -> None:
        old = self.trials[self.incumbent]  # type: ignore[index]
        old.verdict, old.why = "lost", f"replaced by {t.trial_id}"
        t.why = f"beat {old.trial_id}: {c.describe()}"
        self.incumbent = t.trial_id
        self._event(f"{t.trial_id} ({t.origin}) replaces {old.trial_id} as the incumbent: "
                    f"{c.describe()}")

    def _lose(self, t: RaceTrial, why: str) -> None:
        t.verdict, t.why = "lost", why
        self._event(f"{t.trial_id} ({t.origin}) lost: {why}")

    def _replace_failed_incumbent(self) -> None:
        """The incumbent failed: the race trial with the best score at its latest epoch takes
        its place (none scored yet: the next one to start)."""
        old = self.incumbent
        scored = [t for t in self._race_trials() if t.verdict != "error" and t.scores]
        if not scored:
            alive = [t for t in self._race_trials() if t.alive]
            self.incumbent = alive[0].trial_id if alive else None
            self._event(f"the incumbent {old} failed; "
                        + (f"{self.incumbent} replaces it" if alive else "none left"))
            return
        best = max(scored, key=lambda t: (max(t.scores), t.scores[max(t.scores)]))
        best.verdict, best.why = "", f"replaced the failed {old}"
        self.incumbent = best.trial_id
        self._event(f"the incumbent {old} failed; {best.trial_id} ({best.origin}) replaces it")

    def _event(self, line: str) -> None:
        self.events.append(line)

    # -- record ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"settings": dataclasses.asdict(self.settings), "incumbent": self.incumbent,
                "spent": self.spent, "lost": self.lost, "continuation": self.continuation,
                "events": list(self.events),
                "trials": [{**dataclasses.asdict(t),
                            "per_case": {str(k): v for k, v in t.per_case.items()},
                            "scores": {str(k): v for k, v in t.scores.items()}}
                           for t in self.trials.values()]}

    def save(self) -> None:
        """Writes :meth:`to_dict` to ``sink`` (atomically), when there is one."""
        if self.sink is not None:
            from unet3d.io_utils import atomic_write_json

            atomic_write_json(self.sink, self.to_dict())


def load_race(experiment: Path) -> dict[str, Any] | None:
    """The race record of a search (``race.json``), None for a search that did not race."""
    path = ExperimentFolder(experiment).race
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


class Proposals:
    """What the race tries, in order: the default configuration, then the portfolio's (those
    inside the space), then neighbours of the incumbent at the time (seeded). A configuration is
    proposed once."""

    def __init__(self, space: Any, default: dict[str, Any], portfolio: Sequence[dict[str, Any]],
                 seed: int = 0, default_origin: str = "nvidia") -> None:
        self.space, self.default = space, dict(default)
        self.portfolio = [dict(p) for p in portfolio if space.contains(p)]
        self.default_origin = default_origin
        self.rng = np.random.default_rng(seed)
        self._seen: set[str] = set()
        self._given_default = False
        self._next_portfolio = 0

    @staticmethod
    def _key(params: dict[str, Any]) -> str:
        return json.dumps(params, sort_keys=True, default=str)

    def seen(self, params: dict[str, Any]) -> None:
        self._seen.add(self._key(params))

    def next(self, around: dict[str, Any] | None) -> tuple[dict[str, Any], str] | None:
        if not self._given_default:
            self._given_default = True
            return self.default, self.default_origin
        while self._next_portfolio < len(self.portfolio):
            p = self.portfolio[self._next_portfolio]
            self._next_portfolio += 1
            if self._key(p) not in self._seen:
                return p, "portfolio"
        centre = around if around is not None else self.default
        for _ in range(100):
            p = self.space.neighbour(centre, self.rng)
            if self._key(p) not in self._seen:
                return p, "local"
        return None


Log = Callable[[str], None]
