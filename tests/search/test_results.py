"""Trial rows from made-up histories: a trial is scored by its best epoch, never its last."""

from __future__ import annotations

import math

import pytest

from search.objective import METRIC
from search.results import TrialRow, asha_savings, best_row, format_table, row_from_history


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


def test_row_takes_every_best_value_from_the_best_epoch():
    row = row_from_history("t1", {"model.depth": 3}, RISE_FALL, max_epochs=5, checkpoint="ck")
    assert row.best_epoch == 3
    assert row.best_dice_mean == pytest.approx(0.80)
    assert (row.best_dice_WT, row.best_dice_TC, row.best_dice_ET) == pytest.approx((0.90, 0.80, 0.70))
    assert row.last_dice_mean == pytest.approx(0.40)
    assert row.status == "completed" and row.epochs == 5
    # median of the epochs after the first (11, 12, 13, 14 -> the upper middle, 13)
    assert row.throughput_vps == pytest.approx(13.0)
    assert row.history == RISE_FALL and row.history is not RISE_FALL


def test_row_best_ignores_unscored_epochs_and_a_shuffled_order():
    history = [dict(RISE_FALL[2]), {**RISE_FALL[3], METRIC: float("nan")},
               {"epoch": 6, "loss": 0.1}, dict(RISE_FALL[0]), dict(RISE_FALL[4])]
    row = row_from_history("t", {}, history, max_epochs=10)
    assert row.best_epoch == 3 and row.best_dice_mean == pytest.approx(0.80)
    assert row.best_dice_ET == pytest.approx(0.70)
    assert row.epochs == 6 and row.status == "stopped"
    assert row.last_dice_mean == pytest.approx(0.40)  # the last *scored* epoch


def test_row_status_and_empty_history():
    assert row_from_history("t", {}, RISE_FALL[:4], max_epochs=5).status == "stopped"
    assert row_from_history("t", {}, RISE_FALL, max_epochs=5, error="boom").status == "error"
    empty = row_from_history("t", {}, [], max_epochs=5)
    assert empty.epochs == 0 and empty.best_epoch == 0 and empty.status == "stopped"
    assert math.isnan(empty.best_dice_mean) and math.isnan(empty.last_dice_mean)
    assert math.isnan(empty.throughput_vps)


def test_best_row_picks_the_highest_best_not_the_highest_last():
    # a peaks at 0.80 and ends at 0.40; b ends higher (0.70) but never beat 0.70.
    steady = [_epoch(1, 0.50, 0.6, 0.5, 0.4), _epoch(2, 0.70, 0.8, 0.7, 0.6)]
    a = row_from_history("a", {}, RISE_FALL, 5, checkpoint="ck/a")
    b = row_from_history("b", {}, steady, 5, checkpoint="ck/b")
    assert b.last_dice_mean > a.last_dice_mean and a.best_dice_mean > b.best_dice_mean
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
    order = [line.split()[0] for line in lines[2:5]]
    assert order == ["a", "b", "e"]
    assert lines[-1] == "trial e failed: diverged"


def test_asha_savings_counts_epochs_of_non_failed_trials():
    rows = [row_from_history("a", {}, RISE_FALL, 5),
            row_from_history("b", {}, RISE_FALL[:2], 5),
            row_from_history("c", {}, RISE_FALL[:1], 5, error="boom")]
    assert asha_savings(rows, 5) == {"trial_epochs_run": 7, "trial_epochs_without_early_stopping": 10,
                                     "trial_epochs_saved": 3, "trials_stopped_early": 1}


def test_ranked_orders_by_best_score_and_keeps_ties_and_unscored_in_proposal_order():
    from search.results import ranked

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
