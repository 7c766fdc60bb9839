"""The race (search.race) as a state machine on made-up per-case scores: the paired rule keeps the
incumbent against noise and promotes a clearly better challenger, losers stop, the budget is
spent and the winner continued to its end; the portfolio file is validated like a space."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from search.race import CONTINUED, Proposals, Race, RaceSettings, compare
from search.spec import SearchError
from spaces.space import Choice, Float, Int, SearchSpace, SpaceError

SPACE = SearchSpace(name="t", base="cpu-small", params=(
    Int("model.depth", 2, 4), Float("train.learning_rate", 1e-4, 1e-2, log=True),
    Choice("model.norm", ("instance", "batch"))))
DEFAULT = {"model.depth": 3, "train.learning_rate": 1e-3, "model.norm": "instance"}
CASES = 8


def _race(budget=24, r=2, share=0.5, portfolio=(), **kw) -> Race:
    return Race(RaceSettings(budget=budget, race_epochs=r, race_share=share, **kw),
                Proposals(SPACE, DEFAULT, portfolio, seed=0))


def _start(race: Race, tid: str) -> dict:
    action, arg = race.next_action()
    assert action == "propose", (action, arg)
    params, origin = arg
    race.started(tid, params, origin)
    return params


def _train(race: Race, tid: str, scores: np.ndarray, epochs: int) -> bool:
    """Reports ``epochs`` epochs of per-case ``scores`` (epoch e: row e-1); False if stopped."""
    for e in range(1, epochs + 1):
        if not race.result(tid, e, list(scores[e - 1]), float(np.mean(scores[e - 1]))):
            race.completed(tid, f"/ckpt/{tid}")  # (the engine ends a stopped trial)
            return False
    race.completed(tid, f"/ckpt/{tid}")
    return True


def _curves(rng, level: float, noise: float, r: int = 2) -> np.ndarray:
    """Per-case scores rising with the epochs around ``level``, plus per-case noise."""
    base = np.linspace(0.4, 0.8, CASES)
    return np.stack([np.clip(base * (0.8 + 0.1 * e) + level + rng.normal(0, noise, CASES), 0, 1)
                     for e in range(1, r + 1)])


def test_the_paired_comparison_on_known_differences():
    same = compare([0.5, 0.6, 0.7], [0.5, 0.6, 0.7], 1)
    assert same.mean == 0 and same.p == 1.0 and not same.better(0.0, 0.1)
    ahead = compare([0.60, 0.71, 0.79, 0.92], [0.5, 0.6, 0.7, 0.8], 2)
    d = np.array([0.10, 0.11, 0.09, 0.12])
    assert ahead.mean == pytest.approx(d.mean())
    assert ahead.se == pytest.approx(d.std(ddof=1) / 2)
    from scipy import stats

    assert ahead.p == pytest.approx(stats.ttest_1samp(d, 0, alternative="greater").pvalue)
    assert ahead.better(0.01, 0.1) and not ahead.better(0.2, 0.1)
    # One case carries it: a large mean, no significance.
    lucky = compare([1.0, 0.6, 0.69, 0.8], [0.5, 0.6, 0.7, 0.8], 2)
    assert lucky.mean > 0.1 and lucky.p > 0.1 and not lucky.better(0.01, 0.1)
    behind = compare([0.4, 0.5, 0.6], [0.5, 0.6, 0.7], 1)
    assert behind.behind() and not compare([0.49, 0.61, 0.7], [0.5, 0.6, 0.7], 1).behind()
    assert compare([0.5, 0.6, 0.7, 0.9], [0.5, 0.6], 1).cases == 2  # the cases both scored


def test_the_race_keeps_the_incumbent_when_challengers_are_only_noise():
    rng = np.random.default_rng(3)
    race = _race(budget=200, share=0.5)
    truth = _curves(np.random.default_rng(0), 0.0, 0.0)
    _start(race, "default")
    assert _train(race, "default", truth + rng.normal(0, 0.02, truth.shape), 2)
    for k in range(20):  # the same configuration's quality, other noise
        _start(race, f"c{k}")
        _train(race, f"c{k}", truth + rng.normal(0, 0.02, truth.shape), 2)
    assert race.incumbent == "default"
    verdicts = [t.verdict for t in race.trials.values() if t.trial_id != "default"]
    assert verdicts == ["lost"] * 20
    assert all("not better than default" in t.why or "behind" in t.why
               for t in race.trials.values() if t.trial_id != "default")


def test_a_clearly_better_challenger_replaces_the_incumbent_and_is_continued_to_the_budget():
    rng = np.random.default_rng(1)
    race = _race(budget=24, r=2, share=0.25)  # challengers may lose 6 trial-epochs
    _start(race, "default")
    _train(race, "default", _curves(rng, 0.0, 0.01), 2)
    _start(race, "good")
    assert _train(race, "good", _curves(rng, 0.1, 0.01), 2)
    assert race.incumbent == "good" and race.trials["default"].verdict == "lost"
    assert "replaces default as the incumbent" in race.events[-1]
    # The next challengers race the new incumbent; each one's whole race must fit what may be
    # lost: 2 (the dethroned default) + 2 + 2 <= 6, then no more.
    _start(race, "c1")
    _train(race, "c1", _curves(rng, 0.0, 0.01), 2)
    assert race.trials["c1"].verdict == "lost" and "behind" in race.trials["c1"].why
    _start(race, "c2")
    _train(race, "c2", _curves(rng, 0.1, 0.01), 2)  # as good as the incumbent: not better
    assert race.incumbent == "good" and race.trials["c2"].verdict == "lost"
    assert race.lost == 2 + 1 + 2 and race.spent == 7
    action, spec = race.next_action()
    assert action == "continue"
    assert spec["trial_id"] == "good" and spec["checkpoint"] == "/ckpt/good"
    assert spec["from_epoch"] == 2 and spec["epochs"] == 2 + (24 - 7)
    assert spec["cooldown_epochs"] == round(0.2 * spec["epochs"])
    race.continuing("cont", spec)
    assert race.trials["cont"].origin == CONTINUED and race.next_action() == ("finished", None)
    for e in range(3, spec["epochs"] + 1):
        assert race.result("cont", e, None, math.nan)
    race.completed("cont", "/ckpt/cont")
    assert race.spent == 7  # (the continuation is not the race's)
    d = race.to_dict()
    assert d["continuation"]["continuation_trial"] == "cont" and d["incumbent"] == "good"
    assert json.loads(json.dumps(d))["trials"][0]["per_case"]["1"]


def test_challengers_wait_for_the_incumbent_and_the_race_waits_for_its_trials():
    rng = np.random.default_rng(2)
    race = _race(budget=8, r=2, share=0.4)  # room to lose one challenger's race (3.2 >= 2)
    _start(race, "default")
    _start(race, "c1")  # raced alongside the incumbent
    inc, ch = _curves(rng, 0.0, 0.01), _curves(rng, 0.1, 0.01)
    assert race.result("c1", 1, list(ch[0]), float(ch[0].mean()))  # nothing to compare yet
    assert race.result("c1", 2, list(ch[1]), float(ch[1].mean()))
    race.completed("c1", "/ckpt/c1")
    assert race.trials["c1"].verdict == "" and race.next_action()[0] in ("propose", "wait")
    assert race.result("default", 1, list(inc[0]), float(inc[0].mean()))
    assert race.result("default", 2, list(inc[1]), float(inc[1].mean()))
    assert race.incumbent == "c1"  # decided once the incumbent reached epoch 2
    # The dethroned default's 2 epochs are lost: no room for another challenger (2 + 2 > 3.2);
    # its process has not ended yet, so the race waits for it.
    assert race.lost == 2 and race.next_action()[0] == "wait"
    race.completed("default", "/ckpt/default")
    action, spec = race.next_action()
    assert action == "continue" and spec["trial_id"] == "c1"


def test_at_worst_the_race_loses_its_share_and_spends_the_whole_budget():
    rng = np.random.default_rng(4)
    for budget, share in ((24, 0.25), (96, 0.25), (12, 0.1), (5, 0.5)):
        race = _race(budget=budget, r=2, share=share)
        k = 0
        while True:
            action, arg = race.next_action()
            if action != "propose":
                break
            tid = f"t{k}"
            race.started(tid, *arg)
            _train(race, tid, _curves(rng, 0.0 if k == 0 else -0.05, 0.01), 2)
            k += 1
        assert action == "continue", (budget, action)
        assert race.lost <= share * budget
        assert race.spent + (arg["epochs"] - arg["from_epoch"]) == budget
        assert arg["trial_id"] == "t0" and arg["epochs"] > arg["from_epoch"]


def test_a_challenger_starts_only_if_the_winner_keeps_an_epoch_of_continuation():
    """Budget 4, 2 race epochs, share 0.5: after the default's 2 epochs a challenger's race fits
    what may be lost (2 <= 2) but would spend the whole budget (2 + 2 = 4 > 4 - 1), so none starts
    and the default is continued from epoch 2 to 4. Budget 5 leaves room for one (2 + 2 <= 4):
    then the default is continued for the 1 epoch left, from 2 to 3."""
    truth = _curves(np.random.default_rng(6), 0.0, 0.0)
    race = _race(budget=4, r=2, share=0.5)
    _start(race, "default")
    _train(race, "default", truth, 2)
    action, spec = race.next_action()
    assert action == "continue" and spec["trial_id"] == "default"
    assert (spec["from_epoch"], spec["epochs"], spec["cooldown_epochs"]) == (2, 4, 1)

    race = _race(budget=5, r=2, share=0.5)
    _start(race, "default")
    _train(race, "default", truth, 2)
    _start(race, "c1")
    _train(race, "c1", truth + 0.005, 2)  # never behind, never better by the margin: lost at 2
    action, spec = race.next_action()
    assert action == "continue" and (spec["trial_id"], race.spent, race.lost) == ("default", 4, 2)
    assert (spec["from_epoch"], spec["epochs"], spec["cooldown_epochs"]) == (2, 3, 1)


def test_a_failed_incumbent_is_replaced_by_the_best_scored_trial():
    rng = np.random.default_rng(5)
    race = _race(budget=30, share=0.5)
    _start(race, "default")
    _start(race, "c1")
    c1 = _curves(rng, 0.0, 0.01)
    race.result("c1", 1, list(c1[0]), float(c1[0].mean()))
    race.errored("default")
    assert race.incumbent == "c1" and race.trials["default"].verdict == "error"
    race.result("c1", 2, list(c1[1]), float(c1[1].mean()))
    race.completed("c1", "/ckpt/c1")
    assert race.next_action()[0] == "propose"


def test_the_settings_refuse_what_cannot_run():
    with pytest.raises(SearchError, match="--race-epochs 0"):
        RaceSettings(budget=10, race_epochs=0)
    with pytest.raises(SearchError, match="--race-share 1"):
        RaceSettings(budget=10, race_share=1)
    with pytest.raises(SearchError, match="--budget 2: the race needs at least --race-epochs"):
        RaceSettings(budget=2, race_epochs=2)


def test_proposals_come_default_first_then_the_portfolio_then_neighbours():
    inside = {"model.depth": 4, "train.learning_rate": 3e-3, "model.norm": "batch"}
    outside = {"model.depth": 9, "train.learning_rate": 3e-3, "model.norm": "batch"}
    p = Proposals(SPACE, DEFAULT, [inside, outside, DEFAULT], seed=0)
    assert p.next(None) == (DEFAULT, "nvidia")
    p.seen(DEFAULT)
    assert p.next(DEFAULT) == (inside, "portfolio")
    p.seen(inside)
    seen = set()
    for _ in range(10):
        params, origin = p.next(inside)
        assert origin == "local" and SPACE.contains(params)
        moved = [k for k in params if params[k] != inside[k]]
        assert 1 <= len(moved) <= 2
        key = json.dumps(params, sort_keys=True)
        assert key not in seen
        seen.add(key)
        p.seen(params)


def test_a_portfolio_file_is_validated_like_a_space(tmp_path):
    from spaces.portfolio import Portfolio, load_portfolio, portfolio_for

    good = {"configs": [{"model.depth": 4, "train.learning_rate": 3e-3, "model.norm": "batch"}],
            "race": {"epochs": 3}}
    f = tmp_path / "p.json"
    f.write_text(json.dumps(good))
    p = load_portfolio(f, SPACE)
    assert p.configs == tuple(good["configs"]) and p.race_epochs == 3 and p.source == str(f)
    assert portfolio_for(SPACE, "none") == Portfolio()
    assert portfolio_for(SPACE, None) == Portfolio()  # (no portfolio shipped for space "t")
    for bad, match in [
        ("{", "not a readable JSON portfolio"),
        ('{"configs": 3}', "must be an object with a list 'configs'"),
        ('{"configs": [{"model.depth": 9, "train.learning_rate": 0.003, "model.norm": "batch"}]}',
         r"configs\[0\]: model.depth=9 is outside the space \(2..4\)"),
        ('{"configs": [{"model.depth": 3}]}', r"configs\[0\]: parameters \['model.norm', "),
        ('{"configs": [{"model.depth": 3, "train.learning_rate": 0.001, "model.norm": "group"}]}',
         r"model.norm='group' is outside the space \(one of \['instance', 'batch'\]\)"),
        ('{"configs": [], "race": {"epochs": 0}}', "race.epochs=0 must be an integer >= 1"),
    ]:
        f.write_text(bad)
        with pytest.raises(SpaceError, match=match) as e:
            load_portfolio(f, SPACE)
        assert str(e.value).startswith(f"{f}: ")
    with pytest.raises(SpaceError, match="portfolio file not found"):
        load_portfolio(tmp_path / "missing.json", SPACE)
    # The shipped default keeps the configurations inside a narrowed space and drops the rest.
    f.write_text(json.dumps({"configs": [good["configs"][0], {**good["configs"][0],
                                                               "model.depth": 9}]}))
    assert len(load_portfolio(f, SPACE, strict=False).configs) == 1
