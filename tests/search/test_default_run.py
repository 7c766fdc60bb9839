"""`python run_search.py` with no arguments, what `make search` runs: the demo search, a race of
the default configuration against its portfolio and neighbours for a budget of DEMO_BUDGET
trial-epochs (issue 24). A file of its own: one of the suite's longest tests, which
tests/conftest.py has pytest-xdist start early (--dist loadfile keeps a file on one worker).

The end-to-end test runs the same search in an empty folder (the demo data written on first use,
the demo space, the race) with a quarter of the budget and a race share that leaves the race as it
is at DEMO_BUDGET: the same four racing trial-epochs, a shorter continuation (2 epochs instead of
20, about 3 minutes of the suite's time; `make search` and scripts/docs_examples.py run the full
one).
That the argument-less command is this search at DEMO_BUDGET is checked on its own."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from search.race import RACE_SHARE
from search.spec import DEMO_BUDGET

BUDGET = DEMO_BUDGET // 4
SHARE = round(4 * RACE_SHARE, 6)  # (the same trial-epochs the race may lose as at DEMO_BUDGET)


def test_without_arguments_the_cli_runs_the_demo_search_at_its_budget(monkeypatch):
    import run_search

    ran = []

    def search(ns):
        """Records the search it is asked for (the parser takes a command's help from here)."""
        ran.append(ns)
        return 0

    monkeypatch.setattr(run_search, "cmd_search", search)
    assert run_search.main([]) == 0
    assert ran == [run_search.build_parser().parse_args(["search", "--budget", str(DEMO_BUDGET)])]
    assert ran[0].budget == 24 and ran[0].race_share is None and ran[0].data is None


@pytest.mark.slow
def test_the_default_run_races_the_default_and_continues_the_winner_to_the_budget(tmp_path):
    """The demo search in an empty folder: what `make search` runs, on a quarter of its budget."""
    r = run_cli("search", "--budget", str(BUDGET), "--race-share", str(SHARE), timeout=1500,
                cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = next((tmp_path / "results").iterdir())
    trials = json.loads((exp / "trials.json").read_text())
    summary, rows = trials["summary"], sorted(trials["trials"], key=lambda t: t["index"])
    race = summary["race"]
    # The whole budget is spent: the race's trials, then the winner continued with the rest.
    assert race["trial_epochs"] == BUDGET == summary["trial_epochs_run"]
    assert race["race_trial_epochs"] + race["continuation_trial_epochs"] == BUDGET
    assert race["lost_trial_epochs"] <= race["settings"]["race_share"] * BUDGET
    assert race["settings"]["race_share"] * BUDGET == pytest.approx(RACE_SHARE * DEMO_BUDGET)
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
