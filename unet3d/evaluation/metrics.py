"""BraTS region metrics per case: Dice, HD95, NSD and the lesion-wise scores, per region of a label
scheme (:func:`region_scores`), with BraTS's conventions for empty masks.

Conventions (BraTS challenge): both masks empty -> Dice 1, HD95 0; exactly one empty -> Dice 0,
HD95 = the image diagonal in mm. HD95 is the larger of the two directed 95th-percentile surface
distances (surface voxels of one mask to the nearest surface voxel of the other), measured in mm with
the voxel spacing from the header, as MONAI's ``compute_hausdorff_distance(percentile=95)`` does.

Lesion-wise scores (``lesion_scores``, ``nsd``): the official BraTS evaluation
-----------------------------------------------------------------------------
Sources read: github.com/BraTS/BraTS_evaluation (``brats_evaluation/configs/config_gli.yaml`` and the
``ped``/``mets``/``GoAT``/``MenPre``/``MenRT`` configs, ``brats_evaluation/evaluation.py``,
``brats_evaluation/metrics_parser.py``; pip package ``BraTS-evaluation``, used by the Synapse scoring
workflow github.com/Sage-Bionetworks-Challenges/brats-infra ``evaluation/segmentation/score.py``), and
panoptica 2.1.7 (``instance_approximator.py``, ``instance_matcher.py`` ``MaxBipartiteMatching``,
``instance_evaluator.py``, ``panoptica_result.py``, ``utils/edge_case_handling.py``,
``metrics/_surface_distances.py``). (panoptica's own ``configs/panoptica_evaluator_BRATS.yaml`` is an
older example, IoU >= 0.5 naive matching, not what the BraTS organisers run.) Per region of one case:

* Instances: connected components of the binary region mask, 26-connectivity (panoptica's default
  ``cc3d`` backend for 3-D; same labels as ``scipy.ndimage.label`` with a 3x3x3 structure).
* Matching: ``MaxBipartiteMatching`` on Dice, threshold 1e-6: cost ``1 - Dice`` for pairs with
  Dice >= 1e-6, ``1 + 1e-6`` otherwise, ``scipy.optimize.linear_sum_assignment``; an assigned pair is
  a match only if its cost < 1. One-to-one; no decision threshold afterwards.
* Counts: tp = matches, fp = predicted lesions - tp, fn = reference lesions - tp; ``rq`` (F1) =
  tp / (tp + fp/2 + fn/2).
* ``sq_dsc``, ``sq_hd95``, ``sq_nsd`` (reported as ``lesionwise_*_mean`` by ``brats-parse-metrics seg``):
  means over the matched pairs only (unmatched lesions do not enter them; they only lower the F1). Each
  pair is scored between the reference lesion and its matched predicted lesion alone, with the voxel
  spacing. HD95 there is ``np.percentile`` 95 of the POOLED directed surface distances (ref->pred and
  pred->ref concatenated), not the maximum of the two directed 95th percentiles that ``hd95`` above
  (MONAI) takes; surfaces are the same (mask minus its 6-connected erosion, image border outside).
  NSD is panoptica's (GaNDLF's) variant: the mean of the two directed fractions of surface voxels
  within the tolerance (``<=``), not DeepMind's pooled surface Dice; the tolerance is min(spacing)
  (1 mm for BraTS).
* Zero-TP edge cases (config ``edge_case_handler``): both masks empty -> tp = fp = fn = 0 and F1, Dice,
  HD95 and NSD are NaN; otherwise with tp = 0 (empty prediction, empty reference, or no overlapping
  pair) -> F1 0, Dice 0, NSD 0, HD95 inf. ``metrics_parser.py`` replaces an infinite HD95 by 373
  ("diameter of the cube in SRI space; using the maximum penalty instead of INF").
* Global metrics (not reproduced here): panoptica 2.1.7 computes ``global_bin_hd95``/``global_bin_nsd``
  without the voxel spacing (voxel units, NSD tolerance 0.5 voxel) and returns the zero-TP values
  above whenever the two masks do not overlap at all.

This module's values: exactly the official ones, except that inf becomes ``LESION_HD95_CAP`` = 373 mm
(the parser's penalty) and that "both empty" (official NaN) scores F1 1, Dice 1, NSD 1, HD95 0, the
BraTS convention ``dice``/``hd95`` above use for empty-empty, so that every case has a number.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from unet3d.labels import LabelScheme


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks of the same shape."""
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"dice: shapes differ {pred.shape} vs {ref.shape}")
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    # Face-connected erosion: a voxel is on the surface if any 6-neighbour is outside the mask.
    # border_value=0 makes voxels on the image border surface voxels too.
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1),
                                          border_value=0)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th-percentile Hausdorff distance in mm between two boolean 3D masks."""
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"hd95: shapes differ {pred.shape} vs {ref.shape}")
    spacing = tuple(float(s) for s in spacing)
    p_any, r_any = pred.any(), ref.any()
    if not p_any and not r_any:
        return 0.0
    if not p_any or not r_any:
        return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing, strict=True))))
    # Only the union's bounding box (plus one voxel, so that the surface is unchanged) matters: every
    # surface voxel of either mask lies in it, so distances computed inside it are exact, and a
    # tumour's box is a small part of a 240x240x155 volume.
    both = pred | ref
    idx = [np.flatnonzero(both.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    box = tuple(slice(max(int(i[0]) - 1, 0), int(i[-1]) + 2) for i in idx)
    pred, ref = pred[box], ref[box]
    sp, sr = _surface(pred), _surface(ref)
    # Distance from every voxel to the nearest surface voxel of the other mask.
    dt_r = ndimage.distance_transform_edt(~sr, sampling=spacing)
    dt_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(max(np.percentile(dt_r[sp], 95), np.percentile(dt_p[sr], 95)))


# Per region: what ``region_scores`` can report, in the order tables show them (key: f"{m}_{region}").
REGION_METRICS: tuple[str, ...] = ("dice", "hd95", "nsd", "lesion_tp", "lesion_fp", "lesion_fn",
                                   "lesion_f1", "lesionwise_dice", "lesionwise_hd95", "lesionwise_nsd")
LESION_COUNTS = ("lesion_tp", "lesion_fp", "lesion_fn")
# A training objective (train.objective) -> the prefix of the region_scores keys it averages:
# "<prefix>_mean" is a case's objective score (the mean over the scheme's tumour regions).
OBJECTIVE_KEYS = {"dice": "dice", "lesionwise": "lesionwise_dice"}


def objective_score(scores: dict[str, float], objective: str) -> float:
    """A case's score for ``objective`` ("dice" | "lesionwise") from its :func:`region_scores`."""
    return float(scores[f"{OBJECTIVE_KEYS[objective]}_mean"])


