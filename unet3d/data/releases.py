"""How each public release names its files: one table that discovery reads to find cases and the
synthetic writer reads to write them (a name changed here changes both, so the writer's data is
always what discovery accepts). The label values of each release: :mod:`unet3d.labels`
(:func:`unet3d.labels.detect`), its one home.

Releases:
  BraTS 2019-2021   ``BraTS2021_00000/BraTS2021_00000_t1ce.nii.gz``: the modality names as ours,
                    label ``_seg``.
  BraTS 2023+       ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1c.nii.gz``: per-modality suffixes
                    (:data:`BRATS23_SUFFIX`), label ``-seg``; the task (GLI, PED, MEN-RT, SSA, ...)
                    in the folder name. MEN-RT: the contrast-enhanced T1 alone, ``_`` between
                    name and suffix, label ``_gtv``.
  MSD Task01        ``imagesTr/BRATS_001.nii.gz`` (4-D, channels in :data:`MSD_CHANNELS` order)
                    and ``labelsTr/BRATS_001.nii.gz``, the channel names in ``dataset.json``.
"""

from __future__ import annotations

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
NIFTI_SUFFIXES = (".nii.gz", ".nii")

# BraTS 2023+: our modality name -> the release's file suffix.
BRATS23_SUFFIX: dict[str, str] = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
BRATS23_MODALITY: dict[str, str] = {s: m for m, s in BRATS23_SUFFIX.items()}
BRATS23_LABEL = "seg"
# Tasks that differ from the rest: their modalities, the separator before the file suffix, the
# label file's suffix. (MEN-RT ships only the contrast-enhanced T1; the GTV is contoured on it.)
TASKS: dict[str, dict[str, object]] = {
    "MEN-RT": {"modalities": ("t1ce",), "separator": "_", "label": "gtv"},
}
LABEL_SUFFIXES: tuple[str, ...] = (BRATS23_LABEL, *{str(t["label"]) for t in TASKS.values()})

# MSD Task01_BrainTumour: its dataset.json "modality" names in channel order -> ours.
MSD_CHANNELS: tuple[tuple[str, str], ...] = (("FLAIR", "flair"), ("T1w", "t1"), ("t1gd", "t1ce"),
                                             ("T2w", "t2"))
# (dataset.json files written by other tools use our names or drop the "w"; read case-insensitively)
MSD_MODALITY: dict[str, str] = {**{m: m for m in MODALITIES},
                                **{name.lower(): m for name, m in MSD_CHANNELS}}


def task_modalities(task: str) -> tuple[str, ...]:
    """The modalities every case of a BraTS 2023+ ``task`` has, in :data:`MODALITIES` order."""
    return tuple(TASKS.get(task.upper(), {}).get("modalities", MODALITIES))  # type: ignore[arg-type]


def brats23_file(case_id: str, task: str, key: str) -> str:
    """The file name of modality ``key`` (or "seg", the label) of BraTS 2023+ case ``case_id``."""
    spec = TASKS.get(task.upper(), {})
    sep = str(spec.get("separator", "-"))
    suffix = str(spec.get("label", BRATS23_LABEL)) if key == "seg" else BRATS23_SUFFIX[key]
    return f"{case_id}{sep}{suffix}.nii.gz"
