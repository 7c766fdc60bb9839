"""Trial rows from made-up histories: a trial is scored by its best epoch (by the search's
objective), never its last; its regions are the label scheme's, whatever they are."""

from __future__ import annotations

import csv
import json
import math

import pytest

from search.objective import METRIC
from search.results import (
    TrialRow,
    asha_savings,
    best_row,
    format_table,
    ranked,
    row_from_history,
    write_results,
)

LW = "val_lesionwise_dice_mean"


def _epoch(epoch: int, mean: float, wt: float, tc: float, et: float, vps: float = 10.0) -> dict:
    return {"epoch": epoch, "loss": 1.0 / epoch, METRIC: mean, "val_dice_WT": wt,
            "val_dice_TC": tc, "val_dice_ET": et, "throughput_vps": vps}


# Rises to its best at epoch 3, then falls: the last epoch is neither the best nor the first.
RISE_FALL = [
    _epoch(1, 0.20, 0.30, 0.20, 0.10, vps=1.0),  # the first epoch's throughput includes tracing
    _epoch(2, 0.50, 0.60, 0.50, 0.40, vps=11.0),
    _epoch(3, 0.80, 0.90, 0.80, 0.70, vps=13.0),
    _epoch(4, 0.60, 0.70, 0.65, 0.45, vps=12.0),
    _epoch(5, 0.40, 0.55, 0.35, 0.30, vps=14.0),
]


def _gli(epoch: int, wt: float, tc: float, et: float, rc: float) -> dict:
    """A BraTS 2024 GLI epoch: RC is reported after ET but is not in the tumour mean."""
    return {"epoch": epoch, "loss": 0.5, "val_dice_WT": wt, "val_dice_TC": tc, "val_dice_ET": et,
            "val_dice_RC": rc, METRIC: (wt + tc + et) / 3, "throughput_vps": 5.0}


def _gtv(epoch: int, gtv: float) -> dict:
    """A BraTS MEN-RT epoch: one region, GTV, which is the mean."""
    return {"epoch": epoch, "loss": 0.5, "val_dice_GTV": gtv, METRIC: gtv, "throughput_vps": 5.0}


def _lesionwise(epoch: int, dice: float, lw: float) -> dict:
    """An epoch of a lesion-wise search (regions WT, TC, ET; per-region values = the means)."""
    return {"epoch": epoch, "loss": 0.5, METRIC: dice, LW: lw, "throughput_vps": 5.0,
            **{f"val_dice_{r}": dice for r in ("WT", "TC", "ET")},
            **{f"val_lesionwise_dice_{r}": lw for r in ("WT", "TC", "ET")}}


def test_row_takes_every_best_value_from_the_best_epoch():
    row = row_from_history("t1", {"model.depth": 3}, RISE_FALL, max_epochs=5, checkpoint="ck")
    assert row.best_epoch == 3 and row.objective == "dice"
    assert row.best_score == pytest.approx(0.80) and row.best_dice_mean == pytest.approx(0.80)
    assert row.best_regions == pytest.approx({"WT": 0.90, "TC": 0.80, "ET": 0.70})
    assert list(row.best_regions) == ["WT", "TC", "ET"]
    assert math.isnan(row.best_lesionwise_mean) and row.best_lesionwise_regions == {}
    assert row.last_score == pytest.approx(0.40)
    assert row.status == "completed" and row.epochs == 5
    # median of the epochs after the first (11, 12, 13, 14 -> the upper middle, 13)
    assert row.throughput_vps == pytest.approx(13.0)
    assert row.history == RISE_FALL and row.history is not RISE_FALL


def test_row_best_ignores_unscored_epochs_and_a_shuffled_order():
    history = [dict(RISE_FALL[2]), {**RISE_FALL[3], METRIC: float("nan")},
               {"epoch": 6, "loss": 0.1}, dict(RISE_FALL[0]), dict(RISE_FALL[4])]
    row = row_from_history("t", {}, history, max_epochs=10)
    assert row.best_epoch == 3 and row.best_score == pytest.approx(0.80)
    assert row.best_regions["ET"] == pytest.approx(0.70)
    assert row.epochs == 6 and row.status == "stopped"
    assert row.last_score == pytest.approx(0.40)  # the last *scored* epoch


