"""A search on this year's BraTS layouts, end to end: through the CLI on a 2024 post-treatment set
ranked by the lesion-wise objective (RC in the table, TensorBoard and the report; predict writes
0-4), and through the Python API on a 2023 set (Keras Tuner)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import run_cli
from tiny_space import SPACE

pytestmark = pytest.mark.slow


def _scalar_tags(folder: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in folder.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent), size_guidance={"tensors": 0, "scalars": 0})
        acc.Reload()
        tags |= set(acc.Tags().get("tensors", [])) | set(acc.Tags().get("scalars", []))
    return tags


def test_cli_search_on_a_2024_post_treatment_set_by_lesionwise_score(tmp_path):
    data = tmp_path / "data"
    r = run_cli("synth", "--out", str(data), "--cases", "6", "--shape", "32", "32", "32",
                "--layout", "brats2024", "--seed", "4")
    assert r.returncode == 0, r.stderr[-2000:]
    (tmp_path / "tiny.yaml").write_text(SPACE)
    r = run_cli("search", "--data", str(data), "--space", str(tmp_path / "tiny.yaml"),
                "--num-samples", "2", "--max-epochs", "1", "--folds", "3", "--objective",
                "lesionwise", "--out", str(tmp_path / "results"), "--name", "gli24", "--verbose", "0",
                "--max-concurrent", "1", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "brats2023 layout: 6 cases (6 labelled)" in out
    assert "labels: brats-2024-gli (1 NETC, 2 SNFH, 3 ET, 4 RC;" in out
    header = next(ln for ln in out.splitlines() if ln.startswith("trial "))
    for col in ("WT", "TC", "ET", "RC", "LW Dice"):
        assert col in header, header
    assert "best trial" in out and "validation mean lesion-wise Dice of WT, TC, ET" in out

    exp = tmp_path / "results" / "gli24"
    with open(exp / "results.csv") as f:
        cols = next(csv.reader(f))
    assert {"best_score", "best_dice_RC", "best_lesionwise_mean"} <= set(cols)
    trials = json.loads((exp / "trials.json").read_text())["trials"]
    hist = trials[0]["history"][-1]
    assert {"val_dice_RC", "val_lesionwise_dice_RC", "val_lesionwise_dice_mean"} <= set(hist)
    # RC is scored but not in the mean (the mean is over WT, TC, ET)
    assert hist["val_dice_mean"] == pytest.approx(np.mean([hist[f"val_dice_{r}"]
                                                           for r in ("WT", "TC", "ET")]))
    assert {"val_dice_RC", "val_lesionwise_dice_mean"} <= _scalar_tags(exp)
    page = (exp / "report.html").read_text()
    assert "<th>RC</th>" in page and "not in the mean" in page
    best = json.loads((exp / "best" / "config.json").read_text())
    assert best["data"]["labels"] == "brats-2024-gli" and best["model"]["n_classes"] == 5
    assert best["train"]["objective"] == "lesionwise"

    r = run_cli("predict", "--model", str(exp / "best"), "--input", str(data), "--out",
                str(tmp_path / "pred"), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    values: set[int] = set()
    for f in (tmp_path / "pred").glob("BraTS-GLI-*.nii.gz"):
        values |= set(np.unique(np.asarray(nib.load(str(f)).dataobj)).tolist())
    assert values <= {0, 1, 2, 3, 4} and values - {0}


def test_python_api_search_on_a_2023_set_with_keras_tuner(tmp_path):
    from search import Search
    from unet3d.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", 6, (32, 32, 32), seed=6, layout="brats2023")
    (tmp_path / "tiny.yaml").write_text(SPACE)
    lines: list[str] = []
    result = Search(data=tmp_path / "data", space=tmp_path / "tiny.yaml", engine="keras-tuner",
                    num_samples=2, max_epochs=1, folds=3, out=tmp_path / "results", name="kt",
                    log=lines.append).run()
    assert any(ln.startswith("labels: brats-2023") for ln in lines)
    assert result.best is not None and result.best.config.scheme.name == "brats-2023"
    assert set(result.trials[0].best_regions) == {"WT", "TC", "ET"}
    saved = json.loads((result.experiment / "search.json").read_text())
    assert saved["context"]["labels"] == "brats-2023"
