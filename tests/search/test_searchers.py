"""The Ray engine's searchers and schedulers (``--searcher``, ``--scheduler``), the start-up phase
scaled to the budget, where each configuration came from, and the warm start.

Fast: option combinations, the samplers each name builds, the start-up count and the origins of a
searcher driven by hand (Optuna only, no training), the warm start's reading of an experiment.
Slow: each searcher and scheduler runs a tiny search end to end (one shared local Ray).
"""

from __future__ import annotations

import json
import math
import pickle
import random
import re
from pathlib import Path

import pytest
import yaml
from conftest import error_line, run_cli
from tiny_space import SPACE3 as TINY

from search.objective import METRIC
from search.ray_factories import searcher, warm_trials
from search.ray_options import SCHEDULERS, SEARCHERS, RayOptions
from search.results import TrialRow, write_results
from search.spec import SearchError
from spaces.presets import nvidia_point
from spaces.space import space_from_dict

SPACE = {
    "name": "small",
    "base": "cpu-small",
    "params": {
        "model.depth": {"type": "int", "low": 2, "high": 4},
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "data.foreground_ratio": {"type": "float", "low": 0.2, "high": 0.8},
        "train.loss": {"type": "choice", "values": ["dice", "dice_ce"]},
    },
}


def _space():
    return space_from_dict(SPACE, source="test")


def _score(config: dict) -> float:
    """A smooth objective with its optimum at lr 1e-3, depth 3: what a model can learn."""
    return 1.0 - (math.log10(config["train.learning_rate"]) + 3) ** 2 / 4 \
        - 0.1 * abs(config["model.depth"] - 3)


@pytest.mark.parametrize("n, startup", [(1, 2), (8, 2), (12, 3), (20, 5), (40, 10), (200, 10)])
def test_the_start_up_phase_scales_with_the_number_of_trials(n, startup):
    assert RayOptions(num_samples=n).n_startup == startup
    assert RayOptions(num_samples=n, startup_trials=7).n_startup == 7


def test_under_a_budget_the_start_up_follows_the_trials_it_pays_for():
    # 24 trial-epochs pay for 4 trials of 6 epochs (more with early stops): 2 start-up trials, not
    # the 10 that 100 samples would give (then TPE would never propose within the budget).
    assert RayOptions(num_samples=100, max_epochs=6, budget=24).n_startup == 2
    assert RayOptions(num_samples=100, max_epochs=2, budget=40).n_startup == 5
    assert RayOptions(num_samples=100, time_attr="seconds", budget=600).n_startup == 10


def test_the_epoch_budget_counts_each_trial_epoch_once():
    from search.ray_callbacks import EpochBudget

    stop = EpochBudget(6)
    # a's last result passed again when it finishes: once; b continues from a checkpoint at
    # iteration 1 (PBT) and trains its second epoch again: counted.
    results = [("a", 1, False), ("b", 1, False), ("a", 2, False), ("a", 2, True),
               ("b", 2, False), ("b", 2, False)]
    assert [stop(t, {"training_iteration": i, "done": d}) for t, i, d in results] == [False] * 6
    assert stop.spent == 5 and not stop.stop_all()
    assert stop("c", {"training_iteration": 1}) and stop.stop_all()


def test_the_budget_ends_the_search_only_once_the_last_epochs_checkpoint_is_registered():
    from search.ray_callbacks import EpochBudget, checkpoint_saved

    stop = EpochBudget(2, key="exp")
    assert not stop("a", {"training_iteration": 1, "should_checkpoint": True})
    assert stop("a", {"training_iteration": 2, "should_checkpoint": True})
    assert not stop.stop_all()  # (a's epoch-2 checkpoint is still being registered)
    checkpoint_saved("exp", "a")
    assert stop.stop_all()


def test_the_checkpoint_taken_is_the_one_holding_the_best_epoch(tmp_path):
    """A trial folder whose best epoch's checkpoint Ray never registered (it stopped every trial
    while registering it): the folder that holds it is found beside the one Ray names."""
    import numpy as np

    from search.ray_engine import _checkpoint_of_best_epoch

    for i in range(3):
        d = tmp_path / f"checkpoint_{i:06d}"
        d.mkdir()
        np.savez(d / "checkpoint.npz", state=np.array(json.dumps({"epoch": i + 1})))
    history = [{"epoch": e, "val_dice_mean": s} for e, s in ((1, 0.2), (2, 0.5), (3, 0.4))]
    ray_best = str(tmp_path / "checkpoint_000000")
    assert _checkpoint_of_best_epoch(ray_best, history, METRIC) == str(tmp_path / "checkpoint_000001")
    right = str(tmp_path / "checkpoint_000001")
    assert _checkpoint_of_best_epoch(right, history, METRIC) == right
    assert _checkpoint_of_best_epoch(ray_best, [], METRIC) == ray_best


