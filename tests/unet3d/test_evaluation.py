"""`evaluate` against an independent reference implementation, and its error handling.

The reference below is written from first principles and shares no code with unet3d.evaluation.metrics:
surface voxels by an explicit 6-neighbour test on a zero-padded array, distances between surface
points in mm with a k-d tree (not a distance transform), BraTS's empty-mask conventions.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import error_line, run_cli
from scipy import ndimage
from scipy.spatial import cKDTree

from unet3d.data.discover import MODALITIES, DataError, discover
from unet3d.evaluation.evaluate import evaluate_folder
from unet3d.labels import BUILTIN

LEGACY = BUILTIN["brats-legacy"]

SPACING = (0.9, 1.3, 2.1)
REGION_VALUES = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


def _ref_surface_points(mask: np.ndarray, spacing) -> np.ndarray:
    """(N, 3) mm coordinates of voxels in ``mask`` with a 6-neighbour outside it (or off the
    image)."""
    p = np.pad(mask, 1, constant_values=False)
    inner = p[1:-1, 1:-1, 1:-1]
    all_in = np.ones_like(mask)
    for axis in range(3):
        for shift in (-1, 1):
            neighbour = np.roll(p, shift, axis=axis)[1:-1, 1:-1, 1:-1]
            all_in &= neighbour
    surface = inner & ~all_in
    return np.argwhere(surface) * np.asarray(spacing, float)


def _ref_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float(np.linalg.norm(np.asarray(a.shape) * np.asarray(spacing)))
    pa, pb = _ref_surface_points(a, spacing), _ref_surface_points(b, spacing)
    d_ab = cKDTree(pb).query(pa)[0]
    d_ba = cKDTree(pa).query(pb)[0]
    return float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))


def _ref_dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * (a & b).sum() / s


def _ref_scores(pred: np.ndarray, ref: np.ndarray, spacing) -> dict[str, float]:
    out = {}
    for region, values in REGION_VALUES.items():
        p, r = np.isin(pred, values), np.isin(ref, values)
        out[f"dice_{region}"] = _ref_dice(p, r)
        out[f"hd95_{region}"] = _ref_hd95(p, r, spacing)
    return out


def _random_label(rng: np.random.Generator, shape, drop_et: bool = False) -> np.ndarray:
    """Blobby random BraTS labels (smoothed noise thresholds) plus scattered single voxels."""
    def blob(level):
        n = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
        return n > level * n.std()

    lab = np.zeros(shape, np.uint8)
    lab[blob(1.0)] = 2
    lab[blob(1.3)] = 1
    if not drop_et:
        lab[blob(1.5)] = 4
    speck = rng.random(shape) < 0.002
    lab[speck] = rng.choice([1, 2] if drop_et else [1, 2, 4], int(speck.sum()))
    return lab


def _write(path: Path, arr: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A BraTS-layout dataset with anisotropic voxels (and a permuted, flipped affine) and a folder
    of random predictions, including empty-region cases on either side."""
    root = tmp_path_factory.mktemp("eval")
    data, pred = root / "data", root / "pred"
    rng = np.random.default_rng(42)
    shape = (40, 36, 24)
    # voxel axes -> (-y, x, z) with SPACING mm: spacing per array axis is SPACING in order.
    affine = np.array([[0, SPACING[1], 0, -20], [-SPACING[0], 0, 0, 30], [0, 0, SPACING[2], 5],
                       [0, 0, 0, 1.0]])
    cases = {}
    for i in range(6):
        cid = f"case_{i:02d}"
        ref = _random_label(rng, shape, drop_et=i == 4)
        p = _random_label(rng, shape, drop_et=i == 5)
        if i == 3:
            p = ref.copy()
            p[ref == 4] = 1  # no ET predicted where the reference has it
        if i == 2:
            p = ref.copy()  # perfect
        for m in MODALITIES:
            _write(data / cid / f"{cid}_{m}.nii.gz", rng.random(shape).astype(np.float32), affine)
        _write(data / cid / f"{cid}_seg.nii.gz", ref, affine)
        _write(pred / f"{cid}.nii.gz", p, affine)
        cases[cid] = (p, ref)
    return data, pred, cases