def test_an_epoch_reported_again_after_a_restore_counts_once_as_its_last_report():
    """A restored trial re-runs the epochs after its last checkpoint: Ray's history holds epoch
    3 twice. The first report's weights are in no checkpoint, so it can be neither the best epoch
    nor a second entry (CI, stop 31: a resumed trial's 6 records for 5 epochs)."""
    rerun = {**RISE_FALL[2], METRIC: 0.45}
    history = [dict(h) for h in RISE_FALL[:3]] + [rerun] + [dict(h) for h in RISE_FALL[3:]]
    row = row_from_history("t", {}, history, max_epochs=5)
    assert [h["epoch"] for h in row.history] == [1, 2, 3, 4, 5]
    assert row.history[2] == rerun and row.epochs == 5
    assert row.best_epoch == 4 and row.best_score == pytest.approx(RISE_FALL[3][METRIC])


def test_row_status_and_empty_history():
    assert row_from_history("t", {}, RISE_FALL[:4], max_epochs=5).status == "stopped"
    assert row_from_history("t", {}, RISE_FALL, max_epochs=5, error="boom").status == "error"
    empty = row_from_history("t", {}, [], max_epochs=5)
    assert empty.epochs == 0 and empty.best_epoch == 0 and empty.status == "stopped"
    assert math.isnan(empty.best_score) and math.isnan(empty.last_score)
    assert math.isnan(empty.best_dice_mean) and empty.best_regions == {}
    assert math.isnan(empty.throughput_vps)


def test_best_is_last_scores_the_last_validated_epoch():
    """Keras Tuner keeps a trial's last weights: its row is scored by that epoch, not the best."""
    row = row_from_history("t", {}, RISE_FALL + [{"epoch": 6, "loss": 0.1}], max_epochs=6,
                           best_is_last=True)
    assert row.best_epoch == 5 and row.best_score == pytest.approx(0.40)
    assert row.best_regions == pytest.approx({"WT": 0.55, "TC": 0.35, "ET": 0.30})


def test_best_row_picks_the_highest_best_not_the_highest_last():
    # a peaks at 0.80 and ends at 0.40; b ends higher (0.70) but never beat 0.70.
    steady = [_epoch(1, 0.50, 0.6, 0.5, 0.4), _epoch(2, 0.70, 0.8, 0.7, 0.6)]
    a = row_from_history("a", {}, RISE_FALL, 5, checkpoint="ck/a")
    b = row_from_history("b", {}, steady, 5, checkpoint="ck/b")
    assert b.last_score > a.last_score and a.best_score > b.best_score
    assert best_row([b, a]).trial_id == "a"
    assert best_row([a, b]).trial_id == "a"
    # a trial without a checkpoint, or without a finite score, cannot be the best
    no_ckpt = row_from_history("c", {}, [_epoch(1, 0.99, 1, 1, 1)], 5)
    nan = TrialRow(trial_id="d", params={}, status="error", epochs=0, checkpoint="ck/d")
    assert best_row([no_ckpt, nan, b]).trial_id == "b"
    assert best_row([no_ckpt, nan]) is None and best_row([]) is None


def test_table_ranks_trials_by_their_best_score():
    steady = [_epoch(1, 0.50, 0.6, 0.5, 0.4), _epoch(2, 0.70, 0.8, 0.7, 0.6)]
    rows = [row_from_history("b", {"train.lr": 1e-3}, steady, 5),
            TrialRow(trial_id="e", params={"train.lr": 1.0}, status="error", epochs=1,
                     error="diverged"),
            row_from_history("a", {"train.lr": 2e-4}, RISE_FALL, 5)]
    lines = format_table(rows).splitlines()
    assert lines[0].split()[:7] == ["trial", "status", "ep", "Dice", "WT", "TC", "ET"]
    order = [line.split()[0] for line in lines[2:5]]
    assert order == ["a", "b", "e"]
    assert lines[-1] == "trial e failed: diverged"
    # A trial with no score (the errored one; a race's winner continued on every labelled case)
    # shows "-" where a scored one shows its Dice, in the same columns.
    assert lines[4].split()[3:8] == ["-", "-", "-", "-", "-"] and "nan" not in lines[4]
    assert lines[4].index("-") == lines[2].index("0.800") + 4  # (right-aligned like the scores)


def test_asha_savings_counts_epochs_of_non_failed_trials():
    rows = [row_from_history("a", {}, RISE_FALL, 5),
            row_from_history("b", {}, RISE_FALL[:2], 5),
            row_from_history("c", {}, RISE_FALL[:1], 5, error="boom")]
    assert asha_savings(rows, 5) == {"trial_epochs_run": 7, "trial_epochs_without_early_stopping": 10,
                                     "trial_epochs_saved": 3, "trials_stopped_early": 1}


