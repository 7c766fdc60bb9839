"""The private members of Ray and Keras Tuner the search relies on, checked against the installed
versions: a release that renames or drops one fails here, by name, rather than deep in a search;
and each library's are used in one adapter module only (search/ray_adapters.py for Ray,
search/kt_engine.py for Keras Tuner), so a release that breaks one is fixed in one file.

Where each is used (and why a private member: no public way to do it in these versions), all in
search/ray_adapters.py for Ray:
- BudgetedOptunaSearch (Ray's OptunaSearch): its Optuna study and trials, to refuse a configuration
  before Ray sees it, to open the study from the experiment's journal.
- MlflowTrials and the W&B callback (Ray's logger callbacks): MLflow's client, to find a resumed
  trial's run; the W&B logging actors, to wait for a trial's run.
- set_no_cluster: Ray's no-cluster switch, when Ray was imported before the search.
and in search/kt_engine.py, _Proposals (Keras Tuner's oracles): a refused configuration marked as
tried and its Hyperband bracket slot handed back; the Bayesian oracle's random proposal.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPTUNA_SEARCH = ("_ot_trials", "_ot_study", "_space", "_completed_trials", "_sampler", "_storage",
                 "_study_name", "_setup_study")
WANDB = ("_remote_logger_class", "_logger_actor_cls", "_trial_logging_futures",
         "_signal_logging_actor_stop", "_cleanup_logging_actors")
RAY_CORE = ("_get_client", "_force_on_current_node", "ray._private", "ENABLE_RAY_CLUSTER")
KERAS_TUNER = ("_brackets", "_tried_so_far", "_compute_values_hash", "_random_populate_space")
# (the members generic enough that our own classes have them too, e.g. a `_space`, are left out)
ADAPTERS = {"search/ray_adapters.py": ("_ot_trials", "_ot_study", "_completed_trials", "_study_name",
                                      "_setup_study", *WANDB, *RAY_CORE),
            "search/kt_engine.py": KERAS_TUNER}


def _missing(obj: object, names: tuple[str, ...]) -> list[str]:
    return [n for n in names if not hasattr(obj, n)]


def test_rays_optuna_search_keeps_what_the_budgeted_searcher_uses():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    alg = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)},
                       metric="m", mode="max")
    assert not _missing(alg, OPTUNA_SEARCH)
    assert isinstance(alg._ot_trials, dict) and isinstance(alg._ot_study, optuna.Study)


def test_rays_logger_callbacks_keep_what_ours_use(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.air.integrations.wandb import WandbLoggerCallback

    assert not _missing(MLflowLoggerCallback().mlflow_util, ("_get_client",))
    wandb = WandbLoggerCallback(project="p", mode="offline")
    assert not _missing(wandb, WANDB)
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


def _touches(text: str, member: str) -> bool:
    # (an attribute, an import, a getattr's string, a module path)
    return re.search(r"(?<!\w)" + re.escape(member.removeprefix("ray.")) + r"\b", text) is not None


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_each_librarys_private_members_are_used_in_its_adapter_only(adapter):
    """A private member of Ray (Keras Tuner) named above in any other module of the packages fails."""
    files = [f for d in ("search", "spaces", "unet3d") for f in sorted((ROOT / d).rglob("*.py"))]
    assert ROOT / adapter in files
    elsewhere = {(f.relative_to(ROOT).as_posix(), m) for f in files
                 if f.relative_to(ROOT).as_posix() != adapter
                 for m in ADAPTERS[adapter] if _touches(f.read_text(), m)}
    assert not elsewhere, f"used outside {adapter}: {sorted(elsewhere)}"
    assert all(_touches((ROOT / adapter).read_text(), m) for m in ADAPTERS[adapter])


def test_a_local_search_sets_rays_no_cluster_constant_and_restores_it(monkeypatch):
    """A process that imported Ray before the search (a notebook): the module constant, not only
    the environment switch Ray read at its import, says no cluster for a local search; undone after."""
    import ray._private.ray_constants as constants

    from search.ray_cluster import environment
    from search.ray_options import RayOptions

    monkeypatch.setattr(constants, "ENABLE_RAY_CLUSTER", True)
    with environment(RayOptions()):
        assert constants.ENABLE_RAY_CLUSTER is False
    assert constants.ENABLE_RAY_CLUSTER is True
    with environment(RayOptions(address="10.0.0.5:6379")):  # (a real cluster: left alone)
        assert constants.ENABLE_RAY_CLUSTER is True
