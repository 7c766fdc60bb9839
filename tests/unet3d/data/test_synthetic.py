"""The synthetic generator: real BraTS 2021-layout NIfTI, nested tumour regions, distinct contrasts."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from unet3d.data.discover import MODALITIES, discover
from unet3d.data.preprocess import load_case, prepare
from unet3d.data.synthetic import synth_case, write_synthetic_dataset

SHAPE = (32, 32, 32)
SEEDS = range(16)  # includes low-grade cases (no enhancing tumour) and high-grade ones


@pytest.fixture(scope="module")
def cases() -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    return [synth_case(SHAPE, s) for s in SEEDS]


def _read(folder, cid, name) -> np.ndarray:
    return np.asarray(nib.load(str(folder / cid / f"{cid}_{name}.nii.gz")).dataobj)


def test_writes_the_brats2021_layout_that_discover_finds(tmp_path):
    out = tmp_path / "synth"
    folders = write_synthetic_dataset(out, 3, SHAPE, seed=0, spacing=(1.0, 1.0, 2.0))
    ids = ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    assert folders == [out / i for i in ids]
    ds = discover(out)
    assert ds.layout == "brats2021"
    assert [c.case_id for c in ds.cases] == ids and len(ds.labelled) == 3
    for c in ds.cases:
        assert {m: p.name for m, p in c.images.items()} == {m: f"{c.case_id}_{m}.nii.gz" for m in MODALITIES}
        assert c.label.name == f"{c.case_id}_seg.nii.gz"
        lc = load_case(c)  # passes every validation check
        assert lc.image.shape == (*SHAPE, 4)
        np.testing.assert_allclose(lc.affine, np.diag([1.0, 1.0, 2.0, 1.0]))
    assert not [p for p in out.rglob("*") if p.is_file() and not p.name.endswith(".nii.gz")]
    entries = prepare(ds.cases, tmp_path / "cache")
    assert [e.meta["spacing"] for e in entries] == [[1.0, 1.0, 2.0]] * 3


def test_labels_are_brats_values_with_nested_regions(cases):
    grades = set()
    for seed, (images, label) in zip(SEEDS, cases, strict=True):
        assert label.dtype == np.uint8 and label.shape == SHAPE
        values = set(np.unique(label).tolist())
        assert values <= {0, 1, 2, 4}, seed
        assert {0, 1, 2} <= values, seed  # every case has edema and a core
        grades.add(4 in values)
        brain = np.any(np.stack([images[m] for m in MODALITIES]) != 0, axis=0)
        tumour = label > 0
        assert not np.any(tumour & ~brain), seed  # tumour inside the brain
        assert brain.sum() > 3 * tumour.sum(), seed  # plenty of normal brain around it
        # Core (NCR + ET) lies inside the edema: it never touches tumour-free tissue.
        core = np.isin(label, [1, 4])
        assert not np.any(core & ndimage.binary_dilation(~tumour)), seed
        # Nesting from the inside out: NCR deepest, then ET (the rim), then edema.
        depth = ndimage.distance_transform_edt(tumour)
        d_ed, d_ncr = depth[label == 2].mean(), depth[label == 1].mean()
        if 4 in values:
            d_et = depth[label == 4].mean()
            assert d_ncr > d_et > d_ed, seed
            # NCR is enclosed by ET: most NCR voxels have no edema neighbour.
            ncr_next_to_ed = (label == 1) & ndimage.binary_dilation(label == 2)
            assert ncr_next_to_ed.sum() <= 0.3 * (label == 1).sum(), seed
        else:
            assert d_ncr > d_ed, seed
    assert grades == {True, False}  # both high-grade (with ET) and low-grade (without) cases


def test_modalities_have_distinct_contrasts(cases):
    for seed, (images, label) in zip(SEEDS, cases, strict=True):
        brain = images["t1"] != 0
        for m in MODALITIES:
            assert images[m].dtype == np.int16
            np.testing.assert_array_equal(images[m] != 0, brain, err_msg=m)  # same brain in each
        normal = brain & (label == 0)
        edema, et = label == 2, label == 4

        def ratio(m, region, images=images, normal=normal):
            return images[m][region].mean() / images[m][normal].mean()

        assert ratio("flair", edema) > 1.3, seed
        assert ratio("t2", edema) > 1.3, seed
        assert ratio("t1", edema) < 1.0, seed
        if et.any():
            assert ratio("t1ce", et) > 1.2, seed
            assert ratio("t1", et) < 1.0, seed  # enhancement only shows with contrast agent
        # no two modalities are the same picture up to scale
        flat = np.stack([images[m][brain].astype(np.float64) for m in MODALITIES])
        corr = np.corrcoef(flat)
        assert np.all(corr[~np.eye(4, dtype=bool)] < 0.98), (seed, corr)


def test_deterministic_for_a_seed(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", 2, (16, 16, 16), seed=5)
    b = write_synthetic_dataset(tmp_path / "b", 2, (16, 16, 16), seed=5)
    c = write_synthetic_dataset(tmp_path / "c", 2, (16, 16, 16), seed=6)
    for fa, fb, fc in zip(a, b, c, strict=True):
        differs = False
        for name in (*MODALITIES, "seg"):
            xa, xb, xc = (_read(f.parent, f.name, name) for f in (fa, fb, fc))
            np.testing.assert_array_equal(xa, xb)
            differs |= not np.array_equal(xa, xc)
        assert differs
    # different cases of one dataset differ too
    assert not np.array_equal(_read(tmp_path / "a", "BraTS2021_00000", "seg"),
                              _read(tmp_path / "a", "BraTS2021_00001", "seg"))
    i1, l1 = synth_case((16, 16, 16), 3)
    i2, l2 = synth_case((16, 16, 16), 3)
    np.testing.assert_array_equal(l1, l2)
    for m in MODALITIES:
        np.testing.assert_array_equal(i1[m], i2[m])


def test_existing_complete_cases_are_kept(tmp_path):
    out = tmp_path / "s"
    write_synthetic_dataset(out, 2, (16, 16, 16), seed=0)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    assert len(mtimes) == 10
    write_synthetic_dataset(out, 3, (16, 16, 16), seed=0)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert len(list(out.rglob("*.nii.gz"))) == 15
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize("kwargs", [{"n_cases": 0}, {"shape": (8, 32, 32)}, {"shape": (32, 32)}])
def test_bad_arguments_raise(tmp_path, kwargs):
    args = {"n_cases": 1, "shape": (16, 16, 16), **kwargs}
    with pytest.raises(ValueError):
        write_synthetic_dataset(tmp_path / "s", **args)
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())
