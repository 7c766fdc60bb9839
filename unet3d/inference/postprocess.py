"""Post-processing of a predicted class map, the steps BraTS pipelines commonly add after the network.

- Small enhancing-tumour components: a few voxels of predicted ET in a case without ET cost the
  whole ET Dice of that case (BraTS scores an empty reference with a non-empty prediction as 0), and
  isolated ET specks are usually false positives. Each 26-connected ET component smaller than a
  volume threshold (mm^3) is relabelled as necrotic / non-enhancing core, so the tumour core and the
  whole tumour keep those voxels and only ET loses them (the nnU-Net / BraTS-winner convention).
- Largest whole-tumour component: every tumour voxel outside the largest 26-connected whole-tumour
  component becomes background (a glioma is one lesion; distant specks are false positives).

Both run on training classes of shape (D, H, W); the label scheme says which class is enhancing
tumour, which one it becomes (the core: NCR/NETC), and which classes are tumour (a resection cavity
is not: the largest-component rule leaves it alone). A scheme without an enhancing label (MEN-RT's
GTV) has no ET step.

Which steps a model gets is chosen on its validation cases, as nnU-Net does (:class:`Chooser`,
:func:`choose_postprocess`): every candidate (largest-WT rule off/on x ET threshold in
``ET_THRESHOLDS_MM3``) is applied to the model's predicted class maps and scored with
:func:`unet3d.evaluation.metrics.region_scores` against the reference, by the training objective ("dice": mean
region Dice of the scheme's tumour regions; "lesionwise": mean lesion-wise Dice). A validation
fold is a handful of cases, so a candidate is compared with no post-processing case by case and
allowed only when (1) it leaves every region in at least one of the cases the model predicted it
in (erasing all enhancing tumour scores 1.0 on a case without any and would be "chosen" on one
such case while it zeroes every other case's ET), (2) it improves more cases than it worsens, (3)
its mean gain is still positive without its most-improved case (a gain from one case is noise
this rule cannot tell from an effect), and (4) that gain exceeds ``margin``. Among the allowed
candidates, the simplest within ``margin`` of the best mean score wins (no post-processing when
none is allowed, and on ties). The ET rule is per component;
the BraTS-2020 nnU-Net rule (all ET of a case becomes core when the case's ET volume is below a
threshold) is the same whenever a case's ET is one component. The choice and every candidate's
scores go to ``postprocess.json`` in the export folder (``ExportFolder.postprocess``), which
``predict`` applies.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from unet3d.evaluation.metrics import OBJECTIVE_KEYS, region_scores
from unet3d.folders import ExportFolder
from unet3d.labels import LabelScheme

_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26-connected


@dataclass(frozen=True, kw_only=True)
class PostProcess:
    """Post-processing options.

    Attributes:
        min_et_volume: ET components below this volume (mm^3) become NCR/NET; 0 turns it off.
        largest_wt: keep only the largest connected whole-tumour component.
    """

    min_et_volume: float = 0.0
    largest_wt: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.min_et_volume, (int, float)) and self.min_et_volume >= 0):
            raise ValueError(f"min_et_volume={self.min_et_volume!r} must be a volume >= 0 (mm^3)")

    @property
    def active(self) -> bool:
        return self.min_et_volume > 0 or self.largest_wt

    def to_dict(self) -> dict[str, Any]:
        """``{"min_et_volume_mm3": ..., "largest_wt": ...}`` (as predict.json records it)."""
        return {"min_et_volume_mm3": float(self.min_et_volume), "largest_wt": bool(self.largest_wt)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PostProcess:
        largest = d.get("largest_wt", False)
        if not isinstance(largest, bool):
            raise ValueError(f"largest_wt={largest!r} must be true or false")
        return cls(min_et_volume=d.get("min_et_volume_mm3", 0.0), largest_wt=largest)

    def describe(self) -> str:
        """One line for humans: "none", "ET components < 50 mm^3 -> core, largest WT component"."""
        steps = []
        if self.min_et_volume > 0:
            steps.append(f"ET components < {self.min_et_volume:g} mm^3 -> core")
        if self.largest_wt:
            steps.append("largest WT component only")
        return ", ".join(steps) or "none"

    def __call__(self, classes: np.ndarray, spacing: Sequence[float],
                 scheme: LabelScheme) -> np.ndarray:
        """Applies the enabled steps to a (D, H, W) class map of ``scheme`` with voxel ``spacing``
        in mm."""
        out = classes
        if self.largest_wt:
            out = keep_largest_wt(out, scheme)
        if self.min_et_volume > 0 and scheme.enhancing is not None:
            out = remove_small_et(out, spacing, self.min_et_volume, scheme)
        return out


def remove_small_et(classes: np.ndarray, spacing: Sequence[float], min_volume: float,
                    scheme: LabelScheme) -> np.ndarray:
    """A copy of ``classes`` with each enhancing component smaller than ``min_volume`` mm^3 made the
    scheme's core class (NCR/NETC)."""
    et = classes == scheme.enhancing_class
    if not et.any():
        return classes.copy()
    comps, n = ndimage.label(et, structure=_CONNECTIVITY)
    sizes = np.bincount(comps.ravel(), minlength=n + 1) * float(np.prod(spacing))
    small = sizes < min_volume
    small[0] = False
    out = classes.copy()
    out[small[comps]] = scheme.core_class
    return out


