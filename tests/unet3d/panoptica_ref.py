"""Reference lesion-wise scores from panoptica, the test oracle for
``unet3d.evaluation.metrics.lesion_scores``.

Runs inside panoptica's own venv (``scripts/panoptica_env.sh``), not the project's: it imports nothing
from the project. Usage::

    python panoptica_ref.py CASES.npz

``CASES.npz`` holds, per case NAME, ``pred__NAME`` and ``ref__NAME`` (integer 3-D masks of one region,
nonzero = region) and ``spacing__NAME`` (3 floats, mm); optional ``nsd_tol__NAME`` asks for panoptica's
NSD function at that tolerance too. Prints one JSON line ``{NAME: {key: value}}`` with the keys of
``lesion_scores`` holding panoptica's RAW values (NaN, inf included; ``json`` writes them as NaN and
Infinity), plus ``global_bin_dsc/nsd/hd95`` and, when asked, ``nsd_fn``.

The evaluator is the official BraTS one (github.com/BraTS/BraTS_evaluation,
``brats_evaluation/configs/config_gli.yaml``), built in code for a single binary region group:
connected components (default backend, cc3d, 26-connectivity), ``MaxBipartiteMatching`` on DSC with
threshold 1e-6, instance and global metrics DSC, NSD, HD95, and its zero-TP edge-case table.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
from panoptica import (
    ConnectedComponentsInstanceApproximator,
    InputType,
    MaxBipartiteMatching,
    Metric,
    Panoptica_Evaluator,
)
from panoptica.metrics.normalized_surface_dice import _compute_normalized_surface_dice
from panoptica.utils.citation_reminder import disable_citation_reminder
from panoptica.utils.edge_case_handling import (
    EdgeCaseHandler,
    EdgeCaseResult,
    MetricZeroTPEdgeCaseHandling,
)
from panoptica.utils.label_group import LabelGroup
from panoptica.utils.segmentation_class import SegmentationClassGroups


def _zero_tp(value: EdgeCaseResult) -> MetricZeroTPEdgeCaseHandling:
    # config_gli.yaml: the same value for empty prediction, empty reference and "normal" zero-TP,
    # NaN when there are no instances at all.
    return MetricZeroTPEdgeCaseHandling(empty_prediction_result=value, empty_reference_result=value,
                                        no_instances_result=EdgeCaseResult.NAN, normal=value)


def brats_evaluator() -> Panoptica_Evaluator:
    """The official BraTS panoptica evaluator for one binary region (label 1)."""
    handler = EdgeCaseHandler(
        listmetric_zeroTP_handling={Metric.DSC: _zero_tp(EdgeCaseResult.ZERO),
                                    Metric.NSD: _zero_tp(EdgeCaseResult.ZERO),
                                    Metric.HD95: _zero_tp(EdgeCaseResult.INF)},
        empty_list_std=EdgeCaseResult.NAN)
    return Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(cca_backend=None),
        instance_matcher=MaxBipartiteMatching(matching_metric=Metric.DSC, matching_threshold=0.000001),
        edge_case_handler=handler,
        segmentation_class_groups=SegmentationClassGroups({"region": LabelGroup([1])}),
        instance_metrics=[Metric.DSC, Metric.NSD, Metric.HD95],
        global_metrics=[Metric.DSC, Metric.NSD, Metric.HD95],
        decision_metric=None, decision_threshold=None, log_times=False, verbose=False)


def score(evaluator: Panoptica_Evaluator, pred: np.ndarray, ref: np.ndarray,
          spacing: tuple[float, ...]) -> dict[str, float]:
    res = evaluator.evaluate((pred != 0).astype(np.uint8), (ref != 0).astype(np.uint8),
                             voxelspacing=spacing, verbose=False)["region"]
    return {"lesion_tp": int(res.tp), "lesion_fp": int(res.fp), "lesion_fn": int(res.fn),
            "lesion_f1": float(res.rq), "lesionwise_dice": float(res.sq_dsc),
            "lesionwise_hd95": float(res.sq_hd95), "lesionwise_nsd": float(res.sq_nsd),
            "global_bin_dsc": float(res.global_bin_dsc), "global_bin_nsd": float(res.global_bin_nsd),
            "global_bin_hd95": float(res.global_bin_hd95)}


def main(path: str) -> None:
    disable_citation_reminder()
    warnings.simplefilter("ignore")  # panoptica warns about its 0.5 default NSD threshold
    data = np.load(path)
    evaluator = brats_evaluator()
    out: dict[str, dict[str, float]] = {}
    for key in sorted(k for k in data.files if k.startswith("pred__")):
        name = key[len("pred__"):]
        spacing = tuple(float(s) for s in data[f"spacing__{name}"])
        out[name] = score(evaluator, data[key], data[f"ref__{name}"], spacing)
        if f"nsd_tol__{name}" in data.files:
            out[name]["nsd_fn"] = float(_compute_normalized_surface_dice(
                data[f"ref__{name}"] != 0, data[key] != 0, voxelspacing=spacing,
                threshold=float(data[f"nsd_tol__{name}"])))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