@pytest.mark.parametrize("flags, message", [
    ({"searcher": "hill"}, "--searcher hill: must be one of"),
    ({"scheduler": "sha"}, "--scheduler sha: must be one of"),
    ({"scheduler": "bohb", "searcher": "tpe"}, "--scheduler bohb samples with its own searcher"),
    ({"scheduler": "pbt", "searcher": "gp"}, "without a searcher"),
    ({"searcher": "random", "startup_trials": 3}, "has no start-up phase"),
    ({"startup_trials": 0}, "--startup-trials 0: must be an integer >= 1"),
    ({"scheduler": "bohb", "warm_start": "x"}, "--warm-start"),
    ({"scheduler": "pb2", "warm_start": "x"}, "--warm-start"),
])
def test_combinations_the_libraries_cannot_run_are_one_line(flags, message):
    with pytest.raises(SearchError, match=message):
        RayOptions(**flags)


def test_each_searcher_name_builds_its_optuna_sampler():
    import optuna

    from search.ray_factories import sampler

    classes = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
               "cmaes": optuna.samplers.CmaEsSampler, "gp": optuna.samplers.GPSampler,
               "nsga2": optuna.samplers.NSGAIISampler}
    assert set(classes) == set(SEARCHERS)
    for name, cls in classes.items():
        built = sampler(RayOptions(searcher=name, num_samples=12))
        assert isinstance(built, cls), name
        # Ray Tune pickles the searcher with its sampler (at the start and every checkpoint):
        # Optuna 5.1's NSGA-II holds a lock that cannot be, ours drops it and makes a new one.
        import ray.cloudpickle

        assert type(pickle.loads(ray.cloudpickle.dumps(built))) is type(built)
    tpe = sampler(RayOptions(num_samples=12))
    assert tpe._n_startup_trials == 3 and tpe._multivariate and tpe._constant_liar
    assert RayOptions(scheduler="bohb").sampler == "bohb"
    assert RayOptions(scheduler="pbt").sampler == "random"
    assert set(SCHEDULERS) == {"race", "asha", "hyperband", "bohb", "pbt", "pb2", "median", "none"}


def _drive(alg, n: int) -> list[dict]:
    configs = []
    for i in range(n):
        config = alg.suggest(f"t{i}")
        configs.append(config)
        alg.on_trial_complete(f"t{i}", {METRIC: _score(config), "training_iteration": 1})
    return configs


def test_every_searcher_tries_the_same_first_point_the_plans_on_auto():
    """One home for the first point (spaces.presets.first_point): on ``auto`` the plan's
    configuration (the space is built around it), named "plan", for Optuna's searcher, BOHB, PBT's
    population and Keras Tuner's oracle alike, as for the race; elsewhere NVIDIA's."""
    import keras_tuner as kt

    from search.context import SearchContext
    from search.kt_engine import KerasTunerOptions, _oracle, define_keras_tuner
    from search.ray_factories import population
    from spaces.presets import auto_space, first_point
    from unet3d.config import preset

    auto = auto_space(preset("cpu-small").replace(model={"depth": 3}))
    plan = auto.default_sample()
    assert first_point(auto) == (plan, "plan") and plan != nvidia_point(auto)
    assert first_point(_space()) == (nvidia_point(_space()), "nvidia")
    tpe = searcher(auto, RayOptions(max_concurrent=0))
    assert tpe.suggest("t0") == plan and tpe.origins["t0"] == "plan"
    bohb = searcher(auto, RayOptions(scheduler="bohb", max_concurrent=0))
    assert bohb.suggest("t0") == plan
    assert population(auto, RayOptions(scheduler="pbt", num_samples=3), None)[0] == plan
    hp = kt.HyperParameters()
    define_keras_tuner(auto, hp)
    ctx = SearchContext(space=auto, data="", cache="", train_ids=(), val_ids=(), max_epochs=1)
    oracle = _oracle(ctx, KerasTunerOptions(algorithm="random"), hp, None, print)
    assert oracle._first == plan


