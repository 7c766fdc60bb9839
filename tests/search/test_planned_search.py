"""Searches that start from the dataset's plan: ``--space auto`` (built around it) and ``brats`` (its
crop and batch choices taken from it), for the memory budget."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from search import Search
from unet3d.data.fingerprint import load_or_compute
from unet3d.data.preprocess import open_cases
from unet3d.labels import BUILTIN
from unet3d.planning.plan import make_plan


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from unet3d.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("planned")
    write_synthetic_dataset(root / "data", 6, (40, 40, 40), seed=4)
    return root


def _plan(root, memory):
    cache = root / "data" / ".unet3d-cache"
    ids = sorted(p.name for p in cache.iterdir() if p.is_dir())
    fp = load_or_compute(open_cases(cache, ids), BUILTIN["brats-legacy"])
    return make_plan(fp, memory_gib=memory, device="cpu")


@pytest.mark.parametrize("space", ["auto", "brats"])
def test_the_python_api_moves_the_space_onto_the_plan(tiny, space):
    """The stages up to the engine (validate, prepare, budget -> plan -> space); the CLI test below
    runs a whole search."""
    lines: list[str] = []
    s = Search(data=tiny / "data", space=space, memory=3, folds=3, engine="keras-tuner",
               out=tiny / "api", name=space, log=lines.append)
    ctx = s._fit_budget(s._prepare(s._check(s.experiment), s.experiment))
    plan = _plan(tiny, 3)
    assert ctx.space.base_config() == plan.config.replace(**{k: dict(v) for k, v in
                                                             ctx.space.fixed.items()})
    assert "data.crop_scale" in ctx.space.names and "data.crop" not in ctx.space.names
    batch = next(p for p in ctx.space.params if p.name == "train.batch_size")
    assert plan.config.train.batch_size in batch.values
    assert any(ln.startswith("plan for 3.0 GiB on cpu: crop 32x32x32") for ln in lines)


@pytest.mark.slow
def test_a_cli_search_on_space_auto(tiny):
    # (a budget tight enough for a 16-filter plan, whose 100-step epochs train in seconds)
    out = tiny / "cli"
    r = run_cli("search", "--data", str(tiny / "data"), "--space", "auto", "--memory", "1.3",
                "--folds", "3", "--num-samples", "1", "--max-epochs", "1", "--out", str(out),
                "--name", "auto", "--verbose", "0", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "plan for 1.3 GiB on cpu" in r.stdout and "space auto around it" in r.stdout
    saved = json.loads((out / "auto" / "search.json").read_text())
    space = saved["context"]["space"]
    plan = _plan(tiny, 1.3)
    assert space["name"] == "auto" and space["base"] == plan.config.to_dict()
    assert plan.config.model.base_filters == 16
    trials = json.loads((out / "auto" / "trials.json").read_text())["trials"]
    ran = [t for t in trials if t["status"] != "pruned"]
    assert len(ran) == 1 and ran[0]["status"] == "completed" and ran[0]["memory_gib"] <= 1.3
    assert all(t["memory_gib"] > 1.3 for t in trials if t["status"] == "pruned")
    best = json.loads((out / "auto" / "best" / "config.json").read_text())
    assert best["data"]["crop"] == [32, 32, 32]


def test_without_a_budget_brats_stays_as_defined_and_auto_is_refused(tiny):
    """No budget: the GPU's memory could not be read (say, a CPU head node of a GPU cluster)."""
    from search import SearchError
    from spaces.presets import SPACES
    from unet3d.planning.budget import MemoryBudget

    none = MemoryBudget(gib=None, device="gpu", source="the GPU's memory could not be read")
    for space in ("brats", "auto"):
        lines: list[str] = []
        s = Search(data=tiny / "data", space=space, folds=3, engine="keras-tuner",
                   out=tiny / "nobudget", name=space, log=lines.append)
        ctx = s._prepare(s._check(s.experiment), s.experiment)
        s._budget = none
        if space == "brats":
            assert s._plan_space(ctx).space == SPACES["brats"]
            assert "space brats: not moved onto a plan (the GPU's memory could not be read)" in lines
        else:
            with pytest.raises(SearchError, match="--space auto plans for a memory budget and "
                                                  "there is none"):
                s._plan_space(ctx)
