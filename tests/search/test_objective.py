"""The search objective, chosen once (``--objective``) and followed everywhere: the spec validates
and saves it, the context gives it (and the label scheme) to every trial's config, the engines rank,
stop and checkpoint by its metric, and TensorBoard declares the scheme's regions."""

from __future__ import annotations

import json

import pytest

from search.context import SearchContext
from search.finish import load_search, save_search
from search.objective import METRIC, MODE, OBJECTIVES, describe, metric_of
from search.spec import SearchError, SearchSpec
from spaces.presets import get_space

LW = "val_lesionwise_dice_mean"


def _ctx(**kw) -> SearchContext:
    return SearchContext(space=get_space("demo"), data="d", cache="c", train_ids=("a",),
                         val_ids=("b",), max_epochs=2, **kw)


def test_the_objectives_are_defined_once_and_match_the_trainers():
    from unet3d.config import OBJECTIVES as TRAIN_OBJECTIVES

    assert OBJECTIVES == {"dice": "val_dice_mean", "lesionwise": LW}
    assert tuple(OBJECTIVES) == TRAIN_OBJECTIVES
    assert (METRIC, MODE) == ("val_dice_mean", "max")
    assert metric_of("lesionwise") == LW
    with pytest.raises(ValueError, match="^--objective hd95: must be one of dice, lesionwise$"):
        metric_of("hd95")
    assert describe("dice", ("WT", "TC", "ET")) == "validation mean Dice of WT, TC, ET"
    assert describe("lesionwise", ("GTV",)) == "validation mean lesion-wise Dice of GTV"


def test_an_unknown_objective_is_one_line_naming_the_flag():
    with pytest.raises(SearchError) as e:
        SearchSpec(name="x", objective="hd95")
    assert str(e.value) == "--objective hd95: must be one of dice, lesionwise"
    assert SearchSpec(name="x").objective == "dice"


def test_search_json_keeps_the_objective_and_an_old_one_still_loads(tmp_path):
    spec = SearchSpec(name="e", out=str(tmp_path), objective="lesionwise")
    ctx = _ctx(objective="lesionwise", labels="brats-2024-gli")
    save_search(spec, ctx, tmp_path)
    spec2, ctx2 = load_search(tmp_path)
    assert spec2 == spec and ctx2.metric == LW and ctx2.labels == "brats-2024-gli"
    assert ctx2.scheme.region_names == ("WT", "TC", "ET", "RC")

    # search.json of a search before objectives and schemes: no spec field, no context fields.
    d = json.loads((tmp_path / "search.json").read_text())
    del d["spec"]["objective"], d["context"]["objective"], d["context"]["labels"]
    (tmp_path / "search.json").write_text(json.dumps(d))
    spec3, ctx3 = load_search(tmp_path)
    assert spec3.objective == "dice" and (ctx3.objective, ctx3.metric) == ("dice", METRIC)
    assert ctx3.scheme.name == "brats-legacy"


def test_every_trial_config_carries_the_objective_and_the_scheme():
    sample = get_space("demo").default_sample()
    cfg = _ctx(objective="lesionwise", labels="brats-2024-gli").run_config(sample)
    assert cfg.train.objective == "lesionwise"
    assert cfg.data.labels == "brats-2024-gli" and cfg.model.n_regions == 4
    assert cfg.model.n_classes == 5 and cfg.train.epochs == 2
    men = _ctx(labels="brats-men-rt").run_config(sample)
    assert (men.train.objective, men.model.n_classes, men.model.n_regions) == ("dice", 2, 1)
    old = _ctx().run_config(sample)  # a context without a scheme: the space's own
    assert old.data.labels == "brats-legacy" and old.train.objective == "dice"
    with pytest.raises(ValueError, match="--objective"):
        _ctx(objective="hd95")


def test_tensorboard_declares_the_schemes_regions_and_only_metrics_trials_write():
    from search.tb import hparams_metrics

    assert hparams_metrics(("WT", "TC", "ET", "RC")) == (
        METRIC, "val_dice_WT", "val_dice_TC", "val_dice_ET", "val_dice_RC", "loss",
        "throughput_vps")
    assert hparams_metrics(("GTV",)) == (METRIC, "val_dice_GTV", "loss", "throughput_vps")
    lw = hparams_metrics(("GTV",), "lesionwise")
    assert lw[0] == LW and "val_lesionwise_dice_GTV" in lw and lw.count(LW) == 1
    assert "val_dice_WT" not in lw


def test_the_ray_engine_ranks_stops_and_checkpoints_by_the_chosen_objective():
    from search.ray_factories import run_config, tune_config
    from search.ray_options import RayOptions

    opts = RayOptions(max_concurrent=2)
    tc = tune_config(get_space("demo"), opts, LW)
    assert (tc.metric, tc.mode) == (LW, "max")
    assert (tc.search_alg.searcher.metric, tc.search_alg.searcher.mode) == (LW, "max")
    ck = run_config("/tmp/unused/exp", opts, LW).checkpoint_config
    assert (ck.checkpoint_score_attribute, ck.checkpoint_score_order) == (LW, "max")


def test_keras_tuner_optimises_the_contexts_objective(tmp_path):
    from search.kt_engine import KerasTunerOptions, _tuner

    tuner = _tuner(_ctx(objective="lesionwise"), tmp_path, KerasTunerOptions(), overwrite=True,
                   log=lambda m: None)
    assert (tuner.oracle.objective.name, tuner.oracle.objective.direction) == (LW, "max")
