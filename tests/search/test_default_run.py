"""`python run_search.py` with no arguments, what `make search` runs: the demo search, a race of
the default configuration against its portfolio and neighbours for a budget of DEMO_BUDGET
trial-epochs (issue 24). A file of its own: the suite's longest test, so pytest-xdist starts it
early on a worker of its own (--dist loadfile keeps a file on one worker)."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from search.spec import DEMO_BUDGET


@pytest.mark.slow
def test_the_default_run_races_the_default_and_continues_the_winner_to_the_budget(tmp_path):
    """`python run_search.py` with no arguments: what `make search` runs."""
    r = run_cli(timeout=1500, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = next((tmp_path / "results").iterdir())
    trials = json.loads((exp / "trials.json").read_text())
    summary, rows = trials["summary"], sorted(trials["trials"], key=lambda t: t["index"])
    race = summary["race"]
    # The whole budget is spent: the race's trials, then the winner continued with the rest.
    assert race["trial_epochs"] == DEMO_BUDGET == summary["trial_epochs_run"]
    assert race["race_trial_epochs"] + race["continuation_trial_epochs"] == DEMO_BUDGET
    assert race["lost_trial_epochs"] <= race["settings"]["race_share"] * DEMO_BUDGET
    # The default first, the shipped portfolio next, then neighbours; the winner continued last.
    origins = [t["proposed_by"] for t in rows]
    assert origins[0] == "nvidia" and origins[-1] == "continued"
    assert origins[1] == "portfolio" and "local" in origins, origins
    cont = race["continuation"]
    assert cont["trial_id"] == race["incumbent"] and summary["best_trial"] == rows[-1]["trial_id"]
    assert cont["epochs"] == cont["from_epoch"] + race["continuation_trial_epochs"]
    metrics = json.loads((exp / "best" / "metrics.json").read_text())
    assert metrics["epoch"] == cont["epochs"]
    # Continued on every labelled case, as the default trained alone would be: no held-out case
    # is left, so neither a post-processing nor an ensemble is chosen on one.
    assert cont["data"] == "all" and len(metrics["train_cases"]) == 24 and not metrics["val_cases"]
    assert not (exp / "best" / "postprocess.json").exists() and "final" not in metrics
    assert "no held-out validation case" in summary["ensemble"]["why"]
    # The race's trials differ (no ceiling near 0.99); every verdict is recorded with its reason.
    scores = [t["best_score"] for t in rows[:-1]]
    assert max(scores) < 0.97 and max(scores) - min(scores) > 0.05, scores
    assert all(why for verdict, why in race["verdicts"].values() if verdict == "lost")
    assert (exp / "ensemble.json").exists()
    assert "race: " in r.stdout and "final model: the race's winner" in r.stdout
    final_line = next(x for x in r.stdout.splitlines() if x.startswith(race["final_trial"] + " "))
    assert "nan" not in final_line and " - " in final_line  # (no score: no held-out case)
    assert "id='race-events'" in (exp / "report.html").read_text()
    assert "tensorboard --logdir" in r.stdout
    print(r.stdout[-2500:])
