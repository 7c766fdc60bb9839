"""Deterministic k-fold split by patient ID."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def kfold(case_ids: Sequence[str], folds: int, fold: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Returns (train IDs, validation IDs) for ``fold`` of a seeded ``folds``-way split.

    IDs are sorted first, so the split depends only on the set of IDs and the seed, not on the
    order the filesystem lists them (NVIDIA's reference splits an unsorted os.listdir). Every ID is
    in exactly one validation fold; fold sizes differ by at most one.
    """
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise ValueError("kfold: case IDs must be unique")
    if not 2 <= folds <= len(ids):
        raise ValueError(f"kfold: folds={folds} needs 2 <= folds <= number of cases ({len(ids)})")
    if not 0 <= fold < folds:
        raise ValueError(f"kfold: fold={fold} must be in 0..{folds - 1}")
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[j] for k, j in enumerate(order) if k % folds == fold)
    train = sorted(set(ids) - set(val))
    return train, val
