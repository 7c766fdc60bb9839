"""Tracking next to TensorBoard (``search.tracking``): MLflow runs read back through MLflow's client,
W&B offline runs, and the Optuna study kept in the experiment folder (Optuna's journal).

Slow: one small Ray search through the CLI with --mlflow and --wandb (shared by the tests that read
it), one Keras Tuner search through the API with mlflow=. The resumed search's MLflow runs and
journal: test_api's interrupted-search test.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from conftest import error_line, run_cli
from tiny_space import SPACE3 as TINY

from search.spec import SearchError


def mlflow_runs(uri: str) -> tuple[object, object, list]:
    """(client, the parent run, its child runs) of the one search logged at ``uri``."""
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    eid = client.get_experiment_by_name("unet3d-search").experiment_id
    runs = client.search_runs([eid])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return client, parents[0], children


def check_trial_runs(client, children: list, trials: list[dict]) -> None:
    """One MLflow run per trial that ran: its parameters, an epoch-by-epoch val_dice_mean as the
    trial's own history, the search's status for it."""
    ran = [t for t in trials if t["status"] != "pruned"]
    by_id = {r.data.tags["trial_id"]: r for r in children}
    assert sorted(by_id) == sorted(t["trial_id"] for t in ran)
    for t in ran:
        run = by_id[t["trial_id"]]
        assert run.info.status == "FINISHED" and run.data.tags["status"] == t["status"]
        assert run.data.params == {k: str(v) for k, v in t["params"].items()}
        # (steps are the trial's epochs; the race's continuation starts after its winner's; a
        # restored trial logs again the epochs after its checkpoint: the later value stands)
        logged = {m.step: m.value for m in sorted(
            client.get_metric_history(run.info.run_id, "val_dice_mean"), key=lambda m: m.timestamp)}
        assert logged == pytest.approx({int(h["epoch"]): h["val_dice_mean"] for h in t["history"]})
        assert len(logged) == len(t["history"]) and max(logged) == t["epochs"]
        # What a user compares, not Ray's bookkeeping (config/..., pid, timestamp, done, ...)
        names = set(run.data.metrics)
        assert {"loss", "learning_rate", "val_dice_mean"} <= names
        assert not {n for n in names if n.startswith("config/")} | (names & {
            "pid", "timestamp", "done", "should_checkpoint", "trial_index", "training_iteration",
            "time_total_s"}), sorted(names)
        assert run.data.tags["node"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> dict[str, Path]:
    """A 3-trial Ray search through the CLI with --mlflow file:DIR and --wandb (offline), one
    trial at a time, TPE + ASHA under a budget of 5 trial-epochs: the last trial is stopped at its
    first epoch (by the budget), the case where W&B lost its results."""
    from unet3d.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("tracking")
    write_synthetic_dataset(root / "data", 8, (32, 32, 32), seed=5)
    (root / "tiny.yaml").write_text(TINY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    r = run_cli("search", "--data", str(root / "data"), "--cache", str(root / "cache"),
                "--space", str(root / "tiny.yaml"), "--num-samples", "3", "--max-epochs", "2",
                "--folds", "4", "--out", str(root / "out"), "--name", "tracked",
                "--mlflow", f"file:{root / 'mlruns'}", "--wandb", "unet3d-tests", "--verbose", "0",
                "--max-concurrent", "1", "--scheduler", "asha", "--budget", "5", timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # The commands printed work with what is installed: `mlflow ui` needs the full mlflow package
    # (Flask), which the tracking extra's client lacks; reading a file: store needs the switch.
    import importlib.util

    uri = (root / "mlruns").as_uri()
    install = "pip install mlflow && " if importlib.util.find_spec("flask") is None else ""
    assert r.stdout.strip().splitlines()[-1] == (
        f"{install}MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {uri} --host 127.0.0.1")
    assert "optuna-dashboard " in r.stdout and f" at {uri} (artifacts in {uri}/" in r.stdout
    assert "max_restarts" not in r.stderr  # (Ray's error line about W&B's logging actors)
    exp = root / "out" / "tracked"
    return {"exp": exp, "mlflow": (root / "mlruns").as_uri(),
            "trials": json.loads((exp / "trials.json").read_text())["trials"]}


def test_a_sqlite_store_keeps_its_artifacts_beside_the_database(tmp_path, monkeypatch):
    """MLflow's default put a database store's artifacts in ./mlruns of the current folder."""
    from search.tracking import MlflowSearch

    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp").mkdir()
    db = tmp_path / "db" / "runs.sqlite"
    db.parent.mkdir()
    search = MlflowSearch.open(f"sqlite:///{db}", tmp_path / "exp", "s", {"a": 1})
    assert search.artifact_location == (db.parent / "mlartifacts").as_uri()
    (tmp_path / "exp" / "report.html").write_text("<html></html>")
    search.client.log_artifact(search.parent, str(tmp_path / "exp" / "report.html"))
    assert list((db.parent / "mlartifacts").rglob("report.html"))
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_mlflow_holds_a_run_per_trial_under_the_search_run_with_the_best_model(tracked):
    client, parent, children = mlflow_runs(tracked["mlflow"])
    check_trial_runs(client, children, tracked["trials"])
    # the node as the parent run says it (the host name), not 127.0.0.1
    assert {c.data.tags["node"] for c in children} == {parent.data.tags["node"]}
    assert parent.info.run_name == "tracked" and parent.info.status == "FINISHED"
    assert parent.data.params["engine"] == "ray" and parent.data.params["num_samples"] == "3"
    summary = json.loads((tracked["exp"] / "trials.json").read_text())["summary"]
    assert parent.data.metrics["best_score"] == pytest.approx(summary["best_score"])
    # ... which is the best epoch of any trial as the trials' own runs logged it (not the best
    # trial's last epoch: the value is checked against MLflow's records, not the summary's)
    best = max(m.value for c in children
               for m in client.get_metric_history(c.info.run_id, "val_dice_mean")
               if math.isfinite(m.value))
    assert summary["best_score"] == pytest.approx(best)
    assert parent.data.tags["best_trial"] == summary["best_trial"]
    model = {a.path for a in client.list_artifacts(parent.info.run_id, "best_model")}
    assert {"best_model/model.keras", "best_model/model.onnx", "best_model/config.json"} <= model
    assert "report.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert json.loads((tracked["exp"] / "mlflow.json").read_text())["parent_run_id"] == \
        parent.info.run_id


@pytest.mark.slow
def test_wandb_writes_an_offline_run_in_each_trial_folder(tracked):
    last = max(tracked["trials"], key=lambda t: t["index"])
    assert last["status"] == "stopped" and last["epochs"] == 1  # (the premise)
    for t in tracked["trials"]:
        runs = list((tracked["exp"] / f"trial_{t['trial_id']}" / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and runs[0].name.endswith(t["trial_id"]), runs
        (records,) = runs[0].glob("*.wandb")  # the run's records (what `wandb sync` uploads)
        # Every trial's run has its scores and was finished; the last one's used to hold its
        # configuration only, unfinished.
        assert b"val_dice_mean" in records.read_bytes(), t["trial_id"]
        log = (runs[0] / "logs" / "debug.log").read_text()
        assert "finishing run" in log, (t["trial_id"], log[-2000:])


@pytest.mark.slow
def test_the_optuna_study_in_the_experiment_folder_has_one_trial_per_search_trial(tracked):
    import optuna

    from search.ray_adapters import journal_storage
    from search.storage import ExperimentFolder

    journal = ExperimentFolder(tracked["exp"]).journal
    study = optuna.load_study(study_name="tracked", storage=journal_storage(journal))
    assert len(study.trials) == len(tracked["trials"])
    assert sorted(json.dumps(t.params, sort_keys=True) for t in study.trials) == \
        sorted(json.dumps(t["params"], sort_keys=True) for t in tracked["trials"])
    by_id = {t["trial_id"]: t for t in tracked["trials"]}
    assert sorted(t.user_attrs["ray_trial_id"] for t in study.trials) == sorted(by_id)
    for t in study.trials:
        row = by_id[t.user_attrs["ray_trial_id"]]
        assert json.dumps(t.params, sort_keys=True) == json.dumps(row["params"], sort_keys=True)
        # Every epoch's objective as an intermediate value (the last one used to be missing);
        # a trial the scheduler or the budget stopped is PRUNED (it was COMPLETE), a finished one
        # COMPLETE with its last result.
        assert t.intermediate_values == pytest.approx(
            {int(h["epoch"]): h["val_dice_mean"] for h in row["history"]})
        if row["status"] == "stopped":  # (Optuna gives a pruned trial its last value)
            assert t.state.name == "PRUNED"
            assert t.value == pytest.approx(row["history"][-1]["val_dice_mean"])
        else:
            assert t.state.name == "COMPLETE"
            assert t.value == pytest.approx(row["history"][-1]["val_dice_mean"])
    assert {t.state.name for t in study.trials} == {"COMPLETE", "PRUNED"}


@pytest.mark.slow
def test_the_keras_tuner_engine_logs_each_trial_to_mlflow_through_the_api(tmp_path, tracked):
    from search import Search

    data = tracked["exp"].parent.parent
    result = Search(data=data / "data", cache=data / "cache", space=data / "tiny.yaml",
                    engine="keras-tuner", algorithm="random", num_samples=2, max_epochs=2, folds=4,
                    out=tmp_path, name="kt", mlflow=str(tmp_path / "mlruns")).run()
    assert result.best is not None
    client, parent, children = mlflow_runs((tmp_path / "mlruns").as_uri())
    trials = json.loads((tmp_path / "kt" / "trials.json").read_text())["trials"]
    check_trial_runs(client, children, trials)
    assert parent.data.params["engine"] == "keras-tuner"
    assert client.list_artifacts(parent.info.run_id, "best_model")


def test_tracking_options_are_checked_before_anything_is_written(tmp_path):
    from search import Search

    with pytest.raises(SearchError, match="--wandb w: needs --engine ray"):
        Search(engine="keras-tuner", wandb="w")
    for uri, message in (("ftp://host/x", "not a tracking URI"),
                         (f"file:{tmp_path}/no/such/dir", "cannot write to"),
                         ("http://127.0.0.1:9", "no MLflow server answers")):
        search = Search(space="nvidia", out=tmp_path / "out", name="x", mlflow=uri,
                        data=tmp_path / "missing")
        with pytest.raises(SearchError, match=message):
            search._check_tracking()
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_bad_tracking_options_are_one_line_through_the_cli(tmp_path):
    (tmp_path / "file").write_text("")
    r = run_cli("search", "--mlflow", str(tmp_path / "file"), "--out", str(tmp_path / "out"),
                "--name", "x", timeout=300)
    line = error_line(r, alone=True)
    assert "--mlflow" in line and "is a file, not a folder" in line
    assert not (tmp_path / "out").exists()


def test_a_resumed_searcher_reopens_its_study_and_fails_the_trials_ray_lost(tmp_path):
    """Ray pickles the searcher with the Tuner at the start and saves it at each experiment
    checkpoint; a trial begun after the last checkpoint is in the journal but not in Ray's state:
    on resume it is marked failed, the checkpointed ones continue in the same study."""
    import pickle

    import optuna

    from search.ray_adapters import BudgetedOptunaSearch
    from search.storage import ExperimentFolder

    (tmp_path / "exp").mkdir()
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    s = BudgetedOptunaSearch(space=space, metric="m", mode="max", points_to_evaluate=[{"x": 0.5}],
                             sampler=optuna.samplers.RandomSampler(seed=0),
                             journal=ExperimentFolder(tmp_path / "exp").journal)
    at_start = pickle.dumps(s)  # (tuner.pkl)
    assert b"JournalStorage" not in at_start  # (the study is reopened, never unpickled)
    assert s.suggest("a") == {"x": 0.5}
    s.save(str(tmp_path / "searcher-state.pkl"))
    s.suggest("b")  # begun after Ray's last checkpoint

    again = pickle.loads(at_start)
    again.restore(str(tmp_path / "searcher-state.pkl"))
    study = optuna.load_study(study_name="exp", storage=again._storage)
    assert [t.state.name for t in study.trials] == ["RUNNING", "FAIL"]
    again.on_trial_result("a", {"m": 0.25, "training_iteration": 1})
    again.on_trial_complete("a", {"m": 0.5, "training_iteration": 2})
    again.suggest("c")
    reread = optuna.load_study(study_name="exp", storage=again._storage)
    assert [t.state.name for t in reread.trials] == ["COMPLETE", "FAIL", "RUNNING"]
    # (the epoch that ended it is an intermediate value too)
    assert reread.trials[0].value == 0.5 and reread.trials[0].intermediate_values == {1: 0.25, 2: 0.5}
