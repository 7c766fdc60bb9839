"""Score a folder of predicted segmentations against a dataset's reference labels, as BraTS does.

Predictions are ``<pred_dir>/<case_id>.nii.gz`` (or ``.nii``) with the label scheme's values, on the
reference label's grid (same shape and affine). Per case and per region of the scheme (WT, TC, ET,
RC, ... or a user scheme's): whole-image Dice, HD95 (mm, with the voxel spacing of the reference's
affine), normalized surface distance, and the lesion-wise scores of the BraTS 2023+ evaluation
(TP/FP/FN lesions, F1, lesion-wise Dice and HD95), from :mod:`unet3d.evaluation.metrics`, computed on the
original grid: nothing is resampled or reoriented, so what is scored is exactly what was written.
Means are over the scheme's tumour regions (a resection cavity is shown, not averaged in).
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from unet3d import labels as labels_mod
from unet3d.config import RunConfig
from unet3d.data.discover import Case, DataError, Dataset
from unet3d.data.preprocess import CachedCase, read_label, spacing_of
from unet3d.errors import OptionError
from unet3d.evaluation.metrics import LESION_COUNTS, REGION_METRICS, region_scores
from unet3d.io_utils import atomic_write_json, atomic_write_text
from unet3d.labels import LabelScheme


def metric_names(scheme: LabelScheme) -> tuple[str, ...]:
    """The CSV's score columns: for each metric, one per region then the mean over tumour regions
    (counts have no mean)."""
    out = []
    for m in REGION_METRICS:
        out += [f"{m}_{r}" for r in scheme.regions]
        if m not in LESION_COUNTS:  # per region only: a mean of counts means little
            out.append(f"{m}_mean")
    return tuple(out)


# -- cached cases (a run's validation, an export's) ---------------------------------------------

def evaluate_cases(model: Any, cases: Sequence[CachedCase], cfg: RunConfig, *,
                   hd95: bool = False,
                   on_classes: Callable[[CachedCase, np.ndarray], None] | None = None,
                   max_seconds: float = 0.0) -> list[dict[str, Any]]:
    """Sliding-window prediction of whole cached volumes and the scheme's region scores per case
    (lesion-wise ones too when the objective is lesion-wise). ``on_classes`` gets each case's
    predicted class map (e.g. to choose a post-processing on the same predictions).
    ``max_seconds`` > 0: no case is started once that much time has passed (at least one is)."""
    from unet3d.inference.predictor import keras_predict_fn, probabilities_to_classes, sliding_window_predict
    from unet3d.training.model import inference_model  # (Keras: loaded when a model is scored, not before)

    predict = keras_predict_fn(inference_model(model))
    scheme = cfg.scheme
    out = []
    t0 = time.perf_counter()
    for case in cases:
        if max_seconds > 0 and out and time.perf_counter() - t0 >= max_seconds:
            break
        probs = sliding_window_predict(predict, np.asarray(case.image()), cfg.data.crop,
                                       cfg.model.out_channels, overlap=cfg.train.val_overlap,
                                       batch_size=cfg.train.val_batch_size)
        pred = probabilities_to_classes(probs, cfg.model.head, scheme)
        if on_classes is not None:
            on_classes(case, pred)
        lesionwise = cfg.train.objective == "lesionwise"
        scores = region_scores(pred, case.classes(scheme), scheme, spacing=case.meta["spacing"],
                               lesionwise=lesionwise, distances=hd95)
        out.append({"case_id": case.case_id, **scores})
    return out


def mean_scores(per_case: Sequence[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k in per_case[0] if k != "case_id"]
    return {k: float(np.mean([c[k] for c in per_case])) for k in keys}


def evaluation_scheme(dataset: Dataset, labels: LabelScheme | None = None) -> LabelScheme:
    """The scheme to score ``dataset`` with: ``labels`` if given (``--labels``, resolved where it
    was read), else detected (the label values are read only where the layout leaves the release
    open: BraTS GLI or PED, 2023 or 2024)."""
    if labels is not None:
        return labels
    values: set[int] = set()
    if dataset.layout == "brats2023" and (dataset.task or "").upper() in ("GLI", "PED"):
        for c in dataset.labelled:
            values |= set(np.unique(read_label(c.label, c.case_id)[0]).tolist())
    return labels_mod.detect(dataset.layout, dataset.task, values)


def prediction_path(pred_dir: Path, case_id: str) -> Path | None:
    """The prediction file of ``case_id`` in ``pred_dir``, or None."""
    for ext in (".nii.gz", ".nii"):
        p = Path(pred_dir) / f"{case_id}{ext}"
        if p.is_file():
            return p
    return None


def evaluate_case(pred_path: Path, case: Case, scheme: LabelScheme) -> dict[str, Any]:
    """Every score of :data:`unet3d.evaluation.metrics.REGION_METRICS` per region of ``scheme``, of one
    prediction file against ``case``'s reference label.

    Raises:
        DataError: naming the file: unreadable, label values outside the scheme, or not on the
            reference's grid.
    """
    if case.label is None:
        raise DataError(f"case {case.case_id}: has no reference label to evaluate against")
    ref, ref_affine = read_label(case.label, case.case_id, scheme)
    pred, pred_affine = read_label(pred_path, case.case_id, scheme, what="prediction")
    if pred.shape != ref.shape:
        raise DataError(f"case {case.case_id}: {pred_path}: prediction shape {pred.shape} differs "
                        f"from the reference label's {ref.shape} ({case.label})")
    if not np.allclose(pred_affine, ref_affine, atol=1e-3):
        raise DataError(f"case {case.case_id}: {pred_path}: prediction affine differs from the "
                        f"reference label's ({case.label}); was it resampled or reoriented?")
    scores = region_scores(scheme.to_classes(pred), scheme.to_classes(ref), scheme,
                           spacing=spacing_of(ref_affine), lesionwise=True, surface=True)
    return {"case_id": case.case_id, **scores}


def _evaluate_one(args: tuple[Path, Case, LabelScheme]) -> dict[str, Any]:
    return evaluate_case(*args)


def missing_predictions(pred_dir: str | Path, cases: Sequence[Case]) -> list[str]:
    """IDs of the labelled cases of ``cases`` without a prediction in ``pred_dir``, in order."""
    return [c.case_id for c in cases
            if c.label is not None and prediction_path(Path(pred_dir), c.case_id) is None]


def evaluate_folder(pred_dir: str | Path, cases: Sequence[Case], scheme: LabelScheme, *,
                    jobs: int | None = None,
                    progress: Callable[[dict[str, Any]], None] | None = None,
                    partial: bool = False) -> list[dict[str, Any]]:
    """Scores every labelled case of ``cases`` that has a prediction in ``pred_dir``; each must
    have one unless ``partial`` (then those without are skipped: :func:`missing_predictions`).

    Args:
        pred_dir: folder of ``<case_id>.nii.gz`` predictions.
        cases: the dataset's cases; unlabelled ones are skipped.
        scheme: the label scheme of references and predictions.
        jobs: worker processes (default: one per CPU; 1 runs in this process).
        progress: called with each case's row as it finishes.

    Returns:
        One row per case in ``cases`` order: ``case_id`` and every name of :func:`metric_names`.

    Raises:
        DataError: ``pred_dir`` is missing (or a file), labelled cases have no prediction (all are
            named; with ``partial``, when none has one), or a prediction is unreadable / off the
            reference's grid.
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
            work.append((p, c, scheme))
    if missing and (not partial or not work):
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        hint = "" if partial else " (--partial scores the cases that have one)"
        raise DataError(f"{pred_dir}: no prediction <case_id>.nii.gz for {len(missing)} of "
                        f"{len(labelled)} labelled cases: {shown}{hint}")
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


