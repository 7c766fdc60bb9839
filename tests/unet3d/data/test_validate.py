"""Bad input data: one clear DataError naming the case and the file, in-process and through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nifti_cases as nii
import numpy as np
import pytest
from conftest import error_line, run_cli

from unet3d.data.discover import DataError, discover
from unet3d.data.preprocess import load_case, prepare, preprocess_loaded

CID = "BraTS2021_00001"


def _check(root: Path) -> None:
    """What `prepare` checks: discover, load and preprocess each case (short of writing), then the
    label values every case holds against the dataset's label scheme."""
    import tempfile

    from unet3d.data.preprocess import dataset_scheme, prepare

    ds = discover(root)
    for case in ds.cases:
        preprocess_loaded(load_case(case))
    with tempfile.TemporaryDirectory() as cache:
        dataset_scheme(ds, prepare(ds.cases, cache))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _noisy(shape=(16, 16, 16), seed=0) -> np.ndarray:
    """Incompressible data, so half the .nii.gz cuts into the voxels, not only the header."""
    return np.random.default_rng(seed).uniform(1, 100, shape).astype(np.float32)


# Each corruption: (name, function(root) -> the file the error must name, message pattern)
def _truncated_gz(root):
    p = root / CID / f"{CID}_t2.nii.gz"
    nii.write_nii(p, _noisy())
    _truncate(p)
    return p, r"unreadable or truncated"


def _truncated_label(root):
    p = root / CID / f"{CID}_seg.nii.gz"
    nii.write_nii(p, np.random.default_rng(1).choice([0, 1, 2, 4], (16, 16, 16)).astype(np.uint8))
    _truncate(p)
    return p, r"unreadable or truncated"


def _truncated_nii(root):
    (root / CID / f"{CID}_t1.nii.gz").unlink()
    p = nii.write_nii(root / CID / f"{CID}_t1.nii", _noisy())
    _truncate(p)
    return p, r"unreadable or truncated"


def _not_nifti(root):
    p = root / CID / f"{CID}_flair.nii.gz"
    p.write_text("this is not a NIfTI file\n" * 20)
    return p, r"unreadable or truncated"


def _not_nifti_uncompressed(root):
    (root / CID / f"{CID}_flair.nii.gz").unlink()
    p = root / CID / f"{CID}_flair.nii"
    p.write_bytes(b"<html>404 not found</html>" * 40)
    return p, r"unreadable or truncated"


def _missing_modality(root):
    p = root / CID / f"{CID}_t1ce.nii.gz"
    p.unlink()
    return p, r"missing modality"


def _shape_mismatch(root):
    p = root / CID / f"{CID}_t2.nii.gz"
    nii.write_nii(p, _noisy((16, 16, 15)))
    return p, r"shape \(16, 16, 15\) differs"


def _affine_mismatch(root):
    p = root / CID / f"{CID}_flair.nii.gz"
    aff = np.eye(4)
    aff[:3, 3] = [5.0, 0.0, 0.0]
    nii.write_nii(p, nii.case_images()["flair"], aff)
    return p, r"affine differs"


def _nan_voxels(root):
    p = root / CID / f"{CID}_t1.nii.gz"
    img = nii.case_images()["t1"]
    img[8, 8, 8] = np.nan
    nii.write_nii(p, img)
    return p, r"NaN or infinite"


def _inf_voxels(root):
    p = root / CID / f"{CID}_t1ce.nii.gz"
    img = nii.case_images()["t1ce"]
    img[8, 8, 9] = -np.inf
    nii.write_nii(p, img)
    return p, r"NaN or infinite"


def _label_value_3(root):
    p = root / CID / f"{CID}_seg.nii.gz"
    lab = nii.brats_label()
    lab[8, 8, 8] = 3
    nii.write_nii(p, lab)
    return p, r"label values \[3\] are not in the brats-legacy scheme"


def _label_non_integer(root):
    p = root / CID / f"{CID}_seg.nii.gz"
    nii.write_nii(p, nii.brats_label().astype(np.float32) * 0.5)  # 0.5, 1.0, 2.0
    return p, r"non-integer"


def _label_nan(root):
    p = root / CID / f"{CID}_seg.nii.gz"
    lab = nii.brats_label().astype(np.float32)
    lab[0, 0, 0] = np.nan
    nii.write_nii(p, lab)
    return p, r"non-integer"


def _label_shape(root):
    p = root / CID / f"{CID}_seg.nii.gz"
    nii.write_nii(p, nii.brats_label((16, 15, 16)))
    return p, r"label shape \(16, 15, 16\) differs"


def _label_affine(root):
    p = root / CID / f"{CID}_seg.nii.gz"
    nii.write_nii(p, nii.brats_label(), np.diag([1.0, 1.0, 2.0, 1.0]))
    return p, r"label affine differs"


def _image_4d(root):
    p = root / CID / f"{CID}_t2.nii.gz"
    nii.write_nii(p, np.ones((16, 16, 16, 2), np.float32))
    return p, r"expected a 3-D image"


def _all_zero(root):
    for m in nii.MODS:
        nii.write_nii(root / CID / f"{CID}_{m}.nii.gz", np.zeros((16, 16, 16), np.float32))
    nii.write_nii(root / CID / f"{CID}_seg.nii.gz", np.zeros((16, 16, 16), np.uint8))
    return root / CID / f"{CID}_t1.nii.gz", r"zero everywhere"


BRATS_BAD = [_truncated_gz, _truncated_label, _truncated_nii, _not_nifti, _not_nifti_uncompressed,
             _missing_modality, _shape_mismatch, _affine_mismatch, _nan_voxels, _inf_voxels,
             _label_value_3, _label_non_integer, _label_nan, _label_shape, _label_affine, _image_4d,
             _all_zero]


