"""Translating a SearchSpace for each engine: Optuna distributions (Ray Tune's OptunaSearch), Ray
Tune's own domains (BOHB, PBT), NVIDIA's point, Keras Tuner HyperParameters. Every point an engine
proposes must lie inside the space and make the configuration it names."""

from __future__ import annotations

import math

import pytest
from space_helpers import assert_config_matches, make_custom_space

from search.kt_engine import define_keras_tuner
from search.ray_factories import to_optuna, to_tune
from spaces.presets import SPACES, nvidia_point
from spaces.space import Choice, Float, Int, SearchSpace
from unet3d.config import preset

optuna = pytest.importorskip("optuna")
kt = pytest.importorskip("keras_tuner")

NAMES = sorted(SPACES) + ["custom"]


@pytest.fixture
def custom_space() -> SearchSpace:
    return make_custom_space()


@pytest.fixture(params=NAMES)
def space(request, custom_space) -> SearchSpace:
    return custom_space if request.param == "custom" else SPACES[request.param]


# ---------------------------------------------------------------------------------------------------
# Optuna


def test_to_optuna_matches_every_param(space):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists = to_optuna(space)
    assert list(dists) == space.names
    for p in space.params:
        d = dists[p.name]
        if isinstance(p, Int):
            assert type(d) is IntDistribution
            assert (d.low, d.high, d.step, d.log) == (p.low, p.high, p.step, p.log)
        elif isinstance(p, Float):
            assert type(d) is FloatDistribution
            assert (d.low, d.high, d.step, d.log) == (p.low, p.high, None, p.log)
        else:
            assert type(d) is CategoricalDistribution
            assert tuple(d.choices) == p.values
            assert [type(c) for c in d.choices] == [type(v) for v in p.values]


def test_to_optuna_kinds_of_the_custom_space(custom_space):
    d = to_optuna(custom_space)
    assert d["train.epochs"].log and d["train.learning_rate"].log
    assert d["model.base_filters"].step == 8
    assert d["data.foreground_ratio"].choices == (0.0, 0.5, 1.0)
    assert d["model.upsampling"].choices == ("nearest",)


def test_optuna_tpe_samples_are_inside_and_valid(space):
    from optuna.samplers import TPESampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=TPESampler(seed=0))
    dists = to_optuna(space)
    seen: dict[str, set] = {n: set() for n in space.names}
    for i in range(200):
        trial = study.ask(dists)
        sample = trial.params
        assert space.contains(sample), (i, sample)
        cfg = space.to_run_config(sample)
        assert_config_matches(space, sample, cfg)
        for n, v in sample.items():
            seen[n].add(v)
        # Some signal so TPE leaves its random start-up phase and models the space.
        lr = sample.get("train.learning_rate", 1e-3)
        study.tell(trial, -abs(math.log10(lr) + 3) + 0.1 * cfg.model.depth)
    for p in space.params:
        if isinstance(p, Choice):
            assert seen[p.name] == set(p.values), p.name
        elif isinstance(p, Float):
            assert len(seen[p.name]) > 50, p.name
        else:
            assert len(seen[p.name]) > 1 or p.low == p.high, p.name


