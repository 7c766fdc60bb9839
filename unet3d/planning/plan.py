"""Planning: a training configuration for a dataset (its fingerprint) and a memory budget on a device.

The rules follow nnU-Net v2's planner (experiment_planning), on our isotropic-pooling network:

- the crop starts at the median brain box, each edge rounded to a multiple of the network's
  downsampling; the number of levels gives a bottleneck edge of 4-8 voxels (at most 6 levels,
  NVIDIA's network);
- while the predicted peak (:mod:`unet3d.planning.memory`) exceeds the budget with a batch of 2, the edge
  largest relative to the median box shrinks by one downsampling step (so the crop is not
  necessarily cubic); when even 32-voxel edges do not fit, the batch drops to 1, then the filters
  halve (32 -> 16 -> 8), each time from the full crop again;
- with memory to spare, the batch grows while it fits, up to 5% of the dataset's brain-box voxels
  per step (nnU-Net's cap, so a step never sees most of a small dataset) and at least 2.

The prediction is kept under ``PLAN_HEADROOM`` of the budget: the memory model's worst
under-prediction is about 10% (BENCHMARKS.md, "Training memory" and "GPU memory"), and a plan must
fit. Architecture, loss and schedule come from the base
configuration (NVIDIA's by default); precision is auto (mixed bfloat16 or float16 on a GPU, float32 on a CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unet3d import labels as labels_mod
from unet3d.config import PRESETS, RunConfig
from unet3d.errors import UserError
from unet3d.folders import RunFolder
from unet3d.planning import memory

PLAN_HEADROOM = 0.85
MAX_LEVELS = 6
MIN_EDGE = 32
MAX_BATCH = 16
FILTERS = (32, 16, 8)


class PlanError(UserError, ValueError):
    """No configuration fits the budget, or a planning option is invalid."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """A planned configuration with its prediction.

    Attributes:
        config: the run configuration (``train --config`` reads it).
        estimate: its predicted peak memory on ``device``.
        budget_gib: the memory it was planned for.
        device: "cpu" or "gpu".
        fingerprint: the dataset fingerprint it was planned from.
        steps: what the planner changed on the way, in order (one line each).
        probe: what ``plan --probe`` measured (see :func:`probe`), or None.
    """

    config: RunConfig
    estimate: memory.MemoryEstimate
    budget_gib: float
    device: str
    fingerprint: dict[str, Any]
    steps: tuple[str, ...] = ()
    probe: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The config file ``--out`` writes: the RunConfig sections plus a ``plan`` section (the
        prediction, the budget, the planner's steps and the fingerprint) that training ignores."""
        return {**self.config.to_dict(),
                "plan": {"device": self.device, "memory_gib": self.budget_gib,
                         "predicted": self.estimate.to_dict(), "steps": list(self.steps),
                         "probe": self.probe, "fingerprint": self.fingerprint}}


def levels_for(crop: tuple[int, ...]) -> int:
    """Resolution levels that leave a bottleneck edge of at least 4 voxels (at most MAX_LEVELS)."""
    return max(2, min(MAX_LEVELS, int(math.log2(min(crop) / 4)) + 1))


def _round_crop(target: tuple[float, ...]) -> tuple[tuple[int, int, int], int]:
    """The crop nearest ``target`` whose edges are multiples of its own downsampling, and its levels."""
    crop = tuple(max(MIN_EDGE, int(round(t))) for t in target)
    for _ in range(3):  # levels and rounding depend on each other; they settle in a step or two
        f = 2 ** (levels_for(crop) - 1)
        crop = tuple(max(f, int(round(c / f)) * f) for c in crop)
    return crop, levels_for(crop)


def _config(base: RunConfig, crop: tuple[int, int, int], levels: int, filters: int, batch: int,
            device: str) -> RunConfig:
    d = base.to_dict()
    d["data"]["crop"] = list(crop)
    d["model"].update(depth=levels, base_filters=filters,
                      max_filters=max(filters, min(base.model.max_filters, filters * 10)))
    d["train"].update(batch_size=batch, precision="auto")  # (memory.estimate resolves it per device)
    return RunConfig.repaired_from_dict(d)


