"""Find cases in the public BraTS / MSD layouts.

Supported layouts (detected automatically):
  brats2019 / brats2020: ``<root>/HGG/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz`` and ``LGG/`` likewise
      (2020 ships all cases flat in one folder of ``BraTS20_Training_xxx`` case folders; both work).
  brats2021: ``<root>/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz`` (``BraTS2021_00000``...).
  msd: Medical Segmentation Decathlon Task01_BrainTumour: ``imagesTr/<id>.nii.gz`` 4-D with the
      modalities in the last axis (order from ``dataset.json``), ``labelsTr/<id>.nii.gz``,
      labels 0-3; ``imagesTs/`` cases are unlabelled.
A case folder without a ``_seg`` file is an unlabelled case (BraTS validation/test sets): allowed
for prediction, rejected for training.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from unet3d.errors import UserError
from unet3d.regions import BRATS_TO_CLASS, MSD_TO_CLASS

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
# MSD dataset.json modality names -> ours
_MSD_NAMES = {"flair": "flair", "t1w": "t1", "t1": "t1", "t1gd": "t1ce", "t1ce": "t1ce",
              "t2w": "t2", "t2": "t2"}
_NII = (".nii.gz", ".nii")


class DataError(UserError, ValueError):
    """Bad input data; the message names the case and file and says what is wrong."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One patient.

    Attributes:
        case_id: the patient/case ID (folder or file stem).
        images: modality -> file, for separate-file layouts; empty for MSD.
        image4d: the 4-D file for MSD (modalities in the last axis), else None.
        channel_order: for MSD, our modality name of each channel of ``image4d``.
        label: the segmentation file, or None for an unlabelled case.
        layout: the layout family: "brats" or "msd" (decides label values).
    """

    case_id: str
    images: dict[str, Path]
    label: Path | None
    layout: str
    image4d: Path | None = None
    channel_order: tuple[str, ...] = ()

    @property
    def label_map(self) -> dict[int, int]:
        return MSD_TO_CLASS if self.layout == "msd" else BRATS_TO_CLASS

    @property
    def files(self) -> list[Path]:
        fs = [self.image4d] if self.image4d else [self.images[m] for m in MODALITIES]
        return fs + ([self.label] if self.label else [])


@dataclasses.dataclass(frozen=True)
class Dataset:
    root: Path
    layout: str  # "brats2019", "brats2021", "msd"
    cases: tuple[Case, ...]

    @property
    def labelled(self) -> tuple[Case, ...]:
        return tuple(c for c in self.cases if c.label is not None)


def _strip_nii(name: str) -> str | None:
    for ext in _NII:
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


def _case_from_folder(folder: Path) -> Case | None:
    """A BraTS case folder ``<id>/<id>_<mod>.nii.gz``; None if the folder holds no NIfTI at all."""
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        stem = _strip_nii(f.name)
        if stem is None or "_" not in stem or f.name.startswith("."):  # "._x": macOS resource fork
            continue
        suffix = stem.rsplit("_", 1)[1].lower()
        if suffix == "segm":  # BraTS20_Training_355 ships its label as W39_1998.09.19_Segm.nii
            suffix = "seg"
        if suffix in MODALITIES or suffix == "seg":
            found[suffix] = f
    if not found:
        return None
    missing = [m for m in MODALITIES if m not in found]
    if missing:
        raise DataError(f"case {folder.name}: missing modality file(s) "
                        f"{', '.join(f'{folder.name}_{m}.nii.gz' for m in missing)} in {folder}")
    return Case(case_id=folder.name, images={m: found[m] for m in MODALITIES},
                label=found.get("seg"), layout="brats")


def _discover_msd(root: Path) -> Dataset:
    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
        names = [str(meta["modality"][str(i)]).lower() for i in range(len(meta["modality"]))]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{meta_path}: cannot read the modality list ({e})") from None
    order = []
    for n in names:
        if n not in _MSD_NAMES:
            raise DataError(f"{meta_path}: unknown modality {n!r}; expected FLAIR, T1w, t1gd, T2w")
        order.append(_MSD_NAMES[n])
    if sorted(order) != sorted(MODALITIES):
        raise DataError(f"{meta_path}: modalities {names} must be FLAIR, T1w, t1gd and T2w")
    cases = []
    for sub, labelled in (("imagesTr", True), ("imagesTs", False)):
        d = root / sub
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            stem = _strip_nii(f.name)
            if stem is None or f.name.startswith("._"):  # macOS resource forks ship in the MSD tar
                continue
            label = None
            if labelled:
                label = next((root / "labelsTr" / (stem + e) for e in _NII
                              if (root / "labelsTr" / (stem + e)).exists()), None)
                if label is None:
                    raise DataError(f"case {stem}: no label file labelsTr/{stem}.nii.gz for {f}")
            cases.append(Case(case_id=stem, images={}, label=label, layout="msd", image4d=f,
                              channel_order=tuple(order)))
    return Dataset(root=root, layout="msd", cases=tuple(cases))


def discover(root: str | Path) -> Dataset:
    """Finds every case under ``root`` in one of the supported layouts.

    Raises:
        DataError: the folder does not exist (or is a file), holds no case, or a case lacks a
            modality.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: is a file, not a dataset folder")
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist")
    if (root / "dataset.json").exists() and (root / "imagesTr").is_dir():
        ds = _discover_msd(root)
    else:
        layout = "brats2021"
        folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        grade_dirs = [p for p in folders if p.name in ("HGG", "LGG")]
        if grade_dirs:
            layout = "brats2019"
            folders = [c for g in grade_dirs for c in sorted(g.iterdir()) if c.is_dir()]
        cases = [c for c in (_case_from_folder(f) for f in folders) if c is not None]
        ids = [c.case_id for c in cases]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise DataError(f"{root}: case ID(s) {dup} appear more than once")
        ds = Dataset(root=root, layout=layout, cases=tuple(sorted(cases, key=lambda c: c.case_id)))
    if not ds.cases:
        raise DataError(f"{root}: no cases found (expected BraTS case folders <id>/<id>_t1.nii.gz ..., "
                        f"HGG/ and LGG/ folders, or an MSD folder with dataset.json and imagesTr/)")
    return ds


def discover_input(path: str | Path) -> tuple[Case, ...]:
    """The cases to predict: ``path`` is one BraTS case folder (``<id>_t1.nii.gz`` ... directly in
    it) or a dataset folder in any supported layout (labelled and unlabelled cases alike).

    Raises:
        DataError: the folder does not exist (or is a file: a single NIfTI is not a case), holds no
            case, or a case lacks a modality.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: is a file, not a case folder (its <id>_t1.nii.gz ... <id>_flair"
                        f".nii.gz files) or a dataset folder")
    if not path.is_dir():
        raise DataError(f"{path}: input folder does not exist")
    if not (path / "dataset.json").exists():
        case = _case_from_folder(path)
        if case is not None:
            return (case,)
    return discover(path).cases
