"""Post-processing chosen on validation (nnU-Net style), saved with the export and applied by predict.

The chooser runs on constructed class maps (brats-legacy training classes: 1 NCR, 2 ED, 3 ET);
the export / predict chain on an untrained tiny model (it predicts enhancing tumour all over, so a
saved ET rule visibly changes its output) with ``run_search.main`` in this process.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from unet3d.inference.postprocess import (
    PostProcess,
    PostProcessChoice,
    candidates,
    choose_postprocess,
    read_saved,
)
from unet3d.labels import BUILTIN

LEGACY = BUILTIN["brats-legacy"]
FILE = "postprocess.json"  # (an export's file: the format earlier exports were written in)
NCR, ED, ET = 1, 2, 3
ONE_MM = (1.0, 1.0, 1.0)


def _tumour() -> np.ndarray:
    c = np.zeros((24, 24, 24), np.uint8)
    c[4:16, 4:16, 4:16] = ED
    c[7:13, 7:13, 7:13] = NCR
    return c


def _speck(spacing=ONE_MM, at: int = 9, name: str = "speck"):
    """No ET in the reference; the prediction has a 2x2x2 ET speck (8 voxels) in the core."""
    ref = _tumour()
    pred = ref.copy()
    pred[at:at + 2, at:at + 2, at:at + 2] = ET
    return name, pred, ref, spacing


def _specks(spacing=ONE_MM):
    """Two cases without ET, each with a predicted speck: an effect seen in more than one case."""
    return [_speck(spacing, 8, "speck_a"), _speck(spacing, 10, "speck_b")]


def _small_et(name: str = "small_et", predicted: float = 1.0):
    """A true 3x3x3 ET (27 mm^3), predicted exactly (``predicted`` 1.0), or only its first
    ``predicted`` share of voxels (a poor ET prediction): a threshold above 27 mm^3 removes it."""
    ref = _tumour()
    ref[9:12, 9:12, 9:12] = ET
    pred = ref.copy()
    if predicted < 1.0:
        et = np.argwhere(ref == ET)
        for z, y, x in et[int(round(predicted * len(et))):]:
            pred[z, y, x] = NCR
    return name, pred, ref, ONE_MM


def _stray_blob(name: str = "stray", at: int = 19):
    """A distant false-positive edema blob besides a perfect tumour."""
    ref = _tumour()
    pred = ref.copy()
    pred[at:at + 3, at:at + 3, at:at + 3] = ED
    return name, pred, ref, ONE_MM


def _row(choice: PostProcessChoice, min_et: float, largest: bool = False) -> dict:
    return next(r for r in choice.table
                if r["min_et_volume_mm3"] == min_et and r["largest_wt"] == largest)


def test_the_threshold_that_removes_spurious_specks_without_hurting_a_true_small_et_is_chosen():
    choice = choose_postprocess([*_specks(), _small_et()], LEGACY, "dice")
    # 10 and 25 mm^3 remove the 8 mm^3 specks and keep the 27 mm^3 ET: the smaller one wins the tie.
    assert choice.postprocess == PostProcess(min_et_volume=10.0)
    assert _row(choice, 10)["score"] == pytest.approx(1.0)
    assert _row(choice, 0)["score"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)  # speck ET Dice 0
    assert _row(choice, 25)["score"] == _row(choice, 10)["score"]
    # 50 mm^3 fixes the speck cases and loses the true ET: not allowed (without one of the speck
    # cases its gain is nothing), though its mean is above no post-processing's.
    assert _row(choice, 50)["score"] > _row(choice, 0)["score"]
    assert not _row(choice, 50)["allowed"] and "from one case" in _row(choice, 50)["refused"]
    assert _row(choice, 10)["dice_ET"] == 1.0 and _row(choice, 50)["dice_ET"] == pytest.approx(2 / 3)
    assert _row(choice, 10)["cases_changed"] == 2 and _row(choice, 50)["cases_changed"] == 3
    assert (_row(choice, 10)["cases_improved"], _row(choice, 10)["cases_worsened"]) == (2, 0)
    assert [r["chosen"] for r in choice.table].count(True) == 1 and _row(choice, 10)["chosen"]
    assert choice.baseline_score == _row(choice, 0)["score"]
    assert choice.cases == ("speck_a", "speck_b", "small_et")
    assert len(choice.table) == 14  # largest-WT off/on x 7 ET thresholds


def test_a_gain_that_comes_from_one_case_keeps_the_predictions():
    """Issue 24's export: one validation case has no ET, the model's ET elsewhere is poor, and
    erasing every ET component lifts the mean (that case's ET goes 0 -> 1) while it zeroes every
    other case's ET. Held out, it erased all ET. The rule keeps the predictions."""
    cases = [_speck(at=9, name="no_et"), *[_small_et(f"poor_et_{k}", predicted=0.04)
                                           for k in range(4)]]
    choice = choose_postprocess(cases, LEGACY, "dice")
    erase = _row(choice, 50)  # every predicted ET component is under 50 mm^3
    assert erase["score"] > choice.baseline_score + 0.02  # what the old rule chose
    assert choice.postprocess == PostProcess()
    assert not erase["allowed"] and erase["cases_improved"] == 1 and erase["cases_worsened"] == 4
    assert "its gain comes from one case (no_et)" in erase["refused"]
    assert "improves 1 case(s), worsens 4" in erase["refused"]
    assert "removes ET from every case it was predicted in (5)" in erase["refused"]
    assert choice.postprocess == PostProcess()
    # A removal that helps more than one case, with the others unchanged, passes the same rule.
    helped = choose_postprocess([*_specks(), *[_small_et(f"et_{k}") for k in range(3)]], LEGACY)
    assert helped.postprocess == PostProcess(min_et_volume=10.0)


def test_a_step_that_removes_a_region_from_every_case_predicted_with_it_is_never_chosen():
    # Three cases without ET and a speck each: erasing all ET is right on every one of them, yet
    # it leaves the model no ET anywhere it predicted some: refused by rule, the predictions kept.
    cases = [_speck(at=a, name=f"s{a}") for a in (7, 9, 11)]
    choice = choose_postprocess(cases, LEGACY, "dice")
    assert choice.postprocess == PostProcess()
    assert all("removes ET from every case it was predicted in (3)" in r["refused"]
               for r in choice.table if r["min_et_volume_mm3"] > 0)
    assert choice.chosen_score == choice.baseline_score < _row(choice, 10)["score"]


def test_a_threshold_that_would_only_hurt_is_not_chosen_and_ties_keep_no_post_processing():
    choice = choose_postprocess([_small_et()], LEGACY, "dice")
    # 10, 25 mm^3 and the largest-WT rule change nothing here (a tie); 50+ mm^3 lose the true ET.
    assert choice.postprocess == PostProcess()
    assert _row(choice, 10)["score"] == _row(choice, 0, True)["score"] == _row(choice, 0)["score"]
    assert _row(choice, 50)["score"] < _row(choice, 0)["score"]
    assert "improves 0 case(s), worsens 1" in _row(choice, 50)["refused"]


def test_an_improvement_below_the_margin_keeps_no_post_processing():
    cases = [*_specks(), _small_et()]  # threshold 10 gains (1/3 + 1/3) / 3 = 0.222 in mean Dice
    assert choose_postprocess(cases, LEGACY, margin=0.25).postprocess == PostProcess()
    assert "not more than the margin 0.25" in _row(choose_postprocess(cases, LEGACY, margin=0.25),
                                                   10)["refused"]
    assert choose_postprocess(cases, LEGACY, margin=0.1).postprocess == PostProcess(min_et_volume=10)


def test_the_simplest_allowed_candidate_within_the_margin_wins():
    """Two 8 mm^3 specks, an 18 mm^3 one (all in cases without ET) and a true 27 mm^3 ET. Mean Dice
    per case (WT, TC, ET): no post-processing (2/3 + 2/3 + 2/3 + 1) / 4 = 3/4; 10 mm^3 fixes the
    8 mm^3 specks, (1 + 1 + 2/3 + 1) / 4 = 11/12; 25 mm^3 fixes all three, 1. Both are allowed;
    25 beats 10 by 1/12, under the margin 0.1, so the simpler 10 mm^3 is chosen."""
    name, pred, ref, spacing = _speck(at=8, name="speck_18")
    pred[8:11, 8:11, 8:10] = ET  # 3 x 3 x 2 = 18 voxels (the 2 x 2 x 2 speck at 8 inside it)
    assert (pred == ET).sum() == 18
    choice = choose_postprocess([*_specks(), (name, pred, ref, spacing), _small_et()], LEGACY,
                                margin=0.1)
    assert _row(choice, 0)["score"] == pytest.approx(3 / 4)
    assert _row(choice, 10)["score"] == pytest.approx(11 / 12) and _row(choice, 10)["allowed"]
    assert _row(choice, 25)["score"] == pytest.approx(1.0) and _row(choice, 25)["allowed"]
    assert choice.postprocess == PostProcess(min_et_volume=10.0)


def test_a_step_that_worsens_as_many_cases_as_it_improves_is_refused():
    """Two speck cases (ET Dice 0 -> 1 under 10 mm^3: mean +1/3 each) and two cases whose true ET is
    a 27-voxel and an 8-voxel component: removing the 8 leaves ET Dice 2*27/(27+35) = 27/31, a loss
    of (1 - 27/31)/3 = 4/93 each. 2 improved, 2 worsened: refused by that rule alone (its mean gain,
    (2/3 - 8/93)/4, is positive without the best case and above the margin)."""
    def two_et(name):
        name, pred, ref, spacing = _small_et(name)
        ref[13:15, 13:15, 13:15] = ET  # in the edema, apart from the 3x3x3 at 9:12
        return name, ref.copy(), ref, spacing

    choice = choose_postprocess([*_specks(), two_et("two_a"), two_et("two_b")], LEGACY)
    row = _row(choice, 10)
    assert (row["cases_improved"], row["cases_worsened"]) == (2, 2)
    assert row["score"] - choice.baseline_score == pytest.approx((2 / 3 - 8 / 93) / 4)
    assert row["refused"] == "improves 2 case(s), worsens 2"
    assert choice.postprocess == PostProcess()


def test_the_threshold_is_a_volume_in_mm3():
    # The same 8-voxel specks at 2 mm voxels are 64 mm^3: only 100 mm^3 and above remove them
    # (and the true ET of the third case, 216 mm^3 at that spacing, stays up to 200).
    true_et = _small_et()[:3] + ((2.0, 2.0, 2.0),)
    choice = choose_postprocess([*_specks((2.0, 2.0, 2.0)), true_et], LEGACY)
    assert choice.postprocess == PostProcess(min_et_volume=100.0)
    assert _row(choice, 50)["score"] == _row(choice, 0)["score"]


def test_the_largest_component_rule_is_chosen_when_it_helps_and_the_objective_decides():
    strays = [_stray_blob("stray_a", 19), _stray_blob("stray_b", 18)]
    choice = choose_postprocess(strays, LEGACY, "dice")
    assert choice.postprocess == PostProcess(largest_wt=True)
    assert _row(choice, 0, True)["dice_WT"] == 1.0 > _row(choice, 0)["dice_WT"]
    # Lesion-wise Dice averages matched lesions only: a stray lesion does not lower it, so the
    # lesion-wise objective has no reason to remove it.
    lw = choose_postprocess(strays, LEGACY, "lesionwise")
    assert lw.postprocess == PostProcess() and lw.objective == "lesionwise"
    assert {"lesionwise_dice_ET", "lesionwise_dice_mean"} <= set(lw.table[0])
    # ... while a spurious ET speck in a case without ET costs it the ET lesion-wise Dice.
    assert choose_postprocess([*_specks(), _small_et()], LEGACY, "lesionwise").postprocess == \
        PostProcess(min_et_volume=10.0)
    with pytest.raises(ValueError, match="objective"):
        choose_postprocess([_speck()], LEGACY, "hd95")
    with pytest.raises(ValueError, match="at least one validation case"):
        choose_postprocess([], LEGACY)


def test_a_scheme_without_enhancing_tumour_has_the_largest_component_rule_alone():
    men = BUILTIN["brats-men-rt"]
    assert candidates(men) == [PostProcess(), PostProcess(largest_wt=True)]
    cases = []
    for k, at in enumerate((11, 12)):
        ref = np.zeros((16, 16, 16), np.uint8)
        ref[2:8, 2:8, 2:8] = 1
        pred = ref.copy()
        pred[at:at + 2, at:at + 2, at:at + 2] = 1
        cases.append((f"m{k}", pred, ref, ONE_MM))
    choice = choose_postprocess(cases, men)
    assert choice.postprocess == PostProcess(largest_wt=True) and len(choice.table) == 2
    assert "dice_GTV" in choice.table[0]


def test_the_choice_round_trips_through_json_and_a_malformed_file_is_named(tmp_path):
    choice = choose_postprocess([*_specks(), _small_et()], LEGACY)
    d = json.loads(json.dumps(choice.to_dict()))
    assert d["postprocess"] == {"min_et_volume_mm3": 10.0, "largest_wt": False}
    assert d["val_cases"] == ["speck_a", "speck_b", "small_et"] and d["objective"] == "dice"
    assert d["chosen_score"] > d["baseline_score"] and len(d["candidates"]) == 14
    assert PostProcessChoice.from_dict(d) == choice
    assert read_saved(tmp_path) is None  # an export from before postprocess.json: none
    (tmp_path / FILE).write_text(json.dumps(d))
    assert read_saved(tmp_path) == PostProcess(min_et_volume=10.0)
    (tmp_path / FILE).write_text(json.dumps({"postprocess": {"min_et_volume_mm3": -5}}))
    with pytest.raises(ValueError, match=FILE):
        read_saved(tmp_path)


@dataclasses.dataclass
class _Member:
    name: str
    postprocess: PostProcess | None


def test_resolve_postprocess_uses_the_first_members_saved_choice_and_flags_override_it():
    from unet3d.inference.predictor import resolve_postprocess

    saved = PostProcess(min_et_volume=50.0, largest_wt=True)
    a, b, old = _Member("a", saved), _Member("b", PostProcess()), _Member("old", None)
    post, line = resolve_postprocess([a])
    assert post == saved and "saved with a" in line and "50 mm^3" in line
    assert resolve_postprocess([a], "none")[0] == PostProcess()
    assert resolve_postprocess([old])[0] == PostProcess()  # no postprocess.json: none, as before
    post, line = resolve_postprocess([a, b])  # an ensemble: the first (best) member's choice
    assert post == saved and "first member's is used" in line
    assert "first member" not in resolve_postprocess([a, _Member("c", saved)])[1]
    post, line = resolve_postprocess([a], min_et_volume=0.0)  # a flag overrides its field only
    assert post == PostProcess(largest_wt=True) and "--min-et-volume" in line
    assert resolve_postprocess([a], largest_wt=False)[0] == PostProcess(min_et_volume=50.0)
    assert resolve_postprocess([a], "none", largest_wt=True)[0] == PostProcess(largest_wt=True)
    with pytest.raises(ValueError, match="--postprocess"):
        resolve_postprocess([a], "best")


# -------------------------------------------------------------------------- export -> predict
@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """An untrained tiny model exported with a saved choice that turns every ET voxel into core,
    and a synthetic case to predict."""
    import keras

    from unet3d.config import preset
    from unet3d.data.synthetic import write_synthetic_dataset
    from unet3d.export.exporter import export_model
    from unet3d.training.model import build_unet3d

    root = tmp_path_factory.mktemp("ppchoice")
    write_synthetic_dataset(root / "data", 1, (48, 40, 32), seed=3)
    cfg = preset("cpu-small").replace(
        model={"base_filters": 4, "max_filters": 16, "depth": 3, "deep_supervision": False,
               "deep_supervision_heads": 1}, data={"crop": (16, 16, 16)})
    # Candidates 0 and 1e6 mm^3 (every ET component), the latter made the choice by hand (the
    # chooser never erases a region everywhere it was predicted).
    choice = choose_postprocess([_speck()], LEGACY, thresholds=(1e6,))
    choice = dataclasses.replace(choice, postprocess=PostProcess(min_et_volume=1e6))
    keras.utils.set_random_seed(0)
    out = export_model(build_unet3d(cfg.model), cfg, {}, root / "export", postprocess=choice,
                       source="test")
    return {"export": out, "data": root / "data", "choice": choice}


def _predict(exported, out: Path, *flags: str, capsys) -> tuple[np.ndarray, dict, str]:
    import nibabel as nib

    import run_search
    from unet3d.data.discover import discover

    assert run_search.main(["predict", "--model", str(exported["export"]), "--input",
                            str(exported["data"]), "--out", str(out), *flags]) == 0
    case_id = discover(exported["data"]).cases[0].case_id
    labels = np.asarray(nib.load(str(out / f"{case_id}.nii.gz")).dataobj)
    return labels, json.loads((out / "predict.json").read_text()), capsys.readouterr().out


def test_the_export_saves_the_choice_and_its_card_mentions_it(exported):
    from unet3d.inference.predictor import load_member

    folder = exported["export"]
    assert json.loads((folder / FILE).read_text()) == exported["choice"].to_dict()
    card = (folder / "MODEL_CARD.md").read_text()
    assert "## Post-processing" in card and "ET components < 1e+06 mm^3 -> core" in card
    member = load_member(folder)
    assert member.postprocess == PostProcess(min_et_volume=1e6)


def test_a_predictor_applies_its_first_members_saved_choice_by_default(exported):
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import load_case
    from unet3d.inference.predictor import Predictor, load_member

    member = load_member(exported["export"])
    loaded = load_case(dataclasses.replace(discover(exported["data"]).cases[0], label=None))
    default = Predictor([member]).predict(loaded).labels
    off = Predictor([member], postprocess=PostProcess()).predict(loaded).labels
    assert (off == 4).any() and not (default == 4).any()


def test_predict_applies_the_saved_choice_unless_told_otherwise(exported, tmp_path, capsys):
    saved, info, stdout = _predict(exported, tmp_path / "saved", capsys=capsys)
    assert info["postprocess"] == {"min_et_volume_mm3": 1e6, "largest_wt": False}
    assert "saved with" in info["postprocess_source"] and "post-processing: ET" in stdout
    none, info, _ = _predict(exported, tmp_path / "none", "--postprocess", "none", capsys=capsys)
    assert info["postprocess"] == {"min_et_volume_mm3": 0.0, "largest_wt": False}
    # The untrained model predicts ET (label 4) all over; the saved rule made every voxel of it NCR.
    assert (none == 4).any() and not (saved == 4).any()
    np.testing.assert_array_equal(np.where(none == 4, 1, none), saved)
    # An explicit flag overrides the saved field.
    over, info, _ = _predict(exported, tmp_path / "over", "--min-et-volume", "0", "--largest-wt",
                             capsys=capsys)
    assert info["postprocess"] == {"min_et_volume_mm3": 0.0, "largest_wt": True}
    assert "overridden by --min-et-volume, --largest-wt" in info["postprocess_source"]
    assert (over == 4).any()
