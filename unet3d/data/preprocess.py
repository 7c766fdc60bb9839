"""Load, validate and preprocess a case once into an on-disk cache; put predictions back on the grid.

Per case: read every NIfTI (nibabel) and check it (readable, 3-D or MSD 4-D, same shape and affine
across the case's files, finite voxels, integer label values); reorient to canonical RAS; crop to the
brain's bounding box (voxels where any modality is non-zero); z-score each modality over the brain.
Labels are cached as the file's own values: what they mean is the label scheme's business
(:mod:`unet3d.labels`), applied when crops are drawn and cases scored, so one cache serves any
scheme, and the values each case holds (recorded in its ``meta.json``) let the scheme be detected
and checked without reading the files again (:func:`dataset_scheme`). What is needed to undo the
crop and the reorientation is kept in the case's ``meta.json`` too, and so are the inputs of the
dataset fingerprint (:mod:`unet3d.data.fingerprint`): each modality's intensity statistics over the
brain before normalisation and the voxel count of each label value.

Cache layout: ``<cache>/<case_id>/{image.npy (D,H,W,C) float16 (see CACHE_DTYPE), label.npy
(D,H,W) uint8 file label values, fg.npy (K,3) int32 coordinates of labelled (non-zero) voxels,
meta.json}``, ``<cache>/labels.json`` (the scheme the dataset was last used with) and
``<cache>/fingerprint.json`` (:mod:`unet3d.data.fingerprint`). Arrays are plain .npy so
training reads them memory-mapped. ``meta.json`` is written last and removed first, so it marks a
complete entry; it records the source files' sizes and mtimes and this module's version, and a
re-run reuses an entry whose record still matches.
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

from unet3d import labels as labels_mod
from unet3d.data.discover import Case, DataError, Dataset
from unet3d.data.releases import MODALITIES
from unet3d.io_utils import atomic_path, atomic_write_json
from unet3d.labels import LabelScheme

# 2: labels cached as file values (1 cached BraTS training classes); 3: float16 images, intensity
# statistics and label voxel counts in meta.json (the dataset fingerprint's inputs).
PREPROCESS_VERSION = 3
# Images are cached as float16: half the disk and page cache of float32 (55 -> 28 MB per BraTS case).
# z-scored intensities lie within about +-20, where float16 keeps 3 significant digits, far below the
# augmentation's own noise; crops and windows are cast back to float32 when read.
CACHE_DTYPE = np.float16
_PERCENTILES = (0.5, 50.0, 99.5)
_PERCENTILE_SAMPLE = 2**18
_RAS = nib.orientations.axcodes2ornt(("R", "A", "S"))
_MAX_FG_COORDS = 20000
# Processes only for work worth their start: a spawned worker costs about 0.3 CPU-s and half a
# second before it preprocesses anything (Python, NumPy, nibabel and this package imported again),
# about what one BraTS case takes. Below this many bytes of source files still to preprocess (about
# two gzipped BraTS cases) the cases are prepared here, one after the other (a cached dataset, or a
# few small cases: 8 of 32^3 took 0.09 CPU-s here against 0.75 with two workers).
PARALLEL_MIN_BYTES = 16 * 2**20


@dataclass
class LoadedCase:
    """A case as read from disk, in its original voxel order.

    image: (X, Y, Z, C) float32, the case's modalities in MODALITIES order; label: (X, Y, Z) uint8
    raw file values or None.
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