def test_ranked_orders_by_best_score_and_keeps_ties_and_unscored_in_proposal_order():
    steady = [_epoch(1, 0.50, 0.6, 0.5, 0.4), _epoch(2, 0.70, 0.8, 0.7, 0.6)]
    tie = [_epoch(1, 0.70, 0.7, 0.7, 0.7)]
    rows = [TrialRow(trial_id="u1", params={}, status="error", epochs=0),
            row_from_history("b", {}, steady, 5, checkpoint="ck/b"),
            row_from_history("t", {}, tie, 5),  # same best as b, proposed after it
            TrialRow(trial_id="u2", params={}, status="error", epochs=0, checkpoint="ck/u2"),
            row_from_history("a", {}, RISE_FALL, 5, checkpoint="ck/a")]
    assert [r.trial_id for r in ranked(rows)] == ["a", "b", "t", "u1", "u2"]
    assert [r.trial_id for r in ranked(rows, exportable=True)] == ["a", "b"]
    assert [r.trial_id for r in rows] == ["u1", "b", "t", "u2", "a"]  # the input is not reordered


# -- label schemes other than WT, TC, ET -------------------------------------------------------

def test_gli_2024_rows_keep_rc_as_a_region_outside_the_mean(tmp_path):
    """RC is a column of the table and of results.csv, after ET; the score is the mean without it.
    Trial r has the best RC but the worse mean: it ranks second."""
    q = row_from_history("q", {"train.lr": 1e-3}, [_gli(1, 0.9, 0.8, 0.7, 0.1)], 1, checkpoint="ck")
    r = row_from_history("r", {"train.lr": 2e-3}, [_gli(1, 0.6, 0.6, 0.6, 0.9)], 1, checkpoint="ck")
    assert list(q.best_regions) == ["WT", "TC", "ET", "RC"]
    assert q.best_regions["RC"] == pytest.approx(0.1) and q.best_score == pytest.approx(0.8)
    assert [x.trial_id for x in ranked([r, q])] == ["q", "r"]

    lines = format_table([r, q]).splitlines()
    assert lines[0].split()[:8] == ["trial", "status", "ep", "Dice", "WT", "TC", "ET", "RC"]
    assert [line.split()[0] for line in lines[2:4]] == ["q", "r"]
    assert lines[2].split()[3:8] == ["0.800", "0.900", "0.800", "0.700", "0.100"]

    write_results([r, q], tmp_path, {})
    header, *body = list(csv.reader((tmp_path / "results.csv").open()))
    assert header[4:11] == ["best_epoch", "best_score", "best_dice_mean", "best_dice_WT",
                            "best_dice_TC", "best_dice_ET", "best_dice_RC"]
    assert "best_lesionwise_mean" not in header
    assert header[-1] == "train.lr"
    rc = header.index("best_dice_RC")
    assert [float(line[rc]) for line in body] == pytest.approx([0.9, 0.1])


def test_a_one_region_scheme_has_one_region_column(tmp_path):
    rows = [row_from_history("m", {}, [_gtv(1, 0.4), _gtv(2, 0.7)], 2, checkpoint="ck"),
            row_from_history("n", {}, [_gtv(1, 0.5)], 2, checkpoint="ck")]
    assert rows[0].best_regions == pytest.approx({"GTV": 0.7}) and rows[0].best_epoch == 2
    head = format_table(rows).splitlines()[0].split()
    assert head[:5] == ["trial", "status", "ep", "Dice", "GTV"] and "WT" not in head
    write_results(rows, tmp_path, {})
    header = next(csv.reader((tmp_path / "results.csv").open()))
    assert [c for c in header if c.startswith("best_")] == ["best_epoch", "best_score",
                                                            "best_dice_mean", "best_dice_GTV"]


def test_a_lesionwise_search_ranks_by_the_lesionwise_mean(tmp_path):
    """Trial d has the higher Dice, trial l the higher lesion-wise Dice: the objective decides.
    Within trial l, the best epoch by lesion-wise Dice (2) is not the best by Dice (1)."""
    d_hist = [_lesionwise(1, 0.90, 0.50)]
    l_hist = [_lesionwise(1, 0.85, 0.55), _lesionwise(2, 0.70, 0.60)]
    by_dice = [row_from_history(t, {}, h, 2, checkpoint="ck") for t, h in (("l", l_hist), ("d", d_hist))]
    by_lw = [row_from_history(t, {}, h, 2, checkpoint="ck", objective="lesionwise")
             for t, h in (("d", d_hist), ("l", l_hist))]
    assert [r.trial_id for r in ranked(by_dice)] == ["d", "l"] and best_row(by_dice).trial_id == "d"
    assert [r.trial_id for r in ranked(by_lw)] == ["l", "d"] and best_row(by_lw).trial_id == "l"
    lw = by_lw[1]
    assert (lw.objective, lw.best_epoch) == ("lesionwise", 2)
    assert (lw.best_score, lw.best_dice_mean, lw.best_lesionwise_mean) == pytest.approx((0.6, 0.7, 0.6))
    assert lw.best_lesionwise_regions == pytest.approx({"WT": 0.6, "TC": 0.6, "ET": 0.6})
    assert by_dice[0].best_epoch == 1

    lines = format_table(by_lw).splitlines()
    assert lines[0].split()[:9] == ["trial", "status", "ep", "LW", "Dice", "Dice", "WT", "TC", "ET"]
    assert [line.split()[0] for line in lines[2:4]] == ["l", "d"]
    assert lines[2].split()[3:5] == ["0.600", "0.700"]

    write_results(by_lw, tmp_path, {})
    header = next(csv.reader((tmp_path / "results.csv").open()))
    assert header[5:12] == ["best_score", "best_dice_mean", "best_dice_WT", "best_dice_TC",
                            "best_dice_ET", "best_lesionwise_mean", "best_lesionwise_dice_WT"]