def test_nvidia_point_is_accepted_by_optuna(space):
    """Ray offers NVIDIA's point to OptunaSearch first: its values must fit the distributions."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    point = nvidia_point(space)
    study.enqueue_trial(point)
    trial = study.ask(to_optuna(space))
    assert trial.params == point          # (Optuna samples anew, with a warning, if a value does not fit)


# ---------------------------------------------------------------------------------------------------
# Ray Tune (BOHB's searcher, PBT's population and mutations)


def test_to_tune_domains_of_the_custom_space_keep_bounds_scale_and_values(custom_space):
    """Every Int's domain draws each of its values, the high bound included (Ray's randint and
    lograndint exclude their upper end, qrandint does not), log scales stay log, Float bounds are
    the space's and Choices keep their values."""
    sample = pytest.importorskip("ray.tune.search.sample")

    domains = to_tune(custom_space)
    assert list(domains) == custom_space.names

    def drawn(name: str) -> set:
        return {int(v) for v in domains[name].sample(size=2000, random_state=0)}

    assert drawn("model.depth") == {2, 3, 4, 5, 6}
    assert drawn("model.deep_supervision_heads") == {1, 2, 3, 4}
    assert drawn("data.crop") == set(range(20, 101))
    assert drawn("train.epochs") == set(range(2, 33))
    assert drawn("model.base_filters") == {8, 16, 24, 32}
    assert isinstance(domains["train.epochs"].get_sampler(), sample.LogUniform)
    assert not isinstance(domains["model.depth"].get_sampler(), sample.LogUniform)
    lr, dropout = domains["train.learning_rate"], domains["model.dropout"]
    assert type(lr) is sample.Float and (lr.lower, lr.upper) == (1e-4, 1e-2)
    assert isinstance(lr.get_sampler(), sample.LogUniform)
    assert type(dropout) is sample.Float and (dropout.lower, dropout.upper) == (0.0, 0.5)
    assert not isinstance(dropout.get_sampler(), sample.LogUniform)
    assert domains["model.activation"].categories == ["relu", "elu"]
    assert domains["data.foreground_ratio"].categories == [0.0, 0.5, 1.0]
    assert domains["model.upsampling"].categories == ["nearest"]
    assert domains["model.deep_supervision"].categories == [False, True]


# ---------------------------------------------------------------------------------------------------
# NVIDIA's point


def test_nvidia_point_lies_in_every_space(space):
    point = nvidia_point(space)
    assert list(point) == space.names
    assert space.contains(point)
    assert_config_matches(space, point, space.to_run_config(point))


def test_nvidia_point_in_brats_is_nvidia():
    space = SPACES["brats"]
    point = nvidia_point(space)
    assert point["model.depth"] == 6
    assert point["model.base_filters"] == 32
    assert point["model.norm"] == "instance"
    assert point["train.loss"] == "dice_ce"
    assert point["train.learning_rate"] == pytest.approx(2e-4, rel=1e-12)
    assert point["train.batch_size"] == 2
    assert point["data.crop"] == 128
    assert point["model.deep_supervision"] is False
    assert point["train.precision"] == "fp32"
    cfg = space.to_run_config(point)
    assert cfg.model == preset("nvidia").model                   # the whole network is NVIDIA's
    nv = preset("nvidia").train
    assert (cfg.train.batch_size, cfg.train.learning_rate, cfg.train.loss) == \
        (nv.batch_size, nv.learning_rate, nv.loss)
    assert cfg.data.crop == (128, 128, 128)


def test_nvidia_point_in_other_spaces():
    assert nvidia_point(SPACES["nvidia"]) == {"model.depth": 6}
    assert SPACES["nvidia"].to_run_config(nvidia_point(SPACES["nvidia"])).model == preset("nvidia").model
    demo = nvidia_point(SPACES["demo"])
    # Projected: depth 6 -> 5 (the highest), 32 filters -> 16 (nearest), lr 2e-4 -> 3e-4 (the lowest).
    assert (demo["model.depth"], demo["model.base_filters"], demo["train.learning_rate"]) == (5, 16, 3e-4)
    assert (demo["model.norm"], demo["train.loss"], demo["model.deep_supervision"]) == \
        ("instance", "dice_ce", False)


# ---------------------------------------------------------------------------------------------------
# Keras Tuner


def _kt_types():
    from keras_tuner.engine import hyperparameters as h

    return h