def _bad_brats(tmp_path: Path, corrupt) -> tuple[Path, Path, str]:
    root = tmp_path / "data"
    nii.write_brats_case(root, "BraTS2021_00000")
    nii.write_brats_case(root, CID, seed=1)
    path, pattern = corrupt(root)
    return root, path, pattern


@pytest.mark.parametrize("corrupt", BRATS_BAD, ids=lambda f: f.__name__.strip("_"))
def test_bad_brats_input_names_case_and_file(tmp_path, corrupt):
    root, path, pattern = _bad_brats(tmp_path, corrupt)
    with pytest.raises(DataError, match=pattern) as ei:
        _check(root)
    msg = str(ei.value)
    assert f"case {CID}" in msg
    assert path.name in msg
    assert "\n" not in msg


def _msd_label_value_4(root):
    p = root / "labelsTr" / "BRATS_002.nii.gz"
    lab = nii.msd_label()
    lab[8, 8, 8] = 4  # a BraTS value: not in the MSD set 0-3
    nii.write_nii(p, lab)
    return p, r"label values \[4\] are not in the msd scheme"


def _msd_3d_image(root):
    p = root / "imagesTr" / "BRATS_002.nii.gz"
    nii.write_nii(p, np.ones((16, 16, 16), np.float32))
    return p, r"expected a 4-D image"


def _msd_truncated(root):
    p = root / "imagesTr" / "BRATS_002.nii.gz"
    nii.write_nii(p, _noisy((16, 16, 16, 4)))
    _truncate(p)
    return p, r"unreadable or truncated"


def _msd_nan(root):
    p = root / "imagesTr" / "BRATS_002.nii.gz"
    img = np.ones((16, 16, 16, 4), np.float32)
    img[1, 2, 3, 2] = np.nan
    nii.write_nii(p, img)
    return p, r"modality t1ce has NaN or infinite"  # MSD channel 2 is t1gd = our t1ce


@pytest.mark.parametrize("corrupt", [_msd_label_value_4, _msd_3d_image, _msd_truncated, _msd_nan],
                         ids=lambda f: f.__name__.strip("_"))
def test_bad_msd_input_names_case_and_file(tmp_path, corrupt):
    root = nii.write_msd(tmp_path / "Task01_BrainTumour", ["BRATS_001", "BRATS_002"])
    path, pattern = corrupt(root)
    with pytest.raises(DataError, match=pattern) as ei:
        _check(root)
    assert "case BRATS_002" in str(ei.value) and path.name in str(ei.value)


def test_empty_and_missing_data_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no cases found") as ei:
        discover(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(ei.value)
    with pytest.raises(DataError, match="does not exist") as ei:
        discover(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(ei.value)


# --- through the command line -----------------------------------------------------------------


@pytest.mark.parametrize("corrupt", [_truncated_gz, _not_nifti, _missing_modality, _nan_voxels,
                                     _label_value_3, _shape_mismatch],
                         ids=lambda f: f.__name__.strip("_"))
def test_cli_prepare_bad_data_exits_2_with_one_error_line(tmp_path, corrupt):
    root, path, _ = _bad_brats(tmp_path, corrupt)
    r = run_cli("prepare", "--data", str(root), "--cache", str(tmp_path / "cache"), timeout=120)
    line = error_line(r)
    assert path.name in line and CID in line


@pytest.mark.parametrize("which", ["missing", "empty"])
def test_cli_prepare_missing_or_empty_folder(tmp_path, which):
    data = tmp_path / "data"
    if which == "empty":
        data.mkdir()
    r = run_cli("prepare", "--data", str(data), "--cache", str(tmp_path / "cache"), timeout=120)
    assert str(data) in error_line(r)


def _snapshot(entry: Path) -> dict[str, tuple[int, bytes]]:
    return {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in sorted(entry.iterdir())}


def test_cli_failure_keeps_the_cache_entries_of_other_cases(tmp_path):
    root = tmp_path / "data"
    cache = tmp_path / "cache"
    nii.write_brats_case(root, "BraTS2021_00000")
    nii.write_brats_case(root, CID, seed=1)
    r = run_cli("prepare", "--data", str(root), "--cache", str(cache), timeout=120)
    assert r.returncode == 0, r.stderr
    good = cache / "BraTS2021_00000"
    before = _snapshot(good)
    assert set(before) == {"image.npy", "label.npy", "fg.npy", "meta.json"}

    bad = root / CID / f"{CID}_t2.nii.gz"
    nii.write_nii(bad, _noisy())
    _truncate(bad)
    r = run_cli("prepare", "--data", str(root), "--cache", str(cache), timeout=120)
    assert bad.name in error_line(r)
    assert _snapshot(good) == before  # not rewritten, not removed
    assert not (cache / CID / "meta.json").exists()  # the failed case is not marked complete

    # Once the bad file is fixed, the good case is reused and only the fixed one is redone.
    nii.write_brats_case(root, CID, seed=1)
    seen = {}
    prepare(discover(root).cases, cache, lambda c, reused: seen.__setitem__(c.case_id, reused))
    assert seen == {"BraTS2021_00000": True, CID: False}
    assert _snapshot(good) == before


def test_failure_on_first_run_keeps_earlier_complete_entries(tmp_path):
    """A fresh cache: case 0 is written completely before case 1 fails, and is reused later."""
    root, path, _ = _bad_brats(tmp_path, _nan_voxels)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=path.name):
        prepare(discover(root).cases, cache)
    meta = json.loads((cache / "BraTS2021_00000" / "meta.json").read_text())
    assert meta["case_id"] == "BraTS2021_00000"
    good = discover(root).cases[0]
    seen = []
    prepare([good], cache, lambda c, reused: seen.append(reused))
    assert seen == [True]