def test_nvidia_first_then_the_start_up_then_tpe_proposes(tmp_path):
    space = _space()
    opts = RayOptions(num_samples=12, max_concurrent=0)
    alg = searcher(space, opts, sink=tmp_path / "proposals.json")
    configs = _drive(alg, 12)
    origins = [alg.origins[f"t{i}"] for i in range(12)]
    # The enqueued NVIDIA point counts towards Optuna's start-up (3 for 12 trials).
    assert origins == ["nvidia", "random", "random"] + ["tpe"] * 9
    assert configs[0] == nvidia_point(space)
    assert json.loads((tmp_path / "proposals.json").read_text()) == alg.origins
    # TPE's proposals concentrate near the optimum (lr 1e-3) more than the random start-up's.
    late = [abs(math.log10(c["train.learning_rate"]) + 3) for c in configs[6:]]
    assert sum(late) / len(late) < 0.75


def test_the_warm_start_tells_the_sampler_an_earlier_experiments_trials(tmp_path):
    space = _space()
    rng = random.Random(0)
    rows = []
    for i in range(6):
        params = {"model.depth": rng.randint(2, 4), "train.learning_rate": 10 ** rng.uniform(-4, -2),
                  "data.foreground_ratio": 0.5, "train.loss": "dice"}
        rows.append(TrialRow(trial_id=f"w{i}", params=params, status="completed", epochs=2,
                             best_score=_score(params)))
    rows.append(TrialRow(trial_id="out", params={**rows[0].params, "model.depth": 6},
                         status="completed", epochs=2, best_score=0.9))  # outside the space
    rows.append(TrialRow(trial_id="err", params=rows[1].params, status="error", epochs=0))
    write_results(rows, tmp_path, {})
    warm = warm_trials(str(tmp_path), space, METRIC)
    assert [p for p, _ in warm] == [r.params for r in rows[:6]]
    alg = searcher(space, RayOptions(num_samples=4, max_concurrent=0, warm_start=str(tmp_path)))
    _drive(alg, 2)
    # Six finished trials are known before the first suggestion: past the start-up at once.
    assert [alg.origins[t] for t in ("t0", "t1")] == ["nvidia", "tpe"]
    assert len(alg._ot_study.trials) == 8
    with pytest.raises(SearchError, match="no finished search there"):
        warm_trials(str(tmp_path / "nothing"), space, METRIC)


# -- end to end -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    from unet3d.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("searchers")
    write_synthetic_dataset(root / "data", 8, (32, 32, 32), seed=5)
    (root / "tiny.yaml").write_text(TINY)
    return {"root": root, "data": root / "data", "space": root / "tiny.yaml", "cache": root / "cache"}


@pytest.fixture(scope="module")
def shared_ray():
    """One local Ray for the module's in-process searches (as a notebook would hold one): its
    worker processes, TensorFlow imported, serve every search's trials. Started as a search starts
    its own: loopback only (search.ray_cluster.connect)."""
    import os

    import ray

    from search.ray_cluster import connect, environment
    from search.ray_options import RayOptions

    opts = RayOptions(num_cpus=2)
    with environment(opts):
        assert connect(opts)
        try:
            yield
        finally:
            ray.shutdown()
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)


# Every searcher and every scheduler once (BOHB and PBT/PB2 bring or need their own searcher),
# through the Python API on the shared Ray; random (+ the budget stopper) and NSGA-II (+ none, two
# objectives) run in the CLI tests below, TPE + ASHA in every other search test.
COMBOS = [("cmaes", "median"), ("gp", "hyperband"), (None, "bohb"), (None, "pbt"), (None, "pb2")]


