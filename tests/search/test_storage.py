"""An experiment's folder and location (search.storage): its file names are the on-disk format of
every earlier search, so each is pinned here by hand."""

from __future__ import annotations

from pathlib import Path

from search.storage import Experiment, ExperimentFolder
from unet3d.folders import ExportFolder


def test_an_experiment_folders_files(tmp_path):
    exp = ExperimentFolder(tmp_path)
    assert (exp.search, exp.trials, exp.results, exp.report, exp.race, exp.journal,
            exp.ensemble_record) == tuple(tmp_path / n for n in (
                "search.json", "trials.json", "results.csv", "report.html", "race.json",
                "optuna.log", "ensemble.json"))
    assert exp.best == ExportFolder(tmp_path / "best")
    assert exp.top(2, "ab12").path == tmp_path / "top" / "rank2_ab12"
    assert exp.pareto(1).path == tmp_path / "pareto" / "rank_1"
    assert exp.ensemble == tmp_path / "ensemble" and exp.retrained == tmp_path / "retrained"
    assert exp.trial_run("trial_ab12").path == tmp_path / "trial_ab12" / "run"
    for name in ("trial_b", "trial_a"):
        (tmp_path / name / "run").mkdir(parents=True)
    (tmp_path / "trial_c").mkdir()  # (no run folder yet)
    assert [r.path.parent.name for r in exp.trial_runs()] == ["trial_a", "trial_b"]


def test_an_experiment_locations_folder_is_its_local_one(tmp_path):
    local = Experiment(str(tmp_path), "exp")
    assert local.folder == ExperimentFolder(tmp_path / "exp") and not local.exists()
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "search.json").write_text("{}")
    assert local.exists()
    remote = Experiment("s3://bucket/results", "exp", staging=tmp_path / "staging")
    assert remote.location == "s3://bucket/results/exp"
    assert remote.folder.path == Path(tmp_path / "staging" / "exp")
