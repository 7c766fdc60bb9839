"""Load, validate and preprocess a case once into an on-disk cache; put predictions back on the grid.

Per case: read every NIfTI (nibabel) and check it (readable, 3-D or MSD 4-D, same shape and affine
across the case's files, finite voxels, label values from the layout's set); reorient to canonical
RAS; crop to the brain's bounding box (voxels where any modality is non-zero); z-score each modality
over the brain; map labels to the contiguous training classes. What is needed to undo the crop and
the reorientation is kept in the case's ``meta.json``.

Cache layout: ``<cache>/<case_id>/{image.npy (D,H,W,4) float32, label.npy (D,H,W) uint8,
fg.npy (K,3) int32 tumour voxel coordinates, meta.json}``. Arrays are plain .npy so training reads
them memory-mapped. ``meta.json`` is written last and removed first, so it marks a complete entry; it
records the source files' sizes and mtimes and this module's version, and a re-run reuses an entry
whose record still matches.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from unet3d.data.discover import MODALITIES, Case, DataError
from unet3d.io_utils import atomic_path, atomic_write_json
from unet3d.regions import lut

PREPROCESS_VERSION = 1
_RAS = nib.orientations.axcodes2ornt(("R", "A", "S"))
_MAX_FG_COORDS = 20000


@dataclass
class LoadedCase:
    """A case as read from disk, in its original voxel order.

    image: (X, Y, Z, 4) float32 in MODALITIES order; label: (X, Y, Z) uint8 raw file values or None.
    """

    case: Case
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    header: nib.Nifti1Header


def _read(path: Path, case_id: str) -> tuple[np.ndarray, np.ndarray, Any]:
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except FileNotFoundError:
        raise DataError(f"case {case_id}: {path}: file not found") from None
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"case {case_id}: {path}: unreadable or truncated NIfTI ({msg})") from None
    if not np.all(np.isfinite(img.affine)):
        raise DataError(f"case {case_id}: {path}: affine has non-finite values")
    return data, img.affine, img.header


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along each array axis: the lengths of the affine's first three columns."""
    return tuple(float(s) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


def read_label(path: Path, case_id: str, label_map: dict[int, int], layout: str,
               what: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """Reads a segmentation (a reference label or a prediction) and checks its values.

    Returns:
        (X, Y, Z) uint8 file label values and the file's affine.

    Raises:
        DataError: naming the case and file: unreadable/truncated, not 3-D, non-integer values, or
            values outside ``label_map`` (the layout's label set).
    """
    raw, affine, _ = _read(path, case_id)
    if raw.ndim == 4 and raw.shape[3] == 1:
        raw = raw[..., 0]
    if raw.ndim != 3:
        raise DataError(f"case {case_id}: {path}: expected a 3-D {what}, got shape {raw.shape}")
    if not np.all(np.isfinite(raw)) or not np.all(np.equal(np.mod(raw, 1), 0)):
        raise DataError(f"case {case_id}: {path}: {what} has non-integer values")
    values = set(np.unique(raw).astype(np.int64).tolist())
    allowed = set(label_map)
    if not values <= allowed:
        raise DataError(f"case {case_id}: {path}: {what} values {sorted(values - allowed)} are "
                        f"not allowed in the {layout} layout (allowed: {sorted(allowed)})")
    return raw.astype(np.uint8), np.asarray(affine, float)


def load_case(case: Case) -> LoadedCase:
    """Reads and validates every file of ``case``.

    Raises:
        DataError: naming the case and the file: unreadable/truncated, wrong dimensionality, shape or
            affine mismatch, NaN/inf voxels, or label values outside the layout's set.
    """
    cid = case.case_id
    channels: list[np.ndarray] = []
    ref_shape = ref_affine = header = None
    ref_file = None
    if case.image4d is not None:
        data, affine, header = _read(case.image4d, cid)
        if data.ndim != 4 or data.shape[3] != len(MODALITIES):
            raise DataError(f"case {cid}: {case.image4d}: expected a 4-D image with "
                            f"{len(MODALITIES)} modalities in the last axis, got shape {data.shape}")
        by_name = {name: data[..., i] for i, name in enumerate(case.channel_order)}
        channels = [by_name[m] for m in MODALITIES]
        ref_shape, ref_affine, ref_file = data.shape[:3], affine, case.image4d
    else:
        for m in MODALITIES:
            path = case.images[m]
            data, affine, hdr = _read(path, cid)
            if data.ndim == 4 and data.shape[3] == 1:
                data = data[..., 0]
            if data.ndim != 3:
                raise DataError(f"case {cid}: {path}: expected a 3-D image, got shape {data.shape}")
            if ref_shape is None:
                ref_shape, ref_affine, header, ref_file = data.shape, affine, hdr, path
            elif data.shape != ref_shape:
                raise DataError(f"case {cid}: {path}: shape {data.shape} differs from "
                                f"{ref_file.name}'s {ref_shape}")
            elif not np.allclose(affine, ref_affine, atol=1e-3):
                raise DataError(f"case {cid}: {path}: affine differs from {ref_file.name}'s "
                                f"(the modalities are not co-registered)")
            channels.append(data)
    for m, ch in zip(MODALITIES, channels, strict=True):
        if not np.all(np.isfinite(ch)):
            where = case.image4d or case.images[m]
            raise DataError(f"case {cid}: {where}: modality {m} has NaN or infinite voxels")
    image = np.stack([np.asarray(c, dtype=np.float32) for c in channels], axis=-1)

    label = None
    if case.label is not None:
        raw, affine = read_label(case.label, cid, case.label_map, case.layout)
        if raw.shape != tuple(ref_shape):
            raise DataError(f"case {cid}: {case.label}: label shape {raw.shape} differs from the "
                            f"image shape {tuple(ref_shape)}")
        if not np.allclose(affine, ref_affine, atol=1e-3):
            raise DataError(f"case {cid}: {case.label}: label affine differs from the image's")
        label = raw
    return LoadedCase(case=case, image=image, label=label, affine=np.asarray(ref_affine, float),
                      header=header)


def _bbox(mask: np.ndarray) -> tuple[list[int], list[int]]:
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    return [int(i[0]) for i in idx], [int(i[-1]) + 1 for i in idx]


def preprocess_loaded(lc: LoadedCase) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Canonical reorientation, brain crop, z-score, label mapping.

    Returns:
        image (D, H, W, 4) float32, label (D, H, W) uint8 training classes or None, and the meta
        dict needed to map a (D, H, W) prediction back with :func:`restore_to_original`.
    """
    cid = lc.case.case_id
    shape = lc.image.shape[:3]
    ornt = nib.orientations.io_orientation(lc.affine)
    to_ras = nib.orientations.ornt_transform(ornt, _RAS)
    image = nib.orientations.apply_orientation(lc.image, to_ras)
    label = nib.orientations.apply_orientation(lc.label, to_ras) if lc.label is not None else None
    ras_affine = lc.affine @ nib.orientations.inv_ornt_aff(to_ras, shape)
    spacing = spacing_of(ras_affine)
    ras_shape = [int(s) for s in image.shape[:3]]

    brain = np.any(image != 0, axis=-1)
    if not brain.any():
        raise DataError(f"case {cid}: {lc.case.files[0]}: every modality is zero everywhere")
    lo, hi = _bbox(brain)
    if label is not None and label.any():
        # Never crop tumour away: include labelled voxels that lie outside the intensity mask.
        llo, lhi = _bbox(label > 0)
        lo = [min(a, b) for a, b in zip(lo, llo, strict=True)]
        hi = [max(a, b) for a, b in zip(hi, lhi, strict=True)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    image = np.ascontiguousarray(image[sl], dtype=np.float32)
    brain = brain[sl]
    for c in range(image.shape[-1]):
        vals = image[..., c][brain]
        mean, std = float(vals.mean()), float(vals.std())
        ch = (image[..., c] - mean) / (std if std > 1e-8 else 1.0)
        ch[~brain] = 0.0
        image[..., c] = ch
    classes = None
    if label is not None:
        classes = lut(lc.case.label_map)[label[sl]]
    meta = {
        "case_id": cid,
        "layout": lc.case.layout,
        "original_shape": [int(s) for s in shape],
        "original_affine": lc.affine.tolist(),
        "orientation": ornt.tolist(),
        "bbox_lo": lo,
        "bbox_hi": hi,
        "ras_shape": ras_shape,
        "spacing": list(spacing),
        "shape": [int(s) for s in image.shape[:3]],
        "labelled": classes is not None,
    }
    return image, classes, meta


def restore_to_original(pred: np.ndarray, meta: dict[str, Any], fill: int = 0) -> np.ndarray:
    """Puts a (D, H, W[, ...]) array from the cropped canonical space back on the original grid.

    The crop is undone by padding with ``fill``, then the reorientation is inverted, so the result
    has the original voxel order and ``meta["original_shape"]`` (plus any trailing axes).
    """
    ras_shape = tuple(meta["ras_shape"])
    full = np.full(ras_shape + pred.shape[3:], fill, dtype=pred.dtype)
    sl = tuple(slice(a, b) for a, b in zip(meta["bbox_lo"], meta["bbox_hi"], strict=True))
    full[sl] = pred
    ornt = np.asarray(meta["orientation"])
    back = nib.orientations.ornt_transform(_RAS, ornt)
    out = nib.orientations.apply_orientation(full, back)
    if tuple(out.shape[:3]) != tuple(meta["original_shape"]):
        raise ValueError(f"restore_to_original: got {out.shape[:3]}, want {meta['original_shape']}")
    return np.ascontiguousarray(out)


def _fingerprint(case: Case) -> list[list[Any]]:
    out = []
    for f in case.files:
        st = os.stat(f)
        out.append([str(f), st.st_size, st.st_mtime_ns])
    return out


@dataclass(frozen=True)
class CachedCase:
    """A preprocessed case in the cache; arrays are opened memory-mapped on demand."""

    folder: Path
    meta: dict[str, Any]

    @property
    def case_id(self) -> str:
        return self.meta["case_id"]

    def image(self, mmap: bool = True) -> np.ndarray:
        return np.load(self.folder / "image.npy", mmap_mode="r" if mmap else None)

    def label(self, mmap: bool = True) -> np.ndarray | None:
        if not self.meta["labelled"]:
            return None
        return np.load(self.folder / "label.npy", mmap_mode="r" if mmap else None)

    def foreground(self) -> np.ndarray:
        return np.load(self.folder / "fg.npy")


def _valid_entry(folder: Path, case: Case) -> CachedCase | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("version") != PREPROCESS_VERSION or meta.get("sources") != _fingerprint(case):
        return None
    need = ["image.npy", "fg.npy"] + (["label.npy"] if meta.get("labelled") else [])
    if not all((folder / n).exists() for n in need):
        return None
    return CachedCase(folder, meta)


def prepare_case(case: Case, cache: Path) -> tuple[CachedCase, bool]:
    """Preprocesses ``case`` into ``cache`` unless a valid entry exists. Returns (entry, reused)."""
    folder = Path(cache) / case.case_id
    hit = _valid_entry(folder, case)
    if hit is not None:
        return hit, True
    (folder / "meta.json").unlink(missing_ok=True)  # the entry is incomplete until meta.json is back
    # Read and check before creating anything: a bad case adds no folder (nor the cache folder).
    image, classes, meta = preprocess_loaded(load_case(case))
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "image.npy", suffix=".npy") as tmp:
        np.save(tmp, image)
    if classes is not None:
        with atomic_path(folder / "label.npy", suffix=".npy") as tmp:
            np.save(tmp, classes)
        fg = np.argwhere(classes > 0).astype(np.int32)
    else:
        fg = np.zeros((0, 3), np.int32)
    if len(fg) > _MAX_FG_COORDS:
        fg = fg[np.random.default_rng(0).choice(len(fg), _MAX_FG_COORDS, replace=False)]
    with atomic_path(folder / "fg.npy", suffix=".npy") as tmp:
        np.save(tmp, fg)
    meta.update(version=PREPROCESS_VERSION, sources=_fingerprint(case))
    atomic_write_json(folder / "meta.json", meta)
    return CachedCase(folder, meta), False


def prepare(cases: Iterable[Case], cache: str | Path,
            progress: Callable[[Case, bool], None] | None = None) -> list[CachedCase]:
    """Preprocesses every case into ``cache`` (reusing valid entries), in the given order.

    ``cache`` is created with its first entry, so a dataset whose first case is bad leaves none
    behind. Entries written before a later case fails are complete and reused by the next run.

    Raises:
        DataError: naming the first case and file that cannot be read or breaks a rule.
    """
    cache = Path(cache)
    out = []
    for case in cases:
        entry, reused = prepare_case(case, cache)
        out.append(entry)
        if progress is not None:
            progress(case, reused)
    return out


def open_cases(cache: str | Path, ids: Sequence[str]) -> list[CachedCase]:
    """The cached cases with these IDs, in the given order (arrays stay on disk until read).

    Raises:
        DataError: naming the path, when a case folder or its meta.json is missing or unreadable.
    """
    out = []
    for cid in ids:
        folder = Path(cache) / cid
        if not folder.is_dir():
            raise DataError(f"{folder}: case {cid} is not in the cache (prepare the dataset first)")
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except FileNotFoundError:
            raise DataError(f"{folder / 'meta.json'}: not found; the cache entry of case {cid} "
                            f"is incomplete (prepare the dataset again)") from None
        except (OSError, json.JSONDecodeError) as e:
            msg = str(e).splitlines()[0]
            raise DataError(f"{folder / 'meta.json'}: unreadable ({msg})") from None
        out.append(CachedCase(folder, meta))
    return out
