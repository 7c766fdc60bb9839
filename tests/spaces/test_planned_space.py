"""Spaces around a plan: ``brats`` moved onto the plan, ``auto`` built around it, crop scales."""

from __future__ import annotations

import pytest

from spaces.presets import SPACES, around_plan, auto_space, get_space
from spaces.space import Choice, SearchSpace, SpaceError, space_from_dict
from unet3d.config import preset

# A non-cubic plan, as the planner makes for a BraTS brain box on a small budget.
PLANNED = preset("nvidia").replace(model={"depth": 5, "base_filters": 32},
                                   train={"batch_size": 3},
                                   data={"crop": [80, 112, 96]})


def test_crop_scale_scales_the_base_crop_per_axis():
    space = SearchSpace(name="s", base=PLANNED.to_dict(),
                        params=(Choice("data.crop_scale", (0.5, 0.75, 1.0)),))
    crops = [space.to_run_config({"data.crop_scale": v}).data.crop for v in (0.5, 0.75, 1.0)]
    # 0.5: 40x56x48, rounded up to the 16-voxel downsampling; 0.75: 60x84x72 likewise
    assert crops == [(48, 64, 48), (64, 96, 80), (80, 112, 96)]


def test_brats_around_a_plan_starts_from_it():
    space = around_plan(SPACES["brats"], PLANNED)
    assert "data.crop" not in space.names and "data.crop_scale" in space.names
    batch = next(p for p in space.params if p.name == "train.batch_size")
    assert batch.values == (1, 3, 6)
    cfg = space.to_run_config({**space.default_sample(), "model.depth": 5})
    assert cfg.data.crop == PLANNED.data.crop and cfg.train.batch_size == 3
    assert cfg.train.steps_per_epoch == 250  # the space's own fixed overrides still apply


def test_auto_space_is_centred_on_the_plan():
    space = auto_space(PLANNED)
    cfg = space.to_run_config(space.default_sample())
    for field in ("model.depth", "model.base_filters", "train.batch_size", "train.learning_rate"):
        section, _, name = field.partition(".")
        assert getattr(getattr(cfg, section), name) == getattr(getattr(PLANNED, section), name)
    assert cfg.data.crop == PLANNED.data.crop
    lr = next(p for p in space.params if p.name == "train.learning_rate")
    assert lr.low < PLANNED.train.learning_rate < lr.high  # around the baseline, not from it
    again = space_from_dict(space.to_dict(), source="search.json")
    assert again.base_config() == space.base_config() and again.params == space.params


def test_auto_needs_a_plan():
    with pytest.raises(SpaceError, match="space auto is built around the dataset's plan"):
        get_space("auto")


def test_a_bad_base_config_names_the_space():
    with pytest.raises(SpaceError, match="space s: base: .*model.depth"):
        SearchSpace(name="s", base={"model": {"depth": 1}}, params=(Choice("model.norm", ("batch",)),))