def keep_largest_wt(classes: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """A copy of ``classes`` with tumour voxels outside the largest whole-tumour component cleared
    (the scheme's tumour classes; others, e.g. a resection cavity, are kept)."""
    wt = np.isin(classes, scheme.tumour_classes)
    comps, n = ndimage.label(wt, structure=_CONNECTIVITY)
    if n <= 1:
        return classes.copy()
    sizes = np.bincount(comps.ravel(), minlength=n + 1)
    sizes[0] = 0
    out = classes.copy()
    out[(comps != int(np.argmax(sizes))) & wt] = 0
    return out


# ----------------------------------------------------------------------------- chosen on validation
# ET thresholds tried (mm^3; 0 = off). nnU-Net's BraTS entries and other winners remove ET below a
# few hundred voxels (1 mm^3 each at BraTS's spacing); the grid spans specks to 500 mm^3.
ET_THRESHOLDS_MM3: tuple[float, ...] = (0.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0)
MARGIN = 1e-3  # a step must beat the simpler choice by more than this (mean score over cases)


def candidates(scheme: LabelScheme,
               thresholds: Sequence[float] = ET_THRESHOLDS_MM3) -> list[PostProcess]:
    """Every candidate, simplest first: no post-processing, then one step (smaller ET threshold
    first), then both. A scheme without an enhancing label has the largest-WT rule alone."""
    ets = sorted({0.0, *(float(t) for t in thresholds)}) if scheme.enhancing is not None else [0.0]
    out = [PostProcess(min_et_volume=t, largest_wt=w) for w in (False, True) for t in ets]
    return sorted(out, key=lambda p: (int(p.min_et_volume > 0) + int(p.largest_wt),
                                      p.min_et_volume, p.largest_wt))


@dataclass(frozen=True)
class PostProcessChoice:
    """The post-processing chosen on validation and what every candidate scored there.

    Attributes:
        postprocess: the choice.
        objective: "dice" or "lesionwise"; ``score`` is the mean over cases of ``<key>_mean``.
        labels: the label scheme's name.
        margin: the margin a step had to win by.
        cases: the validation case ids.
        table: per candidate (simplest first): ``min_et_volume_mm3``, ``largest_wt``, ``score``,
            the mean over cases of each region's score (``dice_WT``, ...), ``cases_changed`` (cases
            whose class map it changes) and ``chosen``.
    """

    postprocess: PostProcess
    objective: str
    labels: str
    margin: float
    cases: tuple[str, ...]
    table: tuple[dict[str, Any], ...]

    def _score(self, p: PostProcess) -> float:
        return next(r["score"] for r in self.table if PostProcess.from_dict(r) == p)

    @property
    def baseline_score(self) -> float:
        """The mean validation score without post-processing."""
        return self._score(PostProcess())

    @property
    def chosen_score(self) -> float:
        return self._score(self.postprocess)

    def to_dict(self) -> dict[str, Any]:
        return {"postprocess": self.postprocess.to_dict(), "chosen_on": "validation",
                "objective": self.objective, "score": f"mean over cases of "
                f"{OBJECTIVE_KEYS[self.objective]}_mean", "labels": self.labels,
                "margin": self.margin, "baseline_score": self.baseline_score,
                "chosen_score": self.chosen_score, "val_cases": list(self.cases),
                "candidates": [dict(r) for r in self.table]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PostProcessChoice:
        return cls(postprocess=PostProcess.from_dict(d["postprocess"]), objective=d["objective"],
                   labels=d["labels"], margin=float(d["margin"]), cases=tuple(d["val_cases"]),
                   table=tuple(d["candidates"]))


class Chooser:
    """Scores every candidate on validation cases given one at a time (:meth:`add`), then picks
    (:meth:`choose`). Identical class maps (a threshold that removes nothing) are scored once."""

    def __init__(self, scheme: LabelScheme, objective: str = "dice", *,
                 thresholds: Sequence[float] = ET_THRESHOLDS_MM3, margin: float = MARGIN) -> None:
        if objective not in OBJECTIVE_KEYS:
            raise ValueError(f"objective {objective!r}: must be one of {', '.join(OBJECTIVE_KEYS)}")
        if not margin >= 0:
            raise ValueError(f"margin={margin!r} must be >= 0")
        self.scheme, self.objective, self.margin = scheme, objective, float(margin)
        self.candidates = candidates(scheme, thresholds)
        self.key = OBJECTIVE_KEYS[objective]
        self.cases: list[str] = []
        self.rows: list[list[dict[str, float]]] = []  # per case, per candidate
        self.changed: list[list[bool]] = []
        self.present: list[list[frozenset[str]]] = []  # per case, per candidate: regions left
        self.predicted: list[frozenset[str]] = []  # per case: regions the model predicted

    def add(self, case_id: str, pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> None:
        """Scores each candidate's output of one case's predicted class map ``pred`` (D, H, W)
        against its reference classes ``ref``; ``spacing`` in mm."""
        spacing = tuple(float(s) for s in spacing)
        base = {False: pred}
        if any(c.largest_wt for c in self.candidates):
            base[True] = keep_largest_wt(pred, self.scheme)
        raw = _digest(pred)
        seen: dict[bytes, tuple[dict[str, float], frozenset[str]]] = {}
        rows, changed, present = [], [], []
        for c in self.candidates:
            out = base[c.largest_wt]
            if c.min_et_volume > 0:
                out = remove_small_et(out, spacing, c.min_et_volume, self.scheme)
            d = _digest(out)
            if d not in seen:
                seen[d] = (region_scores(out, ref, self.scheme, spacing=spacing,
                                         lesionwise=self.objective == "lesionwise", distances=False),
                           self._regions_in(out))
            rows.append(seen[d][0])
            present.append(seen[d][1])
            changed.append(d != raw)
        self.cases.append(case_id)
        self.rows.append(rows)
        self.changed.append(changed)
        self.present.append(present)
        self.predicted.append(self._regions_in(pred))

    def _regions_in(self, classes: np.ndarray) -> frozenset[str]:
        """The scheme's regions that ``classes`` is not empty in."""
        any_voxel = self.scheme.classes_to_regions(classes).reshape(-1, len(self.scheme.regions))
        return frozenset(r for r, hit in zip(self.scheme.regions, any_voxel.any(axis=0),
                                             strict=True) if hit)

    def _refusal(self, i: int) -> str:
        """Why candidate ``i`` may not be chosen over no post-processing ("" if it may): every
        rule of the module docstring it breaks, "; "-separated."""
        key = f"{self.key}_mean"
        gains = [case[i][key] - case[0][key] for case in self.rows]
        why = []
        for region in self.scheme.regions:
            had = [k for k, regions in enumerate(self.predicted) if region in regions]
            if had and not any(region in self.present[k][i] for k in had):
                why.append(f"removes {region} from every case it was predicted in ({len(had)})")
        up, down = sum(g > 0 for g in gains), sum(g < 0 for g in gains)
        if up <= down:
            why.append(f"improves {up} case(s), worsens {down}")
        if len(gains) < 2 or (sum(gains) - max(gains)) / (len(gains) - 1) <= 0:
            top = self.cases[int(np.argmax(gains))]
            why.append(f"its gain comes from one case ({top}); without it, none")
        if float(np.mean(gains)) <= self.margin:
            why.append(f"gains {float(np.mean(gains)):.4f}, not more than the margin "
                       f"{self.margin:g}")
        return "; ".join(why)

    def choose(self) -> PostProcessChoice:
        """Among the candidates :meth:`_refusal` allows, the simplest whose mean score is within
        ``margin`` of the best one's; no post-processing when none is allowed.

        Raises:
            ValueError: no case was added.
        """
        if not self.cases:
            raise ValueError("choosing a post-processing needs at least one validation case")
        names = [f"{self.key}_{r}" for r in self.scheme.regions] + [f"{self.key}_mean"]
        table = []
        for i, c in enumerate(self.candidates):
            means = {n: float(np.mean([case[i][n] for case in self.rows])) for n in names}
            gains = [case[i][names[-1]] - case[0][names[-1]] for case in self.rows]
            refused = self._refusal(i) if i else ""
            table.append({**c.to_dict(), "score": means[f"{self.key}_mean"], **means,
                          "cases_changed": int(sum(ch[i] for ch in self.changed)),
                          "cases_improved": int(sum(g > 0 for g in gains)),
                          "cases_worsened": int(sum(g < 0 for g in gains)),
                          "allowed": not refused, "refused": refused})
        best = max(r["score"] for r in table if r["allowed"])
        pick = next(i for i, r in enumerate(table)
                    if r["allowed"] and r["score"] >= best - self.margin)
        for i, r in enumerate(table):
            r["chosen"] = i == pick
        return PostProcessChoice(postprocess=self.candidates[pick], objective=self.objective,
                                 labels=self.scheme.name, margin=self.margin,
                                 cases=tuple(self.cases), table=tuple(table))


def _digest(classes: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(classes).tobytes(), digest_size=16).digest()


def choose_postprocess(cases: Iterable[tuple[str, np.ndarray, np.ndarray, Sequence[float]]],
                       scheme: LabelScheme, objective: str = "dice", *,
                       thresholds: Sequence[float] = ET_THRESHOLDS_MM3,
                       margin: float = MARGIN) -> PostProcessChoice:
    """The post-processing that scores best on validation (see :class:`Chooser`).

    Args:
        cases: ``(case_id, predicted classes, reference classes, spacing)`` per validation case,
            class maps (D, H, W) of ``scheme``'s training classes, spacing in mm.
        scheme: the label scheme.
        objective: "dice" (mean region Dice of the tumour regions) or "lesionwise" (mean
            lesion-wise Dice).
        thresholds: ET volumes (mm^3) to try; 0 is always tried.
        margin: how much a candidate must beat a simpler one by (mean score).

    Returns:
        The choice with the table of every candidate's mean scores.
    """
    chooser = Chooser(scheme, objective, thresholds=thresholds, margin=margin)
    for case_id, pred, ref, spacing in cases:
        chooser.add(case_id, pred, ref, spacing)
    return chooser.choose()


def read_saved(folder: str | Path) -> PostProcess | None:
    """The post-processing saved in an export folder's ``postprocess.json``; None without one (an
    export from before it was chosen, or one with no validation cases).

    Raises:
        ValueError: the file is unreadable or malformed (the message names it).
    """
    path = ExportFolder(folder).postprocess
    if not path.is_file():
        return None
    try:
        return PostProcess.from_dict(json.loads(path.read_text())["postprocess"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a valid post-processing choice ({e})") from None
