"""The named search spaces: ``demo`` (CPU-sized), ``brats`` (GPU-sized), ``nvidia`` (one point)."""

from __future__ import annotations

from pathlib import Path

from spaces.space import Choice, Float, Int, SearchSpace, SpaceError, load_space

SPACES: dict[str, SearchSpace] = {
    # Small enough that 8 trials with ASHA finish in a few minutes on 2 CPU cores (32^3 crops on
    # the synthetic 64^3 data), yet every knob a user would search on a GPU is represented.
    "demo": SearchSpace(
        name="demo",
        base="cpu-small",
        fixed={"train": {"steps_per_epoch": 20, "val_every": 1, "warmup_epochs": 0},
               "data": {"max_val_cases": 3}},
        params=(
            Int("model.depth", 3, 4),
            Choice("model.base_filters", (4, 8, 16)),
            Choice("model.norm", ("instance", "batch")),
            Float("train.learning_rate", 1e-3, 1e-2, log=True),
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


def get_space(name_or_path: str) -> SearchSpace:
    """A named space, or a YAML/JSON space file."""
    if name_or_path in SPACES:
        return SPACES[name_or_path]
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml", ".json") or p.exists():
        return load_space(p)
    raise SpaceError(f"unknown space {name_or_path!r}: give one of {', '.join(SPACES)} or a "
                     f".yaml/.json file")
