"""What every trial needs besides its sampled parameters: where the data is and how it is split,
the label scheme it trains and is scored with, and the objective that ranks it."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from search.objective import metric_of
from search.storage import ExperimentFolder
from spaces.space import SearchSpace, space_from_dict
from unet3d import labels as labels_mod
from unet3d.config import RunConfig
from unet3d.data.preprocess import CachedCase, open_cases
from unet3d.labels import LabelScheme

WSD_FLOOR = 0.01  # where a wsd cool-down ends for a configuration whose rate never decays


@dataclasses.dataclass(frozen=True)
class SearchContext:
    """Plain data (it travels to Ray workers and is saved as ``<experiment>/search.json``).

    Attributes:
        space: the search space, parsed once per search (saved as ``SearchSpace.to_dict``).
        data: the dataset folder (as given by the user).
        cache: the preprocessed cache folder every trial reads (shared storage on a cluster).
        train_ids / val_ids: the fold's case IDs.
        max_epochs: epochs a trial trains if no scheduler stops it (the LR schedule's length).
        seed: the training seed every trial uses (same crops and init for a fair comparison).
        fold / folds / split_seed: the split the IDs came from.
        experiment: the experiment folder when it is a filesystem path (local or shared storage):
            trials write their run folder (TensorBoard logs included) straight into it, so
            ``tensorboard --logdir <experiment>`` is live during the search. Empty for cloud URIs
            (trials then write to Ray's trial folder, which Ray uploads).
        workers_per_trial: Horovod workers each trial trains with (Ray actors, one CPU or GPU
            bundle each, in the trial's placement group).
        objective: "dice" | "lesionwise" (``search.objective``): every trial trains with it as
            ``train.objective`` and reports its metric (:attr:`metric`), which the engine ranks by.
        second_objective: "" or the second objective of a two-objective search (latency, params,
            throughput; ``search.objective.SECOND``): trials measure what it needs (latency).
        labels: the dataset's label scheme as a config records it (a built-in name, or a user
            scheme whole: ``unet3d.labels.to_config``); every trial's ``data.labels`` (its model is
            sized to it). None (a search.json written before schemes): the space's own scheme.
        in_channels: the modalities every case has (4; 1 for BraTS MEN-RT's T1c alone): every
            trial's ``model.in_channels``.
        backend: the Keras backend trials train on (``train.backend``) unless the space samples it.
        schedule: the trials' learning-rate schedule (``train.schedule``): "cosine" over
            ``max_epochs``, or "wsd" held at its peak with no cool-down (the race's trials, which
            the race continues from their checkpoints; ``search.race``).
    """

    space: SearchSpace
    data: str
    cache: str
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    max_epochs: int
    seed: int = 0
    fold: int = 0
    folds: int = 5
    split_seed: int = 0
    experiment: str = ""
    workers_per_trial: int = 1
    objective: str = "dice"
    second_objective: str = ""
    labels: str | dict[str, Any] | None = None
    in_channels: int = 4
    backend: str = "tensorflow"
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        metric_of(self.objective)  # raises ValueError naming --objective

    @property
    def metric(self) -> str:
        """The per-epoch metric the engines rank, stop and checkpoint by."""
        return metric_of(self.objective)

    @functools.cached_property
    def scheme(self) -> LabelScheme:
        """The label scheme trials train with (its regions are the results' region columns);
        resolved once per context (a frozen dataclass: the cache is the instance's own)."""
        if self.labels is None:
            return self.space.base_config().scheme
        return labels_mod.resolve(self.labels)

    def run_config(self, sample: dict[str, Any]) -> RunConfig:
        """The trial's RunConfig: the space's config for ``sample``, for this search's label scheme,
        epochs, seed, split and objective (these override whatever the space fixes)."""
        cfg = self.space.to_run_config(sample)
        if self.labels is not None:
            cfg = cfg.with_labels(self.scheme, self.in_channels)
        cfg = cfg.with_epochs(self.max_epochs)
        train = {"seed": self.seed, "objective": self.objective,
                 "latency": self.second_objective == "latency", "schedule": self.schedule,
                 "cooldown_epochs": 0}
        if self.schedule == "wsd" and cfg.train.min_lr_ratio >= 1.0:
            # (NVIDIA's configuration keeps its rate constant: the race's cool-down still anneals)
            train["min_lr_ratio"] = WSD_FLOOR
        if "train.backend" not in sample:  # (a space may search the backend; see SearchSpec)
            train["backend"] = self.backend
        return cfg.replace(train=train,
                           data={"fold": self.fold, "folds": self.folds, "split_seed": self.split_seed})

    def cases(self, ids: tuple[str, ...]) -> list[CachedCase]:
        return open_cases(self.cache, ids)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["space"] = self.space.to_dict()
        d["train_ids"], d["val_ids"] = list(self.train_ids), list(self.val_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchContext:
        d = dict(d)
        d["space"] = space_from_dict(d["space"], source=ExperimentFolder.SEARCH)
        d["train_ids"], d["val_ids"] = tuple(d["train_ids"]), tuple(d["val_ids"])
        return cls(**d)