def test_define_keras_tuner_registers_every_param(space):
    h = _kt_types()
    hp = kt.HyperParameters()
    sample = define_keras_tuner(space, hp)
    by_name = {x.name: x for x in hp.space}
    assert list(by_name) == space.names
    for p in space.params:
        x = by_name[p.name]
        if isinstance(p, Int):
            assert type(x) is h.Int
            assert (x.min_value, x.max_value) == (p.low, p.high)
            assert x.sampling == ("log" if p.log else "linear")
            assert x.step == (None if p.log else p.step)
        elif isinstance(p, Float):
            assert type(x) is h.Float
            assert (x.min_value, x.max_value, x.step) == (p.low, p.high, None)
            assert x.sampling == ("log" if p.log else "linear")
        elif len(p.values) == 1:
            assert type(x) is h.Fixed
            assert x.value == p.values[0] and type(x.value) is type(p.values[0])
        elif all(isinstance(v, bool) for v in p.values):
            assert type(x) is h.Boolean
        else:
            assert type(x) is h.Choice
            assert list(x.values) == list(p.values)
            assert [type(v) for v in x.values] == [type(v) for v in p.values]
    # What it returns is the defaults, a point of the space.
    assert list(sample) == space.names
    assert sample == {n: hp.get(n) for n in space.names}
    assert space.contains(sample)


def test_define_keras_tuner_kinds_of_the_custom_space(custom_space):
    h = _kt_types()
    hp = kt.HyperParameters()
    define_keras_tuner(custom_space, hp)
    by_name = {x.name: x for x in hp.space}
    assert type(by_name["model.deep_supervision"]) is h.Boolean
    assert type(by_name["model.upsampling"]) is h.Fixed
    assert by_name["train.epochs"].sampling == "log" and by_name["train.epochs"].step is None
    assert by_name["model.base_filters"].step == 8
    assert by_name["train.learning_rate"].sampling == "log"
    assert list(by_name["data.foreground_ratio"].values) == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("value", [True, False])
def test_keras_tuner_single_boolean_stays_that_boolean(value, tmp_path):
    """A one-value boolean Choice must not become hp.Boolean (which also offers the other value)
    nor hp.Choice (which turns True into 1)."""
    space = SearchSpace(name="t", base="cpu-small",
                        params=(Choice("model.deep_supervision", (value,)), Int("model.depth", 3, 5)))
    values = _oracle_values(space, tmp_path, trials=10)
    assert {v["model.deep_supervision"] for v in values} == {value}
    assert all(type(v["model.deep_supervision"]) is bool for v in values)


def _oracle_values(space: SearchSpace, tmp_path, *, trials: int, oracle: str = "random") -> list[dict]:
    hp = kt.HyperParameters()
    define_keras_tuner(space, hp)
    objective = kt.Objective("val_dice_mean", "max")
    if oracle == "random":
        o = kt.oracles.RandomSearchOracle(objective=objective, max_trials=trials, seed=0,
                                          hyperparameters=hp)
    else:
        o = kt.oracles.HyperbandOracle(objective=objective, max_epochs=9, factor=3, seed=0,
                                       hyperparameters=hp)
    o.verbose = 0
    o._set_project_dir(str(tmp_path), f"p_{oracle}")
    out = []
    for i in range(trials):
        trial = o.create_trial("tuner0")
        if trial.status != "RUNNING":
            break
        values = trial.hyperparameters.values
        out.append({n: values[n] for n in space.names})
        o.update_trial(trial.trial_id, {"val_dice_mean": 0.5 + 0.001 * i})
        o.end_trial(trial)
    return out


@pytest.mark.parametrize("oracle", ["random", "hyperband"])
def test_keras_tuner_samples_are_inside_and_valid(space, oracle, tmp_path):
    values = _oracle_values(space, tmp_path, trials=60, oracle=oracle)
    if space.name == "nvidia":
        assert values == [{"model.depth": 6}]        # one point; the oracle stops after it
    else:
        assert len(values) >= 12
    for sample in values:
        assert space.contains(sample), sample
        assert_config_matches(space, sample, space.to_run_config(sample))
    if oracle == "random" and space.name != "nvidia":
        for p in space.params:
            seen = {v[p.name] for v in values}
            if isinstance(p, Float):
                assert len(seen) == len(values), p.name
            elif isinstance(p, Choice) or (p.high - p.low) // p.step < 4:
                n = len(p.values) if isinstance(p, Choice) else (p.high - p.low) // p.step + 1
                assert len(seen) == n, (p.name, seen)
            else:
                assert len(seen) >= 4, (p.name, seen)
