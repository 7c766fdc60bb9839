"""BraTS region metrics: Dice and HD95 per case, with BraTS's conventions for empty masks.

Conventions (BraTS challenge): both masks empty -> Dice 1, HD95 0; exactly one empty -> Dice 0,
HD95 = the image diagonal in mm. HD95 is the larger of the two directed 95th-percentile surface
distances (surface voxels of one mask to the nearest surface voxel of the other), measured in mm with
the voxel spacing from the header, as MONAI's ``compute_hausdorff_distance(percentile=95)`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from unet3d.regions import REGIONS, classes_to_regions


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


def region_scores(pred_classes: np.ndarray, ref_classes: np.ndarray,
                  spacing: Sequence[float] | None = None) -> dict[str, float]:
    """Per-region Dice (and HD95 when ``spacing`` is given) of two training-class maps (D, H, W).

    Returns keys ``dice_WT``, ``dice_TC``, ``dice_ET``, ``dice_mean`` and, with spacing,
    ``hd95_WT``, ``hd95_TC``, ``hd95_ET``, ``hd95_mean``.
    """
    p = classes_to_regions(pred_classes)
    r = classes_to_regions(ref_classes)
    out: dict[str, float] = {}
    for i, name in enumerate(REGIONS):
        out[f"dice_{name}"] = dice(p[..., i], r[..., i])
    out["dice_mean"] = float(np.mean([out[f"dice_{n}"] for n in REGIONS]))
    if spacing is not None:
        for i, name in enumerate(REGIONS):
            out[f"hd95_{name}"] = hd95(p[..., i], r[..., i], spacing)
        out["hd95_mean"] = float(np.mean([out[f"hd95_{n}"] for n in REGIONS]))
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
