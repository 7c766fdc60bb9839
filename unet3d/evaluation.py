"""Score a folder of predicted segmentations against a dataset's reference labels.

Predictions are ``<pred_dir>/<case_id>.nii.gz`` (or ``.nii``) in the dataset's label values, on the
reference label's grid (same shape and affine). Scores are BraTS region Dice and HD95 (mm, with the
voxel spacing of the reference's affine) per case, from :mod:`unet3d.metrics`, computed on the
original grid: nothing is resampled or reoriented, so what is scored is exactly what was written.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.data.discover import Case, DataError
from unet3d.data.preprocess import read_label, spacing_of
from unet3d.errors import OptionError
from unet3d.io_utils import atomic_write_json, atomic_write_text
from unet3d.metrics import region_scores
from unet3d.regions import REGIONS, lut

METRICS: tuple[str, ...] = tuple([f"dice_{r}" for r in (*REGIONS, "mean")]
                                 + [f"hd95_{r}" for r in (*REGIONS, "mean")])


def prediction_path(pred_dir: Path, case_id: str) -> Path | None:
    """The prediction file of ``case_id`` in ``pred_dir``, or None."""
    for ext in (".nii.gz", ".nii"):
        p = Path(pred_dir) / f"{case_id}{ext}"
        if p.is_file():
            return p
    return None


def evaluate_case(pred_path: Path, case: Case) -> dict[str, Any]:
    """Region Dice and HD95 of one prediction file against ``case``'s reference label.

    Raises:
        DataError: naming the file: unreadable, bad label values, or not on the reference's grid.
    """
    if case.label is None:
        raise DataError(f"case {case.case_id}: has no reference label to evaluate against")
    ref, ref_affine = read_label(case.label, case.case_id, case.label_map, case.layout)
    pred, pred_affine = read_label(pred_path, case.case_id, case.label_map, case.layout,
                                   what="prediction")
    if pred.shape != ref.shape:
        raise DataError(f"case {case.case_id}: {pred_path}: prediction shape {pred.shape} differs "
                        f"from the reference label's {ref.shape} ({case.label})")
    if not np.allclose(pred_affine, ref_affine, atol=1e-3):
        raise DataError(f"case {case.case_id}: {pred_path}: prediction affine differs from the "
                        f"reference label's ({case.label}); was it resampled or reoriented?")
    table = lut(case.label_map)
    scores = region_scores(table[pred], table[ref], spacing=spacing_of(ref_affine))
    return {"case_id": case.case_id, **scores}


def _evaluate_one(args: tuple[Path, Case]) -> dict[str, Any]:
    return evaluate_case(*args)


def evaluate_folder(pred_dir: str | Path, cases: Sequence[Case], *, jobs: int | None = None,
                    progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Scores every labelled case of ``cases`` that has a prediction in ``pred_dir``.

    Args:
        pred_dir: folder of ``<case_id>.nii.gz`` predictions.
        cases: the dataset's cases; unlabelled ones are skipped.
        jobs: worker processes (default: one per CPU; 1 runs in this process).
        progress: called with each case's row as it finishes.

    Returns:
        One row per case in ``cases`` order: ``case_id`` and every name in :data:`METRICS`.

    Raises:
        DataError: ``pred_dir`` is missing (or a file), labelled cases have no prediction (all are
            named), or a prediction is unreadable / off the reference's grid.
        OptionError: ``jobs`` < 1 (named as ``--jobs``).
    """
    if jobs is not None and jobs < 1:
        raise OptionError(f"--jobs {jobs}: must be at least 1")
    pred_dir = Path(pred_dir)
    if pred_dir.exists() and not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: is a file, not a prediction folder")
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: prediction folder does not exist")
    labelled = [c for c in cases if c.label is not None]
    if not labelled:
        raise DataError("the dataset has no labelled case to evaluate against")
    work, missing = [], []
    for c in labelled:
        p = prediction_path(pred_dir, c.case_id)
        if p is None:
            missing.append(c.case_id)
        else:
            work.append((p, c))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{pred_dir}: no prediction <case_id>.nii.gz for {len(missing)} of "
                        f"{len(labelled)} labelled cases: {shown}")
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(work)))
    rows: list[dict[str, Any]] = []
    if jobs == 1:
        for item in work:
            rows.append(_evaluate_one(item))
            if progress is not None:
                progress(rows[-1])
        return rows
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for row in pool.map(_evaluate_one, work):
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """For every metric: mean, std, median, 25th and 75th percentile over cases."""
    out: dict[str, dict[str, float]] = {}
    for m in METRICS:
        v = np.array([r[m] for r in rows], dtype=np.float64)
        out[m] = {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
                  "q25": float(np.percentile(v, 25)), "q75": float(np.percentile(v, 75))}
    return out


def write_evaluation(rows: Sequence[dict[str, Any]], out_csv: str | Path) -> tuple[Path, Path]:
    """Writes the per-case CSV and ``<stem>_summary.json`` beside it (each atomically).

    Returns (csv path, summary path).
    """
    out_csv = Path(out_csv)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case_id", *METRICS])
    for r in rows:
        w.writerow([r["case_id"], *[repr(float(r[m])) for m in METRICS]])
    atomic_write_text(out_csv, buf.getvalue())
    summary_path = out_csv.with_name(f"{out_csv.stem}_summary.json")
    atomic_write_json(summary_path, {"cases": len(rows), "metrics": summary(rows)})
    return out_csv, summary_path


def format_summary(stats: dict[str, dict[str, float]]) -> str:
    """A fixed-width table: regions as rows, Dice and HD95 mean/median/std as columns."""
    head = (f"{'region':<6} {'Dice mean':>9} {'median':>7} {'std':>6}   "
            f"{'HD95 mean':>9} {'median':>7} {'std':>6}")
    lines = [head, "-" * len(head)]
    for r in (*REGIONS, "mean"):
        d, h = stats[f"dice_{r}"], stats[f"hd95_{r}"]
        lines.append(f"{r:<6} {d['mean']:>9.4f} {d['median']:>7.4f} {d['std']:>6.4f}   "
                     f"{h['mean']:>9.2f} {h['median']:>7.2f} {h['std']:>6.2f}")
    return "\n".join(lines)
