"""BraTS metrics: Dice and HD95 known values, empty-mask conventions, anisotropic spacing, and a
brute-force reference implementation written here from first principles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from unet3d.evaluation.metrics import dice, hd95, region_scores, summarize
from unet3d.labels import BUILTIN

SPACING = (1.0, 2.0, 3.0)
LEGACY = BUILTIN["brats-legacy"]


# ----------------------------------------------------------------------------- reference
def ref_dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    na, nb = int(a.sum()), int(b.sum())
    if na + nb == 0:
        return 1.0
    return 2.0 * int((a & b).sum()) / (na + nb)


def ref_surface_coords(mask: np.ndarray) -> np.ndarray:
    """Voxel indices (n, 3) of mask voxels with at least one 6-neighbour outside the mask; outside
    the image counts as outside."""
    padded = np.pad(mask.astype(bool), 1, constant_values=False)
    coords = []
    for i, j, k in np.argwhere(mask):
        pi, pj, pk = i + 1, j + 1, k + 1
        neighbours = (padded[pi - 1, pj, pk], padded[pi + 1, pj, pk], padded[pi, pj - 1, pk],
                      padded[pi, pj + 1, pk], padded[pi, pj, pk - 1], padded[pi, pj, pk + 1])
        if not all(neighbours):
            coords.append((i, j, k))
    return np.array(coords, dtype=np.float64).reshape(-1, 3)


def ref_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    a, b = a.astype(bool), b.astype(bool)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return math.sqrt(sum((n * s) ** 2 for n, s in zip(a.shape, spacing, strict=True)))
    sa = ref_surface_coords(a) * np.asarray(spacing, dtype=np.float64)
    sb = ref_surface_coords(b) * np.asarray(spacing, dtype=np.float64)
    d = cdist(sa, sb)  # Euclidean, mm
    a_to_b = np.percentile(d.min(axis=1), 95)
    b_to_a = np.percentile(d.min(axis=0), 95)
    return float(max(a_to_b, b_to_a))


def random_blob(rng: np.random.Generator, shape=(12, 14, 10), sigma=1.5, frac=0.25) -> np.ndarray:
    """Random blobs: smoothed noise thresholded so that about ``frac`` of the voxels are on."""
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma=sigma)
    return noise > np.quantile(noise, 1.0 - frac)


def test_reference_surface_sanity():
    # A 3x3x3 cube in a 5x5x5 image: 26 surface voxels, the centre is interior.
    m = np.zeros((5, 5, 5), bool)
    m[1:4, 1:4, 1:4] = True
    s = ref_surface_coords(m)
    assert len(s) == 26
    assert not any((c == (2, 2, 2)).all() for c in s)
    # Touching the image border: the full image is all surface on its faces only.
    full = np.ones((3, 3, 3), bool)
    assert len(ref_surface_coords(full)) == 26


# ----------------------------------------------------------------------------- Dice
def test_dice_known_values():
    a = np.zeros((2, 2, 2), bool)
    b = np.zeros((2, 2, 2), bool)
    a.flat[[0, 1, 2]] = True
    b.flat[[2, 3]] = True
    assert dice(a, b) == pytest.approx(2 * 1 / 5)
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    assert dice(a.astype(np.uint8), b.astype(np.int64)) == pytest.approx(0.4)


def test_dice_shape_mismatch_raises():
    with pytest.raises(ValueError):
        dice(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 3), bool))
    with pytest.raises(ValueError):
        hd95(np.ones((2, 2, 2), bool), np.ones((2, 2, 3), bool))


# ----------------------------------------------------------------------------- empty masks
def test_both_empty_conventions():
    z = np.zeros((4, 5, 6), bool)
    assert dice(z, z) == 1.0
    assert hd95(z, z, SPACING) == 0.0


def test_one_empty_conventions_use_diagonal_in_mm():
    shape = (4, 5, 6)
    z = np.zeros(shape, bool)
    m = z.copy()
    m[1, 2, 3] = True
    diag = math.sqrt((4 * 1.0) ** 2 + (5 * 2.0) ** 2 + (6 * 3.0) ** 2)  # sqrt(440)
    assert dice(m, z) == 0.0
    assert dice(z, m) == 0.0
    assert hd95(m, z, SPACING) == pytest.approx(diag, abs=1e-9)
    assert hd95(z, m, SPACING) == pytest.approx(diag, abs=1e-9)
    # isotropic default spacing: plain voxel diagonal
    assert hd95(m, z) == pytest.approx(math.sqrt(16 + 25 + 36), abs=1e-9)


# ----------------------------------------------------------------------------- HD95 known values
def test_hd95_two_single_voxels():
    a = np.zeros((6, 6, 8), bool)
    b = np.zeros((6, 6, 8), bool)
    a[2, 2, 1] = True
    b[2, 2, 4] = True  # 3 voxels apart along axis 2 (3 mm) -> 9 mm
    assert hd95(a, b, SPACING) == pytest.approx(9.0, abs=1e-9)
    b2 = np.zeros_like(b)
    b2[3, 4, 1] = True  # offset (1, 2, 0) voxels -> sqrt(1^2 + 4^2) mm
    assert hd95(a, b2, SPACING) == pytest.approx(math.sqrt(1 + 16), abs=1e-9)


def test_hd95_two_slabs_along_3mm_axis():
    shape = (6, 6, 10)
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    a[:, :, 0:2] = True  # slices 0, 1
    b[:, :, 5:7] = True  # slices 5, 6
    # Every voxel of a 2-thick slab is a surface voxel. Nearest other-surface distances: 4 or 5
    # slices (12 or 15 mm), half of each, so the 95th percentile is 15 mm in both directions.
    assert hd95(a, b, SPACING) == pytest.approx(15.0, abs=1e-9)
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(5.0, abs=1e-9)


def test_hd95_identical_masks_is_zero():
    rng = np.random.default_rng(3)
    m = random_blob(rng)
    assert hd95(m, m, SPACING) == 0.0


@pytest.mark.parametrize("axis, mm", [(0, 3.0), (1, 6.0), (2, 9.0)])
def test_hd95_respects_anisotropic_spacing(axis, mm):
    shape = (8, 8, 8)
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    a[1, 1, 1] = True
    idx = [1, 1, 1]
    idx[axis] += 3  # the same 3-voxel offset along each axis
    b[tuple(idx)] = True
    assert hd95(a, b, SPACING) == pytest.approx(mm, abs=1e-9)
    assert hd95(a, b) == pytest.approx(3.0, abs=1e-9)


def test_hd95_symmetric():
    rng = np.random.default_rng(11)
    for _ in range(3):
        a, b = random_blob(rng), random_blob(rng, frac=0.1)
        assert hd95(a, b, SPACING) == pytest.approx(hd95(b, a, SPACING), abs=1e-12)
        assert hd95(a, b, SPACING) > 0


def test_hd95_is_not_the_plain_max():
    # One outlier voxel far away: the plain Hausdorff distance sees it, HD95 mostly does not.
    shape = (20, 20, 20)
    a = np.zeros(shape, bool)
    a[2:10, 2:10, 2:10] = True
    b = a.copy()
    b[18, 18, 18] = True
    plain_max = math.dist((18, 18, 18), (9, 9, 9))
    h = hd95(a, b)
    assert h < plain_max / 2
    assert h == pytest.approx(ref_hd95(a, b, (1.0, 1.0, 1.0)), abs=1e-6)


# ----------------------------------------------------------------------------- vs reference
@pytest.mark.parametrize("seed", range(10))
def test_against_brute_force_reference(seed):
    rng = np.random.default_rng(100 + seed)
    spacing = tuple(float(s) for s in rng.uniform(0.5, 3.0, size=3))
    a = random_blob(rng, frac=rng.uniform(0.1, 0.4))
    if seed % 2:  # a nearby prediction: the reference perturbed
        b = ndimage.binary_dilation(a, iterations=1) ^ (random_blob(rng, frac=0.05) & a)
    else:  # an unrelated prediction
        b = random_blob(rng, sigma=1.0, frac=rng.uniform(0.05, 0.3))
    assert a.any() and b.any()
    assert dice(a, b) == pytest.approx(ref_dice(a, b), abs=1e-6)
    expected = ref_hd95(a, b, spacing)
    assert expected > 0
    assert hd95(a, b, spacing) == pytest.approx(expected, abs=1e-3)


# ----------------------------------------------------------------------------- region scores
def _class_maps() -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros(16, np.uint8)
    pred = np.zeros(16, np.uint8)
    ref[:6] = [1, 1, 2, 2, 3, 3]
    pred[:7] = [1, 2, 2, 2, 3, 0, 3]
    return pred.reshape(2, 2, 4), ref.reshape(2, 2, 4)


def test_region_scores_dice_by_hand():
    pred, ref = _class_maps()
    s = region_scores(pred, ref, LEGACY)
    # WT: ref {0..5}, pred {0,1,2,3,4,6}: overlap 5 -> 10/12
    # TC: ref {0,1,4,5}, pred {0,4,6}: overlap 2 -> 4/7
    # ET: ref {4,5}, pred {4,6}: overlap 1 -> 2/4
    assert set(s) == {"dice_WT", "dice_TC", "dice_ET", "dice_mean"}
    assert s["dice_WT"] == pytest.approx(10 / 12)
    assert s["dice_TC"] == pytest.approx(4 / 7)
    assert s["dice_ET"] == pytest.approx(0.5)
    assert s["dice_mean"] == pytest.approx((10 / 12 + 4 / 7 + 0.5) / 3)


def test_region_scores_with_spacing_adds_hd95():
    pred, ref = _class_maps()
    s = region_scores(pred, ref, LEGACY, spacing=SPACING)
    assert set(s) == {f"{m}_{r}" for m in ("dice", "hd95") for r in ("WT", "TC", "ET", "mean")}
    wt = (np.isin(pred, [1, 2, 3]), np.isin(ref, [1, 2, 3]))
    tc = (np.isin(pred, [1, 3]), np.isin(ref, [1, 3]))
    et = (pred == 3, ref == 3)
    for name, (p, r) in {"WT": wt, "TC": tc, "ET": et}.items():
        assert s[f"hd95_{name}"] == pytest.approx(ref_hd95(p, r, SPACING), abs=1e-6)
    assert s["hd95_mean"] == pytest.approx(np.mean([s["hd95_WT"], s["hd95_TC"], s["hd95_ET"]]))
    # ET: ref (0,1,0), (0,1,1); pred (0,1,0), (0,1,2). Each direction's nearest distances are
    # {0, 3 mm} (one voxel along the 3 mm axis); the 95th percentile interpolates: 0.95 * 3 = 2.85.
    assert s["hd95_ET"] == pytest.approx(2.85)


def test_region_scores_empty_region_conventions():
    ref = np.zeros((4, 4, 4), np.uint8)
    pred = np.zeros((4, 4, 4), np.uint8)
    ref[1, 1, 1] = 2  # edema only: WT present, TC and ET empty in the reference
    pred[1, 1, 1] = 2
    pred[2, 2, 2] = 1  # prediction adds a core voxel: TC predicted but absent
    s = region_scores(pred, ref, LEGACY, spacing=SPACING)
    diag = math.sqrt(4**2 + 8**2 + 12**2)
    assert s["dice_ET"] == 1.0 and s["hd95_ET"] == 0.0
    assert s["dice_TC"] == 0.0 and s["hd95_TC"] == pytest.approx(diag)
    assert s["dice_WT"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- summarize
def test_summarize_mean_median_std():
    cases = [{"case": "a", "dice_WT": 0.2, "hd95_WT": 4.0},
             {"case": "b", "dice_WT": 0.5, "hd95_WT": 1.0},
             {"case": "c", "dice_WT": 0.9, "hd95_WT": 10.0}]
    s = summarize(cases)
    assert set(s) == {f"{k}_{st}" for k in ("dice_WT", "hd95_WT") for st in ("mean", "median", "std")}
    m = (0.2 + 0.5 + 0.9) / 3
    assert s["dice_WT_mean"] == pytest.approx(m)
    assert s["dice_WT_median"] == pytest.approx(0.5)
    assert s["dice_WT_std"] == pytest.approx(math.sqrt(((0.2 - m) ** 2 + (0.5 - m) ** 2
                                                        + (0.9 - m) ** 2) / 3))
    assert s["hd95_WT_mean"] == pytest.approx(5.0)
    assert s["hd95_WT_median"] == pytest.approx(4.0)


def test_summarize_empty():
    assert summarize([]) == {}


def test_region_scores_follow_the_scheme_and_keep_rc_out_of_the_mean():
    from unet3d.labels import BUILTIN

    scheme = BUILTIN["brats-2024-gli"]
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:8, 2:8, 2:8] = 3        # ET (class 3)
    ref[12:15, 12:15, 12:15] = 4  # RC (class 4), missed by the prediction
    pred = ref.copy()
    pred[12:15, 12:15, 12:15] = 0
    s = region_scores(pred, ref, scheme, (1.0, 1.0, 1.0), lesionwise=True, surface=True)
    assert s["dice_RC"] == 0.0 and s["lesion_fn_RC"] == 1 and s["lesionwise_hd95_RC"] == 373.0
    assert s["dice_mean"] == 1.0 and s["lesionwise_dice_mean"] == 1.0  # mean over WT, TC, ET only
    assert s["nsd_mean"] == 1.0 and "lesion_tp_mean" not in s
    men = region_scores((ref > 0).astype(np.uint8), (ref == 3).astype(np.uint8), BUILTIN["brats-men-rt"])
    assert set(men) == {"dice_GTV", "dice_mean"} and men["dice_mean"] == men["dice_GTV"]