def region_scores(pred_classes: np.ndarray, ref_classes: np.ndarray,
                  scheme: LabelScheme, spacing: Sequence[float] | None = None, *,
                  lesionwise: bool = False, surface: bool = False,
                  distances: bool = True) -> dict[str, float]:
    """Scores of two training-class maps (D, H, W) per region of ``scheme``.

    Always ``dice_<R>``; with ``spacing`` (and ``distances``) also ``hd95_<R>`` (mm), with
    ``surface`` (needs spacing)
    ``nsd_<R>`` at a tolerance of the smallest voxel side (1 mm for BraTS, as the official lesion
    NSD), with ``lesionwise`` every key of :func:`lesion_scores` suffixed ``_<R>``. Each score but
    the lesion counts also gets ``<score>_mean``: the mean over the scheme's tumour regions (a
    resection cavity is scored on its own, not averaged in).
    """
    if surface and spacing is None:
        raise ValueError("region_scores: surface distances need the voxel spacing")
    p = scheme.classes_to_regions(pred_classes)
    r = scheme.classes_to_regions(ref_classes)
    out: dict[str, float] = {}
    for i, name in enumerate(scheme.regions):
        a, b = p[..., i], r[..., i]
        out[f"dice_{name}"] = dice(a, b)
        if spacing is not None and distances:
            out[f"hd95_{name}"] = hd95(a, b, spacing)
        if surface:
            out[f"nsd_{name}"] = nsd(a, b, spacing, tolerance_mm=min(spacing))
        if lesionwise:
            scores = lesion_scores(a, b, spacing if spacing is not None else (1.0, 1.0, 1.0))
            out.update({f"{k}_{name}": float(v) for k, v in scores.items()})
    for m in REGION_METRICS:
        if m not in LESION_COUNTS and f"{m}_{scheme.tumour[0]}" in out:
            out[f"{m}_mean"] = float(np.mean([out[f"{m}_{t}"] for t in scheme.tumour]))
    return out


