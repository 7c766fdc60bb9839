"""Failing trials: a diverged (NaN) configuration is recorded as failed with its reason while the
search goes on; the fault-injection switch itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from tiny_space import SPACE

from search import faults


def test_crash_fires_once_per_marker_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(faults.ENV, f"crash:2:1:{tmp_path}")
    faults.after_report(1, 1)  # another trial
    faults.after_report(2, 2)  # another epoch
    with pytest.raises(faults.InjectedFault, match="trial 2 after epoch 1"):
        faults.after_report(2, 1)
    faults.after_report(2, 1)  # the retried trial goes on
    assert (tmp_path / "crash_trial2_epoch1").exists()


def test_unset_does_nothing_and_a_bad_spec_says_what_is_expected(monkeypatch, tmp_path):
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.after_report(1, 1)
    monkeypatch.setenv(faults.ENV, "crash:x:1:/tmp")
    with pytest.raises(ValueError, match="KIND:TRIAL:EPOCH:FOLDER"):
        faults.after_report(1, 1)
    monkeypatch.setenv(faults.ENV, f"boom:1:1:{tmp_path}")
    with pytest.raises(ValueError, match="unknown fault 'boom'"):
        faults.after_report(1, 1)


@pytest.mark.slow
def test_a_nan_loss_fails_its_trial_with_the_reason_and_the_search_goes_on(tmp_path):
    from unet3d.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", 8, (32, 32, 32), seed=3)
    (tmp_path / "space.yaml").write_text(SPACE)
    markers = tmp_path / "faults"
    markers.mkdir()
    # Trial 1's weights become NaN after every epoch from epoch 1 on: it diverges on each attempt.
    r = run_cli("search", "--data", str(tmp_path / "data"), "--space", str(tmp_path / "space.yaml"),
                "--out", str(tmp_path / "results"), "--name", "nan", "--verbose", "0", "--folds", "4",
                "--num-samples", "3", "--max-epochs", "3", "--grace-period", "3",
                "--max-failures", "1", env={faults.ENV: f"nan:1:1:{markers}"}, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads((tmp_path / "results" / "nan" / "trials.json").read_text())["trials"]
    bad = next(t for t in rows if t["index"] == 1)
    assert bad["status"] == "error"
    assert "loss is nan in epoch" in bad["error"] and "training diverged" in bad["error"]
    # Retried once from its last good checkpoint (epoch 1), it diverged again in epoch 3.
    fired = sorted(p.name for p in markers.iterdir())
    failures = Path(bad["run_dir"]) / "error.txt"  # (Ray's record of each attempt's failure)
    assert fired == ["nan_trial1_epoch1", "nan_trial1_epoch2"], (fired, failures.read_text())
    assert "in epoch 3" in bad["error"]
    assert all(t["status"] == "completed" for t in rows if t["index"] != 1)
    assert f"trial {bad['trial_id']} failed: " in r.stdout
    summary = json.loads((tmp_path / "results" / "nan" / "trials.json").read_text())["summary"]
    assert summary["best_trial"] != bad["trial_id"]
    assert (tmp_path / "results" / "nan" / "best" / "model.keras").exists()