def _shrink(crop: tuple[int, int, int], median: tuple[float, ...]) -> tuple[int, int, int] | None:
    """One step smaller: the edge largest relative to the median box loses one downsampling step."""
    f = 2 ** (levels_for(crop) - 1)
    order = sorted(range(3), key=lambda i: crop[i] / median[i], reverse=True)
    for axis in order:
        if crop[axis] - f >= MIN_EDGE:
            smaller = list(crop)
            smaller[axis] -= f
            return _round_crop(tuple(smaller))[0]
    return None


def make_plan(fingerprint: dict[str, Any], *, memory_gib: float, device: str,
              base: RunConfig | None = None) -> Plan:
    """Plans crop, levels, filters, batch and precision for ``fingerprint`` within ``memory_gib``.

    Raises:
        PlanError: a non-positive budget, an unknown device, or nothing fits (naming the smallest
            configuration tried and what it needs).
    """
    if not (isinstance(memory_gib, (int, float)) and memory_gib > 0):
        raise PlanError(f"--memory {memory_gib}: must be a positive number of GiB")
    if device not in memory.DEVICES:
        raise PlanError(f"--device {device}: must be one of {', '.join(memory.DEVICES)}")
    scheme = labels_mod.resolve(fingerprint["labels"])
    base = (base or PRESETS["nvidia"]).with_labels(scheme, len(fingerprint["modalities"]))
    median = tuple(float(x) for x in fingerprint["shape"]["median"])
    volume = tuple(int(x) for x in fingerprint["shape"]["max"])
    limit = memory_gib * PLAN_HEADROOM

    def predict(cfg: RunConfig) -> memory.MemoryEstimate:
        return memory.estimate(cfg, device=device, volume_shape=volume)

    crop, levels = _round_crop(median)
    steps = [f"crop {_fmt(crop)} from the median brain box {_fmt(median)}, {levels} levels"]
    # Smaller crops first (nnU-Net's rule), then batch 1, then fewer filters (each from the full
    # crop again): the first (filters, batch) whose crop fits wins.
    tried: tuple[int, int] | None = None
    for filters, batch in [(f, b) for f in FILTERS for b in (2, 1)]:
        if tried is not None:
            steps.append(f"filters {filters}, batch {batch}: filters {tried[0]} with batch "
                         f"{tried[1]} did not fit even at the smallest crop")
        crop, levels = _round_crop(median)
        cfg = _config(base, crop, levels, filters, batch, device)
        while not predict(cfg).fits(limit) and (smaller := _shrink(crop, median)) is not None:
            crop, levels = smaller, levels_for(smaller)
            cfg = _config(base, crop, levels, filters, batch, device)
        if predict(cfg).fits(limit):
            break
        tried = (filters, batch)
    else:
        raise PlanError(f"--memory {memory_gib:g}: no configuration fits on {device}: the smallest "
                        f"(crop {_fmt(crop)}, {filters} filters, batch 1) needs "
                        f"{predict(cfg).gib:.1f} GiB, more than {int(PLAN_HEADROOM * 100)}% of "
                        f"{memory_gib:g} GiB")
    if crop != _round_crop(median)[0]:
        steps.append(f"crop {_fmt(crop)}, {levels} levels: the largest that fits")
    cap = max(2, int(0.05 * fingerprint["voxels"] / math.prod(crop)))
    while batch >= 2 and batch < min(cap, MAX_BATCH):
        bigger = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch + 1))
        if not predict(bigger).fits(limit):
            break
        cfg, batch = bigger, batch + 1
    if batch > 2:
        steps.append(f"batch {batch} (memory to spare; at most 5% of the dataset's voxels: {cap})")
    return Plan(config=cfg, estimate=predict(cfg), budget_gib=float(memory_gib), device=device,
                fingerprint=fingerprint, steps=tuple(steps))


