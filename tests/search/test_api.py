"""The library entry point (``from search import Search``) and what the engines are told.

Fast: every option that cannot work is refused when the Search is built (one line naming the flag),
and the engines are told to maximise the objective and to keep each trial's best checkpoint.
Slow: a small search through ``Search(...).run()`` without the CLI, and ``Search.restore``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search import Search, SearchError
from search.objective import METRIC


@pytest.mark.parametrize("options,flag", [
    ({"max_epochs": 0}, "--max-epochs 0"),
    ({"num_samples": 0}, "--num-samples 0"),
    ({"grace_period": 7, "max_epochs": 6}, "--grace-period 7"),
    ({"grace_period": 0}, "--grace-period 0"),
    ({"reduction_factor": 1}, "--reduction-factor 1"),
    ({"max_concurrent": -1}, "--max-concurrent -1"),
    ({"cpus_per_trial": 0}, "--cpus-per-trial 0"),
    ({"gpus_per_trial": -1}, "--gpus-per-trial -1"),
    ({"fold": 7, "folds": 5}, "--fold 7"),
    ({"folds": 1}, "--folds 1"),
    ({"name": "../../x"}, "--name '../../x'"),
    ({"name": "a/b"}, "--name 'a/b'"),
    ({"engine": "tpe"}, "--engine tpe"),
    ({"time_attr": "steps"}, "--time-attr steps"),
    ({"engine": "keras-tuner", "grace_period": 2}, "grace_period: not an option of the keras-tuner"),
    ({"engine": "keras-tuner", "algorithm": "grid"}, "--kt-algorithm grid"),
    ({"engine": "keras-tuner", "workers_per_trial": 2}, "--workers-per-trial needs --engine ray"),
])
def test_an_option_that_cannot_work_is_refused_when_the_search_is_built(options, flag, tmp_path):
    with pytest.raises(SearchError) as e:
        Search(out=tmp_path, name=options.pop("name", "x"), **options)
    msg = str(e.value)
    assert msg.startswith(flag) and "\n" not in msg, msg
    assert list(tmp_path.iterdir()) == []


def test_a_region_loss_is_taken_out_of_the_space_for_a_scheme_whose_regions_do_not_nest():
    from search.api import _fit_space
    from spaces.presets import get_space
    from unet3d.labels import BUILTIN

    brats = get_space("brats")
    lines: list[str] = []
    ped = _fit_space(brats, BUILTIN["brats-2024-ped"], lines.append)
    (loss,) = [p for p in ped.params if p.name == "train.loss"]
    assert loss.values == ("dice", "dice_ce") and "'region'" in lines[0]
    assert _fit_space(brats, BUILTIN["brats-2024-gli"], lines.append) is brats  # RC apart: nests
    with pytest.raises(SearchError, match="only choice"):
        _fit_space(_only_region(brats), BUILTIN["brats-2024-ped"], lines.append)


def _only_region(space):
    import dataclasses

    from spaces.space import Choice

    params = tuple(Choice("train.loss", ("region",)) if p.name == "train.loss" else p
                   for p in space.params)
    return dataclasses.replace(space, params=params)


def test_the_ray_engine_maximises_the_objective_and_keeps_each_trials_best_checkpoint():
    from search.ray_factories import run_config, scheduler, searcher, tune_config
    from search.ray_options import RayOptions
    from spaces.presets import get_space

    opts = RayOptions(max_concurrent=2)
    alg = searcher(get_space("demo"), opts)
    assert (alg.metric, alg.mode) == (METRIC, "max")
    assert (alg.searcher.metric, alg.searcher.mode) == (METRIC, "max")
    tc = tune_config(get_space("demo"), opts)
    assert (tc.metric, tc.mode) == (METRIC, "max")
    assert scheduler(opts)._time_attr == "training_iteration"
    ck = run_config("/tmp/unused/exp", opts).checkpoint_config
    assert (ck.checkpoint_score_attribute, ck.checkpoint_score_order, ck.num_to_keep) == \
        (METRIC, "max", 1)


def test_trials_share_worker_processes_unless_the_backend_or_a_jax_gpu_forbids_it():
    """Ray's reuse_actors (search.ray_factories.reuse_actors): on for the search's backend, off
    where the space samples the backend (Keras's is fixed once loaded in a process) and under JAX
    on a GPU (its peak cannot be reset); the race's TuneConfig carries it too. That trials really
    share a process is checked on a finished search (test_search_e2e)."""
    import dataclasses

    from search.ray_factories import reuse_actors, tune_config
    from search.ray_options import RayOptions
    from spaces.presets import get_space
    from spaces.space import Choice

    demo = get_space("demo")
    sampled = dataclasses.replace(demo, params=(*demo.params, Choice("train.backend",
                                                                     ("tensorflow", "jax"))))
    cpu, gpu = RayOptions(max_concurrent=2), RayOptions(max_concurrent=2, gpus_per_trial=1)
    assert reuse_actors(demo, cpu, "tensorflow") and reuse_actors(demo, gpu, "tensorflow")
    assert reuse_actors(demo, cpu, "jax") and not reuse_actors(demo, gpu, "jax")
    assert not reuse_actors(sampled, cpu, "tensorflow")
    assert tune_config(demo, cpu).reuse_actors
    assert not tune_config(sampled, cpu).reuse_actors
    race = RayOptions(max_concurrent=2, scheduler="race", budget=4)
    assert tune_config(demo, race, key="k").reuse_actors
    assert not tune_config(demo, dataclasses.replace(race, gpus_per_trial=1), key="k2",
                           backend="jax").reuse_actors


def test_optunas_study_under_ray_prefers_the_higher_dice():
    """The searcher, told two finished trials' scores, ranks the higher one best (a direction bug
    would rank the lower)."""
    from search.ray_factories import searcher
    from search.ray_options import RayOptions
    from spaces.presets import get_space

    # (trials that ran all of their max_epochs: one that ended before is PRUNED)
    alg = searcher(get_space("demo"), RayOptions(max_concurrent=0, num_samples=4, max_epochs=1))
    for trial_id, score in (("a", 0.2), ("b", 0.9)):
        alg.suggest(trial_id)
        alg.on_trial_complete(trial_id, {METRIC: score, "training_iteration": 1})
    study = alg._ot_study  # Ray keeps the Optuna study here; its best trial is the question
    assert study.best_value == pytest.approx(0.9)


def test_keras_tuner_maximises_the_objective(tmp_path):
    from search.context import SearchContext
    from search.kt_engine import KerasTunerOptions, _tuner
    from spaces.presets import get_space, nvidia_point

    ctx = SearchContext(space=get_space("demo"), data="", cache="", train_ids=(), val_ids=(),
                        max_epochs=2)
    import keras_tuner as kt

    oracles = {"hyperband": kt.oracles.HyperbandOracle,
               "bayesian": kt.oracles.BayesianOptimizationOracle,
               "random": kt.oracles.RandomSearchOracle}
    for algorithm, base in oracles.items():
        tuner = _tuner(ctx, tmp_path / algorithm, KerasTunerOptions(algorithm=algorithm),
                       overwrite=True, log=lambda m: None)
        assert isinstance(tuner.oracle, base)
        assert tuner.oracle.objective.name == METRIC
        assert tuner.oracle.objective.direction == "max"
        # NVIDIA's point first, whichever oracle proposes (one proposal, no training).
        first = tuner.oracle.populate_space("t0")
        assert {k: first["values"][k] for k in nvidia_point(ctx.space)} == nvidia_point(ctx.space)


@pytest.mark.slow
def test_a_search_through_the_python_api_returns_the_best_and_restores(tmp_path, capfd):
    import os

    import ray  # noqa: F401  (a notebook may have imported Ray before it runs a search)
    from tiny_space import SPACE

    from unet3d.config import RunConfig
    from unet3d.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", 8, (32, 32, 32), seed=3)
    (tmp_path / "tiny.yaml").write_text(SPACE)
    switches = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "TUNE_DISABLE_SIGINT_HANDLER",
                "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    environ = {k: os.environ.get(k) for k in switches}
    lines: list[str] = []
    search = Search(data=tmp_path / "data", space=tmp_path / "tiny.yaml", num_samples=2,
                    max_epochs=2, out=tmp_path / "results", name="api", folds=4, verbose=0,
                    log=lines.append, grace_period=1, max_concurrent=1)
    result = search.run()
    # verbose=0 prints nothing (Ray Tune's experiment box and results line used to)
    printed = capfd.readouterr().out
    assert "Configuration for experiment" not in printed and "View detailed" not in printed, printed

    assert result.experiment == (tmp_path / "results" / "api").resolve()
    assert not result.interrupted and len(result.trials) == 2
    best = max(result.trials, key=lambda r: r.best_dice_mean)
    assert result.best is not None and result.best.trial_id == best.trial_id
    assert result.best.score == pytest.approx(best.best_dice_mean)
    assert isinstance(result.best.config, RunConfig)
    assert result.best.export == result.experiment / "best"
    assert RunConfig.load(result.best.export / "config.json") == result.best.config
    assert (result.best.export / "model.keras").exists() and result.report.exists()
    metrics = json.loads((result.best.export / "metrics.json").read_text())
    assert metrics["epoch"] == best.best_epoch  # best/ holds the best epoch, not the last
    assert any("searching space 'tiny'" in ln for ln in lines)
    # The search's Ray switches are undone: later Ray users of this process (and the processes it
    # starts, e.g. `ray start`) see the environment as it was.
    assert {k: os.environ.get(k) for k in switches} == environ
    assert not ray.is_initialized()
    # search.json holds the whole specification, engine options included.
    saved = json.loads((result.experiment / "search.json").read_text())["spec"]
    assert saved["engine_options"] == {"grace_period": 1, "max_concurrent": 1, "scheduler": "asha"}
    assert saved["num_samples"] == 2 and saved["space"] == str(tmp_path / "tiny.yaml")

    # Restoring a finished search returns its result at once: the same trials, best and
    # checkpoints; Ray does not start and best/ is not exported again (it took a minute).
    before = {r.trial_id: Path(r.checkpoint, "checkpoint.npz").read_bytes() for r in result.trials}
    stamps = {p: p.stat().st_mtime_ns for p in result.best.export.rglob("*")}
    again = Search.restore(result.experiment).run()
    assert {r.trial_id for r in again.trials} == set(before)
    assert again.best == result.best and again.report == result.report
    assert again.summary == result.summary and not again.interrupted
    for r in again.trials:
        assert Path(r.checkpoint, "checkpoint.npz").read_bytes() == before[r.trial_id]
    assert {p: p.stat().st_mtime_ns for p in result.best.export.rglob("*")} == stamps
    assert not ray.is_initialized()


@pytest.mark.slow
def test_an_interrupted_search_resumes_with_search_restore(tmp_path):
    """A budgeted search (the race, the default of a --budget) through the Python API. Ctrl-C
    (SIGINT) during its first trial: run() returns with the trial "interrupted" and nothing
    exported; Search.restore(folder).run() finishes the same search, in the same Optuna study and
    the same MLflow runs, and its model is the race's winner continued to the whole budget."""
    import os
    import signal
    import threading
    import time

    from tiny_space import SPACE

    from unet3d.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", 8, (32, 32, 32), seed=4)
    (tmp_path / "tiny.yaml").write_text(SPACE.replace("steps_per_epoch: 3", "steps_per_epoch: 6"))
    exp = tmp_path / "results" / "cut"

    def ctrl_c_after_the_first_epoch() -> None:
        deadline = time.monotonic() + 600
        while not list(exp.glob("trial_*/run/checkpoint.npz")) and time.monotonic() < deadline:
            time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c_after_the_first_epoch, daemon=True).start()
    # (5 epochs a race trial: time for Ray to act on the Ctrl-C before the trial ends, even on a
    # busy machine.) 12 trial-epochs: the default races 5, one challenger's 5 may be lost (half
    # of 12), the winner is continued with what is left.
    first = Search(data=tmp_path / "data", space=tmp_path / "tiny.yaml", out=tmp_path / "results",
                   name="cut", folds=4, verbose=0, max_concurrent=1, budget=12, race_epochs=5,
                   race_share=0.5, final_data="train", mlflow=f"file:{tmp_path / 'mlruns'}").run()
    assert first.interrupted and first.best is None and not (exp / "best").exists()
    assert [r.status for r in first.trials] == ["interrupted"]

    done = Search.restore(exp).run()
    assert not done.interrupted and len(done.trials) == 3
    rows = sorted(done.trials, key=lambda r: r.index)
    assert [r.proposed_by for r in rows] == ["nvidia", "local", "continued"]
    assert first.trials[0].trial_id == rows[0].trial_id and rows[0].status == "completed"
    race = done.summary["race"]
    assert race["trial_epochs"] == 12 and race["race_trial_epochs"] == 5 + rows[1].epochs
    cont = race["continuation"]
    assert cont["continuation_trial"] == rows[2].trial_id == done.best.trial_id
    assert cont["trial_id"] == race["incumbent"] and cont["from_epoch"] == 5
    assert cont["epochs"] == 5 + 12 - race["race_trial_epochs"] == rows[2].epochs
    metrics = json.loads((exp / "best" / "metrics.json").read_text())
    assert metrics["epoch"] == cont["epochs"] and len(metrics["history"]) == cont["epochs"]
    assert done.best.config.train.schedule == "wsd"
    assert done.best.config.train.cooldown_epochs == cont["cooldown_epochs"] >= 1
    # Continued on the training cases (final_data="train"): the validation cases stayed held out,
    # so the export is validated, its post-processing chosen, and an ensemble of it and the other
    # race trial compared with it case by case (the same rule; whichever way it went, recorded).
    assert metrics["val_cases"] and "final" in metrics and (exp / "best" / "postprocess.json").exists()
    record = json.loads((exp / "ensemble.json").read_text())
    assert len(record["tried"]) == 1 and len(record["tried"][0]["per_case"]) == len(record["alone"])
    assert (exp / "ensemble").exists() == record["chosen"] == done.summary["ensemble"]["chosen"]
    # The same Optuna study continued (its journal in the folder), the same MLflow runs.
    import optuna
    from test_tracking import check_trial_runs, mlflow_runs

    from search.ray_adapters import journal_storage
    from search.storage import ExperimentFolder

    study = optuna.load_study(study_name="cut", storage=journal_storage(ExperimentFolder(exp).journal))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]  # (the race's two)
    client, parent, children = mlflow_runs((tmp_path / "mlruns").as_uri())
    check_trial_runs(client, children, [r.to_dict() for r in done.trials])
    assert parent.info.status == "FINISHED" and client.list_artifacts(parent.info.run_id, "best_model")


def test_a_demo_dataset_cut_off_while_being_written_is_completed_not_searched(tmp_path, monkeypatch):
    """The demo data written by a run stopped part-way is not taken as the user's dataset (it once
    failed with "1 labelled cases, fewer than --folds 5"): only a complete one is."""
    from search import api
    from unet3d.data.synthetic import write_synthetic_dataset

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(api, "DEMO_CASES", 3)
    assert not api._demo_written()
    write_synthetic_dataset(api.DEFAULT_DATA, 2, (16, 16, 16), seed=0)
    assert not api._demo_written()
    (api.DEFAULT_DATA / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz").unlink()
    write_synthetic_dataset(api.DEFAULT_DATA, 3, (16, 16, 16), seed=0)  # completes it
    assert api._demo_written()
    (api.DEFAULT_DATA / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz").unlink()
    assert not api._demo_written()  # a case without all its files