def test_evaluate_matches_an_independent_reference_with_anisotropic_spacing(dataset, tmp_path):
    data, pred, cases = dataset
    out = tmp_path / "scores.csv"
    r = run_cli("evaluate", "--pred", str(pred), "--data", str(data), "--out", str(out), "--jobs", "2",
                timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["case_id"]: row for row in csv.DictReader(out.open())}
    assert sorted(rows) == sorted(cases)
    # The header stores the voxel size as float32: the reference uses what the file says.
    spacing = nib.load(str(data / "case_00" / "case_00_seg.nii.gz")).header.get_zooms()
    assert spacing == pytest.approx(SPACING, rel=1e-6)
    for cid, (p, ref) in cases.items():
        want = _ref_scores(p, ref, spacing)
        for k, v in want.items():
            tol = 1e-6 if k.startswith("dice") else 1e-3
            assert float(rows[cid][k]) == pytest.approx(v, abs=tol), (cid, k)
        for kind in ("dice", "hd95"):
            mean = np.mean([want[f"{kind}_{r}"] for r in REGION_VALUES])
            tol = 1e-6 if kind == "dice" else 1e-3
            assert float(rows[cid][f"{kind}_mean"]) == pytest.approx(mean, abs=tol)
    # The conventions were exercised: empty-vs-empty ET (Dice 1, HD95 0), one empty (Dice 0,
    # HD95 = the image diagonal in mm), and a perfect case.
    diag = float(np.linalg.norm(np.array([40, 36, 24]) * np.array(spacing, float)))
    assert float(rows["case_03"]["dice_ET"]) == 0.0
    assert float(rows["case_03"]["hd95_ET"]) == pytest.approx(diag, abs=1e-6)
    assert float(rows["case_02"]["dice_mean"]) == 1.0 and float(rows["case_02"]["hd95_mean"]) == 0.0
    # Non-trivial distances: the random masks disagree by several mm somewhere.
    assert max(float(row["hd95_WT"]) for row in rows.values()) > 3.0

    summary = json.loads((tmp_path / "scores_summary.json").read_text())
    assert summary["cases"] == 6
    for k in ("dice_WT", "hd95_TC", "dice_mean"):
        v = np.array([float(row[k]) for row in rows.values()])
        s = summary["metrics"][k]
        assert s["mean"] == pytest.approx(v.mean()) and s["median"] == pytest.approx(np.median(v))
        assert s["std"] == pytest.approx(v.std())
    for line in ("WT", "TC", "ET", "mean"):
        assert any(ln.startswith(line) for ln in r.stdout.splitlines())


def test_evaluate_in_process_with_one_job_gives_the_same_rows(dataset):
    data, pred, _ = dataset
    a = evaluate_folder(pred, discover(data).cases, LEGACY, jobs=1)
    b = evaluate_folder(pred, discover(data).cases, LEGACY, jobs=2)
    assert a == b


def test_evaluate_bad_predictions_give_one_line_errors(dataset, tmp_path):
    data, pred, cases = dataset
    affine = nib.load(str(pred / "case_00.nii.gz")).affine

    def variant(name: str, edit) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for cid in cases:
            (folder / f"{cid}.nii.gz").write_bytes((pred / f"{cid}.nii.gz").read_bytes())
        edit(folder / "case_01.nii.gz")
        return folder

    def evaluate(folder: Path):
        return run_cli("evaluate", "--pred", str(folder), "--data", str(data), timeout=120)

    missing = variant("missing", lambda p: p.unlink())
    line = error_line(evaluate(missing))
    assert "case_01" in line and "--partial scores the cases that have one" in line
    # --partial scores the others and says which it skipped (the CSV and summary too).
    r = run_cli("evaluate", "--pred", str(missing), "--data", str(data), "--partial",
                "--out", str(tmp_path / "partial.csv"), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    n = len(cases)
    assert f"--partial: 1 of {n} labelled cases skipped (no prediction): case_01" in r.stdout
    rows = (tmp_path / "partial.csv").read_text().splitlines()[1:]
    assert sorted(row.split(",")[0] for row in rows) == sorted(set(cases) - {"case_01"})
    assert json.loads((tmp_path / "partial_summary.json").read_text())["skipped"] == ["case_01"]
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("evaluate", "--pred", str(empty), "--data", str(data), "--partial", timeout=120)
    assert f"for {n} of {n} labelled cases" in error_line(r)
    shape = variant("shape", lambda p: _write(p, np.zeros((40, 36, 23), np.uint8), affine))
    line = error_line(evaluate(shape))
    assert "case_01.nii.gz" in line and "shape" in line
    moved = affine.copy()
    moved[:3, 3] += 5
    grid = variant("affine", lambda p: _write(p, cases["case_01"][0], moved))
    assert "affine" in error_line(evaluate(grid))
    bad_values = variant("values", lambda p: _write(p, np.full((40, 36, 24), 3, np.uint8), affine))
    line = error_line(evaluate(bad_values))
    assert "[3]" in line and "case_01.nii.gz" in line
    trunc = variant("trunc", lambda p: p.write_bytes(p.read_bytes()[:200]))
    assert "truncated" in error_line(evaluate(trunc))
    # Nothing was written for a failed evaluation.
    for folder in (missing, shape, grid, bad_values, trunc):
        assert not (folder / "evaluation.csv").exists()
    with pytest.raises(DataError, match="does not exist"):
        evaluate_folder(tmp_path / "nope", discover(data).cases, LEGACY)
