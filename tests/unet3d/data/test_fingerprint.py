"""The dataset fingerprint: known shapes, spacings, intensities and lesions in, the same out."""

from __future__ import annotations

import json

import nifti_cases as nii
import numpy as np
import pytest

from unet3d.data import fingerprint
from unet3d.data.discover import discover
from unet3d.data.preprocess import prepare
from unet3d.labels import BUILTIN

LEGACY = BUILTIN["brats-legacy"]
# (array shape, voxel spacing in mm, t1 intensity inside the brain); the brain is the array less
# a 2-voxel margin on every side, so its box (the cached shape) is the shape minus 4.
CASES = {"c0": ((20, 24, 16), (1.0, 1.0, 1.0), 100.0),
         "c1": ((24, 24, 20), (1.0, 1.5, 2.0), 300.0),
         "c2": ((28, 30, 24), (2.0, 2.0, 2.0), 200.0)}


def _write(root):
    for cid, (shape, spacing, t1) in CASES.items():
        brain = np.zeros(shape, bool)
        brain[2:-2, 2:-2, 2:-2] = True
        images = {m: np.where(brain, t1 * (i + 1), 0).astype(np.float32)
                  for i, m in enumerate(nii.MODS)}
        label = np.zeros(shape, np.uint8)
        label[4:6, 4:6, 4:6] = 4  # a 2^3 enhancing lesion
        label[10:13, 10:13, 8:11] = 2  # a separate 3^3 oedema lesion
        nii.write_brats_case(root, cid, shape=shape, affine=np.diag([*spacing, 1.0]),
                             images=images, label=label)


@pytest.fixture
def entries(tmp_path):
    _write(tmp_path / "data")
    return prepare(discover(tmp_path / "data").cases, tmp_path / "cache")


def test_fingerprint_values(entries):
    fp = fingerprint.compute(entries, LEGACY)
    assert fp["cases"] == fp["labelled"] == 3 and fp["labels"] == "brats-legacy"
    assert fp["shape"] == {"median": [20, 20, 16], "min": [16, 20, 12], "max": [24, 26, 20]}
    assert fp["spacing"] == {"median": [1.0, 1.5, 2.0], "min": [1.0, 1.0, 1.0], "max": [2.0, 2.0, 2.0]}
    assert fp["voxels"] == 16 * 20 * 12 + 20 * 20 * 16 + 24 * 26 * 20
    # pooled over every brain voxel: the cases' constant t1 values weighted by their brain sizes
    n = np.array([16 * 20 * 12, 20 * 20 * 16, 24 * 26 * 20])
    values = np.array([100.0, 300.0, 200.0])
    mean = float((n * values).sum() / n.sum())
    t1 = fp["intensity"]["t1"]
    np.testing.assert_allclose([t1["mean"], t1["std"]],
                               [mean, np.sqrt((n * (values - mean) ** 2).sum() / n.sum())])
    assert t1["p50"] == 200.0 and fp["intensity"]["flair"]["p99_5"] == 800.0
    wt, et = fp["regions"]["WT"], fp["regions"]["ET"]
    assert wt["lesions_per_case"] == 2 and et["lesions_per_case"] == 1
    # ET: 8 voxels of 1, 3 and 8 mm^3; WT adds the 27-voxel oedema lesions
    assert et["smallest_mm3"] == 8.0 and et["median_mm3"] == 24.0
    # WT: 8 and 27 voxels in each case: 8, 27 | 24, 81 | 64, 216 mm^3
    assert wt["smallest_mm3"] == 8.0 and wt["median_mm3"] == (27 + 64) / 2
    fractions = [8 / (16 * 20 * 12), 8 / (20 * 20 * 16), 8 / (24 * 26 * 20)]
    assert et["volume_fraction"] == pytest.approx(np.mean(fractions))
    assert wt["volume_fraction"] == pytest.approx(np.mean(fractions) * 35 / 8)


def test_fingerprint_kept_in_the_cache_and_reused(entries, monkeypatch):
    fp = fingerprint.load_or_compute(entries, LEGACY)
    kept = json.loads((entries[0].folder.parent / fingerprint.FINGERPRINT).read_text())
    assert kept["fingerprint"] == fp

    def fail(*a, **k):
        raise AssertionError("computed again")

    monkeypatch.setattr(fingerprint, "compute", fail)
    assert fingerprint.load_or_compute(entries, LEGACY) == fp
    with pytest.raises(AssertionError, match="computed again"):  # another scheme: computed anew
        fingerprint.load_or_compute(entries, BUILTIN["brats-2023"])
    with pytest.raises(AssertionError, match="computed again"):  # other cases: computed anew
        fingerprint.load_or_compute(entries[:2], LEGACY)


def test_lesions_counted_in_processes_only_when_worth_it_and_the_same(entries, monkeypatch,
                                                                      pools_started):
    started = pools_started
    here = fingerprint.compute(entries, LEGACY, jobs=2)
    assert started == []  # (3 small brain boxes: counted here)
    voxels = 16 * 20 * 12 + 20 * 20 * 16 + 24 * 26 * 20
    monkeypatch.setattr(fingerprint, "PARALLEL_MIN_VOXELS", voxels + 1)
    fingerprint.compute(entries, LEGACY, jobs=2)
    assert started == []
    monkeypatch.setattr(fingerprint, "PARALLEL_MIN_VOXELS", voxels)
    assert fingerprint.compute(entries, LEGACY, jobs=2) == here and len(started) == 1
