"""The dataset fingerprint: what planning needs to know of a prepared dataset (nnU-Net's term).

Built from the cache: the brain boxes (cropped shapes), voxel spacings, intensity statistics per
modality before normalisation and label voxel counts come from each case's ``meta.json`` (written by
:mod:`unet3d.data.preprocess`); lesion volumes are counted in each case's ``label.npy`` with the
label scheme's regions (a lesion is a 26-connected component, as in the lesion-wise scores). The
result is kept in ``<cache>/fingerprint.json`` and reused while the cases and the scheme are the
same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from unet3d.data.preprocess import PREPROCESS_VERSION, CachedCase
from unet3d.evaluation.metrics import LESION_CONNECTIVITY
from unet3d.io_utils import atomic_write_json
from unet3d.labels import LabelScheme

FINGERPRINT = "fingerprint.json"
FINGERPRINT_VERSION = 1


def _spread(values: Sequence[Sequence[float]]) -> dict[str, list[float]]:
    a = np.asarray(values, dtype=float)
    return {"median": np.median(a, axis=0).tolist(), "min": a.min(axis=0).tolist(),
            "max": a.max(axis=0).tolist()}


def _intensity(metas: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per modality, over every case's brain voxels: mean and std (pooled, weighted by voxels),
    and the median over cases of the 0.5th, 50th and 99.5th percentiles."""
    out = {}
    for m in metas[0]["modalities"]:
        n = np.array([meta["brain_voxels"] for meta in metas], float)
        mean = np.array([meta["intensity"][m]["mean"] for meta in metas])
        std = np.array([meta["intensity"][m]["std"] for meta in metas])
        pooled = float(np.average(mean, weights=n))
        var = float(np.average(std**2 + mean**2, weights=n)) - pooled**2
        out[m] = {"mean": pooled, "std": float(np.sqrt(max(var, 0.0)))}
        for key in ("p00_5", "p50", "p99_5"):
            out[m][key] = float(np.median([meta["intensity"][m][key] for meta in metas]))
    return out


def _case_lesions(args: tuple[CachedCase, dict[str, tuple[int, ...]]]) -> dict[str, list[float]]:
    """One case's lesion volumes (mm^3) per region (a separate function: it runs in processes)."""
    entry, regions = args
    label = entry.label(mmap=True)
    voxel_mm3 = float(np.prod(entry.meta["spacing"]))
    out = {}
    for region, values in regions.items():
        lab, n = ndimage.label(np.isin(label, values), structure=LESION_CONNECTIVITY)
        sizes = np.bincount(lab.ravel())[1:] if n else np.zeros(0)
        out[region] = (sizes * voxel_mm3).tolist()
    return out


# Processes only for work worth their start (a worker's start costs about 0.3 CPU-s and half a
# second, what counting one or two BraTS cases takes; unet3d.data.preprocess.PARALLEL_MIN_BYTES
# likewise): the brain boxes' voxels to count, about four BraTS cases'.
PARALLEL_MIN_VOXELS = 16_000_000


def _lesion_volumes(entries: Sequence[CachedCase], regions: dict[str, tuple[int, ...]],
                    jobs: int) -> list[dict[str, list[float]]]:
    """Every case's lesion volumes, counted in ``jobs`` processes when there are
    PARALLEL_MIN_VOXELS to count (about 0.2 s per BraTS case)."""
    work = [(e, regions) for e in entries]
    voxels = sum(int(np.prod(e.meta["shape"])) for e in entries)
    if jobs <= 1 or len(work) <= 2 or voxels < PARALLEL_MIN_VOXELS:
        return [_case_lesions(w) for w in work]
    from unet3d.processes import worker_pool

    with worker_pool(jobs, "counting lesions for the fingerprint") as pool:
        return list(pool.map(_case_lesions, work, chunksize=8))


def _lesions(entries: Sequence[CachedCase], scheme: LabelScheme,
             jobs: int) -> dict[str, dict[str, Any]]:
    """Per region: the mean fraction of the brain it covers, and its lesions' volumes in mm^3
    (smallest, 5th percentile, median) and count per case (median)."""
    labelled = [e for e in entries if e.meta["labelled"]]
    regions = {r: tuple(v) for r, v in scheme.regions.items()}
    fractions: dict[str, list[float]] = {r: [] for r in regions}
    volumes: dict[str, list[float]] = {r: [] for r in regions}
    counts: dict[str, list[int]] = {r: [] for r in regions}
    for e, case in zip(labelled, _lesion_volumes(labelled, regions, jobs), strict=True):
        by_value = {int(v): n for v, n in e.meta["label_voxels"].items()}
        for region, values in regions.items():
            fractions[region].append(sum(by_value.get(v, 0) for v in values) / e.meta["brain_voxels"])
            volumes[region].extend(case[region])
            counts[region].append(len(case[region]))
    out = {}
    for region in scheme.regions:
        v = np.asarray(volumes[region], float)
        out[region] = {
            "volume_fraction": float(np.mean(fractions[region])) if fractions[region] else 0.0,
            "lesions_per_case": float(np.median(counts[region])) if counts[region] else 0.0,
            "smallest_mm3": float(v.min()) if v.size else None,
            "p05_mm3": float(np.percentile(v, 5)) if v.size else None,
            "median_mm3": float(np.median(v)) if v.size else None,
        }
    return out


