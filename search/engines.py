"""The registry of engines: the one place that knows which engines exist and what each can do.

An engine is one class (a subclass of ``search.engine.Engine``, the interface) in a module of its
own (``search.ray_engine.RayEngine``, ``search.kt_engine.KerasTunerEngine``); a third engine is one
new module and one entry in :data:`ENGINES`. What the registry says of an engine is data, read
without importing the engine (the search's specification is checked before Ray or Keras Tuner
loads):

- ``options``: the engine's own options a user may pass (``--grace-period``, ``--kt-algorithm``...);
  the engine's options class checks their values.
- ``supports``: what it can do beyond a search of one objective on one machine's folder, by
  :data:`FEATURES` name; the specification refuses a request that needs a feature the engine lacks.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

# What an engine may support (the specification refuses a request that needs one it lacks):
# two objectives, Horovod workers per trial, a W&B run per trial, a --budget in trial-epochs
# (and --retrain-share), a storage URI as --out, a Keras backend sampled per trial.
FEATURES = ("second_objective", "workers_per_trial", "wandb", "budget", "storage_uri",
            "backend_per_trial")


@dataclasses.dataclass(frozen=True)
class EngineInfo:
    """One engine of the registry: its class (``module:Class``), options and features."""

    name: str
    adapter: str
    options: tuple[str, ...]
    supports: frozenset[str]

    def load(self) -> Any:
        """The engine's class (a subclass of ``search.engine.Engine``); imports its module."""
        module, _, cls = self.adapter.partition(":")
        return getattr(importlib.import_module(module), cls)


ENGINES: dict[str, EngineInfo] = {e.name: e for e in (
    EngineInfo("ray", "search.ray_engine:RayEngine",
               ("grace_period", "reduction_factor", "time_attr", "max_trial_seconds",
                "cpus_per_trial", "gpus_per_trial", "max_concurrent", "max_failures", "address",
                "num_cpus", "searcher", "scheduler", "startup_trials", "warm_start", "budget",
                "race_epochs", "race_share", "portfolio", "final_data"),
               frozenset(FEATURES)),
    EngineInfo("keras-tuner", "search.kt_engine:KerasTunerEngine",
               ("algorithm", "reduction_factor", "hyperband_iterations"), frozenset()),
)}


def supporting(feature: str) -> str:
    """``--engine X`` (or ``--engine X or Y``) for the engines that support ``feature``."""
    return "--engine " + " or ".join(n for n, e in ENGINES.items() if feature in e.supports)


def engine_for(spec: Any) -> Any:
    """The engine object (``search.engine.Engine``) of a checked ``search.spec.SearchSpec``."""
    return ENGINES[spec.engine].load()(spec)


