"""The named search spaces: ``demo`` (CPU-sized), ``brats`` (GPU-sized), ``nvidia`` (one point), and
``auto``, built around a plan (:mod:`unet3d.planning.plan`) once the data and the memory budget are known.

A search that knows its plan also moves ``brats`` onto it (:func:`around_plan`): the plan becomes the
base, and the crop and batch choices are taken relative to the plan's (crop scales 0.5-1, batches
around the planned one) instead of fixed edge lengths that may not fit the GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spaces.space import Choice, Float, Int, SearchSpace, SpaceError, load_space
from unet3d.config import RunConfig, preset

SPACES: dict[str, SearchSpace] = {
    # Small enough that 8 trials with ASHA finish in a few minutes on 2 CPU cores (32^3 crops on
    # the synthetic 64^3 data), yet every knob a user would search on a GPU is represented. Centred
    # on the baseline rather than starting at it: the learning rate spans 10x around 1e-3 (NVIDIA's
    # 2e-4 projects to its low end), depth 3-5 around cpu-small's 4. Every validation case scores.
    "demo": SearchSpace(
        name="demo",
        base="cpu-small",
        fixed={"train": {"steps_per_epoch": 20, "val_every": 1, "warmup_epochs": 0},
               "data": {"max_val_cases": 0}},
        params=(
            Int("model.depth", 3, 5),
            Choice("model.base_filters", (4, 8, 16)),
            Choice("model.norm", ("instance", "batch")),
            Float("train.learning_rate", 3e-4, 3e-3, log=True),
            Choice("train.loss", ("dice", "dice_ce")),
            Choice("model.deep_supervision", (False, True)),
            Float("data.foreground_ratio", 0.2, 0.8),
        ),
    ),
    # The space for real BraTS on GPUs: what nnU-Net and NVIDIA tune by hand.
    "brats": SearchSpace(
        name="brats",
        base="nvidia",
        fixed={"train": {"steps_per_epoch": 250, "warmup_epochs": 1, "min_lr_ratio": 0.01}},
        params=(
            Int("model.depth", 3, 6),
            Choice("model.base_filters", (16, 24, 32)),
            Choice("model.norm", ("instance", "batch", "group")),
            Choice("train.loss", ("dice", "dice_ce", "region")),
            Float("train.learning_rate", 5e-5, 2e-3, log=True),
            Choice("train.batch_size", (1, 2, 4)),
            Choice("data.crop", (64, 96, 128)),
            Choice("model.deep_supervision", (False, True)),
            Float("data.augment", 0.0, 1.0),
            Choice("train.precision", ("fp32", "mixed_float16")),
            Choice("train.xla", ("on", "off")),
        ),
    ),
    # NVIDIA's configuration as the single point (a baseline to compare a search against).
    "nvidia": SearchSpace(
        name="nvidia",
        base="nvidia",
        params=(Choice("model.depth", (6,)),),
    ),
}


AUTO = "auto"
# Parameters a plan decides; around a plan they become choices relative to the plan's values.
PLANNED_PARAMS = ("data.crop", "train.batch_size")


def _batches(batch: int) -> tuple[int, ...]:
    return tuple(sorted({max(1, batch // 2), batch, 2 * batch}))


def around_plan(space: SearchSpace, planned: RunConfig) -> SearchSpace:
    """``space`` with the planned configuration as its base; its crop and batch parameters (if
    it searches them) become choices around the plan's: crop scale 0.5 / 0.75 / 1 of the planned
    crop, batch half / as planned / double (a memory budget then prunes what cannot fit)."""
    params = []
    for p in space.params:
        if p.name == "data.crop":
            p = Choice("data.crop_scale", (0.5, 0.75, 1.0))
        elif p.name == "train.batch_size":
            p = Choice("train.batch_size", _batches(planned.train.batch_size))
        params.append(p)
    return SearchSpace(name=space.name, params=tuple(params), base=planned.to_dict(),
                       fixed=space.fixed)


def auto_space(planned: RunConfig) -> SearchSpace:
    """The ``auto`` space: a neighbourhood of the plan, centred on it rather than starting at it
    (depth one level less or as planned, filters half or as planned, learning rate within 4x either
    way), plus the choices nnU-Net and NVIDIA leave to taste (norm, loss, deep supervision,
    augmentation strength)."""
    m, t = planned.model, planned.train
    return SearchSpace(name=AUTO, base=planned.to_dict(), fixed={}, params=(
        Int("model.depth", max(3, m.depth - 1), max(3, m.depth)),
        Choice("model.base_filters", tuple(sorted({max(4, m.base_filters // 2), m.base_filters}))),
        Choice("model.norm", ("instance", "batch")),
        Choice("train.loss", ("dice_ce", "dice", "region")),
        Float("train.learning_rate", t.learning_rate / 4, t.learning_rate * 4, log=True),
        Choice("train.batch_size", _batches(t.batch_size)),
        Choice("data.crop_scale", (0.75, 1.0)),
        Choice("model.deep_supervision", (False, True)),
        Float("data.augment", 0.0, 1.0),
    ))


def get_space(name_or_path: str) -> SearchSpace:
    """A named space, or a YAML/JSON space file (``auto`` needs a plan: :func:`auto_space`)."""
    if name_or_path == AUTO:
        raise SpaceError("space auto is built around the dataset's plan: the search builds it "
                         "once the data is prepared (use spaces.presets.auto_space(plan.config))")
    if name_or_path in SPACES:
        return SPACES[name_or_path]
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml", ".json") or p.exists():
        return load_space(p)
    raise SpaceError(f"unknown space {name_or_path!r}: give one of {', '.join(SPACES)} or a "
                     f".yaml/.json file")


def first_point(space: SearchSpace) -> tuple[dict[str, Any], str]:
    """The configuration every search of ``space`` tries first, and its origin (what a trial's
    ``proposed_by`` says): the plan's for ``auto`` (the space is built around it), otherwise
    NVIDIA's projected into the space. Every engine and searcher asks here (the race, Optuna's
    searchers, BOHB, PBT's population, Keras Tuner's oracles)."""
    if space.name == AUTO:
        return space.default_sample(), "plan"
    return nvidia_point(space), "nvidia"


def nvidia_point(space: SearchSpace) -> dict[str, Any]:
    """NVIDIA's reference configuration projected into ``space`` (nearest value per parameter):
    the first point every search evaluates."""
    return space.point_of(preset("nvidia"))
