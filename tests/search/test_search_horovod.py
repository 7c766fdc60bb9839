"""A search whose trials each train with 2 Horovod workers (Ray actors, Gloo on loopback)."""

from __future__ import annotations

import json
import time

import psutil
import pytest
from conftest import error_line, run_cli
from tiny_space import tiny

pytestmark = pytest.mark.slow

SPACE = tiny("  model.depth: {type: int, low: 2, high: 3}\n"
             "  model.base_filters: {type: choice, values: [4, 8]}\n"
             "  train.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n",
             name=None)


def _horovod_processes(since: float) -> list[str]:
    """A search's Horovod workers are Ray actors titled ``ray::BaseHorovodWorker``. (Not any
    process naming horovod: `train --workers 2` in a test on the other xdist worker runs
    ``horovod.runner.run_task`` processes at the same time.)"""
    found = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["create_time"] >= since and "BaseHorovodWorker" in cmd:
                found.append(cmd[:120])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_search_with_two_workers_per_trial_stops_trials_and_leaves_no_workers(tmp_path):
    """Two trials one after the other under ASHA with a budget of 3 trial-epochs (a budget alone
    would make the search a race): the first trains its 2 epochs, the second is stopped after its
    first (by the budget, or by ASHA before it when it scores lower: Ray stops a trial the same
    way for both), while its Horovod workers are up. (Five
    trials under ASHA alone stopped one only when an untrained trial happened to score lower,
    and took 3 minutes of the suite.)"""
    from unet3d.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", 8, (32, 32, 32), seed=2)
    (tmp_path / "space.yaml").write_text(SPACE)
    started = time.time()
    r = run_cli("search", "--data", str(tmp_path / "data"), "--space", str(tmp_path / "space.yaml"),
                "--out", str(tmp_path), "--name", "exp", "--workers-per-trial", "2",
                "--num-samples", "2", "--max-epochs", "2", "--grace-period", "1", "--budget", "3",
                "--scheduler", "asha", "--max-concurrent", "1", "--folds", "4", "--verbose", "0",
                timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # While Ray was still up at the end of the search, no worker of a stopped trial was left.
    assert "Horovod worker process(es) still alive" not in r.stdout
    trials = json.loads((tmp_path / "exp" / "trials.json").read_text())
    rows = sorted(trials["trials"], key=lambda t: t["index"])
    assert len(rows) == 2
    for t in rows:
        assert all(h["workers"] == 2 for h in t["history"]), "a trial trained without 2 workers"
    assert trials["summary"]["trials_stopped_early"] == 1
    assert [(t["status"], t["epochs"]) for t in rows] == [("completed", 2), ("stopped", 1)]
    assert (tmp_path / "exp" / "best" / "model.keras").exists()
    deadline = time.monotonic() + 30
    while _horovod_processes(started) and time.monotonic() < deadline:
        time.sleep(1)
    assert _horovod_processes(started) == []


def test_workers_per_trial_needs_the_ray_engine(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    from unet3d.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", 5, (32, 32, 32), seed=2)
    r = run_cli("search", "--data", str(tmp_path / "data"), "--space", str(tmp_path / "space.yaml"),
                "--out", str(tmp_path), "--name", "x", "--engine", "keras-tuner",
                "--workers-per-trial", "2", timeout=300)
    assert "needs --engine ray" in error_line(r)
