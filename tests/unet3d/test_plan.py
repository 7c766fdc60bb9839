"""Planning from a fingerprint and a memory budget: sensible plans that fit, clear refusals."""

from __future__ import annotations

import json
import math
import re

import pytest

from unet3d.config import RunConfig
from unet3d.planning import memory
from unet3d.planning.plan import PLAN_HEADROOM, PlanError, make_plan

# BraTS 2021's brain boxes (1251 cases, about 136 x 170 x 136 voxels after the brain crop)
BRATS = {"labels": "brats-legacy", "modalities": ["t1", "t1ce", "t2", "flair"],
         "shape": {"median": [136, 170, 136], "min": [110, 140, 100], "max": [160, 190, 160]},
         "voxels": 1251 * 136 * 170 * 136}


def _check(plan):
    cfg = plan.config
    f = cfg.model.downsample_factor
    assert all(c % f == 0 for c in cfg.data.crop)
    assert 4 <= min(cfg.data.crop) // f < 8 or cfg.model.depth == 6  # bottleneck of 4-8 voxels
    assert plan.estimate.total <= PLAN_HEADROOM * plan.budget_gib * memory.GIB
    assert plan.estimate == memory.estimate(cfg, device=plan.device,
                                            volume_shape=BRATS["shape"]["max"])


@pytest.mark.parametrize("device,budgets", [("gpu", (4, 8, 24, 80)), ("cpu", (3, 8, 24))])
def test_more_memory_gives_a_bigger_crop_or_batch(device, budgets):
    plans = [make_plan(BRATS, memory_gib=m, device=device) for m in budgets]
    for p in plans:
        _check(p)
        assert p.config.train.precision == "auto"  # (resolved per device, memory model too)
    work = [math.prod(p.config.data.crop) * p.config.train.batch_size for p in plans]
    assert work == sorted(work) and work[0] < work[-1]
    for small, big in zip(plans, plans[1:], strict=False):  # never a smaller crop for more memory
        assert all(a <= b for a, b in zip(small.config.data.crop, big.config.data.crop, strict=True))
    # the crop never exceeds the median brain box (rounded to the downsampling)
    assert all(c <= 160 for c in plans[-1].config.data.crop)


def test_small_budget_shrinks_the_crop_not_cubic():
    plan = make_plan(BRATS, memory_gib=4, device="gpu")
    crop = plan.config.data.crop
    assert len(set(crop)) > 1 and crop[1] > crop[0]  # follows the box's longer H axis
    # shrunk where the crop is largest relative to the box: its proportions stay the box's
    ratios = [c / m for c, m in zip(crop, BRATS["shape"]["median"], strict=True)]
    assert max(ratios) / min(ratios) < 1.3
    assert plan.config.train.batch_size == 2 and any("fits" in s for s in plan.steps)


def test_the_crop_rounds_each_edge_to_the_nearest_multiple_of_its_downsampling():
    """A median box of 155 x 186 x 125 at 5 levels (16) rounds to 160 x 192 x 128 (flooring would
    give 144 x 176 x 112); its smallest edge, 128, then allows 6 levels (32), which 160 x 192 x 128
    already divides."""
    box = {**BRATS, "shape": {**BRATS["shape"], "median": [155, 186, 125]}}
    plan = make_plan(box, memory_gib=80, device="gpu")
    assert plan.steps[0] == "crop 160x192x128 from the median brain box 155x186x125, 6 levels"
    assert plan.config.data.crop == (160, 192, 128) and plan.config.model.depth == 6


def test_batch_is_capped_by_the_dataset_size():
    """At most 5% of the dataset's voxels a step (80 GiB would allow batch 9 at 128 x 160 x 128):
    100 cases of 136 x 170 x 136 give 0.05 x 100 x 3,144,320 / 2,621,440 = 5.997 -> batch 5;
    20 cases give 1.2, and the batch never goes under 2."""
    hundred = make_plan({**BRATS, "voxels": 100 * 136 * 170 * 136}, memory_gib=80, device="gpu")
    assert hundred.config.data.crop == (128, 160, 128) and hundred.config.train.batch_size == 5
    twenty = make_plan({**BRATS, "voxels": 20 * 136 * 170 * 136}, memory_gib=80, device="gpu")
    assert twenty.config.train.batch_size == 2


