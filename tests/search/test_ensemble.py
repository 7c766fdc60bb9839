"""The race's final ensemble choice (search.ensemble): an ensemble of the final model and the
next-best trials replaces it only when it is ahead on the validation cases by the race's paired
rule; the chosen members become EXPERIMENT/ensemble, which predict takes for the experiment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from search import ensemble
from search.results import TrialRow
from search.storage import ExperimentFolder


def _row(tid: str, score: float) -> TrialRow:
    return TrialRow(trial_id=tid, params={}, status="completed", epochs=2, best_score=score,
                    checkpoint=f"/ckpt/{tid}")


class _Ctx:
    objective = "dice"


def _setup(tmp_path: Path, alone: list[float]) -> tuple[Path, Path, list[Path]]:
    exp = tmp_path / "exp"
    best = exp / "best"
    best.mkdir(parents=True)
    (best / "model.keras").write_text("x")
    (best / "metrics.json").write_text(json.dumps(
        {"per_case": [{"case_id": f"c{i}", "dice_mean": s} for i, s in enumerate(alone)]}))
    exported: list[Path] = []
    return exp, best, exported


def _export(exported: list[Path]):
    def export(row: TrialRow, folder: Path) -> Path:
        folder.mkdir(parents=True)
        (folder / "model.keras").write_text(row.trial_id)
        exported.append(folder)
        return folder
    return export


ALONE = [0.60, 0.70, 0.65, 0.72, 0.58, 0.69]


@pytest.mark.parametrize("gains, chosen", [
    ([[0.05, 0.06, 0.04, 0.05, 0.07, 0.05], [0.0] * 6], 2),        # two members clearly ahead
    ([[0.001, -0.002, 0.003, 0.0, -0.001, 0.002], [0.06, 0.05, 0.07, 0.05, 0.06, 0.05]], 3),
    ([[0.3, -0.05, -0.04, -0.06, 0.0, -0.02], [0.2, -0.04, -0.04, -0.03, 0.0, 0.0]], 0),  # one case
])
def test_an_ensemble_replaces_the_final_model_only_when_it_is_ahead_case_by_case(
        tmp_path, monkeypatch, gains, chosen):
    exp, best, exported = _setup(tmp_path, ALONE)
    tries = iter(gains)
    monkeypatch.setattr(ensemble, "_scores", lambda folders, ctx, objective: [
        a + g for a, g in zip(ALONE, next(tries), strict=True)])
    final, rows = _row("cont", 0.7), [_row("cont", 0.7), _row("a", 0.6), _row("b", 0.55),
                                      _row("c", 0.5)]
    record = ensemble.choose_ensemble(rows, final, best, _Ctx(), exp, _export(exported),
                                      margin=0.02, alpha=0.05)
    assert [f.name for f in exported] == ["rank2_a", "rank3_b"]  # the next best, in order
    assert [t["chosen"] for t in record["tried"]] == [chosen == 2, chosen == 3]
    assert record["chosen"] == bool(chosen)
    assert json.loads(ExperimentFolder(exp).ensemble_record.read_text())["chosen"] == bool(chosen)
    members = ensemble.final_members(exp)
    if not chosen:
        assert members is None and not (exp / "ensemble").exists() and "no ensemble" in record["why"]
        return
    assert [m.name for m in members] == [f"member_{k}" for k in range(1, chosen + 1)]
    assert members[0].resolve() == best.resolve() and (members[1] / "model.keras").read_text() == "a"
    assert members[0].is_symlink() and not Path(os.readlink(members[0])).is_absolute()


def test_without_validation_cases_or_other_trials_the_final_model_stays_alone(tmp_path):
    exp, best, exported = _setup(tmp_path, [])
    record = ensemble.choose_ensemble([_row("cont", 0.7), _row("a", 0.6)], _row("cont", 0.7), best,
                                      _Ctx(), exp, _export(exported), margin=0.02, alpha=0.05)
    assert not record["chosen"] and record["why"] == "no validation cases" and not exported
    exp, best, exported = _setup(tmp_path / "2", ALONE)
    record = ensemble.choose_ensemble([_row("cont", 0.7)], _row("cont", 0.7), best, _Ctx(), exp,
                                      _export(exported), margin=0.02, alpha=0.05)
    assert record["why"] == "no other trial with a checkpoint"
