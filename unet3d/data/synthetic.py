"""A synthetic BraTS-like dataset written as real NIfTI files in the layout of a BraTS release or MSD.

Each case: a brain-shaped ellipsoid with white matter, grey matter and ventricles, and a tumour of
nested sub-regions (edema around a core; the core is an enhancing rim around necrosis; about one case
in eight has no enhancing tumour, like a low-grade glioma). The four modalities have distinct,
roughly realistic contrasts (T1ce: bright enhancing rim; T2/FLAIR: bright edema), a smooth bias field
and noise, so a model has to learn from several channels. Deterministic for a given seed.

Layouts (:data:`LAYOUTS`) and the label scheme (:mod:`unet3d.labels`) their values come from:

=============  ==============  ==================================================================
layout         scheme          extras
=============  ==============  ==================================================================
brats2021      brats-legacy    one lesion: NCR 1, ED 2, ET 4 (the default; unchanged since 2021)
brats2023      brats-2023      NETC, SNFH, ET; most cases have a second, separate lesion
brats2024      brats-2024-gli  as brats2023 + in about half the cases a resection cavity (RC)
brats2024-ped  brats-2024-ped  ET, NETC, ED + in about half the cases a T2-bright cyst (CC) in
                               the core; second lesions as brats2023
brats-men-rt   brats-men-rt    GTV = the tumour core, only the T1c image; second lesions
msd            msd             edema, non-enhancing, enhancing; second lesions; 4-D images
=============  ==============  ==================================================================

Label values are looked up by the scheme's label NAME for each tissue role, never written as numbers,
so the files always agree with the scheme :func:`unet3d.labels.detect` finds for them.

Difficulty levels (:data:`DIFFICULTIES`, ``synth --difficulty``), in every layout. medium and hard
start from the easy case of the same seed (brain, first tumour, the layout's extras) and add to it;
each lesion's core keeps the layout's labels (a rim is enhancing tumour, the rest necrosis /
non-enhancing core), the mimics stay background. Figures are :data:`_LEVELS`'s:

==========  ============================================  ============================================
            medium                                        hard
==========  ============================================  ============================================
lesions     0-2 more (25% of them a tiny all-core          1-3 more (40% tiny), as far as the brain
            nodule, radius 1-2 voxels)                     has room
cores       25% a 1-voxel enhancing rim around necrosis,   35% rim, 20% solid, 20% not enhancing
            15% solid enhancing, 10% not enhancing
contrast    tumour minus the tissue under it x s, s per    s per case U(0.2, 0.7), per modality
            case U(0.35, 0.85), per modality x U(0.6,      likewise, T1c's >= 0.45: in some cases and
            1.4), in [0.1, 1.2], T1c's >= 0.5 (easy: 1)    modalities barely above its surround
bias/noise  bias field +-30% (+-15% more per modality),    +-45% (+-22% per modality), noise sd
            noise sd 0.1 x U(0.7, 1.3) (easy: +-15%,       0.14 x U(0.7, 1.3)
            0.05)
mimics      2-5 white-matter hyperintensities (FLAIR/T2    4-10 spots, a vessel in 80%
            bright, radius 1-2) and in half the cases a
            T1c-bright vessel (a curved tube): label 0
voxels      isotropic                                      thick slices: the affine's last axis 2.5 x
                                                           the given spacing, and a wider slice
                                                           profile (blur sigma 1.2 voxels, not 0.6)
                                                           along it; the anatomy stays drawn in
                                                           voxels, so MIN_SIZE holds
==========  ============================================  ============================================
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# (nibabel and SciPy are imported in the functions that use them: the CLI's parser reads LAYOUTS and
# DIFFICULTIES from here, and every command builds it; at the top they were 0.37 of the 0.65 CPU-s
# that `run_search.py --help` took.)
from unet3d import labels
from unet3d.data.releases import MODALITIES, MSD_CHANNELS, brats23_file, task_modalities
from unet3d.errors import OptionError
from unet3d.io_utils import atomic_path, atomic_write_text

# The smallest volume side that keeps every case a brain with a nested tumour. Measured over
# seeds: below 8 voxels some cases have no brain or no tumour at all (1^3 is all zero, which
# `prepare` rejects); from 8 to 13 some have edema without a core (5% of cases at 8, 1 in 6500
# at 12); at 14 and 16 none of 5000 seeds did. 16 also suits the model's downsampling.
# The later layouts, measured at 16 over 2000 seeds each: every case still has a core and no lesion
# comes apart; of the 1356 cases drawn to have a second lesion, all but one got it, separate and
# with a core of its own (seed 564: a small brain filled by a large first tumour leaves no room); of
# the 1008 PED cases drawn to have a cyst, 3 have a core too small to hold one beside its necrosis
# and enhancing rim; all 1023 brats2024 cases drawn to have a cavity have it. At 20, 24 and 48
# (1000, 1000 and 200 seeds) nothing was missing. Those extras are "most" / "some" cases by design,
# so 16 stays the minimum. The medium and hard levels keep the first tumour's core (their rims,
# solid and non-enhancing cores relabel it, never empty it) and give an added lesion that has no
# core of its own a core of all of it. Measured in every layout over 300 seeds at 16 and 100 at 32
# per level: every case has a brain and a labelled core, only the scheme's values, and every
# lesion (26-connected component, cavities aside) a core; lesions per case at 16 / 32: brats2021
# medium 1.95 / 1.92, hard 2.93 / 2.91 (of 2 / 3 drawn: an added lesion rarely finds no room),
# the layouts with second lesions medium 2.59 / 2.54, hard 3.57 / 3.53.
MIN_SIZE = 16

LAYOUTS: tuple[str, ...] = ("brats2021", "brats2023", "brats2024", "brats2024-ped", "brats-men-rt",
                            "msd")
# layout -> (label scheme, tissue role -> that scheme's label name). Roles without a name (the
# edema of MEN-RT) stay background.
_ROLES: dict[str, tuple[str, dict[str, str]]] = {
    "brats2021": ("brats-legacy", {"necrosis": "NCR", "edema": "ED", "enhancing": "ET"}),
    "brats2023": ("brats-2023", {"necrosis": "NETC", "edema": "SNFH", "enhancing": "ET"}),
    "brats2024": ("brats-2024-gli", {"necrosis": "NETC", "edema": "SNFH", "enhancing": "ET",
                                     "cavity": "RC"}),
    "brats2024-ped": ("brats-2024-ped", {"enhancing": "ET", "necrosis": "NETC", "cyst": "CC",
                                         "edema": "ED"}),
    "brats-men-rt": ("brats-men-rt", {"necrosis": "GTV", "enhancing": "GTV"}),
    "msd": ("msd", {"edema": "edema", "necrosis": "non-enhancing", "enhancing": "enhancing"}),
}
# How often a case gets each extra, in the layouts that have it.
_P_SECOND_LESION = 2 / 3
_P_CAVITY = 0.5
_P_CYST = 0.5


def _int_at_least(v: object, low: int) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low


def _check_layout(layout: object) -> str:
    if layout not in LAYOUTS:
        raise OptionError(f"--layout {layout}: not one of {', '.join(LAYOUTS)}")
    return str(layout)


def scheme_of(layout: str) -> labels.LabelScheme:
    """The label scheme the files of ``layout`` are written in.

    Raises:
        OptionError: an unknown layout.
    """
    return labels.BUILTIN[_ROLES[_check_layout(layout)][0]]


def _role_values(layout: str) -> dict[str, int]:
    """Tissue role -> label value, looked up by the scheme's label names."""
    scheme = scheme_of(layout)
    by_name = {name: value for value, name in scheme.labels.items()}
    return {role: by_name[name] for role, name in _ROLES[layout][1].items()}


