"""Every built-in label scheme end to end on synthetic data in its release's layout: discover ->
prepare -> the scheme detected -> train a few steps -> predict (the scheme's label values on the input
grid) -> evaluate (per region of the scheme: whole-image and lesion-wise scores). One release also
through the CLI, with the one-line errors a user meets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import error_line, run_cli

pytestmark = pytest.mark.slow

# layout -> (the scheme it is detected as, the regions scored)
LAYOUTS = {
    "brats2021": ("brats-legacy", ("WT", "TC", "ET")),
    "brats2023": ("brats-2023", ("WT", "TC", "ET")),
    "brats2024": ("brats-2024-gli", ("WT", "TC", "ET", "RC")),
    "brats2024-ped": ("brats-2024-ped", ("WT", "TC", "ET")),
    "brats-men-rt": ("brats-men-rt", ("GTV",)),
    "msd": ("msd", ("WT", "TC", "ET")),
}


def _tiny(scheme, channels):
    from unet3d.config import preset

    return preset("cpu-small").replace(
        model={"depth": 3, "base_filters": 4},
        train={"epochs": 1, "steps_per_epoch": 2, "warmup_epochs": 0},
        data={"crop": [16, 16, 16], "folds": 2}).with_labels(scheme, channels)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_scheme_end_to_end(tmp_path, layout):
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import dataset_channels, dataset_scheme, load_case, prepare
    from unet3d.data.synthetic import write_synthetic_dataset
    from unet3d.evaluation.evaluate import evaluate_folder, metric_names
    from unet3d.inference.predictor import Predictor, load_member, write_prediction
    from unet3d.training.train import Trainer

    name, regions = LAYOUTS[layout]
    data = tmp_path / "data"
    write_synthetic_dataset(data, 4, (32, 32, 32), seed=5, layout=layout)
    ds = discover(data)
    entries = prepare(ds.cases, tmp_path / "cache")
    scheme = dataset_scheme(ds, entries)
    assert scheme.name == name and scheme.region_names == regions
    assert json.loads((tmp_path / "cache" / "labels.json").read_text())["name"] == name

    channels = dataset_channels(entries)
    assert channels == (1 if layout == "brats-men-rt" else 4)
    cfg = _tiny(scheme, channels)
    metrics = Trainer(cfg, entries[:3], entries[3:], tmp_path / "run").fit()
    assert set(metrics["final"]) >= {f"dice_{r}" for r in regions} | {"dice_mean", "hd95_mean"}
    assert {k for k in metrics["history"][0] if k.startswith("val_dice_")} == \
        {f"val_dice_{r}" for r in regions} | {"val_dice_mean"}

    member = load_member(tmp_path / "run")
    assert member.scheme == scheme
    pred_dir = tmp_path / "pred"
    for case in ds.cases:
        loaded = load_case(case)
        pred = Predictor([member]).predict(loaded)
        assert pred.labels.shape == loaded.image.shape[:3]
        assert set(np.unique(pred.labels).tolist()) <= set(scheme.values)
        write_prediction(pred, pred_dir)
        written = nib.load(str(pred_dir / f"{case.case_id}.nii.gz"))
        np.testing.assert_allclose(written.affine, loaded.affine)
    rows = evaluate_folder(pred_dir, ds.cases, scheme, jobs=1)
    assert len(rows) == 4 and set(rows[0]) == {"case_id", *metric_names(scheme)}
    for r in regions:
        assert all(0.0 <= row[f"lesionwise_dice_{r}"] <= 1.0 for row in rows)
    if layout == "brats-men-rt":  # a T1c-only model on four-modality cases: refused before writing
        other = tmp_path / "four"
        write_synthetic_dataset(other, 1, (32, 32, 32), seed=5, layout="brats2023")
        r = run_cli("predict", "--model", str(tmp_path / "run"), "--input", str(other), "--out",
                    str(tmp_path / "p4"))
        line = error_line(r)
        assert "has 4 modalities" in line and "reads 1" in line
        assert not (tmp_path / "p4").exists()


def test_every_written_label_value_round_trips_through_prediction(tmp_path):
    """A perfect prediction of a 2024 post-treatment case keeps 0-4 (RC = 4) as the file had them."""
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import load_case, preprocess_loaded
    from unet3d.data.synthetic import write_synthetic_dataset
    from unet3d.inference.predictor import Predictor
    from unet3d.labels import BUILTIN

    scheme = BUILTIN["brats-2024-gli"]
    write_synthetic_dataset(tmp_path, 4, (32, 32, 32), seed=2, layout="brats2024")
    cases = [c for c in discover(tmp_path).cases
             if 4 in np.unique(np.asarray(nib.load(str(c.label)).dataobj))]
    assert cases, "no synthetic 2024 case has a resection cavity"
    loaded = load_case(cases[0])
    _, values, _ = preprocess_loaded(loaded)

    class Oracle:
        head, name, in_channels = "regions", "oracle", 4

        def __init__(self):
            self.scheme = scheme

        def windows(self, shape, overlap, tta):
            return 1

        def probabilities(self, image, **kw):
            return scheme.labels_to_regions(values).astype(np.float32)

    pred = Predictor([Oracle()]).predict(loaded)
    np.testing.assert_array_equal(pred.labels, loaded.label)
    assert set(np.unique(pred.labels).tolist()) == {0, 1, 2, 3, 4}


@pytest.fixture(scope="module")
def gli2023(tmp_path_factory) -> Path:
    from unet3d.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("gli2023")
    # the challenge's own nesting: the user points --data at the folder above the case folders
    write_synthetic_dataset(root / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", 4,
                            (32, 32, 32), seed=3, layout="brats2023")
    return root


def test_cli_train_predict_evaluate_on_a_2023_download(gli2023, tmp_path):
    cfg = tmp_path / "tiny.json"
    _tiny_cfg_file(cfg)
    r = run_cli("train", "--data", str(gli2023), "--cache", str(tmp_path / "cache"), "--config",
                str(cfg), "--out", str(tmp_path / "run"), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "brats2023 layout (found in " in r.stdout and "TrainingData): 4 cases (4 labelled)" in r.stdout
    assert "labels: brats-2023 (1 NETC, 2 SNFH, 3 ET; WT {1,2,3}, TC {1,3}, ET {3}) (detected" in r.stdout
    assert "validation (2 cases): Dice WT " in r.stdout and " TC " in r.stdout
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["labels"] == "brats-2023"

    r = run_cli("predict", "--model", str(tmp_path / "run"), "--input", str(gli2023),
                "--out", str(tmp_path / "pred"), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    files = sorted((tmp_path / "pred").glob("BraTS-GLI-*.nii.gz"))
    assert len(files) == 4
    assert set(np.unique(np.asarray(nib.load(str(files[0])).dataobj)).tolist()) <= {0, 1, 2, 3}

    r = run_cli("evaluate", "--pred", str(tmp_path / "pred"), "--data", str(gli2023), "--jobs", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "labels: brats-2023" in r.stdout and "LW Dice" in r.stdout
    with open(tmp_path / "pred" / "evaluation.csv") as f:
        header = next(csv.reader(f))
    assert header[0] == "case_id"
    for col in ("dice_ET", "hd95_ET", "nsd_ET", "lesion_tp_ET", "lesion_fp_ET", "lesion_fn_ET",
                "lesionwise_dice_ET", "lesionwise_hd95_ET", "lesionwise_dice_mean"):
        assert col in header


def _tiny_cfg_file(path: Path) -> None:
    from unet3d.config import preset

    preset("cpu-small").replace(
        model={"depth": 3, "base_filters": 4},
        train={"epochs": 1, "steps_per_epoch": 2, "warmup_epochs": 0},
        data={"crop": [16, 16, 16], "folds": 2}).save(path)


def test_bad_label_values_and_labels_option_are_one_line_errors(gli2023, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(gli2023, data)
    (case,) = sorted(data.rglob("BraTS-GLI-00001-000"))
    seg = case / f"{case.name}-seg.nii.gz"
    img = nib.load(str(seg))
    arr = np.asarray(img.dataobj).copy()
    arr[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(arr, img.affine), str(seg))
    cache = tmp_path / "cache"
    r = run_cli("prepare", "--data", str(data), "--cache", str(cache))
    line = error_line(r)
    assert str(seg) in line and "[7]" in line and "brats2023 layout" in line

    # forcing the legacy scheme on 2023 labels: ET = 3 is not a legacy value
    arr[0, 0, 0] = 0
    nib.save(nib.Nifti1Image(arr, img.affine), str(seg))
    r = run_cli("prepare", "--data", str(data), "--cache", str(cache), "--labels", "brats-legacy")
    line = error_line(r)
    assert "[3]" in line and "brats-legacy" in line
    r = run_cli("prepare", "--data", str(data), "--cache", str(tmp_path / "c2"), "--labels", "nope")
    assert "neither a built-in scheme" in error_line(r)
    assert not (tmp_path / "c2").exists()  # checked before anything is written

    # a user scheme that fits: one region of every tumour label
    yaml = tmp_path / "whole.yaml"
    yaml.write_text("name: whole\nlabels: {1: a, 2: b, 3: c}\nregions: {tumour: [1, 2, 3]}\n")
    r = run_cli("prepare", "--data", str(data), "--cache", str(cache), "--labels", str(yaml))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "labels: whole (1 a, 2 b, 3 c; tumour {1,2,3}) (--labels" in r.stdout