def summary(rows: Sequence[dict[str, Any]], scheme: LabelScheme) -> dict[str, dict[str, float]]:
    """For every metric: mean, std, median, 25th and 75th percentile over cases (lesion counts:
    also their sum over cases)."""
    out: dict[str, dict[str, float]] = {}
    for m in metric_names(scheme):
        v = np.array([r[m] for r in rows], dtype=np.float64)
        out[m] = {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
                  "q25": float(np.percentile(v, 25)), "q75": float(np.percentile(v, 75))}
        if m.rsplit("_", 1)[0] in LESION_COUNTS:
            out[m]["sum"] = float(v.sum())
    return out


def write_evaluation(rows: Sequence[dict[str, Any]], out_csv: str | Path,
                     scheme: LabelScheme, skipped: Sequence[str] = ()) -> tuple[Path, Path]:
    """Writes the per-case CSV (``case_id`` first, then :func:`metric_names`) and
    ``<stem>_summary.json`` beside it (each atomically; ``skipped``: labelled cases left out for
    want of a prediction, listed there).

    Returns (csv path, summary path).
    """
    out_csv = Path(out_csv)
    names = metric_names(scheme)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case_id", *names])
    for r in rows:
        w.writerow([r["case_id"], *[repr(float(r[m])) for m in names]])
    atomic_write_text(out_csv, buf.getvalue())
    summary_path = out_csv.with_name(f"{out_csv.stem}_summary.json")
    atomic_write_json(summary_path, {"cases": len(rows), "skipped": list(skipped),
                                     "labels": scheme.to_dict(),
                                     "tumour_mean_over": list(scheme.tumour),
                                     "metrics": summary(rows, scheme)})
    return out_csv, summary_path


def format_summary(stats: dict[str, dict[str, float]], scheme: LabelScheme) -> str:
    """A fixed-width table, regions as rows (the mean over tumour regions last): means of Dice,
    HD95, NSD, lesion-wise Dice and HD95, and the lesion counts summed over cases."""
    head = (f"{'region':<7} {'Dice':>6} {'HD95':>7} {'NSD':>6}   {'LW Dice':>7} {'LW HD95':>7} "
            f"{'F1':>5} {'TP':>5} {'FP':>5} {'FN':>5}")
    lines = [head, "-" * len(head)]
    for r in (*scheme.regions, "mean"):
        def mean(m: str, r: str = r) -> float:
            return stats[f"{m}_{r}"]["mean"]

        row = (f"{r:<7} {mean('dice'):>6.4f} {mean('hd95'):>7.2f} {mean('nsd'):>6.4f}   "
               f"{mean('lesionwise_dice'):>7.4f} {mean('lesionwise_hd95'):>7.2f} "
               f"{mean('lesion_f1'):>5.3f}")
        if r != "mean":
            row += "".join(f" {int(stats[f'lesion_{k}_{r}']['sum']):>5d}" for k in ("tp", "fp", "fn"))
        lines.append(row)
    note = [f"mean: over {', '.join(scheme.tumour)}"] if set(scheme.tumour) != set(scheme.regions) else []
    return "\n".join(lines + note)