def modalities_of(layout: str) -> tuple[str, ...]:
    """The modalities a case of ``layout`` has (MEN-RT: only T1c), in MODALITIES order."""
    return task_modalities("MEN-RT") if _check_layout(layout) == "brats-men-rt" else MODALITIES


# Mean intensity per tissue, indexed by the tissue map's values: 0 background, 1 WM, 2 GM, 3 CSF
# (and resection cavities), 4 edema, 5 enhancing, 6 necrosis, 7 cyst (fluid: bright on T2, dark on
# T1, no enhancement). Index 7 was appended: the others' values, so brats2021 cases, are unchanged.
_CONTRAST = {
    "t1":    (0.0, 0.90, 0.70, 0.30, 0.60, 0.65, 0.35, 0.25),
    "t1ce":  (0.0, 0.90, 0.70, 0.30, 0.60, 1.60, 0.30, 0.25),
    "t2":    (0.0, 0.50, 0.70, 1.50, 1.30, 1.00, 1.50, 1.80),
    "flair": (0.0, 0.60, 0.70, 0.20, 1.40, 1.10, 0.80, 0.60),
}
_EDEMA, _ENHANCING, _NECROSIS, _CYST, _CSF = 4, 5, 6, 7, 3
# The unlabelled mimics of the medium and hard levels, appended likewise: 8 a white-matter
# hyperintensity (FLAIR/T2-bright, a little dark on T1, no enhancement), 9 a vessel (T1c-bright,
# dark on T2/FLAIR: flow void).
_MIMIC_CONTRAST = {"t1": (0.75, 0.70), "t1ce": (0.75, 1.80), "t2": (1.30, 0.40), "flair": (1.40, 0.40)}
_CONTRAST = {m: (*c, *_MIMIC_CONTRAST[m]) for m, c in _CONTRAST.items()}
_WMH, _VESSEL = 8, 9


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    from scipy import ndimage
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / (np.abs(n).max() + 1e-8)