def summarize(per_case: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean, median and std of every metric over cases."""
    if not per_case:
        return {}
    keys = [k for k in per_case[0] if isinstance(per_case[0][k], (int, float))]
    out: dict[str, float] = {}
    for k in keys:
        v = np.array([c[k] for c in per_case], dtype=np.float64)
        out[f"{k}_mean"] = float(v.mean())
        out[f"{k}_median"] = float(np.median(v))
        out[f"{k}_std"] = float(v.std())
    return out


# ----------------------------------------------------------------------------- lesion-wise (BraTS)
LESION_HD95_CAP = 373.0  # BraTS_evaluation's metrics_parser: replaces an infinite HD95 (SRI-space diameter)
_MATCH_MIN_DICE = 1e-6  # the official MaxBipartiteMatching threshold
# What makes a lesion: a 26-connected component (cc3d's default 3-D connectivity, as BraTS's).
LESION_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def _box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    """Bounding box of a non-empty boolean mask, grown by ``pad`` voxels and clipped to the image."""
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
           for ax in range(mask.ndim)]
    return tuple(slice(max(int(i[0]) - pad, 0), min(int(i[-1]) + 1 + pad, n))
                 for i, n in zip(idx, mask.shape, strict=True))


def _surface_distances(a: np.ndarray, b: np.ndarray,
                       spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (mm) of two non-empty boolean masks.

    Returns ``(d_a, d_b)``: for every surface voxel of ``a`` the distance to the nearest surface voxel
    of ``b``, and the other way round (1-D arrays, one entry per surface voxel).
    """
    sa, sb = _surface(a), _surface(b)
    d_a = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    d_b = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
    return d_a, d_b


def _nsd_from_distances(d_a: np.ndarray, d_b: np.ndarray, tolerance_mm: float) -> float:
    # panoptica's (GaNDLF's) formula: each direction contributes the fraction of its surface voxels
    # within the tolerance, so a small mask weighs as much as a large one (unlike DeepMind's NSD).
    fa, fb = np.mean(d_a <= tolerance_mm), np.mean(d_b <= tolerance_mm)
    return float((fa + fb) / 2.0)


def nsd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
        tolerance_mm: float = 1.0) -> float:
    """Normalized surface distance (surface Dice at a tolerance) of two boolean 3-D masks (D, H, W).

    The mean, over the two directions, of the fraction of one mask's surface voxels lying within
    ``tolerance_mm`` of the other's surface: panoptica's NSD (the BraTS lesion-wise NSD with
    ``tolerance_mm = min(spacing)``). Empty masks follow the official zero-TP rules: one empty -> 0.
    Both empty (official: NaN) -> 1, like ``dice``. Non-overlapping masks get their true value here
    (panoptica's *global* NSD would short-cut them to 0).

    Args:
        pred, ref: boolean masks (D, H, W).
        spacing: voxel size in mm per axis.
        tolerance_mm: a surface voxel counts when its distance to the other surface is <= this.

    Returns:
        NSD in [0, 1].
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"nsd: shapes differ {pred.shape} vs {ref.shape}")
    p_any, r_any = pred.any(), ref.any()
    if not p_any and not r_any:
        return 1.0
    if not p_any or not r_any:
        return 0.0
    # A one-voxel margin around the union keeps every surface voxel and its distances exact.
    box = _box(pred | ref, pad=1)
    d_p, d_r = _surface_distances(pred[box], ref[box], tuple(float(s) for s in spacing))
    return _nsd_from_distances(d_r, d_p, tolerance_mm)


def _match_lesions(ref_lab: np.ndarray, n_ref: int, pred_lab: np.ndarray,
                   n_pred: int) -> list[tuple[int, int]]:
    """Official one-to-one lesion matching: maximum bipartite matching on Dice.

    Args:
        ref_lab, pred_lab: component labels (same 3-D shape), 0 = background, 1..n = lesions.
        n_ref, n_pred: numbers of reference and predicted lesions (both > 0).

    Returns:
        Matched ``(ref_label, pred_label)`` pairs.
    """
    both = (ref_lab > 0) & (pred_lab > 0)
    # Intersection of every (ref, pred) pair from one bincount of the joint label code.
    inter = np.bincount(ref_lab[both].astype(np.int64) * (n_pred + 1) + pred_lab[both],
                        minlength=(n_ref + 1) * (n_pred + 1)).reshape(n_ref + 1, n_pred + 1)[1:, 1:]
    size_r = np.bincount(ref_lab.ravel(), minlength=n_ref + 1)[1:].astype(np.float64)
    size_p = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)[1:].astype(np.float64)
    dsc = 2.0 * inter / (size_r[:, None] + size_p[None, :])
    # panoptica's cost matrix: 1 - Dice where Dice passes the threshold, just above 1 elsewhere, so
    # that an assignment through a non-overlapping pair (cost >= 1) is not a match.
    cost = np.where(dsc >= _MATCH_MIN_DICE, 1.0 - dsc, 1.0 + 1e-6)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r) + 1, int(c) + 1) for r, c in zip(rows, cols, strict=True) if cost[r, c] < 1.0]


def _pair_scores(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float, float]:
    """Dice, HD95 (pooled, panoptica's) and NSD (tolerance min(spacing)) of one matched lesion pair.

    Args:
        a, b: boolean masks of the reference lesion and its predicted lesion, cropped to the pair's
            bounding box plus one voxel (so that their surfaces are those in the full volume).
    """
    dice_ab = 2.0 * int(np.logical_and(a, b).sum()) / (int(a.sum()) + int(b.sum()))
    d_a, d_b = _surface_distances(a, b, spacing)
    hd95_ab = float(np.percentile(np.concatenate([d_a, d_b]), 95))
    return dice_ab, hd95_ab, _nsd_from_distances(d_a, d_b, min(spacing))


def _pair_box(s1: tuple[slice, ...], s2: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Union of two ``find_objects`` boxes grown by one voxel, clipped to ``shape``."""
    return tuple(slice(max(min(x.start, y.start) - 1, 0), min(max(x.stop, y.stop) + 1, n))
                 for x, y, n in zip(s1, s2, shape, strict=True))


def lesion_scores(pred: np.ndarray, ref: np.ndarray,
                  spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, float]:
    """Official BraTS lesion-wise scores of one region (e.g. WT) of one case.

    Args:
        pred, ref: boolean masks (D, H, W) of the region.
        spacing: voxel size in mm per axis.

    Returns:
        ``lesion_tp``, ``lesion_fp``, ``lesion_fn`` (lesion counts), ``lesion_f1`` (panoptica's rq),
        ``lesionwise_dice``, ``lesionwise_hd95`` (mm), ``lesionwise_nsd``: means over matched lesion
        pairs (``sq_dsc``, ``sq_hd95``, ``sq_nsd``). With no match: F1, Dice, NSD 0 and HD95
        ``LESION_HD95_CAP``; both masks empty: F1, Dice, NSD 1 and HD95 0 (see the module docstring).
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"lesion_scores: need two 3-D masks of one shape, got {pred.shape}, {ref.shape}")
    spacing = tuple(float(s) for s in spacing)
    union = pred | ref
    if not union.any():  # official: all NaN; BraTS's empty-empty convention instead
        return {"lesion_tp": 0, "lesion_fp": 0, "lesion_fn": 0, "lesion_f1": 1.0,
                "lesionwise_dice": 1.0, "lesionwise_hd95": 0.0, "lesionwise_nsd": 1.0}
    box = _box(union, pad=1)  # labelling the union's box alone is faster and labels the same lesions
    ref_lab, n_ref = ndimage.label(ref[box], structure=LESION_CONNECTIVITY)
    pred_lab, n_pred = ndimage.label(pred[box], structure=LESION_CONNECTIVITY)
    pairs = _match_lesions(ref_lab, n_ref, pred_lab, n_pred) if n_ref and n_pred else []
    tp = len(pairs)
    out = {"lesion_tp": tp, "lesion_fp": n_pred - tp, "lesion_fn": n_ref - tp,
           "lesion_f1": tp / (tp + 0.5 * (n_pred - tp) + 0.5 * (n_ref - tp))}
    if tp == 0:  # official zero-TP values, HD95 inf capped as the official parser does
        return out | {"lesionwise_dice": 0.0, "lesionwise_hd95": LESION_HD95_CAP, "lesionwise_nsd": 0.0}
    # Each pair is scored inside its own box (a lesion is a small part of the volume); other lesions
    # in that box are masked out by their labels.
    r_obj, p_obj = ndimage.find_objects(ref_lab), ndimage.find_objects(pred_lab)
    boxes = [_pair_box(r_obj[r - 1], p_obj[p - 1], ref_lab.shape) for r, p in pairs]
    scores = np.array([_pair_scores(ref_lab[b] == r, pred_lab[b] == p, spacing)
                       for (r, p), b in zip(pairs, boxes, strict=True)])
    dice_m, hd95_m, nsd_m = scores.mean(axis=0)
    return out | {"lesionwise_dice": float(dice_m), "lesionwise_hd95": float(hd95_m),
                  "lesionwise_nsd": float(nsd_m)}
