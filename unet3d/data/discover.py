"""Find cases in the public BraTS / MSD layouts.

Supported layouts (detected automatically; ``Dataset.layout``):
  brats2019 / brats2020: ``<root>/HGG/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz`` and ``LGG/`` likewise
      (2020 ships all cases flat in one folder of ``BraTS20_Training_xxx`` case folders, with
      ``name_mapping.csv`` beside them; both work).
  brats2021: ``<root>/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz`` (``BraTS2021_00000``...).
  brats2023: BraTS 2023 and later (GLI, SSA, MEN, MET, PED, GoAT, ...):
      ``<root>/BraTS-<TASK>-<n>-<n>/BraTS-<TASK>-<n>-<n>-{t1n,t1c,t2w,t2f,seg}.nii.gz``
      (t1n -> t1, t1c -> t1ce, t2w -> t2, t2f -> flair), e.g. ``BraTS-GLI-00000-000``. BraTS 2024
      MEN-RT has one modality and an underscore: ``BraTS-MEN-RT-0000-1/BraTS-MEN-RT-0000-1_t1c.nii.gz``
      with the label ``..._gtv.nii.gz``. ``Case.task`` / ``Dataset.task`` hold the TASK part
      ("GLI", "PED", "MEN-RT", ...); one dataset holds one task.
  msd: Medical Segmentation Decathlon Task01_BrainTumour: ``imagesTr/<id>.nii.gz`` 4-D with the
      modalities in the last axis (order from ``dataset.json``), ``labelsTr/<id>.nii.gz``,
      labels 0-3; ``imagesTs/`` cases are unlabelled.
A case folder without a label file is an unlabelled case (BraTS validation/test sets): allowed
for prediction, rejected for training. When the given folder holds no case, the challenge's unpacked
wrapper folders (``ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData/`` or
``training/ASNR-.../``) are searched, at most two levels down, for the one folder that does.
macOS debris (``._x`` files, ``__MACOSX/``, hidden folders) is ignored.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from unet3d.data.releases import (
    BRATS23_MODALITY,
    LABEL_SUFFIXES,
    MODALITIES,
    MSD_MODALITY,
    NIFTI_SUFFIXES,
    brats23_file,
    task_modalities,
)
from unet3d.errors import UserError

# BraTS 2023+ case folder: "BraTS-GLI-00000-000", "BraTS-MEN-RT-0000-1" (the task may be hyphenated).
_HYPHEN_CASE = re.compile(r"^BraTS-(?P<task>[A-Za-z]+(?:-[A-Za-z]+)?)(?:-\d+)+$")
_NESTED_DEPTH = 2  # how far below --data the challenge's wrapper folders are searched
_SKIP_DIRS = ("__MACOSX",)  # macOS zip debris: mirrors the tree with "._x" files


class DataError(UserError, ValueError):
    """Bad input data; the message names the case and file and says what is wrong."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One patient.

    Attributes:
        case_id: the patient/case ID (folder or file stem).
        images: modality -> file for the case's ``modalities``, for separate-file layouts; empty
            for MSD.
        label: the segmentation file, or None for an unlabelled case.
        layout: the layout family: "brats" (2019-2021 naming), "brats2023" (BraTS 2023+ naming) or
            "msd" (with the task and the label values, decides the label scheme: unet3d.labels).
        image4d: the 4-D file for MSD (modalities in the last axis), else None.
        channel_order: for MSD, our modality name of each channel of ``image4d``.
        modalities: the canonical modality names this case has, in :data:`MODALITIES` order
            (all four, or only ``("t1ce",)`` for BraTS MEN-RT).
        task: the BraTS 2023+ task prefix ("GLI", "PED", "MEN-RT", ...); None for older layouts.
    """

    case_id: str
    images: dict[str, Path]
    label: Path | None
    layout: str
    image4d: Path | None = None
    channel_order: tuple[str, ...] = ()
    modalities: tuple[str, ...] = MODALITIES
    task: str | None = None

    @property
    def files(self) -> list[Path]:
        fs = [self.image4d] if self.image4d else [self.images[m] for m in self.modalities]
        return fs + ([self.label] if self.label else [])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The cases of one dataset folder.

    Attributes:
        root: the folder the cases were found in (a wrapper folder's subfolder, if nested).
        layout: "brats2019", "brats2021", "brats2023" or "msd".
        cases: sorted by case ID (MSD: the imagesTr cases, then the imagesTs ones).
        task: the one BraTS 2023+ task of every case (None for older layouts); derived.
        modalities: the modalities every case has, in :data:`MODALITIES` order; derived.

    Raises:
        DataError: the cases mix tasks (their labels differ) or modality sets.
    """

    root: Path
    layout: str
    cases: tuple[Case, ...]
    task: str | None = dataclasses.field(init=False)
    modalities: tuple[str, ...] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", _shared(self.root, self.cases, "task"))
        object.__setattr__(self, "modalities",
                           _shared(self.root, self.cases, "modalities") or MODALITIES)

    @property
    def labelled(self) -> tuple[Case, ...]:
        return tuple(c for c in self.cases if c.label is not None)


