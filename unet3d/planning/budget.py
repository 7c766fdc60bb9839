"""The memory one training process may use (a search's trial, one Horovod worker, one `train` or
`plan` run), and where it comes from: ``--memory`` when given, else the device's.

The default (:func:`resolve_budget`): on a GPU, the smallest visible GPU's memory times the
process's share of a GPU (``--gpus-per-trial 0.5``: half); on CPUs, this machine's memory divided
by the training processes that run on it at once (:class:`Placement`). Nothing here starts
TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class Placement:
    """Where one training process of a trial runs, for the default budget.

    gpus: its share of a GPU (0: CPU; 0.5: half a GPU; at most 1, a process trains on one GPU);
        None: the GPU if one is visible (Keras Tuner trains in this process, on what TF finds).
    processes: training processes on this machine at once (trials at once x workers per trial).
    what: those processes in words ("2 concurrent trials").
    """

    gpus: float | None
    processes: int = 1
    what: str = "1 trial at a time"


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemoryBudget:
    """The memory one training process may use (``gib``; None: no constraint), the device the
    prediction is for ("cpu" | "gpu"), where it came from (``source``), and whether the user gave
    it (``--memory``)."""

    gib: float | None
    device: str
    source: str
    given: bool = False

    def describe(self) -> str:
        """The log line: ``memory budget: 12.0 GiB per trial (host 24.0 GiB / 2 concurrent trials)``."""
        if self.gib is None:
            return f"memory budget: none ({self.source})"
        return f"memory budget: {self.gib:.1f} GiB per trial ({self.source})"

    def flag(self) -> str:
        """The budget as the option that sets it: ``--memory 2.0 GiB`` or ``the default --memory
        12.0 GiB (host 24.0 GiB / 2 concurrent trials)``."""
        if self.given:
            return f"--memory {self.gib:g} GiB"
        return f"the default --memory {self.gib:.1f} GiB ({self.source})"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MemoryBudget:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def resolve_budget(memory: float | None, placement: Placement, *,
                   host_gib: Callable[[], float] | None = None,
                   gpu_gib: Callable[[], float | None] | None = None) -> MemoryBudget:
    """The budget: ``memory`` (``--memory``, GiB) when given, else the default for ``placement``
    (see the module docstring). ``host_gib`` / ``gpu_gib`` read this machine (default: ``unet3d.runtime``;
    tests pass their own). An unreadable GPU memory means no constraint, and the source says so."""
    from unet3d import runtime

    read_gpu = gpu_gib or runtime.gpu_memory_gib
    gpus, gpu_total = placement.gpus, None
    if gpus is None:  # the GPU if one is visible
        gpu_total = read_gpu()
        gpus = 1.0 if gpu_total is not None else 0.0
    device = "gpu" if gpus > 0 else "cpu"
    if memory is not None:
        return MemoryBudget(gib=float(memory), device=device, source="--memory", given=True)
    if device == "gpu":
        gpu_total = gpu_total if gpu_total is not None else read_gpu()
        if gpu_total is None:
            return MemoryBudget(gib=None, device=device, source="the GPU's memory could not be read "
                                "with nvidia-smi; set a budget with --memory")
        share = min(1.0, gpus)
        what = f"GPU {gpu_total:.1f} GiB" + (f" x {share:g} of a GPU per trial" if share < 1 else "")
        return MemoryBudget(gib=gpu_total * share, device=device, source=what)
    host = (host_gib or runtime.host_memory_gib)()
    n = max(1, placement.processes)
    return MemoryBudget(gib=host / n, device=device, source=f"host {host:.1f} GiB / {placement.what}")
