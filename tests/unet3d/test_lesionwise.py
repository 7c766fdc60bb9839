"""Lesion-wise BraTS scores and NSD: hand-worked values, and panoptica (the official BraTS evaluation's
engine, in its own venv from scripts/panoptica_env.sh) as the oracle on every case and every key."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from unet3d.evaluation.metrics import LESION_HD95_CAP, lesion_scores, nsd

REPO = Path(__file__).resolve().parents[2]
KEYS = ("lesion_tp", "lesion_fp", "lesion_fn", "lesion_f1", "lesionwise_dice", "lesionwise_hd95",
        "lesionwise_nsd")
COUNTS = KEYS[:3]
# Our documented numbers where panoptica gives NaN (both masks empty): BraTS's empty-empty convention.
BOTH_EMPTY = {"lesion_f1": 1.0, "lesionwise_dice": 1.0, "lesionwise_hd95": 0.0, "lesionwise_nsd": 1.0}


# ----------------------------------------------------------------------------- cases
def box(shape, *slices) -> np.ndarray:
    """Boolean volume with the union of the given boxes (each a tuple of 3 slices) set."""
    m = np.zeros(shape, bool)
    for s in slices:
        m[s] = True
    return m


S = np.s_
SH32, SH40 = (32, 32, 32), (40, 36, 44)


def case_hand_a():
    # Ref: lesion A 4x4x4 (64 voxels), lesion B 2x2x2 (8). Pred: A' = front half of A, 2x4x4 (32),
    # and C 3x3x3 (27) far from everything. Matched: A-A' only. tp 1, fp 1 (C), fn 1 (B);
    # F1 = 1 / (1 + 1/2 + 1/2) = 0.5; Dice(A, A') = 2*32 / (64 + 32) = 2/3.
    # Surfaces (1 mm): A' is 2 thick, all 32 voxels surface; A has 64 - 8 = 56. A'->A: 28 at 0,
    # 4 (inner 2x2 of A' row 2) at 1. A->A': 28 at 0, 12 (ring of row 3) at 1, 16 (far face) at 2.
    # Pooled 88 values: 56 zeros, 16 ones, 16 twos; percentile 95 -> position 82.65 -> 2 mm.
    # NSD at 1 mm: A' side 32/32, A side 40/56 -> (1 + 5/7) / 2 = 6/7.
    ref = box(SH32, S[4:8, 4:8, 4:8], S[20:22, 20:22, 20:22])
    pred = box(SH32, S[4:6, 4:8, 4:8], S[12:15, 24:27, 4:7])
    return pred, ref, (1.0, 1.0, 1.0)


def case_hand_b():
    # Maximum bipartite matching beats greedy. Cross-section 4x4 (16 voxels per slice), along axis 2:
    # R1 z 0-9 (160), R2 z 12-19 (128); P2 z 0-2 (48), P1 z 4-15 (192, bridges the R1/R2 gap).
    # Dice(P1,R1) = 2*96/352 = 6/11, Dice(P1,R2) = 2*64/320 = 2/5, Dice(P2,R1) = 2*48/208 = 6/13.
    # Greedy would take P1-R1 (best single pair) and leave P2 unmatched; the cost-minimal assignment
    # is P1-R2 + P2-R1 (cost 3/5 + 7/13 < 5/11 + 1 + 1e-6). tp 2, fp 0, fn 0, F1 1,
    # lesion-wise Dice = (2/5 + 6/13) / 2 = 28/65.
    sh = (12, 12, 24)
    ref = box(sh, S[4:8, 4:8, 0:10], S[4:8, 4:8, 12:20])
    pred = box(sh, S[4:8, 4:8, 0:3], S[4:8, 4:8, 4:16])
    return pred, ref, (1.0, 2.0, 3.0)


def case_missed_lesion():
    ref = box(SH40, S[5:12, 5:12, 5:12], S[25:30, 20:26, 30:36])
    pred = box(SH40, S[6:12, 5:13, 5:11])
    return pred, ref, (1.0, 1.0, 1.0)


def case_false_positive():
    ref = box(SH40, S[5:12, 5:12, 5:12])
    pred = box(SH40, S[5:11, 6:12, 5:13], S[28:31, 25:30, 30:40])
    return pred, ref, (1.2, 0.9, 2.0)


def case_empty_prediction():
    ref = box(SH40, S[5:12, 5:12, 5:12], S[25:30, 20:26, 30:36])
    return np.zeros(SH40, bool), ref, (1.0, 1.0, 1.0)


def case_empty_reference():
    pred = box(SH40, S[5:12, 5:12, 5:12])
    return pred, np.zeros(SH40, bool), (1.0, 1.0, 1.0)


def case_both_empty():
    return np.zeros(SH32, bool), np.zeros(SH32, bool), (1.0, 1.0, 1.0)


def case_no_overlap():
    # Both non-empty but disjoint: zero TP in the "normal" sense.
    ref = box(SH40, S[5:12, 5:12, 5:12])
    pred = box(SH40, S[20:26, 20:26, 20:26])
    return pred, ref, (1.0, 1.0, 1.0)


def case_split_lesion():
    # One 4x4x20 ref lesion (320) predicted as two pieces split by an empty slice: 4x4x12 (192) and
    # 4x4x7 (112). Dice 2*192/512 = 3/4 and 2*112/432 = 14/27: the first is matched. tp 1, fp 1,
    # fn 0, F1 = 1 / (1 + 1/2) = 2/3, lesion-wise Dice 3/4.
    ref = box(SH40, S[10:14, 10:14, 5:25])
    pred = box(SH40, S[10:14, 10:14, 5:17], S[10:14, 10:14, 18:25])
    return pred, ref, (1.0, 1.0, 2.5)


def case_corner_touch():
    # Two predicted cubes touching at one corner only: one lesion under 26-connectivity (official),
    # two under 6-connectivity. The reference covers the first cube.
    ref = box(SH32, S[4:10, 4:10, 4:10])
    pred = box(SH32, S[4:10, 4:10, 4:10], S[10:13, 10:13, 10:13])
    return pred, ref, (1.0, 1.0, 1.0)


def random_blobs(seed: int, shape=(36, 40, 32), frac=0.08, sigma=2.0, like: int | None = None,
                 noise: float = 0.0) -> np.ndarray:
    """Smoothed noise thresholded to ``frac`` of the voxels; with ``like``, the noise of seed ``like``
    plus ``noise`` times fresh noise, i.e. a prediction resembling that reference (high-Dice pairs)."""
    def field(s: int) -> np.ndarray:
        return ndimage.gaussian_filter(np.random.default_rng(s).normal(size=shape), sigma=sigma)
    f = field(seed) if like is None else field(like) + noise * field(seed)
    return f > np.quantile(f, 1.0 - frac)


HAND_CASES = {f.__name__[5:]: f for f in (
    case_hand_a, case_hand_b, case_missed_lesion, case_false_positive, case_empty_prediction,
    case_empty_reference, case_both_empty, case_no_overlap, case_split_lesion, case_corner_touch)}
RANDOM_SPACINGS = ((1.0, 1.0, 1.0), (1.0, 2.0, 3.0), (0.8, 1.2, 2.5), (2.0, 2.0, 1.5))
# Independent blobs (many small lesions, low Dice) and predictions resembling the reference.
RANDOM_CASES = {f"random_{s}": (random_blobs(100 + s), random_blobs(200 + s), RANDOM_SPACINGS[s % 4])
                for s in range(4)}
RANDOM_CASES |= {f"similar_{s}": (random_blobs(300 + s, like=200 + s, noise=0.4), random_blobs(200 + s),
                                  RANDOM_SPACINGS[s % 4]) for s in range(4)}


def all_cases() -> dict[str, tuple[np.ndarray, np.ndarray, tuple[float, ...]]]:
    cases = {name: f() for name, f in HAND_CASES.items()}
    cases.update(RANDOM_CASES)
    return cases


# ----------------------------------------------------------------------------- hand-worked values
def test_hand_a_exact():
    out = lesion_scores(*case_hand_a())
    assert (out["lesion_tp"], out["lesion_fp"], out["lesion_fn"]) == (1, 1, 1)
    assert out["lesion_f1"] == pytest.approx(0.5, abs=1e-12)
    assert out["lesionwise_dice"] == pytest.approx(2 / 3, abs=1e-12)
    assert out["lesionwise_hd95"] == pytest.approx(2.0, abs=1e-12)
    assert out["lesionwise_nsd"] == pytest.approx(6 / 7, abs=1e-12)


def test_pair_hd95_pools_both_directions():
    """A 1x1x10 reference line and a 1x1x6 prediction along its first 6 voxels (1 mm; every voxel
    is surface). Dice 12/16 = 3/4. Pred -> ref: 6 at 0. Ref -> pred: 6 at 0, then 1, 2, 3, 4.
    Pooled 16 values (panoptica): percentile 95 at position 14.25 -> 3 + 0.25 = 3.25 mm; the max of
    the directed percentiles (MONAI) would be max(0, 3 + 0.55) = 3.55 mm. NSD (1 + 7/10) / 2."""
    ref = box(SH32, S[10:11, 10:11, 5:15])
    pred = box(SH32, S[10:11, 10:11, 5:11])
    out = lesion_scores(pred, ref)
    assert (out["lesion_tp"], out["lesion_fp"], out["lesion_fn"]) == (1, 0, 0)
    assert out["lesionwise_dice"] == pytest.approx(3 / 4, abs=1e-12)
    assert out["lesionwise_hd95"] == pytest.approx(3.25, abs=1e-12)
    assert out["lesionwise_nsd"] == pytest.approx(0.85, abs=1e-12)


def test_hand_b_bipartite_not_greedy():
    out = lesion_scores(*case_hand_b())
    assert (out["lesion_tp"], out["lesion_fp"], out["lesion_fn"]) == (2, 0, 0)
    assert out["lesion_f1"] == pytest.approx(1.0, abs=1e-12)
    assert out["lesionwise_dice"] == pytest.approx(28 / 65, abs=1e-12)


def test_split_lesion_exact():
    out = lesion_scores(*case_split_lesion())
    assert (out["lesion_tp"], out["lesion_fp"], out["lesion_fn"]) == (1, 1, 0)
    assert out["lesion_f1"] == pytest.approx(2 / 3, abs=1e-12)
    assert out["lesionwise_dice"] == pytest.approx(3 / 4, abs=1e-12)


def test_corner_touch_is_one_lesion():
    out = lesion_scores(*case_corner_touch())
    assert (out["lesion_tp"], out["lesion_fp"], out["lesion_fn"]) == (1, 0, 0)
    assert out["lesionwise_dice"] == pytest.approx(2 * 216 / (216 + 243), abs=1e-12)


@pytest.mark.parametrize("name, counts", [("empty_prediction", (0, 0, 2)), ("empty_reference", (0, 1, 0)),
                                          ("no_overlap", (0, 1, 1))])
def test_zero_tp_conventions(name, counts):
    out = lesion_scores(*HAND_CASES[name]())
    assert tuple(out[k] for k in COUNTS) == counts
    assert (out["lesion_f1"], out["lesionwise_dice"], out["lesionwise_nsd"]) == (0.0, 0.0, 0.0)
    assert out["lesionwise_hd95"] == LESION_HD95_CAP == 373.0


def test_both_empty_convention():
    out = lesion_scores(*case_both_empty())
    assert set(out) == set(KEYS)
    assert tuple(out[k] for k in COUNTS) == (0, 0, 0)
    assert {k: out[k] for k in BOTH_EMPTY} == BOTH_EMPTY


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        lesion_scores(np.zeros((4, 4, 4), bool), np.zeros((4, 4, 5), bool))
    with pytest.raises(ValueError):
        lesion_scores(np.zeros((4, 4), bool), np.zeros((4, 4), bool))


def test_full_size_volume_is_fast():
    # A BraTS-sized volume with a few lesions: well under a few seconds per region.
    shape = (240, 240, 155)
    ref = box(shape, S[60:100, 70:120, 40:80], S[150:160, 150:162, 100:110], S[30:34, 200:205, 20:24])
    pred = box(shape, S[62:101, 72:118, 42:80], S[150:158, 151:160, 101:109], S[180:190, 30:40, 60:70])
    t0 = time.perf_counter()
    out = lesion_scores(pred, ref, (1.0, 1.0, 1.0))
    elapsed = time.perf_counter() - t0
    assert (out["lesion_tp"], out["lesion_fp"], out["lesion_fn"]) == (2, 1, 1)
    assert elapsed < 3.0, f"lesion_scores took {elapsed:.2f} s"


# ----------------------------------------------------------------------------- nsd known values
def test_nsd_identical_is_one():
    m = box(SH32, S[5:15, 6:12, 8:20])
    assert nsd(m, m) == 1.0
    assert nsd(m, m, (1.0, 2.0, 3.0), tolerance_mm=0.0) == 1.0


def test_nsd_shift_beyond_tolerance_is_lower():
    # A 6x6x6 cube (rows 4-9) against itself shifted by 2 rows (6-11); 1 mm spacing, tolerance 1 mm.
    # Each cube has 6^3 - 4^3 = 152 surface voxels: two 6x6 faces and four 20-voxel rings. Shifted
    # surface -> original surface: rings of rows 6-9 lie on the original's side faces (80 at 0); the
    # row-6 face's inner 4x4 is 1 from a side face (12) or 2 (its inner 2x2, 4); the row-10 ring is 1
    # from row 9 (20); the row-11 face is 2 from row 9 (36). Within 1 mm: 80 + 12 + 20 = 112 of 152,
    # the same the other way round (symmetric) -> NSD = 112/152 = 14/19.
    a = box(SH32, S[4:10, 4:10, 4:10])
    b = box(SH32, S[6:12, 4:10, 4:10])
    assert nsd(b, a) == pytest.approx(14 / 19, abs=1e-12)
    assert nsd(b, a, tolerance_mm=2.0) == 1.0
    assert nsd(b, a, tolerance_mm=0.5) < nsd(b, a)


def test_nsd_uses_spacing():
    # One voxel shift along the 2 mm axis is 2 mm: beyond a 1 mm tolerance, within 2 mm.
    a = box(SH32, S[4:10, 4:10, 4:10])
    b = box(SH32, S[4:10, 5:11, 4:10])
    assert nsd(b, a, (1.0, 2.0, 1.0), tolerance_mm=1.0) < 1.0
    assert nsd(b, a, (1.0, 2.0, 1.0), tolerance_mm=2.0) == 1.0
    assert nsd(b, a, (2.0, 1.0, 1.0), tolerance_mm=1.0) == 1.0


def test_nsd_empty_conventions():
    z, m = np.zeros(SH32, bool), box(SH32, S[4:8, 4:8, 4:8])
    assert nsd(z, z) == 1.0
    assert nsd(m, z) == 0.0 and nsd(z, m) == 0.0
    with pytest.raises(ValueError):
        nsd(m, m[:-1])


# ----------------------------------------------------------------------------- panoptica oracle
def _venv() -> Path:
    v = Path(os.environ.get("PANOPTICA_VENV", ".venv-panoptica"))
    return v if v.is_absolute() else REPO / v


def _imports_panoptica(python: Path) -> bool:
    if not python.exists():
        return False
    return subprocess.run([str(python), "-c", "import panoptica"], capture_output=True,
                          timeout=300).returncode == 0


@pytest.fixture(scope="session")
def panoptica_python() -> Path:
    """The panoptica venv's python, creating the venv with scripts/panoptica_env.sh when needed."""
    python = _venv() / "bin" / "python"
    if not _imports_panoptica(python):
        env = {**os.environ, "PANOPTICA_VENV": str(_venv())}
        proc = subprocess.run(["bash", str(REPO / "scripts" / "panoptica_env.sh")], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not _imports_panoptica(python):
            pytest.fail(f"panoptica venv could not be set up:\n{proc.stdout}\n{proc.stderr}")
    return python


def run_panoptica(python: Path, tmp_dir: Path, cases: dict, nsd_tols: dict | None = None) -> dict:
    """Scores ``{name: (pred, ref, spacing)}`` with tests/unet3d/panoptica_ref.py in the panoptica venv."""
    arrays = {}
    for name, (pred, ref, spacing) in cases.items():
        arrays[f"pred__{name}"] = pred.astype(np.uint8)
        arrays[f"ref__{name}"] = ref.astype(np.uint8)
        arrays[f"spacing__{name}"] = np.asarray(spacing, dtype=np.float64)
        if nsd_tols and name in nsd_tols:
            arrays[f"nsd_tol__{name}"] = np.float64(nsd_tols[name])
    path = tmp_dir / "cases.npz"
    np.savez(path, **arrays)
    proc = subprocess.run([str(python), str(Path(__file__).with_name("panoptica_ref.py")), str(path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def panoptica_results(panoptica_python, tmp_path_factory) -> dict:
    return run_panoptica(panoptica_python, tmp_path_factory.mktemp("pano"), all_cases())


def assert_matches_panoptica(ours: dict, ref: dict) -> None:
    """Ours == panoptica's on every key; inf -> the official 373 cap, NaN only for both-empty."""
    assert set(ours) == set(KEYS)
    for k in KEYS:
        theirs = ref[k]
        if k in COUNTS:
            assert ours[k] == theirs, k
        elif math.isnan(theirs):
            assert ref["lesion_tp"] + ref["lesion_fp"] + ref["lesion_fn"] == 0, k  # both empty only
            assert ours[k] == BOTH_EMPTY[k], k
        elif math.isinf(theirs):
            assert k == "lesionwise_hd95" and ours[k] == 373.0, k  # the official parser's cap
        else:
            tol = 1e-4 if k in ("lesionwise_hd95", "lesionwise_nsd") else 1e-6
            assert ours[k] == pytest.approx(theirs, abs=tol), k


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HAND_CASES) + list(RANDOM_CASES))
def test_lesion_scores_match_panoptica(name, panoptica_results):
    pred, ref, spacing = all_cases()[name]
    assert_matches_panoptica(lesion_scores(pred, ref, spacing), panoptica_results[name])


@pytest.mark.slow
def test_random_cases_are_not_trivial(panoptica_results):
    # The random cases exercise matching: several lesions, some matched, some not.
    res = [panoptica_results[n] for n in RANDOM_CASES]
    assert all(r["lesion_tp"] >= 2 and r["lesion_fp"] + r["lesion_fn"] >= 2 for r in res)


@pytest.mark.slow
def test_nsd_matches_panoptica(panoptica_python, tmp_path):
    # panoptica's NSD function (the one its lesion-wise NSD reduces to) at explicit spacing/tolerance.
    cases, tols = {}, {}
    for s in range(6):
        pred = random_blobs(500 + s, frac=0.15, sigma=3.0, like=400 + s, noise=0.5 + 0.3 * s)
        ref = random_blobs(400 + s, frac=0.15, sigma=3.0)
        cases[f"n{s}"] = (pred, ref, RANDOM_SPACINGS[s % 4])
        tols[f"n{s}"] = (1.0, 2.0, 0.5, 3.0, 1.5, 2.5)[s]
    theirs = run_panoptica(panoptica_python, tmp_path, cases, tols)
    for name, (pred, ref, spacing) in cases.items():
        ours = nsd(pred, ref, spacing, tolerance_mm=tols[name])
        assert 0.0 < ours < 1.0
        assert ours == pytest.approx(theirs[name]["nsd_fn"], abs=1e-6), name
