"""One training run's pipeline from Python (unet3d.api): prepare -> train -> predict -> evaluate on
tiny synthetic data, with what the CLI prints going to ``log`` and the CLI's checks raising the
same one-line UserErrors before anything is written. (The CLI runs these same calls: its end-to-end
tests are tests/unet3d/test_train.py, test_predict.py, test_evaluation.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from unet3d import api
from unet3d.errors import OptionError, UserError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from unet3d.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("api")
    write_synthetic_dataset(root / "data", 4, (32, 32, 32), seed=11, layout="brats2023")
    return root


def _config():
    from unet3d.config import preset

    return preset("cpu-small").replace(
        model={"depth": 3, "base_filters": 4},
        train={"epochs": 1, "steps_per_epoch": 2, "warmup_epochs": 0},
        data={"crop": [16, 16, 16], "folds": 2})


def test_prepare_logs_what_it_found_and_returns_the_prepared_dataset(tiny):
    lines, seen = [], []
    prep = api.prepare(tiny / "data", tiny / "cache", log=lines.append,
                       progress=lambda done, total, cid: seen.append((done, total, cid)))
    assert prep.scheme.name == "brats-2023" and prep.channels == 4 and len(prep.entries) == 4
    assert [(d, t) for d, t, _ in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert sorted(c for _, _, c in seen) == sorted(e.case_id for e in prep.entries)
    assert lines[0].startswith(f"brats2023 layout: 4 cases (4 labelled) -> {tiny / 'cache'} "
                               f"(4 preprocessed, 0 reused; ")
    assert lines[1].startswith("labels: brats-2023") and "(detected; " in lines[1]
    again = []
    api.prepare(tiny / "data", tiny / "cache", labels="brats-2023", log=again.append)
    assert "(0 preprocessed, 4 reused; " in again[0] and "(--labels; " in again[1]


@pytest.mark.parametrize("kwargs, message", [
    ({"jobs": 0}, "--jobs 0: must be at least 1"),
    ({"labels": "no-such-scheme"}, "no-such-scheme"),
])
def test_prepare_refuses_a_bad_request_before_writing(tiny, tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        api.prepare(tiny / "data", tmp_path / "cache", **kwargs)
    assert not (tmp_path / "cache").exists()


def test_train_predict_evaluate_from_python(tiny, tmp_path):
    lines: list[str] = []
    run = api.train(tiny / "data", out=tmp_path / "run", config=_config(), cache=tiny / "cache",
                    log=lines.append)
    # The config was sized to the data (brats-2023: 3 classes + background, 3 regions).
    assert run.config.data.labels == "brats-2023" and run.config.model.n_classes == 4
    assert len(run.train_ids) == 2 and len(run.val_ids) == 2
    assert run.run.has_model() and run.run.checkpoint.exists()
    assert json.loads(run.run.metrics.read_text())["final"] == run.metrics["final"]
    assert any(x.startswith("training fold 0/2: 2 train, 2 validation cases") for x in lines)
    assert lines[-1].startswith(f"model: {tmp_path / 'run' / 'model.keras'}")

    out, seen = tmp_path / "pred", []
    pred = api.predict([run.run.path], tiny / "data", out, log=lines.append,
                       progress=lambda done, total, cid: seen.append((done, total)))
    assert sorted(pred.files) == sorted(p.name for p in (tiny / "data").iterdir() if p.is_dir())
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert json.loads((out / "predict.json").read_text()) == pred.record
    assert pred.record["postprocess_source"] and pred.record["tta"] == 1

    # Scored against the references: the model's own predictions, and the references themselves.
    scores = api.evaluate(out, tiny / "data", log=lines.append)
    assert len(scores.rows) == 4 and scores.csv == out / "evaluation.csv" and scores.csv.exists()
    assert scores.scheme.name == "brats-2023" and not scores.skipped
    perfect = tmp_path / "perfect"
    perfect.mkdir()
    for case in (tiny / "data").iterdir():
        if case.is_dir():
            shutil.copy(case / f"{case.name}-seg.nii.gz", perfect / f"{case.name}.nii.gz")
    best = api.evaluate(perfect, tiny / "data", out=tmp_path / "scores.csv")
    assert best.summary["dice_mean"]["mean"] == pytest.approx(1.0)
    assert np.isfinite(scores.summary["dice_mean"]["mean"])


@pytest.mark.parametrize("kwargs, message", [
    ({"overlap": 1.0}, r"--overlap 1.0: must be in \[0, 1\)"),
    ({"tta": 9}, "--tta 9: must be 1..8 flips"),
    ({"batch_size": 0}, "--batch-size 0: must be at least 1"),
    ({"min_et_volume": float("nan")}, "--min-et-volume nan: must be >= 0 mm"),
])
def test_predict_refuses_a_bad_option_before_reading_models_or_writing(tiny, tmp_path, kwargs,
                                                                       message):
    called = []
    with pytest.raises(OptionError, match=message):
        api.predict(lambda: called.append(1) or [], tiny / "data", tmp_path / "out", **kwargs)
    assert not called and not (tmp_path / "out").exists()


def test_train_refuses_workers_it_cannot_run(tiny, tmp_path):
    with pytest.raises(OptionError, match="--workers 0: must be at least 1"):
        api.train(tiny / "data", out=tmp_path / "run", config=_config(), workers=0)
    jax = _config().replace(train={"backend": "jax"})
    with pytest.raises(OptionError, match="Horovod workers train under tensorflow only"):
        api.train(tiny / "data", out=tmp_path / "run", config=jax, workers=2)
    assert not (tmp_path / "run").exists()


def test_plan_from_python_logs_the_fingerprint_and_plan_and_writes_a_config(tiny, tmp_path):
    from unet3d.config import RunConfig

    lines = []
    plan = api.plan(tiny / "data", tiny / "cache", memory=2.0, device="cpu",
                    out=tmp_path / "plan.json", log=lines.append)
    assert plan.device == "cpu" and plan.budget_gib == 2.0 and plan.estimate.gib <= 2.0
    text = "\n".join(lines)
    assert "fingerprint: 4 cases (4 labelled), brats2023 layout" in text
    assert "plan for 2.0 GiB on cpu (--memory):" in text
    assert lines[-1].startswith(f"wrote {tmp_path / 'plan.json'}: train with")
    saved = RunConfig.load(tmp_path / "plan.json")  # what `train --config` reads
    assert saved.data.crop == plan.config.data.crop and saved.train.batch_size == \
        plan.config.train.batch_size
    for kwargs, message in (({"memory": 0}, "--memory 0: must be a positive number of GiB"),
                            ({"device": "tpu"}, "--device tpu: must be gpu or cpu")):
        with pytest.raises(OptionError, match=message):
            api.plan(tiny / "data", tmp_path / "cache2", out=tmp_path / "p2.json", **kwargs)
        assert not (tmp_path / "cache2").exists() and not (tmp_path / "p2.json").exists()