def compute(entries: Sequence[CachedCase], scheme: LabelScheme, jobs: int = 1) -> dict[str, Any]:
    """The fingerprint of prepared cases (see the module docstring); lesions are counted in
    ``jobs`` processes.

    Returns:
        A JSON-ready dict: cases, labelled, layout, task, modalities, labels (scheme name),
        shape (the brain box after cropping, D/H/W: median, min, max), spacing (mm, same), voxels
        (brain-box voxels summed over cases), intensity (per modality), regions (per region: volume
        fraction of the brain, lesions per case, smallest / 5th percentile / median lesion in mm^3).

    Raises:
        ValueError: no entries.
    """
    if not entries:
        raise ValueError("fingerprint: no prepared cases")
    metas = [e.meta for e in entries]
    return {
        "version": FINGERPRINT_VERSION,
        "cases": len(entries),
        "labelled": sum(1 for m in metas if m["labelled"]),
        "layout": metas[0].get("layout"),
        "task": metas[0].get("task"),
        "modalities": list(metas[0]["modalities"]),
        "labels": scheme.name,
        "shape": _spread([m["shape"] for m in metas]),
        "spacing": _spread([m["spacing"] for m in metas]),
        "voxels": int(sum(int(np.prod(m["shape"])) for m in metas)),
        "intensity": _intensity(metas),
        "regions": _lesions(entries, scheme, jobs),
    }


def _key(entries: Sequence[CachedCase], scheme: LabelScheme) -> dict[str, Any]:
    # (through JSON, so that it compares equal to the key read back from the file)
    key = {"version": FINGERPRINT_VERSION, "preprocess": PREPROCESS_VERSION,
           "labels": scheme.to_dict(), "cases": [[e.case_id, e.meta.get("sources")] for e in entries]}
    return json.loads(json.dumps(key))


def load_or_compute(entries: Sequence[CachedCase], scheme: LabelScheme,
                    jobs: int | None = None) -> dict[str, Any]:
    """The fingerprint, from ``<cache>/fingerprint.json`` when it was computed for the same cases
    (same source files) and scheme, else computed (in ``jobs`` processes, default one per core)
    and kept there."""
    path = entries[0].folder.parent / FINGERPRINT if entries else None
    key = _key(entries, scheme)
    if path is not None and path.exists():
        try:
            kept = json.loads(path.read_text())
            if kept.get("key") == key and isinstance(kept.get("fingerprint"), dict):
                return kept["fingerprint"]
        except (OSError, json.JSONDecodeError, AttributeError):
            pass  # unreadable: computed again and replaced
    fp = compute(entries, scheme, jobs or os.cpu_count() or 1)
    atomic_write_json(Path(path), {"key": key, "fingerprint": fp})
    return fp


def describe(fp: dict[str, Any]) -> list[str]:
    """The fingerprint in lines (what `plan` prints): shapes, spacing, intensities, regions."""
    def shape(key: str, what: str, unit: str) -> str:
        s = fp[key]
        fmt = "x".join
        return (f"  {what:<18} median {fmt(f'{v:g}' for v in s['median'])}, min "
                f"{fmt(f'{v:g}' for v in s['min'])}, max {fmt(f'{v:g}' for v in s['max'])} {unit}")

    lines = [f"fingerprint: {fp['cases']} cases ({fp['labelled']} labelled), {fp['layout']} layout, "
             f"labels {fp['labels']}, modalities {' '.join(fp['modalities'])}",
             shape("shape", "brain box", "voxels"), shape("spacing", "voxel spacing", "mm")]
    for m, st in fp["intensity"].items():
        lines.append(f"  {'intensity ' + m:<18} mean {st['mean']:.4g} std {st['std']:.4g} "
                     f"(percentiles 0.5 / 50 / 99.5: {st['p00_5']:.4g} / {st['p50']:.4g} / "
                     f"{st['p99_5']:.4g})")
    for r, st in fp["regions"].items():
        small = "none" if st["smallest_mm3"] is None else (
            f"smallest {st['smallest_mm3']:.0f} mm^3, 5th percentile {st['p05_mm3']:.0f}, "
            f"median {st['median_mm3']:.0f}")
        lines.append(f"  {'region ' + r:<18} {100 * st['volume_fraction']:.2f}% of the brain, "
                     f"{st['lesions_per_case']:g} lesion(s) per case; lesions: {small}")
    return lines