def read_label(path: Path, case_id: str, scheme: LabelScheme | None = None,
               what: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """Reads a segmentation (a reference label or a prediction) and checks its values.

    Returns:
        (X, Y, Z) uint8 file label values and the file's affine.

    Raises:
        DataError: naming the case and file: unreadable/truncated, not 3-D, non-integer values or
            values outside 0-255, or (given ``scheme``) values outside the scheme.
    """
    raw, affine, _ = _read(path, case_id)
    if raw.ndim == 4 and raw.shape[3] == 1:
        raw = raw[..., 0]
    if raw.ndim != 3:
        raise DataError(f"case {case_id}: {path}: expected a 3-D {what}, got shape {raw.shape}")
    if not np.all(np.isfinite(raw)) or not np.all(np.equal(np.mod(raw, 1), 0)):
        raise DataError(f"case {case_id}: {path}: {what} has non-integer values")
    values = set(np.unique(raw).astype(np.int64).tolist())
    if min(values) < 0 or max(values) > 255:
        raise DataError(f"case {case_id}: {path}: {what} values must lie in 0-255, got "
                        f"{min(values)}..{max(values)}")
    if scheme is not None:
        try:
            labels_mod.check_values(scheme, values, f"case {case_id}: {path}: {what}")
        except labels_mod.LabelError as e:
            raise DataError(str(e)) from None
    return raw.astype(np.uint8), np.asarray(affine, float)


def load_case(case: Case) -> LoadedCase:
    """Reads and validates every file of ``case``.

    Raises:
        DataError: naming the case and the file: unreadable/truncated, wrong dimensionality, shape or
            affine mismatch, NaN/inf voxels, or non-integer label values.
    """
    cid = case.case_id
    channels: list[np.ndarray] = []
    ref_shape = ref_affine = header = None
    ref_file = None
    if case.image4d is not None:
        data, affine, header = _read(case.image4d, cid)
        if data.ndim != 4 or data.shape[3] != len(case.channel_order):
            raise DataError(f"case {cid}: {case.image4d}: expected a 4-D image with "
                            f"{len(case.channel_order)} modalities in the last axis, got shape "
                            f"{data.shape}")
        by_name = {name: data[..., i] for i, name in enumerate(case.channel_order)}
        channels = [by_name[m] for m in case.modalities]
        ref_shape, ref_affine, ref_file = data.shape[:3], affine, case.image4d
    else:
        for m in case.modalities:
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
    for m, ch in zip(case.modalities, channels, strict=True):
        if not np.all(np.isfinite(ch)):
            where = case.image4d or case.images[m]
            raise DataError(f"case {cid}: {where}: modality {m} has NaN or infinite voxels")
    image = np.stack([np.asarray(c, dtype=np.float32) for c in channels], axis=-1)

    label = None
    if case.label is not None:
        raw, affine = read_label(case.label, cid)
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
    """Canonical reorientation, brain crop, z-score.

    Returns:
        image (D, H, W, C) float32, label (D, H, W) uint8 file label values or None, and the meta
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
    intensity = _zscore(image, brain, lc.case.modalities)
    classes = None if label is None else np.ascontiguousarray(label[sl], dtype=np.uint8)
    counts = {} if classes is None else {
        str(v): int(n) for v, n in enumerate(np.bincount(classes.ravel(), minlength=1)) if n}
    meta = {
        "case_id": cid,
        "layout": lc.case.layout,
        "task": lc.case.task,
        "modalities": list(lc.case.modalities),
        "label_file": str(lc.case.label) if lc.case.label is not None else None,
        "label_values": (sorted(int(v) for v in np.unique(lc.label))
                         if lc.label is not None else []),
        "original_shape": [int(s) for s in shape],
        "original_affine": lc.affine.tolist(),
        "orientation": ornt.tolist(),
        "bbox_lo": lo,
        "bbox_hi": hi,
        "ras_shape": ras_shape,
        "spacing": list(spacing),
        "shape": [int(s) for s in image.shape[:3]],
        "labelled": classes is not None,
        "brain_voxels": int(brain.sum()),
        "intensity": intensity,
        "label_voxels": counts,
    }
    return image, classes, meta


def _zscore(image: np.ndarray, brain: np.ndarray, modalities: Sequence[str]) -> dict[str, Any]:
    """Z-scores each channel of ``image`` in place over the ``brain`` mask (zero outside it);
    returns each modality's intensity statistics (the fingerprint's)."""
    intensity = {}
    for c, modality in enumerate(modalities):
        vals = image[..., c][brain]
        mean, std = float(vals.mean()), float(vals.std())
        # Percentiles of an evenly strided sample of at most ~260k voxels (nnU-Net samples too):
        # exact ones cost 0.3 s a BraTS case, a third of its preprocessing.
        sample = vals[:: max(1, vals.size // _PERCENTILE_SAMPLE)]
        lo_p, mid, hi_p = (float(v) for v in np.percentile(sample, _PERCENTILES))
        intensity[modality] = {"mean": mean, "std": std, "p00_5": lo_p, "p50": mid, "p99_5": hi_p}
        ch = (image[..., c] - mean) / (std if std > 1e-8 else 1.0)
        ch[~brain] = 0.0
        image[..., c] = ch
    return intensity


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
    # Absolute paths: an entry prepared through a relative --data (or by a Ray task, given absolute
    # paths) is the same entry.
    out = []
    for f in case.files:
        st = os.stat(f)
        out.append([str(Path(f).resolve()), st.st_size, st.st_mtime_ns])
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

    def classes(self, scheme: LabelScheme) -> np.ndarray | None:
        """(D, H, W) uint8 training classes of ``scheme`` (read whole), or None if unlabelled."""
        label = self.label(mmap=False)
        return None if label is None else scheme.to_classes(label)


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
        np.save(tmp, image.astype(CACHE_DTYPE))
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


def _to_prepare(cases: Sequence[Case], cache: Path,
                enough: int) -> tuple[int, dict[str, CachedCase]]:
    """The source files' bytes of the ``cases`` without a valid entry in ``cache`` (counted until
    ``enough``), and the valid entries found on the way (not checked again)."""
    total, hits = 0, {}
    for case in cases:
        try:
            hit = _valid_entry(cache / case.case_id, case)
            if hit is not None:
                hits[case.case_id] = hit
            else:
                total += sum(os.stat(f).st_size for f in case.files)
        except OSError:
            pass  # (prepare_case names the file, in the cases' order)
        if total >= enough:
            break
    return total, hits


def _prepare_one(args: tuple[Case, Path]) -> tuple[CachedCase, bool]:
    return prepare_case(*args)


# Maps a picklable function over a list of arguments and yields the results in order, raising the
# first failure in that order (e.g. a Ray cluster's tasks: search.ray_tasks.task_mapper).
Mapper = Callable[[Callable[[Any], Any], list[Any]], Iterable[Any]]


def prepare(cases: Iterable[Case], cache: str | Path,
            progress: Callable[[Case, bool], None] | None = None,
            check: Callable[[CachedCase], None] | None = None, jobs: int = 1,
            mapper: Mapper | None = None) -> list[CachedCase]:
    """Preprocesses every case into ``cache`` (reusing valid entries), in the given order.

    ``cache`` is created with its first entry, so a dataset whose first case is bad leaves none
    behind. Entries written before a later case fails are complete and reused by the next run.
    ``check`` sees each entry as soon as it is ready (and may raise to stop there). ``jobs`` > 1
    preprocesses the cases after the first in that many processes (spawned, as a caller may hold
    threads, e.g. Ray's; they never run the caller's main script: :mod:`unet3d.processes`) when
    those still to preprocess are worth it (:data:`PARALLEL_MIN_BYTES` of source files); results,
    checks and progress still come in order, and the first failure in that order is the one
    raised. ``mapper`` runs them elsewhere instead (e.g. as tasks on a cluster's nodes, writing
    into a cache on shared storage).

    Raises:
        DataError: naming the first case and file that cannot be read or breaks a rule.
    """
    from unet3d.processes import worker_pool

    cache, cases = Path(cache), list(cases)
    out: list[CachedCase] = []

    def take(case: Case, result: tuple[CachedCase, bool]) -> None:
        if check is not None:
            check(result[0])
        out.append(result[0])
        if progress is not None:
            progress(case, result[1])

    hits: dict[str, CachedCase] = {}
    if mapper is None and jobs > 1 and len(cases) > 2:
        todo, hits = _to_prepare(cases[1:], cache, PARALLEL_MIN_BYTES)
        jobs = jobs if todo >= PARALLEL_MIN_BYTES else 1
    if mapper is None and (jobs <= 1 or len(cases) <= 2):
        for case in cases:
            hit = hits.get(case.case_id)
            take(case, (hit, True) if hit is not None else prepare_case(case, cache))
        return out
    take(cases[0], prepare_case(cases[0], cache))  # (a bad first case: no cache folder at all)
    if mapper is not None:
        for case, result in zip(cases[1:], mapper(_prepare_one, [(c, cache) for c in cases[1:]]),
                                strict=True):
            take(case, result)
        return out
    with worker_pool(min(jobs, len(cases) - 1), f"preprocessing into {cache}") as pool:
        for case, result in zip(cases[1:], pool.map(_prepare_one, [(c, cache) for c in cases[1:]]),
                                strict=True):
            take(case, result)
    return out


@dataclass(frozen=True)
class PreparedDataset:
    """A dataset in the cache, with what training needs to know of it."""

    dataset: Dataset
    entries: list[CachedCase]
    scheme: LabelScheme
    channels: int  # modalities every case has: the model's input channels
    reused: int  # entries the cache already held


def prepare_dataset(dataset: Dataset, cache: str | Path,
                    labels: str | Path | LabelScheme | None = None,
                    progress: Callable[[Case, bool], None] | None = None,
                    jobs: int | None = None, mapper: Mapper | None = None) -> PreparedDataset:
    """Prepares every case (:func:`prepare`), then fixes the label scheme (:func:`dataset_scheme`)
    and the input channels. Label values are checked case by case as they are prepared, against
    ``labels`` when given, else against every value the layout's releases use, so a bad value stops
    at its case rather than after the whole dataset. ``jobs``: preprocessing processes (default: one
    per CPU core); ``mapper``: run them elsewhere (see :func:`prepare`).

    Raises:
        LabelError: an unknown or malformed ``labels``.
        DataError: naming the first bad case and file (values outside the scheme included).
    """
    fixed = labels_mod.resolve(labels) if labels is not None else None
    allowed = (fixed.values if fixed is not None
               else labels_mod.layout_values(dataset.layout, dataset.task))
    what = f"{fixed.name} scheme" if fixed is not None else f"{dataset.layout} layout's label values"

    def check(entry: CachedCase) -> None:
        try:
            labels_mod.check_allowed(entry.meta.get("label_values", []), allowed, what,
                                     f"case {entry.case_id}: {entry.meta['label_file']}")
        except labels_mod.LabelError as err:
            raise DataError(str(err)) from None

    reused: list[bool] = []

    def done(case: Case, was_reused: bool) -> None:
        reused.append(was_reused)
        if progress is not None:
            progress(case, was_reused)

    entries = prepare(dataset.cases, cache, done, check, jobs=jobs or os.cpu_count() or 1,
                      mapper=mapper)
    return PreparedDataset(dataset=dataset, entries=entries,
                           scheme=dataset_scheme(dataset, entries, fixed),
                           channels=dataset_channels(entries), reused=sum(reused))


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
        if meta.get("version") != PREPROCESS_VERSION:
            raise DataError(f"{folder / 'meta.json'}: case {cid} was prepared by an older version "
                            f"(its arrays are stored otherwise); prepare the dataset again")
        out.append(CachedCase(folder, meta))
    return out


def dataset_scheme(dataset: Dataset, entries: Sequence[CachedCase],
                   labels: str | Path | LabelScheme | None = None) -> LabelScheme:
    """The label scheme of a prepared dataset, checked against every labelled case.

    ``labels`` (a built-in name, a YAML file or a scheme) overrides detection; without it the
    scheme follows from the layout, the BraTS task and the label values the cases hold (see
    :func:`unet3d.labels.detect`). The scheme is recorded in ``<cache>/labels.json``.

    Raises:
        LabelError: an unknown or malformed ``labels``.
        DataError: a case whose label values lie outside the scheme (naming its label file).
    """
    scheme = (labels_mod.resolve(labels) if labels is not None else
              labels_mod.detect(dataset.layout, dataset.task,
                                {v for e in entries for v in e.meta.get("label_values", [])}))
    for e in entries:
        if e.meta.get("labelled"):
            try:
                labels_mod.check_values(scheme, e.meta["label_values"],
                                        f"case {e.case_id}: {e.meta['label_file']}")
            except labels_mod.LabelError as err:
                raise DataError(str(err)) from None
    if entries:
        atomic_write_json(entries[0].folder.parent / "labels.json", scheme.to_dict())
    return scheme


def dataset_channels(entries: Sequence[CachedCase]) -> int:
    """The number of modalities every prepared case has (the model's input channels).

    Raises:
        DataError: cases with different modalities (naming one of each).
    """
    seen: dict[tuple[str, ...], str] = {}
    for e in entries:
        seen.setdefault(tuple(e.meta.get("modalities", MODALITIES)), e.case_id)
    if len(seen) > 1:
        (a, ca), (b, cb) = list(seen.items())[:2]
        raise DataError(f"case {ca} has modalities {', '.join(a)} but case {cb} has {', '.join(b)}; "
                        f"a dataset's cases must share them")
    return len(next(iter(seen))) if seen else len(MODALITIES)