def _blob(grid: list[np.ndarray], centre: np.ndarray, radii: np.ndarray, wobble: np.ndarray) -> np.ndarray:
    d = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
    return d + wobble < 1.0


def _anatomy(rng: np.random.Generator, grid: list[np.ndarray], shape: tuple[int, ...],
             brain_size: tuple[int, int, int] | None):
    """Brain mask, tissue map (WM 1, GM 2, CSF 3), the brain's centre and radii, noise sigma."""
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
    return brain, tissue, centre, radii, sigma


def _lesion(rng: np.random.Generator, grid: list[np.ndarray], centre: np.ndarray,
            edema_r: np.ndarray, sigma: float, allowed: np.ndarray):
    """Nested (edema, core, necrosis) masks of one tumour around ``centre``, inside ``allowed``."""
    shape = allowed.shape
    edema = _blob(grid, centre, edema_r, 0.5 * _smooth_noise(rng, shape, sigma / 2)) & allowed
    core = _blob(grid, centre, edema_r * rng.uniform(0.45, 0.65),
                 0.4 * _smooth_noise(rng, shape, sigma / 2)) & edema
    ncr = _blob(grid, centre, edema_r * rng.uniform(0.2, 0.35),
                0.3 * _smooth_noise(rng, shape, sigma / 2)) & core
    return edema, core, ncr


def _pick_voxel(rng: np.random.Generator, ok: np.ndarray) -> np.ndarray | None:
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return None
    return np.array(np.unravel_index(idx[rng.integers(idx.size)], ok.shape), np.float32)


def _second_lesion(rng: np.random.Generator, grid: list[np.ndarray], first: np.ndarray,
                   brain: np.ndarray, edema_r: np.ndarray, sigma: float):
    """A smaller tumour elsewhere in the brain that does not touch ``first`` (26-connectivity), so
    connected components see two lesions; None when the brain has no room for it."""
    r = np.maximum(edema_r * rng.uniform(0.5, 0.75), 2.0)
    return _place_lesion(rng, grid, first, brain, r, sigma)


def _place_lesion(rng: np.random.Generator, grid: list[np.ndarray], first: np.ndarray,
                  brain: np.ndarray, r: np.ndarray, sigma: float):
    """A tumour of edema radii ``r`` somewhere in the brain, clear of ``first``; or None."""
    from scipy import ndimage
    # The blob's wobble reaches ~1.25 radii; its centre also stays a voxel or two inside the brain.
    far, inner = ndimage.distance_transform_edt(~first), ndimage.distance_transform_edt(brain)
    centre = _pick_voxel(rng, brain & (far > 1.25 * r.max() + 2) & (inner > 2))
    if centre is None:  # small volumes: any voxel with a gap of a voxel or more around ``first``
        centre = _pick_voxel(rng, brain & (far >= 3) & (inner > 1))
    if centre is None:
        return None
    # Kept a voxel clear of ``first``. Measured: the masked lesion stayed one component (and its
    # core one) in every case of 3000 seeds at 16, 1000 at 32 and 150 at 64.
    gap = ndimage.binary_dilation(first, structure=np.ones((3, 3, 3)))
    return _lesion(rng, grid, centre, r, sigma, brain & ~gap)


def _cavity(rng: np.random.Generator, grid: list[np.ndarray], first: np.ndarray,
            tumour: np.ndarray, brain: np.ndarray, edema_r: np.ndarray, sigma: float):
    """A CSF-like resection cavity next to the ``first`` lesion, outside every tumour; or None."""
    from scipy import ndimage
    far, inner = ndimage.distance_transform_edt(~first), ndimage.distance_transform_edt(brain)
    centre = _pick_voxel(rng, brain & ~tumour & (far > 1) & (far <= 2.5) & (inner > 1))
    if centre is None:
        return None
    r = np.maximum(edema_r.mean() * rng.uniform(0.4, 0.6), 1.5) * rng.uniform(0.8, 1.2, 3)
    wobble = 0.3 * _smooth_noise(rng, brain.shape, sigma / 2)
    return _blob(grid, centre, r, wobble) & brain & ~tumour


