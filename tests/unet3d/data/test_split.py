"""kfold: a seeded patient-level split that depends only on the set of IDs and the seed."""

from __future__ import annotations

import random

import pytest

from unet3d.data.split import kfold

IDS = [f"BraTS2021_{i:05d}" for i in range(23)]


def _partition(ids, folds, seed=0) -> list[list[str]]:
    return [kfold(ids, folds, f, seed)[1] for f in range(folds)]


def test_deterministic_for_a_seed():
    assert kfold(IDS, 5, 2, seed=7) == kfold(list(IDS), 5, 2, seed=7)
    assert _partition(IDS, 5, 7) == _partition(IDS, 5, 7)


def test_independent_of_input_order():
    shuffled = list(IDS)
    random.Random(0).shuffle(shuffled)
    assert shuffled != IDS
    for f in range(5):
        assert kfold(shuffled, 5, f, seed=3) == kfold(IDS, 5, f, seed=3)
        assert kfold(tuple(reversed(IDS)), 5, f, seed=3) == kfold(IDS, 5, f, seed=3)


@pytest.mark.parametrize("n,folds", [(23, 5), (10, 3), (12, 4), (7, 7), (5, 2)])
def test_every_id_in_exactly_one_validation_fold(n, folds):
    ids = IDS[:n]
    vals = _partition(ids, folds, seed=1)
    flat = [i for v in vals for i in v]
    assert sorted(flat) == sorted(ids)  # covers all, no ID twice
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    for f in range(folds):
        train, val = kfold(ids, folds, f, seed=1)
        assert not set(train) & set(val)
        assert sorted(train + val) == sorted(ids)
        assert train == sorted(train) and val == sorted(val)


def test_different_seed_gives_a_different_split():
    parts = {tuple(map(tuple, _partition(IDS, 5, seed))) for seed in range(4)}
    assert len(parts) == 4
    # and the split is a shuffle, not the sorted IDs cut into blocks or dealt round-robin
    blocks = [IDS[i::5] for i in range(5)]
    assert all(list(map(list, p)) != blocks for p in parts)
    assert kfold(IDS, 5, 0, seed=0)[1] != IDS[:5]


@pytest.mark.parametrize("folds,fold", [(1, 0), (0, 0), (24, 0), (5, 5), (5, -1), (3, 10)])
def test_bad_folds_or_fold_raise(folds, fold):
    with pytest.raises(ValueError, match="kfold"):
        kfold(IDS, folds, fold)


def test_duplicate_ids_raise():
    with pytest.raises(ValueError, match="unique"):
        kfold(IDS + IDS[:1], 5, 0)
