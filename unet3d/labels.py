"""Label schemes as data: what a dataset's label values mean, how they train and how they are scored.

A :class:`LabelScheme` names the label values of a release (background 0 is implied), the regions
the challenge scores (region name -> label values), which regions make the tumour mean (the
objective), the enhancing-tumour label post-processing works on, and whether a sigmoid region head
(one channel per region) can represent it. Training classes are contiguous: class 0 is background
and class i is the i-th smallest foreground label value, so a scheme alone fixes the mapping both
ways (file values -> classes in the cache, classes -> file values in predictions).

Built-in schemes (values and regions from the official BraTS evaluation's configurations):

==================  ========================================  ==========================================
name                labels                                    regions (label values)
==================  ========================================  ==========================================
brats-legacy        1 NCR, 2 ED, 4 ET  (BraTS 2019-2021)      WT {1,2,4}, TC {1,4}, ET {4}
brats-2023          1 NETC, 2 SNFH, 3 ET (GLI 2023, SSA, MEN, WT {1,2,3}, TC {1,3}, ET {3}
                    MET, GoAT)
brats-2024-gli      as brats-2023 + 4 RC (post-treatment)     as brats-2023 + RC {4}, not in the mean
brats-2024-ped      1 ET, 2 NETC, 3 CC, 4 ED                  WT {1,2,3,4}, TC {1,2,3}, ET {1}
brats-men-rt        1 GTV                                     GTV {1}
msd                 1 edema, 2 non-enhancing, 3 enhancing     WT {1,2,3}, TC {2,3}, ET {3}
==================  ========================================  ==========================================

A user scheme is a YAML file with the same fields (see :func:`from_dict`)::

    name: lesions
    labels: {1: lesion}
    regions: {lesion: [1]}
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.errors import UserError

_REGION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,15}$")  # used in metric keys: dice_<region>
_FIELDS = ("name", "description", "labels", "regions", "tumour", "enhancing", "core", "region_head")


class LabelError(UserError, ValueError):
    """A label scheme is malformed or does not fit the data; the message names the file or field."""


@dataclasses.dataclass(frozen=True, eq=True)
class LabelScheme:
    """What a dataset's label values mean.

    Attributes:
        name: short name (built-in names are listed in the module docstring).
        labels: foreground label value (1-255) -> name; 0 is background.
        regions: region name -> the label values it unites, in the order results are shown.
        tumour: the regions whose mean Dice is the tumour mean (the default objective).
        enhancing: the enhancing-tumour label (post-processing removes small components of it),
            or None.
        core: the label small enhancing components become (the surrounding tumour core), or None.
        region_head: whether a sigmoid head with one channel per region can be trained: the regions
            nest or are disjoint and each adds exactly one label to those inside it.
        description: one line for humans (the release it belongs to).
    """

    name: str
    labels: Mapping[int, str]
    regions: Mapping[str, tuple[int, ...]]
    tumour: tuple[str, ...]
    enhancing: int | None = None
    core: int | None = None
    region_head: bool = False
    description: str = ""

    def __hash__(self) -> int:
        return hash(self.name)

    # -- values and classes -------------------------------------------------------------------
    @property
    def values(self) -> tuple[int, ...]:
        """Every allowed file value, background first; index = training class."""
        return (0, *sorted(self.labels))

    @property
    def n_classes(self) -> int:
        return len(self.values)

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(self.regions)

    def class_of(self, value: int) -> int:
        return self.values.index(value)

    def lut(self, size: int = 256, fill: int = 255) -> np.ndarray:
        """File value -> training class lookup table (uint8); values outside the scheme -> ``fill``."""
        table = np.full(size, fill, dtype=np.uint8)
        for cls, value in enumerate(self.values):
            table[value] = cls
        return table

    def to_classes(self, labels: np.ndarray) -> np.ndarray:
        """(…) file label values -> (…) uint8 training classes (values must be in the scheme)."""
        return self.lut()[np.asarray(labels, dtype=np.uint8)]

    def to_labels(self, classes: np.ndarray) -> np.ndarray:
        """(…) training classes -> (…) uint8 file label values."""
        return np.asarray(self.values, dtype=np.uint8)[np.asarray(classes)]

    @property
    def region_classes(self) -> dict[str, tuple[int, ...]]:
        """Region name -> the training classes it unites."""
        return {r: tuple(self.class_of(v) for v in vs) for r, vs in self.regions.items()}

    @property
    def enhancing_class(self) -> int | None:
        return None if self.enhancing is None else self.class_of(self.enhancing)

    @property
    def core_class(self) -> int | None:
        return None if self.core is None else self.class_of(self.core)

    @property
    def tumour_classes(self) -> tuple[int, ...]:
        """Training classes of the tumour regions together (the whole tumour: RC is not in it)."""
        values = sorted({v for r in self.tumour for v in self.regions[r]})
        return tuple(self.class_of(v) for v in values)

    # -- regions ------------------------------------------------------------------------------
    def classes_to_regions(self, classes: np.ndarray) -> np.ndarray:
        """(…) training classes -> (…, R) bool masks, one per region in order."""
        rc = self.region_classes
        return np.stack([np.isin(classes, rc[r]) for r in self.regions], axis=-1)

    def labels_to_regions(self, labels: np.ndarray) -> np.ndarray:
        """(…) file label values -> (…, R) bool masks, one per region in order."""
        return np.stack([np.isin(labels, vs) for vs in self.regions.values()], axis=-1)

    def regions_to_classes(self, regions: np.ndarray) -> np.ndarray:
        """(…, R) bool region masks -> (…) uint8 classes: each voxel takes the own label of the
        smallest region that holds it (regions are painted largest first). Needs ``region_head``."""
        if not self.region_head:
            raise LabelError(f"labels {self.name}: regions {dict(self.regions)} do not nest, so a "
                             f"region head cannot be decoded into labels")
        out = np.zeros(regions.shape[:-1], dtype=np.uint8)
        own = _own_labels(self.regions)
        order = sorted(range(len(self.regions)), key=lambda i: -len(list(self.regions.values())[i]))
        names = list(self.regions)
        for i in order:
            out[regions[..., i]] = self.class_of(own[names[i]])
        return out

    def class_probs_to_region_probs(self, probs: np.ndarray) -> np.ndarray:
        """(…, K) softmax class probabilities -> (…, R) region probabilities (sums over each
        region's classes), so softmax and region-head models can be averaged in one ensemble."""
        rc = self.region_classes
        return np.stack([probs[..., list(rc[r])].sum(axis=-1) for r in self.regions], axis=-1)

    def describe(self) -> str:
        """One line: 'brats-2023 (1 NETC, 2 SNFH, 3 ET; WT {1,2,3}, TC {1,3}, ET {3})'."""
        labels = ", ".join(f"{v} {n}" for v, n in sorted(self.labels.items()))
        regions = ", ".join(f"{r} {{{','.join(map(str, vs))}}}" for r, vs in self.regions.items())
        return f"{self.name} ({labels}; {regions})"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML form (label keys as ints); :func:`from_dict` reads it back."""
        return {"name": self.name, "description": self.description,
                "labels": {int(v): n for v, n in sorted(self.labels.items())},
                "regions": {r: list(vs) for r, vs in self.regions.items()},
                "tumour": list(self.tumour), "enhancing": self.enhancing, "core": self.core,
                "region_head": self.region_head}

    @property
    def builtin(self) -> bool:
        return BUILTIN.get(self.name) == self


def _own_labels(regions: Mapping[str, Iterable[int]]) -> dict[str, int] | None:
    """Region -> the one label it adds to the regions nested inside it; None unless the regions
    form a laminar family (any two nest or are disjoint) in which every region adds one label."""
    sets = {r: frozenset(vs) for r, vs in regions.items()}
    own: dict[str, int] = {}
    for r, s in sets.items():
        inside = [t for q, t in sets.items() if q != r and t < s]
        if any(not (t <= s or s <= t or not (t & s)) for q, t in sets.items() if q != r):
            return None
        rest = s - frozenset().union(*inside)
        if len(rest) != 1:
            return None
        own[r] = next(iter(rest))
    if len(set(own.values())) != len(own):
        return None
    return own


def _scheme(name: str, description: str, labels: dict[int, str], regions: dict[str, tuple[int, ...]],
            tumour: tuple[str, ...], enhancing: int | None, core: int | None) -> LabelScheme:
    own = _own_labels(regions)
    head = own is not None and set(own.values()) == set(labels)
    return LabelScheme(name=name, description=description, labels=labels, regions=regions,
                       tumour=tumour, enhancing=enhancing, core=core, region_head=head)


_WT_TC_ET = ("WT", "TC", "ET")
BUILTIN: dict[str, LabelScheme] = {s.name: s for s in (
    _scheme("brats-legacy", "BraTS 2019-2021", {1: "NCR", 2: "ED", 4: "ET"},
            {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}, _WT_TC_ET, enhancing=4, core=1),
    _scheme("brats-2023", "BraTS 2023+ GLI, SSA, MEN, MET, GoAT", {1: "NETC", 2: "SNFH", 3: "ET"},
            {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}, _WT_TC_ET, enhancing=3, core=1),
    _scheme("brats-2024-gli", "BraTS 2024 GLI post-treatment",
            {1: "NETC", 2: "SNFH", 3: "ET", 4: "RC"},
            {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,), "RC": (4,)}, _WT_TC_ET, enhancing=3, core=1),
    _scheme("brats-2024-ped", "BraTS 2024 pediatric", {1: "ET", 2: "NETC", 3: "CC", 4: "ED"},
            {"WT": (1, 2, 3, 4), "TC": (1, 2, 3), "ET": (1,)}, _WT_TC_ET, enhancing=1, core=2),
    _scheme("brats-men-rt", "BraTS meningioma radiotherapy", {1: "GTV"}, {"GTV": (1,)}, ("GTV",),
            enhancing=None, core=None),
    _scheme("msd", "Medical Segmentation Decathlon Task01",
            {1: "edema", 2: "non-enhancing", 3: "enhancing"},
            {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}, _WT_TC_ET, enhancing=3, core=2),
)}


def from_dict(d: Any, *, source: str = "labels") -> LabelScheme:
    """A scheme from its plain form (a user's YAML file or a config's ``data.labels``).

    Fields: ``name``; ``labels`` (value -> name, values 1-255); ``regions`` (name -> list of label
    values; default: one region per label); optional ``tumour`` (regions of the tumour mean; default
    all), ``enhancing`` and ``core`` (label values for post-processing), ``region_head`` (false turns
    it off; true is checked), ``description``.

    Raises:
        LabelError: naming ``source`` and the field.
    """
    if not isinstance(d, dict):
        raise LabelError(f"{source}: a label scheme must be a mapping with name, labels, regions")
    unknown = sorted(set(d) - set(_FIELDS))
    if unknown:
        raise LabelError(f"{source}: unknown field(s) {unknown}; known: {', '.join(_FIELDS)}")
    name = d.get("name")
    if not isinstance(name, str) or not name.strip():
        raise LabelError(f"{source}: name must be a non-empty string")
    labels = _parse_labels(d.get("labels"), source)
    regions = _parse_regions(d.get("regions", {_region_name(n, v): [v] for v, n in labels.items()}),
                             labels, source)
    tumour = d.get("tumour", list(regions))
    if (not isinstance(tumour, list) or not tumour
            or not all(isinstance(t, str) and t in regions for t in tumour)):
        raise LabelError(f"{source}: tumour={tumour!r} must be a non-empty list of region names "
                         f"({', '.join(regions)})")
    for f in ("enhancing", "core"):
        v = d.get(f)
        if v is not None and (isinstance(v, bool) or v not in labels):
            raise LabelError(f"{source}: {f}={v!r} must be one of the label values {sorted(labels)}")
    if (d.get("enhancing") is None) != (d.get("core") is None):
        raise LabelError(f"{source}: enhancing and core go together (post-processing turns small "
                         f"enhancing components into core)")
    scheme = _scheme(name.strip(), str(d.get("description", "")), labels, regions, tuple(tumour),
                     d.get("enhancing"), d.get("core"))
    head = d.get("region_head", scheme.region_head)
    if not isinstance(head, bool):
        raise LabelError(f"{source}: region_head={head!r} must be true or false")
    if head and not scheme.region_head:
        raise LabelError(f"{source}: region_head=true needs regions that nest or are disjoint, each "
                         f"adding exactly one label; {dict(regions)} do not")
    return dataclasses.replace(scheme, region_head=head)


def _region_name(label: str, value: int) -> str:
    """The default region of one label: its name where that makes a valid region name, else L<v>."""
    return label if _REGION_NAME.match(label) and label != "mean" else f"L{value}"


def _parse_labels(raw: Any, source: str) -> dict[int, str]:
    if not isinstance(raw, dict) or not raw:
        raise LabelError(f"{source}: labels must be a non-empty mapping value -> name")
    out: dict[int, str] = {}
    for k, v in raw.items():
        try:
            value = int(k)
        except (TypeError, ValueError):
            value = -1
        if isinstance(k, bool) or str(value) != str(k).strip() or not 1 <= value <= 255:
            raise LabelError(f"{source}: labels: {k!r} is not a label value in 1-255 (0 is background)")
        if not isinstance(v, str) or not v.strip():
            raise LabelError(f"{source}: labels: value {value} needs a name")
        out[value] = v.strip()
    return out


def _parse_regions(raw: Any, labels: dict[int, str], source: str) -> dict[str, tuple[int, ...]]:
    if not isinstance(raw, dict) or not raw:
        raise LabelError(f"{source}: regions must be a non-empty mapping name -> label values")
    out: dict[str, tuple[int, ...]] = {}
    for name, vs in raw.items():
        if not isinstance(name, str) or not _REGION_NAME.match(name) or name == "mean":
            raise LabelError(f"{source}: regions: {name!r} must be a short name of letters and "
                             f"digits starting with a letter (not 'mean')")
        if (not isinstance(vs, list) or not vs
                or not all(isinstance(v, int) and not isinstance(v, bool) and v in labels for v in vs)):
            raise LabelError(f"{source}: regions: {name}={vs!r} must be a non-empty list of label "
                             f"values from labels ({sorted(labels)})")
        out[name] = tuple(sorted(set(vs)))
    return out


def load(path: str | Path) -> LabelScheme:
    """A user scheme from a YAML (or JSON) file.

    Raises:
        LabelError: unreadable, not YAML, or a field breaks a rule (naming the file and field).
    """
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise LabelError(f"{p}: cannot read the label scheme ({e.strerror})") from None
    except UnicodeDecodeError:
        raise LabelError(f"{p}: not a text (YAML) file") from None
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LabelError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    return from_dict(d, source=str(p))


def resolve(spec: str | Path | Mapping[str, Any] | LabelScheme) -> LabelScheme:
    """A scheme from a built-in name, a YAML file path, a plain dict or a scheme.

    Raises:
        LabelError: an unknown name that is not a file either, or a malformed scheme.
    """
    if isinstance(spec, LabelScheme):
        return spec
    if isinstance(spec, Mapping):
        return from_dict(dict(spec), source="data.labels")
    if isinstance(spec, str) and spec in BUILTIN:
        return BUILTIN[spec]
    if Path(spec).is_file():
        return load(spec)
    raise LabelError(f"labels {str(spec)!r}: neither a built-in scheme ({', '.join(BUILTIN)}) nor "
                     f"a YAML file")


def to_config(scheme: LabelScheme) -> str | dict[str, Any]:
    """How a config records ``scheme``: a built-in's name, or a user scheme whole (a config stays
    self-contained when the YAML file moves)."""
    return scheme.name if scheme.builtin else scheme.to_dict()


def detect(layout: str, task: str | None, values: Iterable[int]) -> LabelScheme:
    """The scheme of a dataset from its layout, its BraTS task and the label values found in it.

    ``layout`` is discover's (brats2019, brats2021, brats2023, msd); ``task`` the BraTS 2023+ task
    prefix (GLI, PED, MEN-RT, SSA, MEN, MET, GoAT, ...); ``values`` every label value seen.
    """
    if layout == "msd":
        return BUILTIN["msd"]
    if layout != "brats2023":
        return BUILTIN["brats-legacy"]
    task = (task or "").upper()
    if task == "PED":
        # PED 2023 shipped the adult values (1 NETC, 2 SNFH, 3 ET); PED 2024 adds 4 (ED): only that
        # tells them apart.
        return BUILTIN["brats-2024-ped" if 4 in set(values) else "brats-2023"]
    if task == "MEN-RT":
        return BUILTIN["brats-men-rt"]
    if task == "GLI" and 4 in set(values):
        return BUILTIN["brats-2024-gli"]
    return BUILTIN["brats-2023"]


def layout_values(layout: str, task: str | None) -> tuple[int, ...]:
    """Every label value a release of this layout and task may hold (whichever scheme
    :func:`detect` then picks from the values found)."""
    candidates = {detect(layout, task, set()), detect(layout, task, {4})}
    return tuple(sorted({v for s in candidates for v in s.values}))


def check_values(scheme: LabelScheme, values: Iterable[int], where: str) -> None:
    """Raises LabelError naming ``where`` (a label file) when ``values`` leave the scheme."""
    check_allowed(values, scheme.values, f"{scheme.name} scheme", where)


def check_allowed(values: Iterable[int], allowed: Iterable[int], what: str, where: str) -> None:
    """Raises LabelError naming ``where`` when ``values`` leave ``allowed`` (``what`` names them,
    e.g. "brats-2023 scheme" or "brats2023 layout's label values")."""
    allowed = sorted(set(allowed))
    bad = sorted(set(int(v) for v in values) - set(allowed))
    if bad:
        raise LabelError(f"{where}: label values {bad} are not in the {what} (allowed: {allowed}); "
                         f"pass --labels NAME|FILE for another scheme")
