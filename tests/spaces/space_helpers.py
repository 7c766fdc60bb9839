"""Helpers shared by the search-space tests: a space exercising every rule, a uniform sampler, and
the check that a RunConfig is exactly what a sample asked for.

A plain module, not a conftest.py: one here would shadow tests/conftest.py, which other tests import
as ``conftest``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from spaces.space import Choice, Float, Int, SearchSpace
from unet3d.config import RunConfig

_AUGMENT_AT_ONE = {"flip_prob": 0.5, "intensity_scale": 0.2, "intensity_shift": 0.2, "noise_std": 0.1}


def make_custom_space() -> SearchSpace:
    """Every parameter kind and every cross-field rule: crop rounding (depth 2..6, crop 20..100),
    deep supervision switched off at depth 2 and its heads capped, region loss -> region head,
    warm-up capped by a sampled epoch count, log-scale Int, stepped Int, single-value Choices,
    an int/float Choice normalised to floats, data.augment."""
    return SearchSpace(
        name="custom",
        base="cpu-small",
        fixed={"train": {"warmup_epochs": 3}},
        params=(
            Int("model.depth", 2, 6),
            Int("data.crop", 20, 100),
            Choice("model.deep_supervision", (False, True)),
            Int("model.deep_supervision_heads", 1, 4),
            Int("train.epochs", 2, 32, log=True),
            Int("model.base_filters", 8, 32, step=8),
            Float("train.learning_rate", 1e-4, 1e-2, log=True),
            Float("model.dropout", 0.0, 0.5),
            Choice("data.foreground_ratio", (0, 0.5, 1)),
            Choice("model.activation", ("relu", "elu")),
            Choice("model.upsampling", ("nearest",)),
            Choice("train.batch_size", (1, 2, 4)),
            Choice("train.loss", ("dice", "dice_ce", "region")),
            Float("data.augment", 0.0, 1.0),
        ),
    )


def draw(space: SearchSpace, rng: np.random.Generator) -> dict[str, Any]:
    """One point drawn uniformly inside the bounds (log-uniformly on log scales): the space's own
    :meth:`SearchSpace.sample`, whose spread and bounds the sample tests check."""
    return space.sample(rng)


def extremes(space: SearchSpace) -> list[dict[str, Any]]:
    """The all-lowest and all-highest points (first/last value of each Choice)."""
    lo = {p.name: p.values[0] if isinstance(p, Choice) else p.low for p in space.params}
    hi = {p.name: p.values[-1] if isinstance(p, Choice) else p.high for p in space.params}
    return [lo, hi]


def assert_config_matches(space: SearchSpace, sample: Mapping[str, Any], cfg: RunConfig) -> None:
    """``cfg`` is the sample's configuration: sampled fields as sampled (with the documented derived
    rules), every other field as in the space's base config."""
    assert isinstance(cfg, RunConfig)
    base = space.base_config()
    depth = cfg.model.depth
    f = 2 ** (depth - 1)
    touched = {"model.head", "data.crop", "model.deep_supervision_heads", "model.deep_supervision",
               "train.warmup_epochs"}
    for name, v in sample.items():
        section, _, field = name.partition(".")
        touched.add(name)
        if name == "data.crop":
            want = max(f, math.ceil(v / f) * f)
            assert cfg.data.crop == (want,) * 3, (sample, cfg.data.crop)
            assert want >= v and (want - v < f or want == f)
        elif name == "data.augment":
            for k, a in _AUGMENT_AT_ONE.items():
                touched.add(f"data.{k}")
                assert getattr(cfg.data, k) == pytest.approx(v * a, abs=1e-12), (k, sample)
        elif name in ("model.deep_supervision", "model.deep_supervision_heads"):
            pass                                                       # checked below
        else:
            got = getattr(getattr(cfg, section), field)
            assert got == v, (name, got, v)
            assert isinstance(got, bool) is isinstance(v, bool)
    # Derived rules, whatever was sampled.
    if "data.crop" not in sample:
        assert cfg.data.crop == tuple(max(f, math.ceil(c / f) * f) for c in base.data.crop)
    assert all(c % f == 0 for c in cfg.data.crop)
    assert cfg.model.head == ("regions" if cfg.train.loss == "region" else "softmax")
    # Deep supervision as asked, switched off below depth 3; its heads capped at depth - 2 when asked.
    ds = sample.get("model.deep_supervision", base.model.deep_supervision)
    heads = sample.get("model.deep_supervision_heads", base.model.deep_supervision_heads)
    assert cfg.model.deep_supervision is (ds and depth >= 3)
    assert cfg.model.deep_supervision_heads == (min(heads, max(1, depth - 2)) if ds else heads)
    warm = sample.get("train.warmup_epochs", base.train.warmup_epochs)
    assert cfg.train.warmup_epochs == min(warm, cfg.train.epochs)
    # Everything else comes from the base preset plus the space's fixed overrides.
    for section in ("model", "train", "data"):
        for fld in dataclasses.fields(getattr(cfg, section)):
            if f"{section}.{fld.name}" not in touched:
                assert getattr(getattr(cfg, section), fld.name) == \
                    getattr(getattr(base, section), fld.name), f"{section}.{fld.name}"