def _cyst(rng: np.random.Generator, grid: list[np.ndarray], core: np.ndarray, ncr: np.ndarray):
    """A cyst in the tumour ``core``: 40% of its non-necrotic part, on one side along a random
    direction. It spares the necrosis ``ncr`` and the rest of that part, so every label the core
    had survives; None if the core is too small for that."""
    shell = core & ~ncr
    if shell.sum() < 2:
        return None
    u = rng.standard_normal(3)
    proj = sum(g * c for g, c in zip(grid, u / np.linalg.norm(u), strict=True))
    cyst = shell & (proj > np.quantile(proj[shell], 0.6))
    return cyst if cyst.any() and (shell & ~cyst).any() else None


def _extras(rng: np.random.Generator, layout: str, grid: list[np.ndarray], lesions: list,
            brain: np.ndarray, edema_r: np.ndarray, sigma: float,
            cavity_wanted: bool | None = None) -> dict:
    """Adds a second lesion to ``lesions`` (most cases) and returns the cavity / cyst masks the
    layout's scheme has a label for, each in some cases (``cavity_wanted`` decides the cavity)."""
    roles = _ROLES[layout][1]
    # Every decision is drawn first, so one case's choices do not depend on its geometry.
    two, cavity, cyst = rng.uniform(size=3) < (_P_SECOND_LESION, _P_CAVITY, _P_CYST)
    if cavity_wanted is not None:
        cavity = cavity_wanted
    first = lesions[0][0]
    if two:
        second = _second_lesion(rng, grid, first, brain, edema_r, sigma)
        if second is not None:
            lesions.append(second)
    out = {}
    if cavity and "cavity" in roles:
        tumour = np.any([edema for edema, _, _ in lesions], axis=0)
        out["cavity"] = _cavity(rng, grid, first, tumour, brain, edema_r, sigma)
    if cyst and "cyst" in roles:
        out["cyst"] = _cyst(rng, grid, lesions[0][1], lesions[0][2])
    return {k: v for k, v in out.items() if v is not None}


def _paint(tissue: np.ndarray, lesions: list, low_grade: bool, extras: dict,
           values: dict[str, int]) -> np.ndarray:
    """Paints each lesion (and the extras) into ``tissue`` and returns the label map."""
    label = np.zeros(tissue.shape, np.uint8)
    for edema, core, ncr in lesions:
        label[edema] = values.get("edema", 0)
        tissue[edema] = _EDEMA
        if low_grade:  # no enhancing tumour: the whole core is necrosis / non-enhancing
            label[core] = values["necrosis"]
            tissue[core] = _NECROSIS
        else:
            label[core] = values["enhancing"]
            label[ncr] = values["necrosis"]
            tissue[core] = _ENHANCING
            tissue[ncr] = _NECROSIS
    for role, tissue_value in (("cyst", _CYST), ("cavity", _CSF)):
        if role in extras:
            label[extras[role]] = values[role]
            tissue[extras[role]] = tissue_value
    return label


# -- difficulty levels -----------------------------------------------------------------------------
DIFFICULTIES: tuple[str, ...] = ("easy", "medium", "hard")


@dataclass(frozen=True)
class _Level:
    """What a difficulty level adds to the easy case (see the module docstring's table)."""

    more_lesions: tuple[int, int]  # lesions added beyond the layout's, low..high inclusive
    p_tiny: float                  # an added lesion is a tiny nodule (radius 1-2 voxels)
    p_rim: float                   # a lesion's enhancing tumour is a 1-voxel rim around necrosis
    p_solid: float                 # ... has no necrosis (solid enhancing core)
    p_no_enh: float                # ... has no enhancement (all necrosis / non-enhancing core)
    contrast: tuple[float, float]  # the case's tumour contrast scale (easy: 1), then per modality
                                   # x U(0.6, 1.4), clipped to [0.1, 1.2]
    enhancement: float             # T1c's scale at least this: enhancing tumour stays visible
    bias: float                    # bias field amplitude, shared + half of it per modality (easy 0.15)
    noise: float                   # noise sd, x U(0.7, 1.3) per case (easy 0.05)
    wmh: tuple[int, int]           # unlabelled FLAIR/T2-bright spots, low..high
    p_vessel: float                # an unlabelled T1c-bright tube
    thick: float                   # the last axis' voxel size as a multiple of the others