def _shared(root: Path, cases: tuple[Case, ...], field: str):
    """The value of ``field`` all ``cases`` share (None without cases); DataError naming two case
    folders that differ, since one model cannot learn two label schemes / input sets at once."""
    if not cases:
        return None
    first = cases[0]
    other = next((c for c in cases if getattr(c, field) != getattr(first, field)), None)
    if other is None:
        return getattr(first, field)
    a, b = (_describe(c, field) for c in (first, other))
    what = "BraTS tasks, so their labels differ" if field == "task" else "modality sets"
    raise DataError(f"{root}: case folders {first.case_id} ({a}) and {other.case_id} ({b}) have "
                    f"different {what}; keep each task in a folder of its own")


def _describe(case: Case, field: str) -> str:
    if field == "modalities":
        return "+".join(case.modalities)
    return case.task or "BraTS 2019-2021 naming"


def _strip_nii(name: str) -> str | None:
    for ext in NIFTI_SUFFIXES:
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


def _nii_stems(folder: Path):
    """(stem, path) of each NIfTI file in ``folder``, sorted; "._x" (macOS resource forks) skipped."""
    for f in sorted(folder.iterdir()):
        stem = _strip_nii(f.name)
        if stem is not None and not f.name.startswith("."):
            yield stem, f


def _case_from_folder(folder: Path) -> Case | None:
    """A case folder of any BraTS naming; None if it holds no file of a case."""
    m = _HYPHEN_CASE.match(folder.name)
    if m is not None:
        return _brats23_case(folder, m.group("task"))
    return _legacy_case(folder)


def _legacy_case(folder: Path) -> Case | None:
    """A BraTS 2019-2021 case folder ``<id>/<id>_<mod>.nii.gz``; None if it holds no such file."""
    found: dict[str, Path] = {}
    for stem, f in _nii_stems(folder):
        if "_" not in stem:
            continue
        suffix = stem.rsplit("_", 1)[1].lower()
        if suffix == "segm":  # BraTS20_Training_355 ships its label as W39_1998.09.19_Segm.nii
            suffix = "seg"
        if suffix in MODALITIES or suffix == "seg":
            found[suffix] = f
    if not found:
        return None
    _check_complete(folder, found, MODALITIES, lambda m: f"{folder.name}_{m}.nii.gz")
    return Case(case_id=folder.name, images={m: found[m] for m in MODALITIES},
                label=found.get("seg"), layout="brats")


def _brats23_case(folder: Path, task: str) -> Case | None:
    """A BraTS 2023+ case folder ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz`` (MEN-RT:
    ``..._t1c.nii.gz``, label ``..._gtv``); None if it holds no such file."""
    found: dict[str, Path] = {}
    for stem, f in _nii_stems(folder):
        # Either separator: 2023 uses "-", 2024 MEN-RT "_"; only the last part names the file.
        suffix = re.split(r"[-_]", stem)[-1].lower()
        if suffix in LABEL_SUFFIXES:
            found["seg"] = f
        elif suffix in BRATS23_MODALITY:
            found[BRATS23_MODALITY[suffix]] = f
    if not found:
        return None
    mods = task_modalities(task)
    _check_complete(folder, found, mods, lambda m: brats23_file(folder.name, task, m))
    return Case(case_id=folder.name, images={m: found[m] for m in mods}, label=found.get("seg"),
                layout="brats2023", modalities=mods, task=task)


def _check_complete(folder: Path, found: dict[str, Path], mods: tuple[str, ...], name) -> None:
    """DataError naming the case and each missing file as that layout names it (``name(m)``)."""
    missing = [m for m in mods if m not in found]
    if missing:
        raise DataError(f"case {folder.name}: missing modality file(s) "
                        f"{', '.join(name(m) for m in missing)} in {folder}")


