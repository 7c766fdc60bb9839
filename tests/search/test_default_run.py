"""`python run_search.py` with no arguments, what `make search` runs: the demo search (issue 15's
acceptance). A file of its own: the suite's longest test, so pytest-xdist starts it early on a
worker of its own (--dist loadfile keeps a file on one worker)."""

from __future__ import annotations

import json

from conftest import run_cli


def test_the_default_run_searches_with_asha_stopping_trials_early(tmp_path):
    """`python run_search.py` with no arguments: what `make search` runs."""
    r = run_cli(timeout=1200, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = next((tmp_path / "results").iterdir())
    trials = json.loads((exp / "trials.json").read_text())
    summary = trials["summary"]
    assert summary["trials"] == 8 and summary["trials_stopped_early"] >= 1
    assert summary["trial_epochs_run"] < summary["trial_epochs_without_early_stopping"]
    assert any(t["status"] == "stopped" and t["epochs"] < 8 for t in trials["trials"])
    assert (exp / "best" / "model.keras").exists()
    # The demo data is hard enough for configurations to differ (no ceiling near 0.99), and TPE
    # proposes trials (its start-up is 2 of the 8: NVIDIA's point and one random).
    scores = [t["best_score"] for t in trials["trials"]]
    assert max(scores) < 0.97 and max(scores) - min(scores) > 0.1, scores
    assert sum(t["proposed_by"] == "tpe" for t in trials["trials"]) >= 3
    assert (exp / "best" / "postprocess.json").exists()
    assert "stopped early" in r.stdout and "tensorboard --logdir" in r.stdout
    print(r.stdout[-2500:])
