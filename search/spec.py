"""A search's specification as data: what ``Search`` runs and ``search.json`` keeps whole.

Checked when built (each message names the option as the CLI spells it); the engines' own options
are checked by the engine's options class (``RayOptions``, ``KerasTunerOptions``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

from search.engines import ENGINES, supporting
from search.objective import OBJECTIVES, SECOND
from search.storage import is_uri
from unet3d.config import BACKENDS
from unet3d.errors import UserError
from unet3d.training.distributed import JAX_NO_WORKERS

DEFAULT_DATA = Path("data/synthetic-medium")  # the demo dataset, written on first use
DEMO_CASES, DEMO_DIFFICULTY = 24, "medium"  # (hard enough that configurations separate)
DEMO_BUDGET = 24  # trial-epochs of the default job (`make search`), the benchmark's small budget
DEFAULT_OUT = "results"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class SearchError(UserError, ValueError):
    """A search specification that cannot run; the message names the option."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchSpec:
    """Everything a search was asked to do (saved whole in ``search.json``).

    Attributes:
        data: dataset folder; "" = the synthetic demo dataset in ``data/synthetic-medium`` (24 cases
            of medium difficulty, written if absent).
        cache: preprocessed cache; "" = ``DATA/.unet3d-cache`` (shared storage on a cluster).
        space: a named space (demo | brats | nvidia) or a YAML/JSON space file.
        engine: "ray" (Ray Tune + Optuna + ASHA) or "keras-tuner".
        num_samples: trials (Keras Tuner Bayesian: max trials).
        max_epochs: epochs of a trial that is never stopped.
        out: results root (a folder or a storage URI); name: the experiment's folder in it.
        seed: seeds the sampler and every trial's training.
        fold / folds / split_seed: the validation fold of the split by case ID.
        workers_per_trial: Horovod workers per trial (Ray engine).
        verbose: Ray Tune's progress output (0-2).
        objective: what ranks trials, stops them early and picks best/ (``search.objective``):
            "dice" (``val_dice_mean``) or "lesionwise" (``val_lesionwise_dice_mean``); every trial
            trains with it as ``train.objective``.
        second_objective: "" or a second objective (``search.objective.SECOND``: latency, params,
            throughput) searched with the first on a Pareto front (``--objective dice,latency``);
            the first still ranks, stops and picks best/; the front is exported to pareto/.
        labels: the label scheme (``--labels``: a built-in name or a YAML file); "" = detected
            from the data.
        memory: the memory one trial (one training process: a Horovod worker of a trial with
            several) may use, in GiB (``--memory``); a configuration the memory model
            (``unet3d.planning.memory``) predicts over it is never started: it is recorded as pruned
            (``search.memory_budget``). None: the default, the GPU's memory times the trial's share
            of a GPU with ``gpus_per_trial`` > 0, else this machine's memory divided by the
            training processes that run on it at once. A resumed search keeps its budget.
        retrain_share: the share of ``--budget`` (trial-epochs) spent retraining the winner
            instead of searching (``--retrain-share``): the search gets the rest, then the best
            configuration trains that many epochs on every labelled case (``retrain-best``), exported
            to ``retrained/all``; how a user spends a fixed budget. 0: search only.
        backend: the Keras backend trials train on ("tensorflow" or "jax"; ``train.backend``),
            unless the space samples ``train.backend`` itself (Ray engine: each trial then gets a
            worker process of its own).
        mlflow: an MLflow tracking URI (``--mlflow``; "" = none): the search a parent run, each
            trial a child run (``search.tracking``).
        wandb: a W&B project (``--wandb``; "" = none; Ray engine): a W&B run per trial, offline
            unless WANDB_MODE=online.
        engine_options: the engine's own options (``search.engines.ENGINES``' by name).
    """

    data: str = ""
    cache: str = ""
    space: str = "demo"
    engine: str = "ray"
    num_samples: int = 8
    max_epochs: int = 8
    out: str = DEFAULT_OUT
    name: str = ""
    seed: int = 0
    fold: int = 0
    folds: int = 5
    split_seed: int = 0
    workers_per_trial: int = 1
    verbose: int = 1
    objective: str = "dice"
    second_objective: str = ""
    labels: str = ""
    memory: float | None = None
    retrain_share: float = 0.0
    backend: str = "tensorflow"
    mlflow: str = ""
    wandb: str = ""
    engine_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise SearchError(f"--engine {self.engine}: must be one of {', '.join(ENGINES)}")
        for name, low in (("num_samples", 1), ("max_epochs", 1), ("folds", 2), ("seed", 0),
                          ("split_seed", 0), ("workers_per_trial", 1), ("fold", 0), ("verbose", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise SearchError(f"--{name.replace('_', '-')} {v}: must be an integer >= {low}")
        if not isinstance(self.objective, str) or self.objective not in OBJECTIVES:
            raise SearchError(f"--objective {self.objective}: must be one of {', '.join(OBJECTIVES)}")
        if self.second_objective and self.second_objective not in SECOND:
            raise SearchError(f"--objective {self.objective},{self.second_objective}: the second "
                              f"objective must be one of {', '.join(SECOND)}")
        if self.second_objective and not self._supports("second_objective"):
            raise SearchError(f"--objective {self.objective},{self.second_objective}: two "
                              f"objectives need {supporting('second_objective')} (Optuna's "
                              f"multi-objective samplers)")
        if not isinstance(self.labels, str):
            raise SearchError(f"--labels {self.labels!r}: must be a scheme name or a YAML file")
        _check_memory(self.memory)
        if self.fold >= self.folds:
            raise SearchError(f"--fold {self.fold}: must be in 0..{self.folds - 1} "
                              f"(--folds {self.folds})")
        if not _NAME.fullmatch(self.name) or self.name in (".", ".."):
            raise SearchError(f"--name {self.name!r}: must be a plain folder name (letters, digits, "
                              f"'.', '_', '-'; no '/'), created inside --out")
        allowed = ENGINES[self.engine].options
        unknown = sorted(set(self.engine_options) - set(allowed))
        if unknown:
            raise SearchError(f"{', '.join(unknown)}: not an option of the {self.engine} engine "
                              f"(it takes {', '.join(allowed)})")
        _check_share(self.retrain_share, self._supports("budget"), self.engine_options)
        if self.workers_per_trial > 1 and not self._supports("workers_per_trial"):
            raise SearchError(f"--workers-per-trial needs {supporting('workers_per_trial')}")
        if self.backend not in BACKENDS:
            raise SearchError(f"--backend {self.backend}: must be one of {', '.join(BACKENDS)}")
        if self.backend == "jax" and self.workers_per_trial > 1:
            raise SearchError(f"--backend jax with --workers-per-trial {self.workers_per_trial}: "
                              f"{JAX_NO_WORKERS} (under JAX one trial uses all the GPUs it is "
                              f"given)")
        for name in ("mlflow", "wandb"):
            if not isinstance(getattr(self, name), str):
                raise SearchError(f"--{name} {getattr(self, name)!r}: must be a string")
        if self.wandb and not self._supports("wandb"):
            raise SearchError(f"--wandb {self.wandb}: needs {supporting('wandb')} (Ray Tune's W&B "
                              f"callback; the {self.engine} engine tracks with --mlflow)")
        if is_uri(self.out) and not self._supports("storage_uri"):
            raise SearchError(f"--out {self.out}: the {self.engine} engine needs a local or shared "
                              f"folder")

    def _supports(self, feature: str) -> bool:
        return feature in ENGINES[self.engine].supports

    def budget_split(self) -> tuple[float | None, int]:
        """(the search's --budget, the retraining's epochs): with ``retrain_share``, the share of
        the budget in whole epochs for the retraining and the rest for the search; without it,
        the budget as given (None: none) and 0."""
        budget = self.engine_options.get("budget")
        if not self.retrain_share:
            return budget, 0
        return _split(budget, self.retrain_share)

    @property
    def data_folder(self) -> Path:
        return Path(self.data) if self.data else DEFAULT_DATA

    @property
    def cache_folder(self) -> Path:
        from unet3d.api import default_cache

        return (Path(self.cache) if self.cache else default_cache(self.data_folder)).resolve()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str) -> SearchSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - known:
            raise SearchError(f"{source}: 'spec' must be an object with fields {', '.join(sorted(known))}")
        return cls(**d)




def _check_memory(memory: Any) -> None:
    """``--memory``: None (the default budget) or a finite number of GiB > 0."""
    if memory is None:
        return
    number = isinstance(memory, (int, float)) and not isinstance(memory, bool)
    if not number or not math.isfinite(memory) or memory <= 0:
        shown = f"{memory:g}" if number else memory
        raise SearchError(f"--memory {shown}: must be a number of GiB > 0, the memory one trial may "
                          f"use (leave it out for the default)")


def _check_share(share: Any, budget_supported: bool, options: dict[str, Any]) -> None:
    """``--retrain-share``: in [0, 1), and a share of a --budget in trial-epochs."""
    number = isinstance(share, (int, float)) and not isinstance(share, bool)
    if not number or not 0 <= share < 1:
        raise SearchError(f"--retrain-share {share}: must be a fraction in [0, 1) of --budget")
    if share and (not budget_supported or options.get("budget") is None
                  or options.get("time_attr", "epochs") != "epochs"):
        raise SearchError(f"--retrain-share {share:g}: needs --budget in trial-epochs "
                          f"({supporting('budget')}, --time-attr epochs), the compute it splits")
    if share:
        budget = options["budget"]
        if not (isinstance(budget, (int, float)) and not isinstance(budget, bool)
                and math.isfinite(budget) and budget > 0):
            raise SearchError(f"--budget {budget}: must be a positive number of trial-epochs")
        search, retrain = _split(budget, share)
        if retrain < 1 or search < 1:
            raise SearchError(f"--retrain-share {share:g}: of --budget {budget:g} leaves less than "
                              f"one epoch to the search or to the retraining")


def _split(budget: float, share: float) -> tuple[float, int]:
    """(the search's trial-epochs, the retraining's whole epochs) of ``budget``."""
    retrain = round(budget * share)
    return budget - retrain, retrain