_LEVELS: dict[str, _Level] = {
    "medium": _Level(more_lesions=(0, 2), p_tiny=0.25, p_rim=0.25, p_solid=0.15, p_no_enh=0.1,
                     contrast=(0.35, 0.85), enhancement=0.5, bias=0.3, noise=0.1, wmh=(2, 5),
                     p_vessel=0.5, thick=1.0),
    "hard": _Level(more_lesions=(1, 3), p_tiny=0.4, p_rim=0.35, p_solid=0.2, p_no_enh=0.2,
                   contrast=(0.2, 0.7), enhancement=0.45, bias=0.45, noise=0.14, wmh=(4, 10),
                   p_vessel=0.8, thick=2.5),
}
_MAX_MORE = 3


def _check_difficulty(difficulty: object) -> str:
    if difficulty not in DIFFICULTIES:
        raise OptionError(f"--difficulty {difficulty}: not one of {', '.join(DIFFICULTIES)}")
    return str(difficulty)


def written_spacing(spacing: tuple[float, float, float],
                    difficulty: str = "easy") -> tuple[float, float, float]:
    """The voxel size the files of ``difficulty`` get for ``spacing``: hard has thick slices (the
    last axis ``thick`` times the given size); easy and medium write ``spacing`` as given."""
    level = _LEVELS.get(_check_difficulty(difficulty))
    thick = 1.0 if level is None else level.thick
    return (float(spacing[0]), float(spacing[1]), float(spacing[2]) * thick)


def _more_lesions(rng: np.random.Generator, level: _Level, grid: list[np.ndarray], lesions: list,
                  brain: np.ndarray, taken: np.ndarray, edema_r: np.ndarray, sigma: float) -> None:
    """Appends ``level``'s extra lesions to ``lesions``, each clear of every tumour and of
    ``taken`` (a cavity); a tiny one is a nodule that is all core (no edema)."""
    n = int(rng.integers(level.more_lesions[0], level.more_lesions[1] + 1))
    tiny = rng.uniform(size=_MAX_MORE) < level.p_tiny
    scale = rng.uniform(0.35, 0.7, _MAX_MORE)
    for k in range(n):
        occupied = taken | np.any([edema for edema, _, _ in lesions], axis=0)
        if tiny[k]:
            r = rng.uniform(1.0, 2.0) * rng.uniform(0.8, 1.2, 3)
        else:
            r = np.maximum(edema_r * scale[k], 2.0)
        lesion = _place_lesion(rng, grid, occupied, brain, r, sigma)
        if lesion is None or lesion[0].sum() < 3:
            continue
        edema, core, ncr = lesion
        if tiny[k] or not core.any():
            core, ncr = edema, np.zeros_like(edema)
        lesions.append((edema, core, ncr))


def _vary_cores(rng: np.random.Generator, level: _Level, lesions: list, keep_first: bool) -> list:
    """Each lesion's core drawn as usual, a thin enhancing rim (1 voxel) around necrosis, solid
    enhancing (no necrosis) or not enhancing at all; ``keep_first`` spares the first (its cyst)."""
    from scipy import ndimage
    u = rng.uniform(size=len(lesions))
    out = []
    for i, (edema, core, ncr) in enumerate(lesions):
        if not (keep_first and i == 0):
            if u[i] < level.p_rim:
                inner = ndimage.binary_erosion(core)  # 6-connected: the rim is one voxel thick
                ncr = inner if inner.any() else ncr
            elif u[i] < level.p_rim + level.p_solid:
                ncr = np.zeros_like(core)
            elif u[i] < level.p_rim + level.p_solid + level.p_no_enh:
                ncr = core  # painted over the enhancing tumour: no enhancement left
        out.append((edema, core, ncr))
    return out


