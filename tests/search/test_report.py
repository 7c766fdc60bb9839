"""The HTML report follows the search's label scheme and objective: one column per region (a
region outside the tumour mean, such as BraTS 2024's RC, too, and the text says so), lesion-wise
columns when the objective is lesion-wise, and the exported model's validation line from its keys."""

from __future__ import annotations

import json
import re

import pytest

from search.context import SearchContext
from search.finish import save_search
from search.report import build_report
from search.results import row_from_history, write_results
from search.spec import SearchSpec
from spaces.presets import get_space

REGIONS = ("WT", "TC", "ET", "RC")


def _epoch(epoch: int, dice: tuple[float, ...], lw: float | None = None) -> dict:
    rec = {"epoch": epoch, "loss": 0.5, "throughput_vps": 4.0 + epoch,
           **{f"val_dice_{r}": v for r, v in zip(REGIONS, dice, strict=True)},
           "val_dice_mean": sum(dice[:3]) / 3}  # RC is not in the mean
    if lw is not None:
        rec.update({"val_lesionwise_dice_mean": lw, **{f"val_lesionwise_dice_{r}": lw for r in REGIONS}})
    return rec


def _experiment(tmp_path, objective: str, final: dict | None = None):
    exp = tmp_path / "exp"
    exp.mkdir()
    ctx = SearchContext(space=get_space("demo"), data="d", cache="c", train_ids=("a", "b"),
                        val_ids=("c",), max_epochs=2, objective=objective, labels="brats-2024-gli")
    save_search(SearchSpec(name="exp", out=str(tmp_path), objective=objective), ctx, exp)
    lw = objective == "lesionwise"
    histories = {"d": [_epoch(1, (0.9, 0.8, 0.7, 0.2), 0.40 if lw else None)],
                 "l": [_epoch(1, (0.7, 0.6, 0.5, 0.9), 0.55 if lw else None),
                       _epoch(2, (0.6, 0.5, 0.4, 0.8), 0.50 if lw else None)]}
    rows = [row_from_history(t, {}, h, 2, objective=objective, checkpoint=f"ck/{t}", index=i)
            for i, (t, h) in enumerate(histories.items(), start=1)]
    write_results(rows, exp, {"trials": 2})
    if final is not None:
        (exp / "best").mkdir()
        (exp / "best" / "model.keras").write_text("")
        # as export writes it: sorted keys (ET, RC, TC, WT), so the order must come from the scheme
        (exp / "best" / "metrics.json").write_text(json.dumps({"final": final}, sort_keys=True))
    return exp


def _headers(html: str) -> list[str]:
    table = html.split("<table id='results-table'>", 1)[1].split("</tr>", 1)[0]
    return re.findall(r"<th[^>]*>([^<]*)</th>", table)


def _first_row_trial(html: str) -> str:
    table = html.split("<table id='results-table'>", 1)[1]
    return re.findall(r"<td class='l'>([^<]*)</td>", table)[0]


@pytest.mark.timeout(300)
def test_the_report_shows_rc_as_a_column_outside_the_mean(tmp_path):
    final = {"dice_WT": 0.9, "dice_TC": 0.8, "dice_ET": 0.7, "dice_RC": 0.25, "dice_mean": 0.8,
             "hd95_WT": 3.0, "hd95_TC": 4.0, "hd95_ET": 5.0, "hd95_RC": 9.0, "hd95_mean": 4.0}
    html = build_report(_experiment(tmp_path, "dice", final)).html.read_text()
    assert _headers(html)[4:9] == ["Dice", "WT", "TC", "ET", "RC"]
    assert "LW WT" not in _headers(html)
    assert _first_row_trial(html) == "d"  # the higher mean Dice, though RC is worse
    note = html.split("id='results-note'>", 1)[1].split("</p>", 1)[0]
    assert "validation mean Dice of WT, TC, ET" in note and "RC is shown but not in the mean" in note
    line = html.split("id='export-validation'>", 1)[1].split("</p>", 1)[0]
    assert "Dice WT 0.9000, TC 0.8000, ET 0.7000, RC 0.2500, mean 0.8000" in line
    assert "HD95 mean 4.00 mm" in line and "over WT, TC, ET" in line
    assert "RC is shown but not in the mean" in line and "Lesion-wise" not in line


@pytest.mark.timeout(300)
def test_a_lesionwise_report_ranks_by_it_and_has_lesionwise_columns(tmp_path):
    final = {"dice_WT": 0.9, "dice_TC": 0.8, "dice_ET": 0.7, "dice_RC": 0.25, "dice_mean": 0.8,
             "lesionwise_dice_WT": 0.6, "lesionwise_dice_TC": 0.5, "lesionwise_dice_ET": 0.4,
             "lesionwise_dice_RC": 0.1, "lesionwise_dice_mean": 0.5}
    html = build_report(_experiment(tmp_path, "lesionwise", final)).html.read_text()
    assert _headers(html)[4:14] == ["LW Dice", "Dice", "WT", "TC", "ET", "RC", "LW WT", "LW TC",
                                    "LW ET", "LW RC"]
    assert _first_row_trial(html) == "l"  # the higher lesion-wise Dice, though Dice is lower
    assert "validation mean lesion-wise Dice of WT, TC, ET" in html
    line = html.split("id='export-validation'>", 1)[1].split("</p>", 1)[0]
    assert "Lesion-wise Dice WT 0.6000, TC 0.5000, ET 0.4000, RC 0.1000, mean 0.5000" in line
    assert "RC is shown but not in the mean" in line


def test_importances_name_the_parameter_the_objective_follows_once_enough_trials_finished():
    """fANOVA over the finished trials: the objective here follows the learning rate alone, the
    depth is noise; below IMPORTANCE_MIN_TRIALS finished trials there is no importance at all."""
    import numpy as np

    from search.report import IMPORTANCE_MIN_TRIALS, importances
    from search.results import TrialRow

    space = get_space("demo")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        lr = float(10 ** rng.uniform(-3.5, -2.6))  # (the demo space: 3e-4 to 3e-3)
        rows.append(TrialRow(f"t{i}", {"train.learning_rate": lr,
                                       "model.depth": int(rng.integers(3, 6))}, "completed", 2,
                             best_score=0.2 + 0.1 * np.log10(lr * 1e4)))
    imp = importances(rows, space)
    assert max(imp, key=imp.get) == "train.learning_rate" and imp["train.learning_rate"] > 0.8, imp
    assert importances(rows[:IMPORTANCE_MIN_TRIALS - 1], space) == {}
    assert importances(rows[:IMPORTANCE_MIN_TRIALS], space)
    unscored = [TrialRow(r.trial_id, r.params, "error", 0) for r in rows]  # (no score: NaN)
    assert importances(rows[:IMPORTANCE_MIN_TRIALS - 1] + unscored, space) == {}
