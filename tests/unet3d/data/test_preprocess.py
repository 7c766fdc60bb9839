"""Preprocessing: canonical reorientation (and its exact inverse), brain crop, z-score, the cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nifti_cases as nii
import numpy as np
import pytest

from unet3d.data import preprocess
from unet3d.data.discover import MODALITIES, discover
from unet3d.data.preprocess import (
    CACHE_DTYPE,
    PREPROCESS_VERSION,
    load_case,
    prepare,
    prepare_case,
    preprocess_loaded,
    restore_to_original,
)
from unet3d.labels import BUILTIN

LEGACY = BUILTIN["brats-legacy"]

CACHE_FILES = {"image.npy", "label.npy", "fg.npy", "meta.json"}
IDS = ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]


def _gradient_images(shape, brain) -> dict[str, np.ndarray]:
    """Images that differ along every axis, so any wrong flip or transpose changes them."""
    i, j, k = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    base = [100 + 7 * i + 3 * j + k, 50 + i * j + 2 * k, 300 - 5 * k + i, 10 + (i + 2 * j + 3 * k) ** 1.5]
    return {m: np.where(brain, b, 0).astype(np.float32) for m, b in zip(MODALITIES, base, strict=True)}


def _zscore(img: np.ndarray, brain: np.ndarray) -> np.ndarray:
    v = img[brain]
    return np.where(brain, (img - v.mean()) / v.std(), 0.0)


def _asymmetric_label(shape) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    c = [s // 2 for s in shape]
    lab[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 3, c[2] - 1:c[2] + 2] = 2
    lab[c[0] - 1:c[0] + 1, c[1] - 1:c[1] + 2, c[2]] = 4
    lab[c[0] - 1, c[1] - 1, c[2]] = 1
    lab[c[0] + 1, c[1] + 2, c[2] + 1] = 1  # off-centre voxels make every flip visible
    return lab


@pytest.mark.parametrize("orientation", ["lps", "permuted_anisotropic"])
def test_reorientation_to_ras_and_exact_round_trip(tmp_path, orientation):
    if orientation == "lps":
        shape = (16, 14, 12)
        affine = np.diag([-1.0, -1.0, 1.0, 1.0])
        affine[:3, 3] = [15.0, 13.0, 0.0]

        def to_ras(a):  # voxel i runs to the left, j to the back: flip both
            return a[::-1, ::-1, :]

        spacing = [1.0, 1.0, 1.0]
    else:
        # voxel axis 0 -> +S (2.5 mm), axis 1 -> -R i.e. left (1 mm), axis 2 -> -A i.e. back (1.5 mm)
        shape = (10, 16, 12)
        affine = np.array([[0.0, -1.0, 0.0, 20.0],
                           [0.0, 0.0, -1.5, 30.0],
                           [2.5, 0.0, 0.0, -10.0],
                           [0.0, 0.0, 0.0, 1.0]])

        def to_ras(a):
            return np.moveaxis(a, 0, 2)[::-1, ::-1, :]

        spacing = [1.0, 1.5, 2.5]

    brain = nii.brain_mask(shape)
    images = _gradient_images(shape, brain)
    label = _asymmetric_label(shape)
    assert np.all(brain[label > 0])
    root = tmp_path / "data"
    nii.write_brats_case(root, "case_lps", shape=shape, affine=affine, images=images, label=label)
    (case,) = discover(root).cases
    (entry,) = prepare([case], tmp_path / "cache")
    meta = json.loads((entry.folder / "meta.json").read_text())  # what a later predict run reads

    ras_brain = to_ras(brain)
    assert meta["ras_shape"] == list(ras_brain.shape)
    assert meta["original_shape"] == list(shape)
    np.testing.assert_allclose(meta["spacing"], spacing)
    lo, hi = meta["bbox_lo"], meta["bbox_hi"]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    nz = np.argwhere(ras_brain)
    assert lo == nz.min(axis=0).tolist() and hi == (nz.max(axis=0) + 1).tolist()

    # the cache keeps the file's label values; the scheme maps them to training classes
    np.testing.assert_array_equal(entry.label(mmap=False), to_ras(label)[sl])
    classes = entry.classes(LEGACY)
    np.testing.assert_array_equal(classes, LEGACY.to_classes(to_ras(label))[sl])
    assert meta["label_values"] == sorted(np.unique(label).tolist())
    image = entry.image(mmap=False)
    for c, m in enumerate(MODALITIES):
        expected = _zscore(to_ras(images[m]).astype(np.float64), ras_brain)[sl]
        # (the cache holds float16: 3 significant digits)
        np.testing.assert_allclose(image[..., c], expected, rtol=1e-3, atol=1e-3, err_msg=m)

    # Round trip: back on the original grid, in the original voxel order, exactly.
    restored = restore_to_original(classes, meta)
    assert restored.shape == shape and restored.dtype == classes.dtype
    np.testing.assert_array_equal(restored, LEGACY.to_classes(label))
    # Trailing axes (e.g. per-class probabilities) go back the same way.
    probs = np.stack([classes == k for k in range(4)], axis=-1).astype(np.float32)
    back = restore_to_original(probs, meta)
    assert back.shape == (*shape, 4)
    np.testing.assert_array_equal(back.argmax(-1), LEGACY.to_classes(label))


def test_spacing_is_the_length_of_each_affine_column():
    # An oblique affine: voxel sizes (1, 2, 3) mm along the array axes, rotated 30 degrees about z.
    # Its rows have other lengths than its columns, so reading rows would give wrong mm for HD95.
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.0, 2.0, 3.0])
    assert preprocess.spacing_of(affine) == pytest.approx((1.0, 2.0, 3.0))
    permuted = np.array([[0, 0, 2.5, 0], [-1.5, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 0, 1]])
    assert preprocess.spacing_of(permuted) == pytest.approx((1.5, 4.0, 2.5))


def test_label_lookup_maps_brats_values_and_marks_unmapped_ones():
    table = LEGACY.lut()
    assert table[[0, 1, 2, 4]].tolist() == [0, 1, 2, 3]
    assert table[3] == 255 and table[255] == 255  # never silently background


def test_restore_rejects_a_wrong_meta():
    meta = {"ras_shape": [4, 4, 4], "bbox_lo": [0, 0, 0], "bbox_hi": [4, 4, 4],
            "orientation": [[0, 1], [1, 1], [2, 1]], "original_shape": [4, 4, 5]}
    with pytest.raises(ValueError, match="want"):
        restore_to_original(np.zeros((4, 4, 4), np.uint8), meta)


def test_crop_to_brain_bbox(tmp_path):
    shape = (16, 16, 16)
    brain = np.zeros(shape, bool)
    brain[3:11, 4:12, 5:15] = True
    images = {m: np.where(brain, 50.0 + i, 0).astype(np.float32) for i, m in enumerate(MODALITIES)}
    images["t2"][brain] += np.random.default_rng(0).uniform(0, 1, brain.sum()).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[5:7, 6:8, 7:9] = 2
    nii.write_brats_case(tmp_path / "d", "c", images=images, label=label)
    image, classes, meta = preprocess_loaded(load_case(discover(tmp_path / "d").cases[0]))
    assert image.shape == (8, 8, 10, 4) and classes.shape == (8, 8, 10)
    assert meta["bbox_lo"] == [3, 4, 5] and meta["bbox_hi"] == [11, 12, 15]
    assert meta["shape"] == [8, 8, 10]
    assert (classes == 2).sum() == (label == 2).sum()


def test_crop_never_cuts_tumour_outside_the_intensity_mask(tmp_path):
    shape = (16, 16, 16)
    brain = np.zeros(shape, bool)
    brain[4:12, 4:12, 4:12] = True
    images = {m: np.where(brain, 10.0 * (i + 1), 0).astype(np.float32) for i, m in enumerate(MODALITIES)}
    label = np.zeros(shape, np.uint8)
    label[6:8, 6:8, 6:8] = 4
    label[1, 6, 6] = 2  # a labelled voxel where every modality is zero (e.g. stripped with the skull)
    label[8, 14, 9] = 1
    nii.write_brats_case(tmp_path / "d", "c", images=images, label=label)
    _, values, meta = preprocess_loaded(load_case(discover(tmp_path / "d").cases[0]))
    assert meta["bbox_lo"] == [1, 4, 4] and meta["bbox_hi"] == [12, 15, 12]
    for value in (1, 2, 4):
        assert (values == value).sum() == (label == value).sum()
    np.testing.assert_array_equal(restore_to_original(values, meta), label)


def test_zscore_per_modality_over_the_brain(tmp_path):
    shape = (20, 18, 16)
    brain = nii.brain_mask(shape)
    rng = np.random.default_rng(3)
    scales = {"t1": (400.0, 30.0), "t1ce": (900.0, 200.0), "t2": (5.0, 0.5), "flair": (2000.0, 700.0)}
    images = {m: np.where(brain, rng.normal(mu, sd, shape), 0).astype(np.float32)
              for m, (mu, sd) in scales.items()}
    images["t1"][brain & (rng.uniform(size=shape) < 0.05)] = 0.0  # zeros inside the brain in one modality
    nii.write_brats_case(tmp_path / "d", "c", shape=shape, images=images)
    image, _, meta = preprocess_loaded(load_case(discover(tmp_path / "d").cases[0]))
    sl = tuple(slice(a, b) for a, b in zip(meta["bbox_lo"], meta["bbox_hi"], strict=True))
    inside = brain[sl]
    assert not inside.all()  # the crop keeps some background, which must stay 0
    assert image.dtype == np.float32
    for c, m in enumerate(MODALITIES):
        ch = image[..., c]
        assert abs(ch[inside].mean()) < 1e-4, m
        assert abs(ch[inside].std() - 1.0) < 1e-4, m
        assert np.all(ch[~inside] == 0.0), m
        np.testing.assert_allclose(ch, _zscore(images[m][sl].astype(np.float64), inside), atol=1e-4)
        # the fingerprint's inputs: the raw intensities over the brain, before normalisation
        raw = images[m][brain].astype(np.float64)
        stats = meta["intensity"][m]
        np.testing.assert_allclose([stats["mean"], stats["std"]], [raw.mean(), raw.std()], rtol=1e-5)
        np.testing.assert_allclose([stats["p00_5"], stats["p50"], stats["p99_5"]],
                                   np.percentile(raw, [0.5, 50, 99.5]), rtol=1e-5)
    assert meta["brain_voxels"] == int(brain.sum())


def test_constant_modality_does_not_divide_by_zero(tmp_path):
    images = nii.case_images()
    images["t2"] = np.where(nii.brain_mask(), 7.0, 0).astype(np.float32)
    nii.write_brats_case(tmp_path / "d", "c", images=images)
    image, _, _ = preprocess_loaded(load_case(discover(tmp_path / "d").cases[0]))
    assert np.all(np.isfinite(image)) and np.all(image[..., 2] == 0.0)


# --- the cache --------------------------------------------------------------------------------


def _dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    nii.write_brats_case(root, "BraTS2021_00000", seed=0)
    nii.write_brats_case(root, "BraTS2021_00001", seed=1)
    nii.write_brats_case(root, "BraTS2021_00002", seed=2, seg=False)
    return root


def _run(root: Path, cache: Path) -> dict[str, bool]:
    seen: dict[str, bool] = {}
    prepare(discover(root).cases, cache, lambda c, reused: seen.__setitem__(c.case_id, reused))
    return seen


def _mtimes(cache: Path) -> dict[str, int]:
    return {str(f.relative_to(cache)): f.stat().st_mtime_ns for f in sorted(cache.rglob("*")) if f.is_file()}


def test_prepare_writes_the_cache_entry(tmp_path):
    root, cache = _dataset(tmp_path), tmp_path / "cache"
    cases = discover(root).cases
    entries = prepare(cases, cache)
    assert [e.case_id for e in entries] == [c.case_id for c in cases]
    for case, entry in zip(cases, entries, strict=True):
        files = {f.name for f in entry.folder.iterdir()}
        labelled = case.label is not None
        assert files == (CACHE_FILES if labelled else CACHE_FILES - {"label.npy"})
        meta = json.loads((entry.folder / "meta.json").read_text())
        assert meta == entry.meta and meta["version"] == PREPROCESS_VERSION
        assert meta["labelled"] is labelled and meta["case_id"] == case.case_id
        assert [s[0] for s in meta["sources"]] == [str(f) for f in case.files]
        image, classes, _ = preprocess_loaded(load_case(case))
        img = entry.image()
        assert isinstance(img, np.memmap) and img.dtype == CACHE_DTYPE and img.shape == image.shape
        np.testing.assert_array_equal(img, image.astype(CACHE_DTYPE))
        fg = entry.foreground()
        assert fg.dtype == np.int32 and fg.ndim == 2 and fg.shape[1] == 3
        if labelled:
            lab = entry.label()
            assert lab.dtype == np.uint8
            np.testing.assert_array_equal(lab, classes)
            values, counts = np.unique(classes, return_counts=True)
            assert meta["label_voxels"] == {str(v): int(n) for v, n in zip(values, counts, strict=True)}
        else:
            assert entry.label() is None and fg.shape == (0, 3)
    assert not [f for f in cache.rglob("*") if ".tmp" in f.name]  # no temporary files left over


def test_foreground_coordinates_point_at_labelled_voxels(tmp_path):
    root = _dataset(tmp_path)
    entry = prepare(discover(root).cases[:1], tmp_path / "cache")[0]
    lab, fg = entry.label(mmap=False), entry.foreground()
    assert len(fg) == int((lab > 0).sum()) > 0
    assert np.all(lab[tuple(fg.T)] > 0)
    assert len(np.unique(fg, axis=0)) == len(fg)


def test_foreground_coordinates_are_subsampled_beyond_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "_MAX_FG_COORDS", 50)
    root = _dataset(tmp_path)
    entry = prepare(discover(root).cases[:1], tmp_path / "cache")[0]
    lab, fg = entry.label(mmap=False), entry.foreground()
    assert (lab > 0).sum() > 50 and fg.shape == (50, 3)
    assert np.all(lab[tuple(fg.T)] > 0) and len(np.unique(fg, axis=0)) == 50


def test_second_prepare_reuses_without_rewriting(tmp_path):
    root, cache = _dataset(tmp_path), tmp_path / "cache"
    assert _run(root, cache) == dict.fromkeys(IDS, False)
    before = _mtimes(cache)
    assert len(before) == 11  # 4 + 4 + 3 (the unlabelled case has no label.npy)
    assert _run(root, cache) == dict.fromkeys(IDS, True)
    assert _mtimes(cache) == before
    entry, reused = prepare_case(discover(root).cases[0], cache)
    assert reused and entry.meta == json.loads((entry.folder / "meta.json").read_text())
    assert _mtimes(cache) == before


def _bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def test_touching_a_source_file_invalidates_only_that_entry(tmp_path):
    root, cache = _dataset(tmp_path), tmp_path / "cache"
    _run(root, cache)
    before = _mtimes(cache)
    _bump_mtime(root / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz")
    assert _run(root, cache) == {"BraTS2021_00000": True, "BraTS2021_00001": False,
                                 "BraTS2021_00002": True}
    after = _mtimes(cache)
    for name, t in before.items():
        assert (after[name] == t) == (not name.startswith("BraTS2021_00001")), name
    assert _run(root, cache) == dict.fromkeys(IDS, True)


def test_modifying_a_source_file_redoes_the_entry_with_the_new_data(tmp_path):
    root, cache = _dataset(tmp_path), tmp_path / "cache"
    _run(root, cache)
    old = np.load(cache / "BraTS2021_00000" / "image.npy")
    images = nii.case_images()
    images["flair"] = np.where(nii.brain_mask(), np.float32(3.0), 0).astype(np.float32)  # constant
    nii.write_nii(root / "BraTS2021_00000" / "BraTS2021_00000_flair.nii.gz", images["flair"])
    assert _run(root, cache)["BraTS2021_00000"] is False
    new = np.load(cache / "BraTS2021_00000" / "image.npy")
    assert np.any(old[..., 3] != 0) and np.all(new[..., 3] == 0)  # constant -> z-score 0
    np.testing.assert_array_equal(new[..., :3], old[..., :3])


@pytest.mark.parametrize("damage", ["meta_missing", "meta_garbled", "array_missing", "old_version"])
def test_incomplete_or_stale_entry_is_redone(tmp_path, damage):
    root, cache = _dataset(tmp_path), tmp_path / "cache"
    _run(root, cache)
    folder = cache / "BraTS2021_00001"
    meta_path = folder / "meta.json"
    if damage == "meta_missing":  # the process was killed before meta.json was written
        meta_path.unlink()
    elif damage == "meta_garbled":
        meta_path.write_text('{"case_id": "BraTS20')
    elif damage == "array_missing":
        (folder / "label.npy").unlink()
    else:
        meta = json.loads(meta_path.read_text())
        meta["version"] = PREPROCESS_VERSION - 1
        meta_path.write_text(json.dumps(meta))
    assert _run(root, cache) == {"BraTS2021_00000": True, "BraTS2021_00001": False,
                                 "BraTS2021_00002": True}
    assert {f.name for f in folder.iterdir()} == CACHE_FILES
    assert json.loads(meta_path.read_text())["version"] == PREPROCESS_VERSION
    assert _run(root, cache)["BraTS2021_00001"] is True


def test_a_cache_of_an_older_version_is_refused_not_misread(tmp_path):
    """Version 1 cached BraTS training classes (ET = 3); read as file values, ET would vanish."""
    from unet3d.data.discover import DataError
    from unet3d.data.preprocess import open_cases

    root = _dataset(tmp_path)
    entry = prepare(discover(root).cases[:1], tmp_path / "cache")[0]
    meta = json.loads((entry.folder / "meta.json").read_text())
    (entry.folder / "meta.json").write_text(json.dumps({**meta, "version": 1}))
    with pytest.raises(DataError, match="older version"):
        open_cases(tmp_path / "cache", [entry.case_id])


def test_parallel_prepare_writes_the_same_cache_in_the_same_order(tmp_path, monkeypatch):
    from unet3d.data import preprocess

    monkeypatch.setattr(preprocess, "PARALLEL_MIN_BYTES", 0)  # (small cases, in processes all the same)
    root = tmp_path / "data"
    for i in range(5):
        nii.write_brats_case(root, f"BraTS2021_{i:05d}", seed=i)
    cases = discover(root).cases
    seen: list[str] = []
    one = prepare(cases, tmp_path / "one")
    two = prepare(cases, tmp_path / "two", lambda c, reused: seen.append(c.case_id), jobs=2)
    assert [e.case_id for e in two] == [c.case_id for c in cases] == seen
    for a, b in zip(one, two, strict=True):
        for name in ("image.npy", "label.npy", "fg.npy"):
            assert (a.folder / name).read_bytes() == (b.folder / name).read_bytes(), (a.case_id, name)
        assert {k: v for k, v in a.meta.items() if k != "sources"} == \
            {k: v for k, v in b.meta.items() if k != "sources"}


def test_parallel_prepare_raises_the_first_bad_case_in_order(tmp_path, monkeypatch):
    from unet3d.data import preprocess
    from unet3d.data.discover import DataError

    monkeypatch.setattr(preprocess, "PARALLEL_MIN_BYTES", 0)
    root = tmp_path / "data"
    for i in range(5):
        nii.write_brats_case(root, f"BraTS2021_{i:05d}", seed=i)
    for i in (2, 4):  # two bad cases: the earlier one is named, whichever process fails first
        seg = root / f"BraTS2021_{i:05d}" / f"BraTS2021_{i:05d}_seg.nii.gz"
        seg.write_bytes(seg.read_bytes()[:100])
    with pytest.raises(DataError, match="BraTS2021_00002"):
        prepare(discover(root).cases, tmp_path / "cache", jobs=2)
    # the cases before it are complete entries, reused by the next run
    seen: dict[str, bool] = {}
    good = [c for c in discover(root).cases if c.case_id in ("BraTS2021_00000", "BraTS2021_00001")]
    prepare(good, tmp_path / "cache", lambda c, reused: seen.__setitem__(c.case_id, reused))
    assert seen == {"BraTS2021_00000": True, "BraTS2021_00001": True}


def test_processes_only_for_enough_bytes_still_to_preprocess(tmp_path, monkeypatch, pools_started):
    """jobs=2 starts worker processes only for PARALLEL_MIN_BYTES of source files without a valid
    cache entry: not for a few small cases, nor for a dataset already cached."""
    import os

    from unet3d.data import preprocess

    root = tmp_path / "data"
    for i in range(5):
        nii.write_brats_case(root, f"BraTS2021_{i:05d}", seed=i)
    cases = discover(root).cases
    started = pools_started
    prepare(cases, tmp_path / "small", jobs=2)
    assert started == []  # (a few KB: here, one after the other)
    rest = sum(os.stat(f).st_size for c in cases[1:] for f in c.files)  # (the first: here always)
    monkeypatch.setattr(preprocess, "PARALLEL_MIN_BYTES", rest)
    prepare(cases, tmp_path / "small", jobs=2)
    assert started == []  # (all cached: nothing left to preprocess)
    two = prepare(cases, tmp_path / "big", jobs=2)
    assert len(started) == 1 and [e.case_id for e in two] == [c.case_id for c in cases]
    monkeypatch.setattr(preprocess, "PARALLEL_MIN_BYTES", rest + 1)
    prepare(cases, tmp_path / "big2", jobs=2)
    assert len(started) == 1
