"""Label conventions in one place: BraTS/MSD label values, the contiguous training classes, regions.

Training classes (contiguous): 0 background, 1 necrotic/non-enhancing core (NCR/NET),
2 peritumoral edema (ED), 3 enhancing tumour (ET).
BraTS files use 0/1/2/4 for those; MSD Task01 uses 0 background, 1 edema, 2 non-enhancing tumour,
3 enhancing tumour. Regions scored by BraTS: WT = {NCR, ED, ET}, TC = {NCR, ET}, ET = {ET}.
"""

from __future__ import annotations

import numpy as np

REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
# For each region, the training classes it contains.
REGION_CLASSES: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}

# file label value -> training class, per layout family
BRATS_TO_CLASS: dict[int, int] = {0: 0, 1: 1, 2: 2, 4: 3}
MSD_TO_CLASS: dict[int, int] = {0: 0, 1: 2, 2: 1, 3: 3}


def lut(mapping: dict[int, int], size: int = 256, fill: int = 255) -> np.ndarray:
    """A lookup table array for ``mapping``; unmapped values become ``fill``."""
    table = np.full(size, fill, dtype=np.uint8)
    for k, v in mapping.items():
        table[k] = v
    return table


def classes_to_regions(classes: np.ndarray) -> np.ndarray:
    """(…) int class map -> (…, 3) bool masks for WT, TC, ET."""
    return np.stack([np.isin(classes, REGION_CLASSES[r]) for r in REGIONS], axis=-1)


def regions_to_classes(regions: np.ndarray) -> np.ndarray:
    """(…, 3) bool WT/TC/ET masks -> (…) uint8 class map, nesting ET inside TC inside WT."""
    out = np.zeros(regions.shape[:-1], dtype=np.uint8)
    out[regions[..., 0]] = 2
    out[regions[..., 1]] = 1
    out[regions[..., 2]] = 3
    return out


def classes_to_labels(classes: np.ndarray, label_map: dict[int, int]) -> np.ndarray:
    """(…) training classes -> the layout's file label values (inverse of ``label_map``), uint8."""
    inverse = np.zeros(max(label_map.values()) + 1, dtype=np.uint8)
    for value, cls in label_map.items():
        inverse[cls] = value
    return inverse[classes]


def class_probs_to_region_probs(probs: np.ndarray) -> np.ndarray:
    """(…, 4) softmax class probabilities -> (…, 3) WT/TC/ET probabilities (sums over each region's
    classes), so softmax and region-head models can be averaged in one ensemble."""
    return np.stack([probs[..., list(REGION_CLASSES[r])].sum(axis=-1) for r in REGIONS], axis=-1)