def _fmt(shape: tuple[float, ...]) -> str:
    return "x".join(f"{s:g}" for s in shape)


def _probe_child(config: dict[str, Any], cache: str, train_ids: list[str], val_ids: list[str],
                 out: str, device: str) -> None:
    # (a fresh process: its peak is the probed configuration's alone, as in a real run)
    if device == "cpu":  # a CPU plan trains on the CPU even where a GPU is visible
        import os

        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from unet3d.runtime import lean_keras

    lean_keras()  # (as the trials and commands whose peak it stands for)
    from unet3d.data.preprocess import open_cases
    from unet3d.training.train import Trainer

    cfg = RunConfig.from_dict(config)
    Trainer(cfg, open_cases(cache, train_ids), open_cases(cache, val_ids), out).fit()


def probe(plan: Plan, cache: str | Path, train_ids: Sequence[str], val_ids: Sequence[str],
          *, steps: int = 4, timeout_s: float = 1800) -> dict[str, Any]:
    """Trains the planned configuration briefly in a fresh process and measures it: 2 epochs of
    ``steps`` steps, then validation on one case (the run's peak includes a whole volume), so the
    measurement covers what the prediction does.

    Returns:
        {"measured_gib": the process's peak (GPU: the device's peak allocation; CPU: peak resident
        memory), "predicted_gib", "volumes_per_s" (median of the epochs after the first), "steps"}.

    Raises:
        PlanError: the probe run failed or timed out (naming what happened).
    """
    import tempfile

    from unet3d.processes import CONTEXT

    cfg = plan.config.replace(train={"epochs": 2, "steps_per_epoch": steps, "warmup_epochs": 0},
                              data={"max_val_cases": 1})
    with tempfile.TemporaryDirectory(prefix="unet3d-probe-") as tmp:
        child = CONTEXT.Process(
            target=_probe_child, args=(cfg.to_dict(), str(cache), list(train_ids),
                                       list(val_ids)[:1], tmp, plan.device))
        child.start()
        child.join(timeout_s)
        if child.is_alive():
            child.kill()
            child.join()
            raise PlanError(f"--probe: the planned configuration did not finish 2 x {steps} steps "
                            f"in {timeout_s:.0f} s")
        try:
            metrics = json.loads(RunFolder(tmp).metrics.read_text())
        except (OSError, json.JSONDecodeError):
            raise PlanError(f"--probe: the training run failed (exit code {child.exitcode}); "
                            f"was it killed for memory?") from None
    return {"measured_gib": metrics["memory_peak_gib"], "predicted_gib": plan.estimate.gib,
            "volumes_per_s": metrics["throughput_vps"], "steps": 2 * steps}


def describe_plan(plan: Plan, source: str) -> list[str]:
    """The plan in lines (what `plan` prints), its budget's ``source`` named."""
    cfg, est = plan.config, plan.estimate
    m = cfg.model
    bottleneck = "x".join(str(c // m.downsample_factor) for c in cfg.data.crop)
    parts = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in est.parts.items() if v)
    lines = [f"plan for {plan.budget_gib:.1f} GiB on {plan.device} ({source}):",
             f"  crop {'x'.join(map(str, cfg.data.crop))}, {m.depth} levels (bottleneck "
             f"{bottleneck}), filters {m.filters[0]}..{m.filters[-1]}, batch {cfg.train.batch_size}, "
             f"{_precision_on(cfg.train.precision, plan.device)}",
             f"  predicted peak {est.gib:.2f} GiB ({parts} GiB)"]
    lines += [f"  - {s}" for s in plan.steps]
    return lines


def _precision_on(precision: str, device: str) -> str:
    """The plan's precision as training will resolve it on ``device`` (the config keeps "auto")."""
    from unet3d.runtime import resolve_precision

    if precision != "auto":
        return precision
    if device == "cpu":
        return resolve_precision(precision, None)
    return "mixed bfloat16 (float16 before compute capability 8.0)"
