"""Helpers for the data tests: write tiny NIfTI cases in the BraTS / MSD layouts (under tmp_path).

A plain module, not a conftest.py: a second conftest module would shadow tests/conftest.py for
``from conftest import run_cli``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

MODS = ("t1", "t1ce", "t2", "flair")
SHAPE = (16, 16, 16)


def write_nii(path: Path, arr: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))
    return path


def brain_mask(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """An ellipsoid that leaves a margin of background on every side."""
    g = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    c = [(s - 1) / 2 for s in shape]
    r = [s * 0.35 for s in shape]
    return sum(((x - ci) / ri) ** 2 for x, ci, ri in zip(g, c, r, strict=True)) <= 1.0


def brats_label(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """BraTS values 0/1/2/4 as nested boxes in the middle of the volume."""
    lab = np.zeros(shape, np.uint8)
    c = [s // 2 for s in shape]
    lab[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, c[2] - 3:c[2] + 3] = 2
    lab[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = 4
    lab[c[0] - 1:c[0] + 1, c[1] - 1:c[1] + 1, c[2] - 1:c[2] + 1] = 1
    return lab


def case_images(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> dict[str, np.ndarray]:
    """Per modality a float32 image: positive noise inside the brain, 0 outside."""
    rng = np.random.default_rng(seed)
    brain = brain_mask(shape)
    out = {}
    for i, m in enumerate(MODS):
        img = rng.uniform(100.0 * (i + 1), 100.0 * (i + 1) + 50.0, shape).astype(np.float32)
        out[m] = np.where(brain, img, 0).astype(np.float32)
    return out


def write_brats_case(root: Path, cid: str, *, seg: bool = True, shape: tuple[int, ...] = SHAPE,
                     affine: np.ndarray | None = None, seed: int = 0,
                     label: np.ndarray | None = None,
                     images: dict[str, np.ndarray] | None = None) -> dict[str, Path]:
    """Writes ``root/<cid>/<cid>_<mod>.nii.gz`` (+ ``_seg``); returns name -> path."""
    images = case_images(shape, seed) if images is None else images
    paths = {m: write_nii(root / cid / f"{cid}_{m}.nii.gz", images[m], affine) for m in MODS}
    if seg:
        lab = brats_label(shape) if label is None else label
        paths["seg"] = write_nii(root / cid / f"{cid}_seg.nii.gz", lab, affine)
    return paths


MSD_ORDER = ("flair", "t1", "t1ce", "t2")  # what dataset.json below says, channel by channel
# distinct constant per MSD channel: FLAIR 10, T1w 20, t1gd 30, T2w 40
MSD_CHANNEL_VALUE = {m: 10.0 * (i + 1) for i, m in enumerate(MSD_ORDER)}


def msd_label(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """MSD values: 1 edema, 2 non-enhancing, 3 enhancing as nested boxes."""
    lab = brats_label(shape)
    return np.select([lab == 2, lab == 1, lab == 4], [1, 2, 3], 0).astype(np.uint8)


def write_msd(root: Path, train_ids: list[str], test_ids: list[str] = (), *,
              shape: tuple[int, ...] = SHAPE) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({
        "name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor",
                   "3": "enhancing tumour"}}))
    brain = brain_mask(shape)
    img = np.stack([np.where(brain, MSD_CHANNEL_VALUE[m], 0.0) for m in MSD_ORDER],
                   axis=-1).astype(np.float32)
    for cid in train_ids:
        write_nii(root / "imagesTr" / f"{cid}.nii.gz", img)
        write_nii(root / "labelsTr" / f"{cid}.nii.gz", msd_label(shape))
    for cid in test_ids:
        write_nii(root / "imagesTs" / f"{cid}.nii.gz", img)
    return root