def _discover_msd(root: Path) -> Dataset:
    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
        names = [str(meta["modality"][str(i)]).lower() for i in range(len(meta["modality"]))]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{meta_path}: cannot read the modality list ({e})") from None
    order = []
    for n in names:
        if n not in MSD_MODALITY:
            raise DataError(f"{meta_path}: unknown modality {n!r}; expected FLAIR, T1w, t1gd, T2w")
        order.append(MSD_MODALITY[n])
    if sorted(order) != sorted(MODALITIES):
        raise DataError(f"{meta_path}: modalities {names} must be FLAIR, T1w, t1gd and T2w")
    cases = []
    for sub, labelled in (("imagesTr", True), ("imagesTs", False)):
        d = root / sub
        if not d.is_dir():
            continue
        for stem, f in _nii_stems(d):  # macOS resource forks ("._x") ship in the MSD tar
            label = None
            if labelled:
                label = next((root / "labelsTr" / (stem + e) for e in NIFTI_SUFFIXES
                              if (root / "labelsTr" / (stem + e)).exists()), None)
                if label is None:
                    raise DataError(f"case {stem}: no label file labelsTr/{stem}.nii.gz for {f}")
            cases.append(Case(case_id=stem, images={}, label=label, layout="msd", image4d=f,
                              channel_order=tuple(order)))
    return Dataset(root=root, layout="msd", cases=tuple(cases))


def _subfolders(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir())
            if p.is_dir() and not p.name.startswith(".") and p.name not in _SKIP_DIRS]


def _scan(root: Path) -> Dataset | None:
    """The cases directly in ``root`` (MSD, HGG/LGG or case folders); None if it holds none."""
    if (root / "dataset.json").exists() and (root / "imagesTr").is_dir():
        ds = _discover_msd(root)
        return ds if ds.cases else None
    folders = _subfolders(root)
    grade_dirs = [p for p in folders if p.name in ("HGG", "LGG")]
    if grade_dirs:
        folders = [c for g in grade_dirs for c in _subfolders(g)]
    cases = [c for c in (_case_from_folder(f) for f in folders) if c is not None]
    if not cases:
        return None
    ids = [c.case_id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataError(f"{root}: case ID(s) {dup} appear more than once")
    layout = ("brats2023" if cases[0].layout == "brats2023"
              else "brats2019" if grade_dirs else "brats2021")
    return Dataset(root=root, layout=layout, cases=tuple(sorted(cases, key=lambda c: c.case_id)))


def _scan_nested(root: Path) -> list[Dataset]:
    """Every dataset in the folders below ``root`` (at most :data:`_NESTED_DEPTH` levels; a folder
    that holds cases is not searched further): the challenge's archives unpack into wrapper
    folders such as ``ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData/``."""
    found: list[Dataset] = []
    level = [root]
    for _ in range(_NESTED_DEPTH):
        below = []
        for folder in (s for f in level for s in _subfolders(f)):
            ds = _scan(folder)
            if ds is not None:
                found.append(ds)
            else:
                below.append(folder)
        level = below
    return found


def discover(root: str | Path) -> Dataset:
    """Finds every case under ``root`` in one of the supported layouts.

    If ``root`` itself holds no case, the one folder up to two levels below it that does is used
    (``Dataset.root`` is then that folder).

    Raises:
        DataError: the folder does not exist (or is a file), holds no case, several folders below
            it hold cases, a case lacks a modality, case IDs repeat, or the cases mix BraTS tasks.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: is a file, not a dataset folder")
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist")
    ds = _scan(root)
    if ds is None:
        nested = _scan_nested(root)
        if len(nested) > 1:
            where = ", ".join(str(d.root) for d in nested)
            raise DataError(f"{root}: several folders in it hold cases; point --data at one of "
                            f"{where}")
        ds = nested[0] if nested else None
    if ds is None:
        raise DataError(f"{root}: no cases found (expected BraTS case folders <id>/<id>_t1.nii.gz ... "
                        f"(2019-2021) or BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz ... "
                        f"(2023+), HGG/ and LGG/ folders, or an MSD folder with dataset.json and "
                        f"imagesTr/, in it or up to {_NESTED_DEPTH} folders down)")
    return ds


def discover_input(path: str | Path) -> tuple[Case, ...]:
    """The cases to predict: ``path`` is one BraTS case folder (``<id>_t1.nii.gz`` ... or
    ``BraTS-GLI-00000-000-t1n.nii.gz`` ... directly in it) or a dataset folder in any supported
    layout (labelled and unlabelled cases alike).

    Raises:
        DataError: the folder does not exist (or is a file: a single NIfTI is not a case), holds no
            case, or a case lacks a modality.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: is a file, not a case folder (its <id>_t1.nii.gz ... <id>_flair"
                        f".nii.gz or BraTS-GLI-00000-000-t1n.nii.gz ... -t2f.nii.gz files) or a "
                        f"dataset folder")
    if not path.is_dir():
        raise DataError(f"{path}: input folder does not exist")
    if not (path / "dataset.json").exists():
        case = _case_from_folder(path)
        if case is not None:
            return (case,)
    return discover(path).cases
