"""The private members of Ray and Keras Tuner the search relies on, checked against the installed
versions: a release that renames or drops one fails here, by name, rather than deep in a search.

Where each is used (and why a private member: no public way to do it in these versions):
- search/ray_searcher.py, BudgetedOptunaSearch (Ray's OptunaSearch): its Optuna study and trials,
  to refuse a configuration before Ray sees it, to open the study from the experiment's journal.
- search/ray_callbacks.py, MlflowTrials and the W&B callback (Ray's logger callbacks): MLflow's
  client, to find a resumed trial's run; the W&B logging actors, to wait for a trial's run.
- search/ray_cluster.py: Ray's no-cluster switch, when Ray was imported before the search.
- search/kt_engine.py, _Proposals (Keras Tuner's oracles): a refused configuration marked as tried
  and its Hyperband bracket slot handed back; the Bayesian oracle's random proposal.
"""

from __future__ import annotations

import importlib

import pytest


def _missing(obj: object, names: tuple[str, ...]) -> list[str]:
    return [n for n in names if not hasattr(obj, n)]


def test_rays_optuna_search_keeps_what_the_budgeted_searcher_uses():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    alg = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)},
                       metric="m", mode="max")
    assert not _missing(alg, ("_ot_trials", "_ot_study", "_space", "_completed_trials", "_sampler",
                              "_storage", "_study_name", "_setup_study"))
    assert isinstance(alg._ot_trials, dict) and isinstance(alg._ot_study, optuna.Study)


def test_rays_logger_callbacks_keep_what_ours_use(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.air.integrations.wandb import WandbLoggerCallback

    assert not _missing(MLflowLoggerCallback().mlflow_util, ("_get_client",))
    wandb = WandbLoggerCallback(project="p", mode="offline")
    assert not _missing(wandb, ("_remote_logger_class", "_logger_actor_cls",
                                "_trial_logging_futures", "_signal_logging_actor_stop",
                                "_cleanup_logging_actors"))
    assert not _missing(importlib.import_module("ray.air.util.node"), ("_force_on_current_node",))
    assert not _missing(importlib.import_module("ray._private.ray_constants"), ("ENABLE_RAY_CLUSTER",))


@pytest.mark.parametrize("oracle,members", [
    ("HyperbandOracle", ("_brackets", "_tried_so_far", "_compute_values_hash")),
    ("BayesianOptimizationOracle", ("_random_populate_space", "_tried_so_far",
                                    "_compute_values_hash")),
    ("RandomSearchOracle", ("_tried_so_far", "_compute_values_hash")),
])
def test_keras_tuners_oracles_keep_what_our_proposals_use(oracle, members):
    import keras_tuner as kt

    kwargs = {"max_epochs": 2} if oracle == "HyperbandOracle" else {"max_trials": 2}
    o = getattr(kt.oracles, oracle)(objective=kt.Objective("m", "max"), **kwargs)
    assert not _missing(o, members)