def test_trials_json_round_trips_rows_and_an_old_file_still_loads(tmp_path):
    from search.finish import load_rows

    rows = [row_from_history("q", {"train.lr": 1e-3}, [_gli(1, 0.9, 0.8, 0.7, 0.1)], 1,
                             checkpoint="ck/q"),
            row_from_history("l", {}, [_lesionwise(1, 0.8, 0.6)], 1, objective="lesionwise"),
            TrialRow(trial_id="e", params={}, status="error", epochs=0, error="boom")]
    write_results(rows, tmp_path, {"trials": 3})
    back = load_rows(tmp_path)
    assert [r.trial_id for r in back] == ["q", "l", "e"]
    for a, b in zip(rows, back, strict=True):
        assert json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)
    assert list(back[0].best_regions) == ["WT", "TC", "ET", "RC"]

    # A trials.json from before label schemes: fixed WT/TC/ET fields, ranked by best_dice_mean.
    old = {"summary": {}, "trials": [
        {"trial_id": t, "params": {}, "status": "completed", "epochs": 2, "best_epoch": 2,
         "best_dice_mean": mean, "best_dice_WT": 0.9, "best_dice_TC": 0.8, "best_dice_ET": 0.7,
         "last_dice_mean": mean, "throughput_vps": 3.0, "wall_s": 1.0, "node": "", "node_id": "",
         "error": "", "checkpoint": f"ck/{t}", "run_dir": "", "index": i, "history": []}
        for i, (t, mean) in enumerate((("x", 0.5), ("y", 0.8)), start=1)]}
    (tmp_path / "trials.json").write_text(json.dumps(old))
    back = load_rows(tmp_path)
    assert [r.trial_id for r in ranked(back)] == ["y", "x"]
    assert back[1].best_score == pytest.approx(0.8) and back[1].last_score == pytest.approx(0.8)
    assert back[1].best_regions == pytest.approx({"WT": 0.9, "TC": 0.8, "ET": 0.7})
    assert back[1].objective == "dice"


def test_the_finished_search_summary_scores_and_exports_the_best_trial_by_its_best_epoch(tmp_path):
    """``finish`` end to end on rows with a real checkpoint: the summary's ``best_score`` is the
    best trial's best epoch (0.80 at epoch 3), not its last (0.40), and that trial is exported
    (the steady one's 0.70 would win on last epochs)."""
    from pathlib import Path

    from search.context import SearchContext
    from search.finish import finish
    from spaces.presets import get_space

    checkpoint = Path(__file__).parents[1] / "unet3d" / "data" / "pre_upconv"  # a real run folder
    steady = [_epoch(e, 0.70, 0.80, 0.70, 0.60) for e in range(1, 6)]
    rows = [row_from_history("rise_fall", {}, RISE_FALL, max_epochs=5, checkpoint=str(checkpoint)),
            row_from_history("steady", {}, steady, max_epochs=5, checkpoint=str(checkpoint),
                             index=1)]
    ctx = SearchContext(space=get_space("demo"), data="", cache=str(tmp_path / "no_cache"),
                        train_ids=("a",), val_ids=(), max_epochs=5)
    summary = finish(rows, ctx, tmp_path, "ray")
    assert (summary["best_trial"], summary["best_score"], summary["best_dice_mean"]) == \
        ("rise_fall", 0.80, 0.80)
    exported = json.loads((tmp_path / "best" / "metrics.json").read_text())
    assert exported["trial_id"] == "rise_fall"
    saved = json.loads((tmp_path / "trials.json").read_text())["summary"]
    assert saved["best_score"] == 0.80
