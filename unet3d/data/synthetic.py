"""A synthetic BraTS-like dataset written as real NIfTI files in the BraTS 2021 layout.

Each case: a brain-shaped ellipsoid with white matter, grey matter and ventricles, and a tumour of
nested sub-regions (edema 2 around a core; the core is an enhancing rim 4 around necrosis 1; about one
case in eight has no enhancing tumour, like a low-grade glioma). The four modalities have distinct,
roughly realistic contrasts (T1ce: bright enhancing rim; T2/FLAIR: bright edema), a smooth bias field
and noise, so a model has to learn from several channels. Deterministic for a given seed.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from unet3d.data.discover import MODALITIES
from unet3d.errors import OptionError
from unet3d.io_utils import atomic_path

# The smallest volume side that keeps every case a brain with a nested tumour. Measured over
# seeds: below 8 voxels some cases have no brain or no tumour at all (1^3 is all zero, which
# `prepare` rejects); from 8 to 13 some have edema without a core (5% of cases at 8, 1 in 6500
# at 12); at 14 and 16 none of 5000 seeds did. 16 also suits the model's downsampling.
MIN_SIZE = 16


def _int_at_least(v: object, low: int) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low


# Mean intensity per tissue, indexed by the tissue map's values: 0 background, 1 WM, 2 GM, 3 CSF,
# 4 edema, 5 enhancing, 6 necrosis.
_CONTRAST = {
    "t1":    (0.0, 0.90, 0.70, 0.30, 0.60, 0.65, 0.35),
    "t1ce":  (0.0, 0.90, 0.70, 0.30, 0.60, 1.60, 0.30),
    "t2":    (0.0, 0.50, 0.70, 1.50, 1.30, 1.00, 1.50),
    "flair": (0.0, 0.60, 0.70, 0.20, 1.40, 1.10, 0.80),
}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / (np.abs(n).max() + 1e-8)


def _blob(grid: list[np.ndarray], centre: np.ndarray, radii: np.ndarray, wobble: np.ndarray) -> np.ndarray:
    d = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
    return d + wobble < 1.0


def synth_case(shape: tuple[int, int, int], seed: int,
               brain_size: tuple[int, int, int] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One case: modality -> (X, Y, Z) int16 image, and (X, Y, Z) uint8 label with values 0/1/2/4.

    ``brain_size``: the brain's approximate extent in voxels (default: about 80% of ``shape``); a
    BraTS brain fills about 140 x 172 x 140 of its 240 x 240 x 155 volume.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    grid = list(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    size = np.array(shape, np.float32)
    centre = size / 2 + rng.uniform(-0.04, 0.04, 3) * size
    if brain_size is None:
        radii = size * rng.uniform(0.36, 0.44, 3)
    else:
        radii = np.array(brain_size, np.float32) / 2 * rng.uniform(0.97, 1.03, 3)
    sigma = max(2.0, min(shape) / 12)
    brain = _blob(grid, centre, radii, 0.15 * _smooth_noise(rng, shape, sigma))
    wm = _blob(grid, centre, radii * 0.7, 0.3 * _smooth_noise(rng, shape, sigma)) & brain
    csf = _blob(grid, centre, radii * np.array([0.12, 0.25, 0.15]), 0) & brain

    tissue = np.zeros(shape, np.uint8)
    tissue[brain] = 2
    tissue[wm] = 1
    tissue[csf] = 3

    # Tumour centre inside the brain, away from its edge.
    t_centre = centre + rng.uniform(-0.35, 0.35, 3) * radii
    edema_r = min(shape) * rng.uniform(0.14, 0.22) * rng.uniform(0.8, 1.2, 3)
    edema = _blob(grid, t_centre, edema_r, 0.5 * _smooth_noise(rng, shape, sigma / 2)) & brain
    core = _blob(grid, t_centre, edema_r * rng.uniform(0.45, 0.65),
                 0.4 * _smooth_noise(rng, shape, sigma / 2)) & edema
    ncr = _blob(grid, t_centre, edema_r * rng.uniform(0.2, 0.35),
                0.3 * _smooth_noise(rng, shape, sigma / 2)) & core
    low_grade = rng.uniform() < 0.125
    label = np.zeros(shape, np.uint8)
    label[edema] = 2
    if low_grade:
        label[core] = 1
        tissue[edema] = 4
        tissue[core] = 6
    else:
        label[core] = 4
        label[ncr] = 1
        tissue[edema] = 4
        tissue[core] = 5
        tissue[ncr] = 6

    bias = 1.0 + 0.15 * _smooth_noise(rng, shape, min(shape) / 4)
    images = {}
    for m in MODALITIES:
        means = np.array(_CONTRAST[m], np.float32) * rng.uniform(0.9, 1.1)
        img = means[tissue] * bias
        img = ndimage.gaussian_filter(img, 0.6)
        img += rng.normal(0.0, 0.05, shape).astype(np.float32) * brain
        img = np.where(brain, np.clip(img, 0.01, None), 0.0)
        images[m] = np.round(img * 1000).astype(np.int16)
    return images, label


def write_synthetic_dataset(out: str | Path, n_cases: int, shape: tuple[int, int, int] = (64, 64, 64),
                            seed: int = 0, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                            prefix: str = "BraTS2021",
                            progress: Callable[[int], None] | None = None,
                            brain_size: tuple[int, int, int] | None = None) -> list[Path]:
    """Writes ``n_cases`` cases as ``<out>/<prefix>_NNNNN/<prefix>_NNNNN_<mod>.nii.gz`` (+ ``_seg``).

    Each file is written to a temporary name and renamed, so an interrupted run leaves no partial
    file; an existing complete case folder is kept as it is.

    Raises:
        OptionError: naming the ``synth`` flag, before anything is written: ``n_cases`` < 1, a
            ``shape`` that is not three sizes >= :data:`MIN_SIZE`, or ``seed`` < 0.
    """
    out = Path(out)
    if not _int_at_least(n_cases, 1):
        raise OptionError(f"--cases {n_cases}: the number of cases must be at least 1")
    if len(shape) != 3 or not all(_int_at_least(s, MIN_SIZE) for s in shape):
        raise OptionError(f"--shape {' '.join(map(str, shape))}: must be three sizes >= {MIN_SIZE} "
                          f"voxels (smaller volumes lose the tumour's sub-regions)")
    if not _int_at_least(seed, 0):
        raise OptionError(f"--seed {seed}: must be an integer >= 0")
    affine = np.diag([*map(float, spacing), 1.0])
    folders = []
    for i in range(n_cases):
        cid = f"{prefix}_{i:05d}"
        folder = out / cid
        names = [folder / f"{cid}_{m}.nii.gz" for m in (*MODALITIES, "seg")]
        if not all(p.exists() for p in names):
            images, label = synth_case(shape, seed * 100003 + i, brain_size)
            for m, arr in (*images.items(), ("seg", label)):
                img = nib.Nifti1Image(arr, affine)
                img.header.set_xyzt_units("mm", "sec")
                with atomic_path(folder / f"{cid}_{m}.nii.gz", suffix=".nii.gz") as tmp:
                    nib.save(img, str(tmp))
        folders.append(folder)
        if progress is not None:
            progress(i)
    return folders