def _tube(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A thin, gently curved tube through the volume (a vessel), as a mask."""
    from scipy import ndimage
    size = np.array(shape, np.float32)
    start = size * rng.uniform(0.25, 0.75, 3)
    d, n = rng.standard_normal(3), rng.standard_normal(3)
    d /= np.linalg.norm(d)
    n -= d * (n @ d)
    n /= np.linalg.norm(n) + 1e-8
    t = np.linspace(-1.0, 1.0, int(4 * size.max()))[:, None] * size.max() * 0.5
    bend = 0.1 * size.max() * np.sin(t / size.max() * rng.uniform(2, 6) + rng.uniform(0, 6.3))
    pts = np.round(start + t * d + bend * n).astype(int)
    pts = pts[np.all((pts >= 0) & (pts < np.array(shape)), axis=1)]
    line = np.zeros(shape, bool)
    line[tuple(pts.T)] = True
    return ndimage.distance_transform_edt(~line) <= rng.uniform(1.0, 1.6)


def _mimics(rng: np.random.Generator, level: _Level, grid: list[np.ndarray], tissue: np.ndarray,
            brain: np.ndarray) -> None:
    """Paints unlabelled mimics into ``tissue``, two voxels or more from any tumour or extra:
    small white-matter hyperintensities and (some cases) a vessel."""
    from scipy import ndimage
    n = int(rng.integers(level.wmh[0], level.wmh[1] + 1))
    vessel = rng.uniform() < level.p_vessel
    far = ndimage.distance_transform_edt(tissue < _CSF) > 2
    ok = far & brain
    for _ in range(n):
        centre = _pick_voxel(rng, ok & (tissue == 1))  # in the white matter, as WMH are
        if centre is None:
            break
        r = rng.uniform(0.7, 1.8) * rng.uniform(0.8, 1.2, 3)
        tissue[_blob(grid, centre, r, 0) & ok] = _WMH
    if vessel:
        tissue[_tube(rng, tissue.shape) & ok & (tissue != _WMH)] = _VESSEL


def _level_images(rng: np.random.Generator, level: _Level, tissue: np.ndarray, anat: np.ndarray,
                  brain: np.ndarray, modalities: tuple[str, ...]) -> dict[str, np.ndarray]:
    """As :func:`_images`, at ``level``: the tumour's (and the mimics') contrast against the normal
    tissue ``anat`` under it scaled per case and modality, stronger bias field and noise, and a
    wider slice profile along the thick last axis."""
    from scipy import ndimage
    shape = tissue.shape
    smooth = min(shape) / 4
    bias = 1.0 + level.bias * _smooth_noise(rng, shape, smooth)
    case_scale, mimic_scale = rng.uniform(*level.contrast), rng.uniform(0.6, 1.0)
    noise = level.noise * rng.uniform(0.7, 1.3)
    tumour = np.isin(tissue, (_EDEMA, _ENHANCING, _NECROSIS))
    mimic = tissue >= _WMH
    blur = (0.6, 0.6, 0.6 + 0.4 * (level.thick - 1.0))
    images = {}
    for m in MODALITIES:  # every modality draws its noise, so leaving one out changes no other
        means = np.array(_CONTRAST[m], np.float32) * rng.uniform(0.9, 1.1)
        scale = np.clip(case_scale * rng.uniform(0.6, 1.4), 0.1, 1.2)
        if m == "t1ce":
            scale = max(scale, level.enhancement)
        base, img = means[anat], means[tissue]
        img = np.where(tumour, base + scale * (img - base), img)
        img = np.where(mimic, base + mimic_scale * (img - base), img)
        img = img * bias * (1.0 + level.bias / 2 * _smooth_noise(rng, shape, smooth))
        img = ndimage.gaussian_filter(img, blur)
        img += rng.normal(0.0, noise, shape).astype(np.float32) * brain
        img = np.where(brain, np.clip(img, 0.01, None), 0.0)
        images[m] = np.round(img * 1000).astype(np.int16)
    return {m: images[m] for m in modalities}


def _images(rng: np.random.Generator, tissue: np.ndarray, brain: np.ndarray,
            modalities: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Modality -> int16 image of the tissue map with bias field and noise."""
    from scipy import ndimage
    shape = tissue.shape
    bias = 1.0 + 0.15 * _smooth_noise(rng, shape, min(shape) / 4)
    images = {}
    for m in MODALITIES:  # every modality draws its noise, so leaving one out changes no other
        means = np.array(_CONTRAST[m], np.float32) * rng.uniform(0.9, 1.1)
        img = means[tissue] * bias
        img = ndimage.gaussian_filter(img, 0.6)
        img += rng.normal(0.0, 0.05, shape).astype(np.float32) * brain
        img = np.where(brain, np.clip(img, 0.01, None), 0.0)
        images[m] = np.round(img * 1000).astype(np.int16)
    return {m: images[m] for m in modalities}


