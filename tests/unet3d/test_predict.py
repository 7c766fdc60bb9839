"""Prediction on the input's own grid: geometry round trips, ensembles, post-processing, precision,
and the predict / evaluate CLI end to end."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import error_line, run_cli

from unet3d.config import RunConfig, preset
from unet3d.data.discover import discover, discover_input
from unet3d.data.preprocess import load_case, preprocess_loaded
from unet3d.data.synthetic import write_synthetic_dataset
from unet3d.evaluation.evaluate import evaluate_case
from unet3d.inference.postprocess import PostProcess, keep_largest_wt, remove_small_et
from unet3d.inference.predictor import (
    Predictor,
    load_member,
    write_prediction,
)
from unet3d.labels import BUILTIN

LEGACY = BUILTIN["brats-legacy"]
from unet3d.runtime import resolve_policy

BRATS_VALUES = {0, 1, 2, 4}

# ---------------------------------------------------------------------------------------------
# Cases in non-canonical orientations: the same physical image stored with another voxel order.


def _lps(shape):
    """Voxel axes run left and back: flip the first two axes; affine maps the new index to the
    same physical point as the RAS voxel it came from."""
    flip = np.array([[-1.0, 0, 0, shape[0] - 1], [0, -1.0, 0, shape[1] - 1], [0, 0, 1.0, 0],
                     [0, 0, 0, 1.0]])
    return (lambda a: a[::-1, ::-1]), flip


def _permuted(shape):
    """Voxel axis 0 <- RAS axis 2, axis 1 <- RAS axis 0 (reversed), axis 2 <- RAS axis 1."""
    X, Y, Z = shape[:3]

    def f(a):
        return np.moveaxis(a, (2, 0, 1), (0, 1, 2))[:, ::-1]

    # new (i, j, k) = (z, X-1-x, y)  ->  old (x, y, z) = (X-1-j, k, i)
    m = np.array([[0, -1.0, 0, X - 1], [0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1.0]])
    return f, m


def _reoriented_copy(src_root: Path, dst_root: Path, kind: str, spacing=(1.0, 1.0, 1.0)) -> Path:
    """Copies every BraTS case of ``src_root`` (RAS, identity affine) into ``dst_root`` in another
    orientation (and voxel spacing)."""
    for case in discover(src_root).cases:
        folder = dst_root / case.case_id
        folder.mkdir(parents=True, exist_ok=True)
        for path in [*case.images.values(), case.label]:
            img = nib.load(str(path))
            data = np.asarray(img.dataobj)
            f, m = (_lps if kind == "lps" else _permuted)(data.shape)
            affine = np.diag([*spacing, 1.0]) @ img.affine @ m
            nib.save(nib.Nifti1Image(np.ascontiguousarray(f(data)), affine),
                     str(folder / path.name))
    return dst_root


class Oracle:
    """A perfect model: the ground truth as preprocessing presents it (one-hot classes of the
    scheme, or its region masks for a region head), from the cached file label values."""

    in_channels = 4

    def __init__(self, values: np.ndarray, head: str = "softmax", scheme=LEGACY) -> None:
        self.classes, self.head, self.name = scheme.to_classes(values), head, "oracle"
        self.scheme = scheme

    def windows(self, shape, overlap, tta):
        return 1

    def probabilities(self, image, *, overlap, tta, batch_size, progress=None):
        assert image.shape[:3] == self.classes.shape
        if self.head == "regions":
            return self.scheme.classes_to_regions(self.classes).astype(np.float32)
        return np.eye(self.scheme.n_classes, dtype=np.float32)[self.classes]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root, 2, (48, 40, 32), seed=3)
    return root


@pytest.mark.parametrize("kind,spacing,head", [("lps", (1.0, 1.0, 1.0), "softmax"),
                                               ("permuted", (1.2, 0.8, 2.5), "regions")])
def test_a_perfect_model_lands_exactly_on_the_input_grid_and_scores_dice_1(
        synth, tmp_path, kind, spacing, head):
    data = _reoriented_copy(synth, tmp_path / kind, kind, spacing)
    out = tmp_path / "pred"
    for case in discover(data).cases:
        loaded = load_case(case)
        assert nib.aff2axcodes(loaded.affine) != ("R", "A", "S")
        _, classes, meta = preprocess_loaded(loaded)
        # Preprocessing crops to the brain; the synthetic tumour lies inside it, so the crop of an
        # unlabelled read (as prediction does) is the same box.
        assert preprocess_loaded(dataclasses.replace(loaded, label=None))[2]["bbox_lo"] == meta["bbox_lo"]
        pred = Predictor([Oracle(classes, head)]).predict(loaded)
        write_prediction(pred, out)

        written = nib.load(str(out / f"{case.case_id}.nii.gz"))
        ref = nib.load(str(case.label))
        assert written.shape == ref.shape
        np.testing.assert_array_equal(written.affine, ref.affine)
        assert written.get_data_dtype() == np.uint8
        values = np.asarray(written.dataobj)
        assert set(np.unique(values).tolist()) <= BRATS_VALUES
        np.testing.assert_array_equal(values, np.asarray(ref.dataobj))
        scores = evaluate_case(out / f"{case.case_id}.nii.gz", case, LEGACY)
        assert scores["dice_mean"] == 1.0 and scores["hd95_mean"] == 0.0

    # ... and the evaluate command agrees.
    r = run_cli("evaluate", "--pred", str(out), "--data", str(data), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader((out / "evaluation.csv").open()))
    assert len(rows) == 2 and all(float(r["dice_mean"]) == 1.0 for r in rows)


def test_msd_predictions_use_msd_label_values(tmp_path):
    root = tmp_path / "msd"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps(
        {"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}}))
    src = tmp_path / "src"
    write_synthetic_dataset(src, 1, (32, 32, 32), seed=5)
    case = discover(src).cases[0]
    img = np.stack([np.asarray(nib.load(str(case.images[m])).dataobj)
                    for m in ("flair", "t1", "t1ce", "t2")], axis=-1)
    brats = np.asarray(nib.load(str(case.label)).dataobj)
    msd = np.select([brats == 2, brats == 1, brats == 4], [1, 2, 3], 0).astype(np.uint8)
    flip, m = _lps(img.shape)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(flip(img)), m), str(root / "imagesTr" / "x.nii.gz"))
    nib.save(nib.Nifti1Image(np.ascontiguousarray(flip(msd)), m), str(root / "labelsTr" / "x.nii.gz"))
    (msd_case,) = discover(root).cases
    loaded = load_case(msd_case)
    _, values, _ = preprocess_loaded(loaded)
    pred = Predictor([Oracle(values, scheme=BUILTIN["msd"])]).predict(loaded)
    assert pred.labels.shape == msd.shape
    np.testing.assert_array_equal(pred.labels, flip(msd))
    assert set(np.unique(pred.labels).tolist()) <= {0, 1, 2, 3}


# ---------------------------------------------------------------------------------------------
# Ensembles, post-processing, output files.


class Constant:
    scheme, in_channels = LEGACY, 4

    def __init__(self, probs: np.ndarray, head: str) -> None:
        self.probs, self.head, self.name = probs.astype(np.float32), head, "const"

    def windows(self, shape, overlap, tta):
        return 1

    def probabilities(self, image, **kw):
        return np.broadcast_to(self.probs, (*image.shape[:3], len(self.probs))).copy()


def test_an_ensemble_averages_probabilities():
    image = np.zeros((4, 4, 4, 4), np.float32)
    a = Constant(np.array([0.5, 0.1, 0.1, 0.3]), "softmax")
    b = Constant(np.array([0.1, 0.1, 0.6, 0.2]), "softmax")
    p = Predictor([a, b])
    np.testing.assert_allclose(p.probabilities(image)[0, 0, 0], [0.3, 0.1, 0.35, 0.25], atol=1e-7)
    assert p.classes(p.probabilities(image))[0, 0, 0] == 2  # neither member alone says ED
    assert p.channels == ("background", "NCR", "ED", "ET")


def test_a_mixed_ensemble_averages_region_probabilities():
    image = np.zeros((2, 2, 2, 4), np.float32)
    soft = Constant(np.array([0.1, 0.2, 0.3, 0.4]), "softmax")  # WT .9, TC .6, ET .4
    reg = Constant(np.array([0.7, 0.2, 0.1]), "regions")
    p = Predictor([soft, reg])
    np.testing.assert_allclose(p.probabilities(image)[0, 0, 0], [0.8, 0.4, 0.25], atol=1e-6)
    assert p.channels == ("WT", "TC", "ET")
    assert p.classes(p.probabilities(image))[0, 0, 0] == 2  # WT only -> edema


def test_small_et_components_become_necrosis_by_volume_in_mm3():
    c = np.zeros((20, 20, 20), np.uint8)
    c[2:8, 2:8, 2:8] = 3          # 216 voxels
    c[15:17, 15:17, 15:17] = 3    # 8 voxels
    c[12, 2, 2] = 2
    out = remove_small_et(c, (1.0, 1.0, 2.0), 20.0, LEGACY)  # 16 mm^3 < 20 <= 432 mm^3
    assert (out[15:17, 15:17, 15:17] == 1).all() and (out[2:8, 2:8, 2:8] == 3).all()
    assert out[12, 2, 2] == 2 and c[15, 15, 15] == 3  # input untouched
    assert (remove_small_et(c, (1, 1, 1), 1000, LEGACY) == 3).sum() == 0  # every ET component is small
    # At the threshold: a component of exactly the minimum volume is kept, one just over it not.
    assert (remove_small_et(c, (1.0, 1.0, 2.0), 16.0, LEGACY)[15:17, 15:17, 15:17] == 3).all()
    assert (remove_small_et(c, (1.0, 1.0, 2.0), 16.5, LEGACY)[15:17, 15:17, 15:17] == 1).all()
    # Whole tumour and tumour core are unchanged: only ET loses voxels.
    for before, after in zip(np.moveaxis(LEGACY.classes_to_regions(c), -1, 0)[:2],
                             np.moveaxis(LEGACY.classes_to_regions(out), -1, 0)[:2], strict=True):
        np.testing.assert_array_equal(before, after)


def test_post_processing_knows_each_schemes_enhancing_label():
    """PED 2024: ET is label 1 (class 1) and becomes NETC (class 2); a 2024 GLI cavity (class 4)
    is no tumour, so the largest-tumour rule keeps it; MEN-RT has no ET step at all."""
    ped, gli = BUILTIN["brats-2024-ped"], BUILTIN["brats-2024-gli"]
    c = np.zeros((12, 12, 12), np.uint8)
    c[1:7, 1:7, 1:7] = 4                                  # ED around
    c[2:5, 2:5, 2:5] = ped.class_of(1)                    # a large ET
    c[10, 10, 10] = ped.class_of(1)                       # one stray ET voxel
    out = PostProcess(min_et_volume=5.0)(c, (1, 1, 1), ped)
    assert out[10, 10, 10] == ped.class_of(2) and (out[2:5, 2:5, 2:5] == ped.class_of(1)).all()
    g = np.zeros((12, 12, 12), np.uint8)
    g[1:6, 1:6, 1:6] = 2                                  # the tumour (SNFH)
    g[9:11, 9:11, 9:11] = 4                               # a cavity apart from it
    g[8, 1, 1] = 2                                        # a stray tumour voxel
    kept = PostProcess(largest_wt=True)(g, (1, 1, 1), gli)
    assert (kept[9:11, 9:11, 9:11] == 4).all() and kept[8, 1, 1] == 0
    men = BUILTIN["brats-men-rt"]
    one = np.zeros((6, 6, 6), np.uint8)
    one[0, 0, 0] = 1
    np.testing.assert_array_equal(PostProcess(min_et_volume=100.0)(one, (1, 1, 1), men), one)


def test_only_the_largest_whole_tumour_component_is_kept():
    c = np.zeros((20, 20, 20), np.uint8)
    c[2:9, 2:9, 2:9] = 2
    c[4:6, 4:6, 4:6] = 3
    c[9, 9, 9] = 1               # touches the big one diagonally (26-connected): kept
    c[15:18, 15:18, 15:18] = 3   # separate: removed
    out = keep_largest_wt(c, LEGACY)
    assert out[9, 9, 9] == 1 and (out[15:18, 15:18, 15:18] == 0).all()
    np.testing.assert_array_equal(out[:10, :10, :10], c[:10, :10, :10])
    post = PostProcess(largest_wt=True, min_et_volume=100)
    assert post.active and (post(c, (1, 1, 1), LEGACY) == 3).sum() == 0
    with pytest.raises(ValueError, match="min_et_volume"):
        PostProcess(min_et_volume=-1)


def test_written_files_keep_the_header_and_reset_intensity_scaling(synth, tmp_path):
    case = discover(synth).cases[0]
    # An input whose header scales intensities (scl_slope 2): labels must not inherit the scaling.
    folder = tmp_path / "scaled" / case.case_id
    folder.mkdir(parents=True)
    for name, path in [*case.images.items(), ("seg", case.label)]:
        img = nib.load(str(path))
        out = nib.Nifti1Image(np.asarray(img.dataobj), img.affine, header=img.header)
        if name != "seg":
            out.header.set_slope_inter(2.0, 0.0)
        nib.save(out, str(folder / path.name))
    (scaled,) = discover(tmp_path / "scaled").cases
    loaded = load_case(scaled)
    _, classes, _ = preprocess_loaded(loaded)
    pred = Predictor([Oracle(classes)], keep_probabilities=True).predict(loaded)
    files = write_prediction(pred, tmp_path / "out")
    assert [f.name for f in files] == [f"{case.case_id}.nii.gz", f"{case.case_id}_probabilities.nii.gz"]
    lab = nib.load(str(files[0]))
    np.testing.assert_array_equal(np.asanyarray(lab.dataobj), np.asarray(nib.load(str(case.label)).dataobj))
    assert lab.header.get_xyzt_units() == nib.load(str(case.images["t1"])).header.get_xyzt_units()
    probs = nib.load(str(files[1])).get_fdata()
    assert probs.shape == (*lab.shape, 4)
    np.testing.assert_allclose(probs, pred.probabilities, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=4 / 255)
    assert not list((tmp_path / "out").glob(".*tmp*"))  # no temporary leftovers


# ---------------------------------------------------------------------------------------------
# Real models: exports, precision, the CLI.


def _export(folder: Path, cfg: RunConfig, seed: int = 0) -> Path:
    """An export folder (model.keras + config.json) of an untrained model."""
    import keras

    from unet3d.training.checkpoint import save_model
    from unet3d.training.model import build_unet3d, inference_model

    keras.utils.set_random_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(inference_model(build_unet3d(cfg.model)), folder / "model.keras")
    cfg.save(folder / "config.json")
    return folder


def _small(head: str = "softmax", deep_supervision: bool = False, precision: str = "fp32") -> RunConfig:
    base = preset("cpu-small")
    return base.replace(model={"base_filters": 4, "max_filters": 16, "depth": 3, "head": head,
                               "deep_supervision": deep_supervision,
                               "deep_supervision_heads": 1},
                        data={"crop": (16, 16, 16)},
                        train={"precision": precision,
                               "loss": "dice_ce" if head == "softmax" else "region"})


def test_resolve_policy():
    cfg = _small(precision="mixed_bfloat16")
    assert resolve_policy("auto", cfg, gpu=False) == "float32"
    assert resolve_policy("auto", cfg, gpu=True) == "mixed_bfloat16"
    assert resolve_policy("trained", cfg, gpu=False) == "mixed_bfloat16"
    assert resolve_policy("fp32", cfg, gpu=True) == "float32"
    assert resolve_policy("auto", _small(), gpu=True) == "float32"
    with pytest.raises(ValueError, match="precision"):
        resolve_policy("fp16", cfg, gpu=True)


def test_a_loaded_member_predicts_like_the_saved_model_in_any_precision(tmp_path, seed):
    from unet3d.training.checkpoint import load_model

    folder = _export(tmp_path / "m", _small(deep_supervision=True, precision="mixed_bfloat16"))
    saved = load_model(folder / "model.keras")
    x = np.random.default_rng(0).standard_normal((1, 16, 16, 16, 4)).astype(np.float32)
    want = np.asarray(saved.predict_on_batch(x))
    fp32 = load_member(folder)  # CPU: float32
    assert fp32.policy == "float32"
    np.testing.assert_allclose(np.asarray(fp32.model.predict_on_batch(x)), want, atol=1e-5)
    mixed = load_member(folder, precision="trained")
    assert mixed.policy == "mixed_bfloat16"
    assert mixed.model.layers[1].compute_dtype == "bfloat16"
    np.testing.assert_allclose(np.asarray(mixed.model.predict_on_batch(x)), want, atol=0.05)


def test_load_member_rejects_a_folder_that_is_not_an_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.keras"):
        load_member(tmp_path)
    folder = _export(tmp_path / "m", _small())
    _small(head="regions").save(folder / "config.json")  # weights no longer fit the config
    with pytest.raises(ValueError, match="does not match"):
        load_member(folder)


def test_the_same_case_in_two_orientations_gets_the_same_prediction(synth, tmp_path):
    member = load_member(_export(tmp_path / "m", _small()))
    lps = _reoriented_copy(synth, tmp_path / "lps", "lps")
    predictor = Predictor([member], tta=2)
    for a, b in zip(discover(synth).cases, discover(lps).cases, strict=True):
        pa = predictor.predict(load_case(a))
        pb = predictor.predict(load_case(b))
        flip, _ = _lps(pa.labels.shape)
        np.testing.assert_array_equal(flip(pa.labels), pb.labels)
        assert pa.windows == pb.windows == 2 * member.windows(
            preprocess_loaded(load_case(a))[0].shape[:3], 0.5, 1)


def test_discover_input_takes_a_case_folder_or_a_dataset(synth):
    cases = discover_input(synth)
    assert len(cases) == 2
    (one,) = discover_input(synth / cases[1].case_id)
    assert one == cases[1]


@pytest.fixture(scope="module")
def trained(synth16, tmp_path_factory) -> Path:
    """A briefly trained cpu-small model (its predictions are not trivial)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    r = run_cli("train", "--data", str(synth16), "--cache", str(out.parent / "cache"), "--preset",
                "cpu-small", "--epochs", "3", "--steps-per-epoch", "12", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow
def test_cli_predict_and_evaluate_on_a_reoriented_dataset(trained, synth16, tmp_path):
    ids = [c.case_id for c in discover(synth16).cases][-3:]
    src = tmp_path / "ras"
    for cid in ids:
        shutil.copytree(synth16 / cid, src / cid)
    data = _reoriented_copy(src, tmp_path / "lps", "lps")
    out = tmp_path / "pred"
    r = run_cli("predict", "--model", str(trained), "--input", str(data), "--out", str(out),
                "--tta", "--overlap", "0.25", "--probabilities", "--min-et-volume", "50",
                "--largest-wt", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"3 case\(s\) in [\d.]+ s; peak memory [\d.]+ GiB", r.stdout)
    for cid in ids:
        assert f"{cid}: " in r.stdout
        pred = nib.load(str(out / f"{cid}.nii.gz"))
        ref = nib.load(str(data / cid / f"{cid}_t1.nii.gz"))
        assert pred.shape == ref.shape
        np.testing.assert_array_equal(pred.affine, ref.affine)
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= BRATS_VALUES
        assert nib.load(str(out / f"{cid}_probabilities.nii.gz")).shape == (*ref.shape, 4)
    info = json.loads((out / "predict.json").read_text())
    assert info["tta"] == 8 and info["overlap"] == 0.25 and info["precision"] == ["float32"]
    assert info["postprocess"] == {"min_et_volume_mm3": 50.0, "largest_wt": True}

    r = run_cli("evaluate", "--pred", str(out), "--data", str(data), "--out",
                str(tmp_path / "eval" / "scores.csv"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WT" in r.stdout and "LW HD95" in r.stdout
    rows = list(csv.DictReader((tmp_path / "eval" / "scores.csv").open()))
    assert [row["case_id"] for row in rows] == ids
    assert np.mean([float(row["dice_WT"]) for row in rows]) > 0.5  # a trained model, not noise
    summary = json.loads((tmp_path / "eval" / "scores_summary.json").read_text())
    assert summary["cases"] == 3
    assert summary["metrics"]["dice_WT"]["mean"] == pytest.approx(
        np.mean([float(row["dice_WT"]) for row in rows]), abs=1e-12)
    assert set(summary["metrics"]["hd95_ET"]) == {"mean", "std", "median", "q25", "q75"}


@pytest.mark.slow
def test_cli_ensemble_of_export_folders(trained, synth16, tmp_path):
    exports = tmp_path / "folds"
    shutil.copytree(trained, exports / "fold_0", ignore=shutil.ignore_patterns("tensorboard"))
    _export(exports / "fold_1", RunConfig.load(trained / "config.json").replace(
        model={"head": "regions"}, train={"loss": "region"}), seed=7)
    case_dir = synth16 / discover(synth16).cases[0].case_id
    out = tmp_path / "pred"
    r = run_cli("predict", "--model", str(exports), "--input", str(case_dir), "--out", str(out),
                timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((out / "predict.json").read_text())
    assert [Path(m).name for m in info["models"]] == ["fold_0", "fold_1"]
    assert r.stdout.count("model ") == 2 and "with 2 model(s)" in r.stdout
    assert (out / f"{case_dir.name}.nii.gz").exists()

    # Repeating --model ensembles too; an ensemble differs from its first member alone.
    r1 = run_cli("predict", "--model", str(exports / "fold_0"), "--model", str(exports / "fold_1"),
                 "--input", str(case_dir), "--out", str(tmp_path / "p1"), timeout=600)
    r2 = run_cli("predict", "--model", str(exports / "fold_0"), "--input", str(case_dir),
                 "--out", str(tmp_path / "p2"), timeout=600)
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr[-2000:] + r2.stderr[-2000:]
    a = np.asarray(nib.load(str(tmp_path / "p1" / f"{case_dir.name}.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(out / f"{case_dir.name}.nii.gz")).dataobj)
    c = np.asarray(nib.load(str(tmp_path / "p2" / f"{case_dir.name}.nii.gz")).dataobj)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_cli_predict_bad_input_gives_one_line_errors(synth, tmp_path):
    model = _export(tmp_path / "m", _small())
    args = ["predict", "--model", str(model), "--out", str(tmp_path / "o")]
    # A missing modality in the input names the case and file.
    broken = tmp_path / "broken"
    shutil.copytree(synth, broken, ignore=shutil.ignore_patterns(".*"))
    cid = discover(synth).cases[0].case_id
    (broken / cid / f"{cid}_flair.nii.gz").unlink()
    assert f"{cid}_flair.nii.gz" in error_line(run_cli(*args, "--input", str(broken)))
    # A truncated image.
    trunc = tmp_path / "trunc"
    shutil.copytree(synth / cid, trunc / cid)
    t1 = trunc / cid / f"{cid}_t1.nii.gz"
    t1.write_bytes(t1.read_bytes()[:300])
    line = error_line(run_cli(*args, "--input", str(trunc)))
    assert str(t1) in line and "truncated" in line
    # Not an export folder; bad options.
    (tmp_path / "empty").mkdir()
    assert "not an export folder" in error_line(run_cli(
        "predict", "--model", str(tmp_path / "empty"), "--input", str(synth), "--out", str(tmp_path / "o")))
    assert "--tta 9" in error_line(run_cli(*args, "--input", str(synth), "--tta", "9"))
    assert "--overlap" in error_line(run_cli(*args, "--input", str(synth), "--overlap", "1"))
    # A corrupt model.keras names the file.
    bad = _export(tmp_path / "bad", _small())
    (bad / "model.keras").write_bytes(b"not a zip")
    line = error_line(run_cli("predict", "--model", str(bad), "--input", str(synth),
                                   "--out", str(tmp_path / "o")))
    assert str(bad / "model.keras") in line
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.nii.gz"))


@pytest.mark.slow
def test_a_full_size_case_predicts_with_the_nvidia_architecture_within_memory(tmp_path):
    """240 x 240 x 155 with the 31M-parameter network: windows are streamed, so memory stays far
    below this machine's 24 GiB (about 3 GiB measured). (A brain box smaller than a real one, 2
    windows rather than 8: a window costs about 10 s here, and the peak is the same.)"""
    model = _export(tmp_path / "nvidia", preset("nvidia"))
    data = tmp_path / "data"
    write_synthetic_dataset(data, 1, (240, 240, 155), seed=1, brain_size=(172, 120, 120))
    r = run_cli("predict", "--model", str(model), "--input", str(data), "--out", str(tmp_path / "o"),
                timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    peak = float(re.search(r"peak memory ([\d.]+) GiB", r.stdout).group(1))
    assert peak < 12.0, r.stdout
    assert "2 window evaluations" in r.stdout  # 2 x 1 x 1 windows of 128^3 over the brain's box
    (cid,) = [c.case_id for c in discover(data).cases]
    assert nib.load(str(tmp_path / "o" / f"{cid}.nii.gz")).shape == (240, 240, 155)


def test_class_label_round_trip_helpers():
    classes = np.arange(4, dtype=np.uint8)
    assert LEGACY.to_labels(classes).tolist() == [0, 1, 2, 4]
    assert BUILTIN["msd"].to_labels(classes).tolist() == [0, 1, 2, 3]


@pytest.mark.slow
def test_float16_cache_scores_as_float32(trained, synth16, tmp_path):
    """The cache keeps images as float16 (half the size): a trained model's validation Dice on
    them equals its Dice on the float32 images they were made from."""
    from unet3d.data.preprocess import CACHE_DTYPE, open_cases
    from unet3d.evaluation.evaluate import evaluate_cases
    from unet3d.training.checkpoint import model_from_run

    model, cfg, _ = model_from_run(trained)
    cases = discover(synth16).cases[-3:]
    half = open_cases(trained.parent / "cache", [c.case_id for c in cases])
    assert half[0].image().dtype == CACHE_DTYPE == np.float16
    full = []
    for case, entry in zip(cases, half, strict=True):
        folder = tmp_path / case.case_id
        shutil.copytree(entry.folder, folder)
        np.save(folder / "image.npy", preprocess_loaded(load_case(case))[0])
        full.extend(open_cases(tmp_path, [case.case_id]))
    assert full[0].image().dtype == np.float32
    scores16, scores32 = evaluate_cases(model, half, cfg), evaluate_cases(model, full, cfg)
    assert np.mean([s["dice_WT"] for s in scores32]) > 0.5  # a trained model, not noise
    for a, b in zip(scores16, scores32, strict=True):
        for region in ("WT", "TC", "ET"):
            assert a[f"dice_{region}"] == pytest.approx(b[f"dice_{region}"], abs=2e-3), region