def test_batch_drops_to_1_before_the_filters_halve():
    """A 32^3 box starts at the smallest crop (4 levels). On a CPU (memory model of 2026-11-26) it
    needs 1.513 GiB / 0.85 with 32 filters and batch 2, 1.395 with batch 1, 1.326 with 16 filters
    and batch 2: 1.45 GiB fits batch 1 at full filters, which comes before fewer filters."""
    small = {**BRATS, "shape": {"median": [32, 32, 32], "min": [32, 32, 32], "max": [32, 32, 32]},
             "voxels": 100 * 32**3}
    plan = make_plan(small, memory_gib=1.45, device="cpu")
    cfg = plan.config
    assert (cfg.data.crop, cfg.model.depth) == ((32, 32, 32), 4)
    assert (cfg.model.base_filters, cfg.train.batch_size) == (32, 1)
    assert plan.steps[1] == ("filters 32, batch 1: filters 32 with batch 2 did not fit even at the "
                             "smallest crop")
    more = make_plan(small, memory_gib=1.55, device="cpu").config  # batch 2 fits: kept
    assert (more.model.base_filters, more.train.batch_size) == (32, 2)


def test_plan_file_is_a_config(tmp_path):
    plan = make_plan(BRATS, memory_gib=8, device="cpu")
    d = plan.to_dict()
    assert d["plan"]["predicted"]["total_gib"] == round(plan.estimate.gib, 3)
    assert d["plan"]["fingerprint"] == BRATS and d["plan"]["memory_gib"] == 8
    assert RunConfig.from_dict(d) == plan.config


@pytest.mark.parametrize("kwargs,match", [
    ({"memory_gib": 0.5, "device": "cpu"}, "no configuration fits on cpu: the smallest"),
    ({"memory_gib": 0, "device": "cpu"}, "must be a positive number"),
    ({"memory_gib": 8, "device": "tpu"}, "--device tpu"),
])
def test_refusals(kwargs, match):
    with pytest.raises(PlanError, match=match):
        make_plan(BRATS, **kwargs)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from unet3d.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("plan") / "data"
    write_synthetic_dataset(root, 6, (40, 40, 40), seed=1)
    return root


@pytest.mark.slow
def test_cli_plan_probe_writes_a_config_train_reads(tiny_data, tmp_path):
    from conftest import run_cli

    out = tmp_path / "plans" / "plan.json"
    r = run_cli("plan", "--data", str(tiny_data), "--cache", str(tmp_path / "cache"), "--memory",
                "3", "--device", "cpu", "--probe", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fingerprint: 6 cases (6 labelled)" in r.stdout and "plan for 3.0 GiB on cpu" in r.stdout
    assert re.search(r"probe \(8 steps and validation of one case\): measured [\d.]+ GiB", r.stdout)
    # the precision as training resolves it on a CPU, not the config's "auto"
    assert re.search(r"filters \d+\.\.\d+, batch \d+, fp32\n", r.stdout), r.stdout
    saved = json.loads(out.read_text())
    cfg = RunConfig.load(out)  # what `train --config` reads
    assert list(cfg.data.crop) == saved["data"]["crop"] and cfg.train.precision == "auto"
    plan = saved["plan"]
    assert plan["memory_gib"] == 3.0 and plan["device"] == "cpu"
    assert plan["predicted"]["total_gib"] <= 3.0 * PLAN_HEADROOM
    assert 0.2 < plan["probe"]["measured_gib"] < 3.0  # it fits its budget, measured
    assert plan["fingerprint"]["cases"] == 6
    # the fingerprint is kept in the cache too
    assert (tmp_path / "cache" / "fingerprint.json").exists()


@pytest.mark.parametrize("args,match", [
    (["--memory", "0"], "--memory 0: must be a positive number of GiB"),
    (["--memory", "-2"], "--memory -2: must be a positive number of GiB"),
    (["--memory", "0.2", "--device", "cpu"], "no configuration fits on cpu"),
    (["--device", "gpu"], "--device gpu: no GPU found"),  # (this machine has none)
])
def test_cli_plan_refusals(tiny_data, tmp_path, args, match):
    from conftest import error_line, run_cli

    cache = tmp_path / "cache"
    r = run_cli("plan", "--data", str(tiny_data), "--cache", str(cache), "--out",
                str(tmp_path / "plan.json"), *args, timeout=300)
    assert match in error_line(r, alone=True)
    assert not (tmp_path / "plan.json").exists()
    if "0.2" not in args:  # an option error: refused before anything is read or written
        assert not cache.exists()