@pytest.mark.slow
@pytest.mark.parametrize("searcher_name, scheduler_name", COMBOS)
def test_each_searcher_and_scheduler_runs_a_tiny_search(tiny_data, shared_ray, searcher_name,
                                                       scheduler_name):
    from search import Search

    options = {"searcher": searcher_name} if searcher_name else {}
    if scheduler_name not in ("pbt", "pb2", "bohb"):  # (side by side: PBT's population; BOHB's
        # bracket, whose second trial, one at a time, never started)
        # One trial at a time: a worker process fewer (see test_search_e2e's ray_search). HyperBand
        # needs it: Ray's synchronous HyperBand processes a bracket when its other trial reports,
        # and a good trial still on its way to PAUSED then is never unpaused (read in Ray 2.60's
        # hyperband.py: it expects at most one RUNNING trial); this test once waited 15 minutes in
        # CI on the slower machine. Each trial then makes its bracket alone.
        options["max_concurrent"] = 1
    n = 3 if scheduler_name == "pbt" else 2  # (PBT exploits the worst of three)
    # (A search under Keras's JAX backend: the warm-start CLI test below; through the API it is
    # the same Search(backend=...) option, and the suite's time is short.)
    backend = "tensorflow"
    result = Search(data=tiny_data["data"], cache=tiny_data["cache"], space=tiny_data["space"],
                    num_samples=n, max_epochs=2, folds=4, out=tiny_data["root"] / "results",
                    name=f"{searcher_name or 'own'}-{scheduler_name}", verbose=0, grace_period=1,
                    scheduler=scheduler_name, backend=backend, **options).run()
    rows = result.trials
    assert len(rows) == n and all(t.status in ("completed", "stopped") for t in rows), rows
    assert result.best is not None and (result.best.export / "model.keras").exists()
    assert result.best.config.train.backend == backend
    for run in result.experiment.glob("trial_*/run"):  # (a stopped trial writes no metrics.json)
        assert json.loads((run / "config.json").read_text())["train"]["backend"] == backend
    assert json.loads((result.best.export / "metrics.json").read_text())["backend"] == backend
    nvidia = nvidia_point(space_from_dict(yaml.safe_load(TINY), source="tiny"))
    first = min(rows, key=lambda t: t.index)
    if scheduler_name not in ("pbt", "pb2"):  # (PBT's rows hold the perturbed, final configs)
        assert first.params == nvidia, "NVIDIA's point is evaluated first"
    if searcher_name in ("cmaes", "gp"):  # (the Optuna searchers say so)
        assert first.proposed_by == "nvidia"
    # (Whether PBT exploits within 3 short trials depends on their timing; the perturbation and the
    # continuation under a perturbed config are tested without Ray below.)


# -- two objectives -------------------------------------------------------------------------------
def test_the_objective_takes_an_optional_second_objective():
    from search.objective import split

    assert split("dice") == ("dice", "")
    assert split("lesionwise,latency") == ("lesionwise", "latency")
    for bad in ("latency", "dice,speed", "dice,latency,params", "dice,"):
        with pytest.raises(ValueError, match="--objective"):
            split(bad)
    with pytest.raises(SearchError, match="optimises one objective"):
        from search import Search

        Search(objective="dice,latency", searcher="cmaes")
    with pytest.raises(SearchError, match="two objectives need --engine ray"):
        from search import Search

        Search(objective="dice,params", engine="keras-tuner")


def _row(tid: str, score: float, latency: float) -> TrialRow:
    return TrialRow(trial_id=tid, params={}, status="completed", epochs=2, best_epoch=2,
                    best_score=score,
                    history=[{"epoch": 1, "latency_s": 99.0}, {"epoch": 2, "latency_s": latency}])


def test_the_pareto_front_is_the_non_dominated_trials_best_first():
    from search.results import mark_pareto

    rows = [_row("a", 0.90, 0.30), _row("b", 0.80, 0.10), _row("c", 0.85, 0.35),  # c: a beats it
            _row("d", 0.70, 0.05), _row("e", 0.80, 0.20), _row("f", float("nan"), 0.01)]
    front = mark_pareto(rows, "latency")
    assert [r.trial_id for r in front] == ["a", "b", "d"]
    assert [r.pareto for r in rows] == [1, 2, 0, 3, 0, 0]
    assert rows[0].second == 0.30  # the latest measured latency
    # Higher is better for throughput: the same trials, the other way round. Throughput is the
    # row's median without epoch 1 (compilation), not its best epoch's: a trial stopped after one
    # epoch would otherwise look several times slower.
    for r in rows:
        r.throughput_vps = -r.history[-1]["latency_s"]
        r.history[0]["throughput_vps"] = -1000.0  # (epoch 1: ignored)
    assert [r.trial_id for r in mark_pareto(rows, "throughput")] == ["a", "b", "d"]
    assert rows[0].second == -0.30