def synth_case(shape: tuple[int, int, int], seed: int,
               brain_size: tuple[int, int, int] | None = None,
               layout: str = "brats2021",
               cavity: bool | None = None,
               difficulty: str = "easy") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One case: modality -> (X, Y, Z) int16 image, and the (X, Y, Z) uint8 label.

    Args:
        shape: the volume size in voxels.
        seed: the case's seed; the same seed gives the same case.
        brain_size: the brain's approximate extent in voxels (default: about 80% of ``shape``); a
            BraTS brain fills about 140 x 172 x 140 of its 240 x 240 x 155 volume.
        layout: one of :data:`LAYOUTS`: the label values (the scheme :func:`scheme_of` names), the
            extras (second lesions, cavities, cysts) and the modalities (:func:`modalities_of`).
            "brats2021" gives exactly the cases this generator always gave (values 0/1/2/4); the
            others start from the same brain and first tumour for a seed.
        cavity: brats2024 only: whether the case gets a resection cavity (default: drawn, about
            half the cases).
        difficulty: one of :data:`DIFFICULTIES` (the module docstring's table). "easy" gives
            exactly the cases this generator always gave; "medium" and "hard" start from the same
            brain, first tumour and extras for a seed and add to them (from streams of their own).
            The images of hard have thick slices along the last axis: :func:`written_spacing`.

    Raises:
        OptionError: an unknown layout or difficulty.
    """
    images, label, _ = _case(shape, seed, brain_size, layout, cavity, difficulty)
    return images, label


def _case(shape: tuple[int, int, int], seed: int, brain_size: tuple[int, int, int] | None,
          layout: str, cavity: bool | None, difficulty: str):
    """:func:`synth_case`, and the tissue map its images were drawn from."""
    values = _role_values(_check_layout(layout))
    level = _LEVELS.get(_check_difficulty(difficulty))
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    grid = list(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    brain, tissue, centre, radii, sigma = _anatomy(rng, grid, shape, brain_size)
    # Tumour centre inside the brain, away from its edge.
    t_centre = centre + rng.uniform(-0.35, 0.35, 3) * radii
    edema_r = min(shape) * rng.uniform(0.14, 0.22) * rng.uniform(0.8, 1.2, 3)
    lesions = [_lesion(rng, grid, t_centre, edema_r, sigma, brain)]
    low_grade = rng.uniform() < 0.125
    extras = {}
    if layout != "brats2021":
        # A stream of their own: the brats2021 cases (and the demo's seeded scores) stay unchanged.
        extra_rng = np.random.default_rng([seed, 1])
        extras = _extras(extra_rng, layout, grid, lesions, brain, edema_r, sigma, cavity)
    if level is None:
        label = _paint(tissue, lesions, low_grade, extras, values)
        return _images(rng, tissue, brain, modalities_of(layout)), label, tissue
    # Streams of their own again: the same seed's easy case is the start of its medium/hard one.
    level_rng = np.random.default_rng([seed, 2])
    taken = extras.get("cavity", np.zeros(shape, bool))
    _more_lesions(level_rng, level, grid, lesions, brain, taken, edema_r, sigma)
    lesions = _vary_cores(level_rng, level, lesions, keep_first="cyst" in extras)
    anat = tissue.copy()
    label = _paint(tissue, lesions, low_grade, extras, values)
    _mimics(level_rng, level, grid, tissue, brain)
    images = _level_images(np.random.default_rng([seed, 3]), level, tissue, anat, brain,
                           modalities_of(layout))
    return images, label, tissue


# -- files ---------------------------------------------------------------------------------------
def _case_files(layout: str, i: int, prefix: str) -> dict[str, str]:
    """Case ``i``'s files as the real release names them: key -> path relative to the dataset
    folder (keys: the modalities, "seg", and "image" for the MSD 4-D image)."""
    if layout == "brats2021":
        cid = f"{prefix}_{i:05d}"
        return {m: f"{cid}/{cid}_{m}.nii.gz" for m in (*MODALITIES, "seg")}
    if layout == "msd":
        cid = f"BRATS_{i + 1:03d}"
        return {"image": f"imagesTr/{cid}.nii.gz", "seg": f"labelsTr/{cid}.nii.gz"}
    if layout == "brats-men-rt":
        task, cid = "MEN-RT", f"BraTS-MEN-RT-{i:04d}-1"
    else:
        task = "PED" if layout == "brats2024-ped" else "GLI"
        # 2024 post-treatment cases carry a later time point in the second number (-100).
        cid = f"BraTS-{task}-{i:05d}-{100 * (i % 2) if layout == 'brats2024' else 0:03d}"
    return {m: f"{cid}/{brats23_file(cid, task, m)}" for m in (*task_modalities(task), "seg")}


def _save(path: Path, arr: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, str(tmp))


def _arrays(layout: str, images: dict[str, np.ndarray], label: np.ndarray) -> dict[str, np.ndarray]:
    """File key (as :func:`_case_files`) -> array: MSD stacks the modalities in its channel order."""
    if layout == "msd":
        return {"image": np.stack([images[m] for _, m in MSD_CHANNELS], axis=-1), "seg": label}
    return {**images, "seg": label}


def _write_msd_json(out: Path) -> None:
    """Task01's dataset.json (modality and label maps, the training list) for the cases in
    ``out``; rewritten only when it changes."""
    scheme = scheme_of("msd")
    ids = sorted(p.name for p in (out / "imagesTr").glob("BRATS_*.nii.gz"))
    meta = {"name": "BRATS", "description": "synthetic, in the layout of MSD Task01_BrainTumour",
            "tensorImageSize": "4D",
            "modality": {str(i): name for i, (name, _) in enumerate(MSD_CHANNELS)},
            "labels": {"0": "background", **{str(v): n for v, n in sorted(scheme.labels.items())}},
            "numTraining": len(ids), "numTest": 0, "test": [],
            "training": [{"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n in ids]}
    text = json.dumps(meta, indent=2) + "\n"
    path = out / "dataset.json"
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)


def _check_args(n_cases: object, shape: tuple, seed: object, layout: object,
                prefix: str | None) -> None:
    _check_layout(layout)
    if prefix is not None and layout != "brats2021":
        raise OptionError(f"prefix {prefix!r}: only the brats2021 layout takes a case-name prefix "
                          f"(the others name cases as their release does)")
    if not _int_at_least(n_cases, 1):
        raise OptionError(f"--cases {n_cases}: the number of cases must be at least 1")
    if len(shape) != 3 or not all(_int_at_least(s, MIN_SIZE) for s in shape):
        raise OptionError(f"--shape {' '.join(map(str, shape))}: must be three sizes >= {MIN_SIZE} "
                          f"voxels (smaller volumes lose the tumour's sub-regions)")
    if not _int_at_least(seed, 0):
        raise OptionError(f"--seed {seed}: must be an integer >= 0")


def write_synthetic_dataset(out: str | Path, n_cases: int, shape: tuple[int, int, int] = (64, 64, 64),
                            seed: int = 0, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                            prefix: str | None = None,
                            progress: Callable[[int], None] | None = None,
                            brain_size: tuple[int, int, int] | None = None,
                            layout: str = "brats2021", difficulty: str = "easy") -> list[Path]:
    """Writes ``n_cases`` cases into ``out`` in the file layout of ``layout``.

    Naming: brats2021 ``<prefix>_NNNNN/<prefix>_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz`` (prefix
    default "BraTS2021"); brats2023 ``BraTS-GLI-NNNNN-000/BraTS-GLI-NNNNN-000-{t1n,t1c,t2w,t2f,
    seg}.nii.gz``; brats2024 likewise, odd cases ``-100``; brats2024-ped ``BraTS-PED-NNNNN-000/...``;
    brats-men-rt ``BraTS-MEN-RT-NNNN-1/BraTS-MEN-RT-NNNN-1_{t1c,gtv}.nii.gz``; msd
    ``imagesTr/BRATS_NNN.nii.gz`` (4-D: FLAIR, T1w, t1gd, T2w), ``labelsTr/BRATS_NNN.nii.gz`` and
    ``dataset.json``. Case i is :func:`synth_case` with seed ``seed * 100003 + i`` and
    ``difficulty``; the affine's voxel size is :func:`written_spacing` of ``spacing`` (hard: the
    last axis 2.5 times thicker).

    Each file is written to a temporary name and renamed, so an interrupted run leaves no partial
    file; an existing complete case is kept as it is.

    Returns:
        The case folders (msd: the 4-D image files), in case order.

    Raises:
        OptionError: naming the ``synth`` flag, before anything is written: an unknown ``layout``,
            ``n_cases`` < 1, a ``shape`` that is not three sizes >= :data:`MIN_SIZE`, ``seed`` < 0,
            a ``prefix`` for a layout other than brats2021, or an unknown ``difficulty``.
    """
    _check_args(n_cases, shape, seed, layout, prefix)
    out = Path(out)
    affine = np.diag([*written_spacing(spacing, difficulty), 1.0])
    written = []
    for i in range(n_cases):
        paths = {k: out / rel for k, rel in _case_files(layout, i, prefix or "BraTS2021").items()}
        if not all(p.exists() for p in paths.values()):
            # Post-treatment (-100) cases have their cavity: any 2024 set of 2+ cases shows RC, so
            # it is detected as the 2024 release, as a real download is.
            cavity = (i % 2 == 1) if layout == "brats2024" else None
            images, label = synth_case(shape, seed * 100003 + i, brain_size, layout, cavity,
                                       difficulty)
            for k, arr in _arrays(layout, images, label).items():
                _save(paths[k], arr, affine)
        written.append(paths["image"] if layout == "msd" else paths["seg"].parent)
        if progress is not None:
            progress(i)
    if layout == "msd":
        _write_msd_json(out)
    return written
