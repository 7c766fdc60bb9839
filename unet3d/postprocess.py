"""Post-processing of a predicted class map, the steps BraTS pipelines commonly add after the network.

- Small enhancing-tumour components: a few voxels of predicted ET in a case without ET cost the
  whole ET Dice of that case (BraTS scores an empty reference with a non-empty prediction as 0), and
  isolated ET specks are usually false positives. Each 26-connected ET component smaller than a
  volume threshold (mm^3) is relabelled as necrotic / non-enhancing core, so the tumour core and the
  whole tumour keep those voxels and only ET loses them (the nnU-Net / BraTS-winner convention).
- Largest whole-tumour component: every tumour voxel outside the largest 26-connected whole-tumour
  component becomes background (a glioma is one lesion; distant specks are false positives).

Both run on training classes of shape (D, H, W); the label scheme says which class is enhancing
tumour, which one it becomes (the core: NCR/NETC), and which classes are tumour (a resection cavity
is not: the largest-component rule leaves it alone). A scheme without an enhancing label (MEN-RT's
GTV) has no ET step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from unet3d.labels import DEFAULT, LabelScheme

_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26-connected


@dataclass(frozen=True, kw_only=True)
class PostProcess:
    """Post-processing options.

    Attributes:
        min_et_volume: ET components below this volume (mm^3) become NCR/NET; 0 turns it off.
        largest_wt: keep only the largest connected whole-tumour component.
    """

    min_et_volume: float = 0.0
    largest_wt: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.min_et_volume, (int, float)) and self.min_et_volume >= 0):
            raise ValueError(f"min_et_volume={self.min_et_volume!r} must be a volume >= 0 (mm^3)")

    @property
    def active(self) -> bool:
        return self.min_et_volume > 0 or self.largest_wt

    def __call__(self, classes: np.ndarray, spacing: Sequence[float],
                 scheme: LabelScheme = DEFAULT) -> np.ndarray:
        """Applies the enabled steps to a (D, H, W) class map of ``scheme`` with voxel ``spacing``
        in mm."""
        out = classes
        if self.largest_wt:
            out = keep_largest_wt(out, scheme)
        if self.min_et_volume > 0 and scheme.enhancing is not None:
            out = remove_small_et(out, spacing, self.min_et_volume, scheme)
        return out


def remove_small_et(classes: np.ndarray, spacing: Sequence[float], min_volume: float,
                    scheme: LabelScheme = DEFAULT) -> np.ndarray:
    """A copy of ``classes`` with each enhancing component smaller than ``min_volume`` mm^3 made the
    scheme's core class (NCR/NETC)."""
    et = classes == scheme.enhancing_class
    if not et.any():
        return classes.copy()
    comps, n = ndimage.label(et, structure=_CONNECTIVITY)
    sizes = np.bincount(comps.ravel(), minlength=n + 1) * float(np.prod(spacing))
    small = sizes < min_volume
    small[0] = False
    out = classes.copy()
    out[small[comps]] = scheme.core_class
    return out


def keep_largest_wt(classes: np.ndarray, scheme: LabelScheme = DEFAULT) -> np.ndarray:
    """A copy of ``classes`` with tumour voxels outside the largest whole-tumour component cleared
    (the scheme's tumour classes; others, e.g. a resection cavity, are kept)."""
    wt = np.isin(classes, scheme.tumour_classes)
    comps, n = ndimage.label(wt, structure=_CONNECTIVITY)
    if n <= 1:
        return classes.copy()
    sizes = np.bincount(comps.ravel(), minlength=n + 1)
    sizes[0] = 0
    out = classes.copy()
    out[(comps != int(np.argmax(sizes))) & wt] = 0
    return out