def _search(tiny_data, name: str, *flags: str):
    return run_cli("search", "--data", str(tiny_data["data"]), "--cache", str(tiny_data["cache"]),
                   "--space", str(tiny_data["space"]), "--out", str(tiny_data["root"] / "results"),
                   "--name", name, "--verbose", "0", "--folds", "4", *flags, timeout=600)


@pytest.mark.slow
def test_a_two_objective_search_exports_a_non_dominated_pareto_set(tiny_data):
    from search.finish import load_rows

    r = _search(tiny_data, "pareto", "--objective", "dice,latency", "--num-samples", "4",
                "--max-epochs", "2", "--scheduler", "none", "--searcher", "nsga2",
                "--max-concurrent", "1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = tiny_data["root"] / "results" / "pareto"
    rows = [x for x in load_rows(exp) if not x.pruned]
    origins = [x.proposed_by for x in sorted(rows, key=lambda x: x.index)]
    assert origins[0] == "nvidia" and set(origins) <= {"nvidia", "random", "nsgaii"}, origins
    assert all(math.isfinite(x.second) and x.second > 0 for x in rows)  # measured latency, s
    front = sorted((x for x in rows if x.pareto), key=lambda x: x.pareto)
    assert front and [x.pareto for x in front] == list(range(1, len(front) + 1))
    for x in front:  # nobody beats a front member in both objectives
        assert not any(y.best_score >= x.best_score and y.second <= x.second
                       and (y.best_score > x.best_score or y.second < x.second) for y in rows)
        assert (exp / "pareto" / f"rank_{x.pareto}" / "model.keras").exists()
    for x in rows:
        if not x.pareto:  # and someone beats every other trial
            assert any(y.best_score >= x.best_score and y.second <= x.second for y in front)
    assert front[0].best_score == max(x.best_score for x in rows)
    # The console: the table has the latency and Pareto-rank columns; the front comes after the
    # best trial's parameters (it used to sit between its score and them), each latency with
    # its spread over the timings (median of 10 after warm-up).
    lines = r.stdout.splitlines()
    head = next(ln for ln in lines if ln.startswith("trial "))
    assert head.split()[-len(rows[0].params) - 3:-len(rows[0].params)] == ["vol/s", "latency", "P"]
    last_param = max(i for i, ln in enumerate(lines) if ln.startswith("  model.") or
                     ln.startswith("  train.") or ln.startswith("  data."))
    first_pareto = next(i for i, ln in enumerate(lines) if "Pareto rank 1: trial" in ln)
    assert first_pareto > last_param, r.stdout
    assert re.search(r"Pareto rank 1: trial \w+, [\d.]+, latency [\d.e-]+ \(interquartile range "
                     r"\d+% of it\)", r.stdout), r.stdout
    spreads = [h["latency_spread"] for x in rows for h in x.history if "latency_spread" in h]
    assert spreads and all(0 <= v < 10 for v in spreads)
    # results.csv names the column by its metric, not "second"
    header = (exp / "results.csv").read_text().splitlines()[0].split(",")
    assert "latency_s" in header and "pareto" in header and "second" not in header
    assert "Pareto" in (exp / "report.html").read_text()


@pytest.mark.slow
def test_a_warm_started_search_proposes_from_the_earlier_trials_at_once(tiny_data):
    # (The earlier search trained under JAX: its trials warm-start a TensorFlow one all the same.)
    first = _search(tiny_data, "warm-a", "--num-samples", "1", "--max-epochs", "1", "--backend", "jax")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    warm_a = tiny_data["root"] / "results" / "warm-a"
    assert json.loads((warm_a / "best" / "metrics.json").read_text())["backend"] == "jax"
    # TensorFlow wrote the SavedModel and the ONNX file in a subprocess; the export checked the ONNX
    # file against the JAX model (it would have failed the search otherwise).
    assert (warm_a / "best" / "saved_model" / "saved_model.pb").exists()
    assert (warm_a / "best" / "model.onnx").exists()
    r = _search(tiny_data, "warm-b", "--num-samples", "1", "--max-epochs", "1", "--warm-start",
                str(tiny_data["root"] / "results" / "warm-a"), "--startup-trials", "1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads((tiny_data["root"] / "results" / "warm-b" / "trials.json").read_text())
    # The earlier trial (NVIDIA's point) is the start-up: TPE proposes at once, and NVIDIA's
    # point, already tried, is not tried again (a search without --warm-start starts with it).
    assert [t["proposed_by"] for t in rows["trials"]] == ["tpe"]
    bad = _search(tiny_data, "warm-c", "--warm-start", str(tiny_data["root"] / "nothing"))
    assert "--warm-start" in error_line(bad)
    assert not (tiny_data["root"] / "results" / "warm-c").exists()


@pytest.mark.slow
def test_a_budget_split_between_searching_and_retraining_the_winner(tiny_data):
    """Half of 6 trial-epochs searching, half retraining. The one trial (NVIDIA's point, 4 epochs
    of which the search pays for 3) is stopped by the budget at its third epoch, its best (its
    scores rise: the premise, checked): best/ holds that epoch's weights and says so. (Ray's
    stop-all used to drop that epoch's checkpoint while registering it: best/ was epoch 2.)"""
    import numpy as np

    from unet3d.export.exporter import load_export
    from unet3d.training.checkpoint import model_from_run

    r = _search(tiny_data, "share", "--budget", "6", "--retrain-share", "0.5", "--num-samples", "1",
                "--max-epochs", "4", "--max-concurrent", "1", "--scheduler", "none")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = tiny_data["root"] / "results" / "share"
    trials = json.loads((exp / "trials.json").read_text())
    summary, (t,) = trials["summary"], trials["trials"]
    assert t["proposed_by"] == "nvidia" and t["status"] == "stopped"
    assert summary["trial_epochs_run"] == 3 == t["epochs"]
    scores = [h["val_dice_mean"] for h in t["history"]]
    assert t["best_epoch"] == 3 and scores[2] > max(scores[:2]), scores
    ckpt = Path(t["checkpoint"])
    assert json.loads(str(np.load(ckpt / "checkpoint.npz")["state"]))["epoch"] == 3, ckpt
    model, _, metrics = load_export(exp / "best")
    assert metrics["epoch"] == 3 and metrics["history"][-1]["val_dice_mean"] == pytest.approx(scores[2])
    ref, _, _ = model_from_run(ckpt)
    for a, b in zip(model.get_weights(), ref.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    retrained = json.loads((exp / "retrained" / "all" / "metrics.json").read_text())
    assert len(retrained["history"]) == 3  # the other half, on every labelled case
    assert f"retrained: {exp / 'retrained' / 'all'}" in r.stdout
    bad = _search(tiny_data, "share-bad", "--retrain-share", "0.5")
    assert "--retrain-share 0.5: needs --budget" in error_line(bad)


def test_bohbs_suggestions_are_plain_values_that_results_can_write():
    """ConfigSpace hands numpy scalars; trials.json and RunConfig need Python values."""
    from spaces.presets import get_space

    alg = searcher(get_space("demo"), RayOptions(scheduler="bohb", max_concurrent=0), METRIC)
    configs = [alg.suggest(f"t{i}") for i in range(4)]
    json.dumps(configs)
    assert all(type(v) in (int, float, str, bool) for c in configs for v in c.values())
    assert configs[0] == nvidia_point(get_space("demo"))


# -- population-based training --------------------------------------------------------------------
def test_pbts_perturbations_stay_inside_the_space_and_never_change_the_weights_shapes():
    import random as stdlib_random

    from ray.tune.schedulers.pbt import _explore

    from search.ray_factories import _mutations, _within, check_space, mutable
    from spaces.presets import get_space

    demo = get_space("demo")
    opts = RayOptions(scheduler="pbt")
    mutations = _mutations(demo, opts)
    assert set(mutations) == {"train.learning_rate", "train.loss", "data.foreground_ratio"}
    assert mutations["train.loss"] == ["dice", "dice_ce"]  # a list: PBT shifts along it
    explore = _within(demo)
    stdlib_random.seed(0)
    config = {**nvidia_point(demo), "data.foreground_ratio": 0.8, "train.learning_rate": 3e-3}
    for _ in range(200):  # Ray's own explore step (x0.8 / x1.2, resampling), then ours
        config, _ = _explore(dict(config), mutations, 0.25, (1.2, 0.8), explore)
        assert demo.contains(config), config
    # A loss that switches the model's head (region) is not PBT's to change.
    assert "train.loss" not in {p.name for p in mutable(get_space("brats"))}
    assert set(_mutations(demo, RayOptions(scheduler="pb2"))) == {"train.learning_rate",
                                                                  "data.foreground_ratio"}
    with pytest.raises(SearchError, match="no parameter a running trial may change"):
        check_space(RayOptions(scheduler="pbt"), get_space("nvidia"))


def test_a_trial_continues_under_a_perturbed_config_only_when_pbt_may_change_it():
    from search.trainable import _perturbed
    from unet3d.config import preset

    cfg = preset("cpu-small")
    assert _perturbed(cfg, cfg.replace(train={"learning_rate": 0.01},
                                       data={"noise_std": 0.02, "flip_prob": 0.1}))
    assert not _perturbed(cfg, cfg)
    assert not _perturbed(cfg, cfg.replace(model={"depth": 3}))
    assert not _perturbed(cfg, cfg.replace(train={"learning_rate": 0.01, "batch_size": 4}))


def test_combinations_with_two_objectives_or_a_split_budget_that_cannot_run():
    from search import Search

    for flags, message in (({"scheduler": "pbt"}, "optimises one objective"),
                           ({"warm_start": "x"}, "one score per earlier trial")):
        with pytest.raises(SearchError, match=message):
            Search(objective="dice,latency", **flags)
    with pytest.raises(SearchError, match="less than one epoch"):
        Search(budget=4, retrain_share=0.9)
    for budget in (float("nan"), float("inf"), -4, "12"):  # one line each, never a traceback
        with pytest.raises(SearchError, match="--budget"):
            Search(budget=budget, retrain_share=0.5)
    spec = Search(budget=10, retrain_share=0.33).spec
    assert spec.budget_split() == (7, 3)  # whole epochs retrained, the rest searched


def test_a_warm_start_from_something_that_is_no_search_is_one_line(tmp_path):

    space = _space()
    (tmp_path / "file").write_text("x")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "trials.json").write_text("{not json")
    (tmp_path / "shape").mkdir()
    (tmp_path / "shape" / "trials.json").write_text('{"trials": 5}')
    for bad in ("file", "garbage", "shape", "missing"):
        with pytest.raises(SearchError, match=f"--warm-start {tmp_path / bad}: "):
            warm_trials(str(tmp_path / bad), space, "val_dice_mean")


def test_nsga2s_first_generation_has_at_least_two_members():
    assert RayOptions(searcher="nsga2", startup_trials=1).n_startup == 2
    assert RayOptions(searcher="tpe", startup_trials=1).n_startup == 1


def test_an_option_that_needs_the_space_is_refused_before_anything_is_written(tmp_path):
    r = run_cli("search", "--space", "nvidia", "--scheduler", "pbt", "--out", str(tmp_path),
                "--name", "x", timeout=300)
    assert "--scheduler pbt: the space 'nvidia' has no parameter" in error_line(r)
    assert not (tmp_path / "x").exists()


# -- the Keras backend: the search's, or sampled per trial ------------------------------------------
BACKEND_SPACE = TINY + "  train.backend: {type: choice, values: [tensorflow, jax]}\n"


def test_a_trial_trains_under_the_searchs_backend_unless_the_space_samples_it():
    from search.context import SearchContext

    space = space_from_dict(yaml.safe_load(BACKEND_SPACE), source="test")
    ctx = SearchContext(space=space, data="d", cache="c", train_ids=("a",), val_ids=("b",),
                        max_epochs=2, backend="jax")
    point = nvidia_point(space)
    assert ctx.run_config({**point, "train.backend": "tensorflow"}).train.backend == "tensorflow"
    fixed = space_from_dict(yaml.safe_load(TINY), source="test")
    ctx = SearchContext(space=fixed, data="d", cache="c", train_ids=("a",), val_ids=("b",),
                        max_epochs=2, backend="jax")
    assert ctx.run_config(nvidia_point(fixed)).train.backend == "jax"


def test_keras_tuner_cannot_sample_the_backend(tiny_data, tmp_path):
    from search import Search

    (tmp_path / "space.yaml").write_text(BACKEND_SPACE)
    with pytest.raises(SearchError, match="samples train.backend: a backend per trial needs "
                                          "--engine ray"):
        Search(data=tiny_data["data"], cache=tmp_path / "cache", space=tmp_path / "space.yaml",
               engine="keras-tuner", out=tmp_path / "out", name="x").run()
    assert not (tmp_path / "out" / "x").exists() and not (tmp_path / "cache").exists()
