from __future__ import annotations

import numpy as np
import pytest

from unet3d.config import DataConfig


@pytest.fixture(scope="module")
def entries(synth16, tmp_path_factory):
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare

    return prepare(discover(synth16).cases[:4], tmp_path_factory.mktemp("cache"))


def _crops(entries, ratio: float, n: int = 300) -> list[np.ndarray]:
    from unet3d.data.pipeline import CropSampler

    s = CropSampler(entries, (16, 16, 16), ratio, seed=3)
    return [s.sample(i)[1] for i in range(n)]


def test_foreground_ratio_biases_crop_centres(entries):
    fg = _crops(entries, 1.0)
    uniform = _crops(entries, 0.0)
    # a foreground-centred crop is jittered by up to crop/4 but always contains its tumour voxel
    assert all(c.any() for c in fg)
    assert np.mean([c.any() for c in uniform]) < 0.95
    tumour = lambda crops: np.mean([(c > 0).mean() for c in crops])  # noqa: E731
    assert tumour(fg) > 1.5 * tumour(uniform)


def test_crops_larger_than_the_volume_are_zero_padded(entries):
    from unet3d.data.pipeline import CropSampler

    big = tuple(int(s) + 16 for s in entries[0].meta["shape"])
    img, lab = CropSampler(entries[:1], big, 0.5, seed=0).sample(0)
    assert img.shape == (*big, 4) and lab.shape == big
    assert np.all(img[:8] == 0) and np.all(lab[:8] == 0)
    assert lab.sum() == np.asarray(entries[0].label()).sum()  # the whole volume is inside


def test_dataset_batches_are_shaped_deterministic_and_augmented(entries):
    from unet3d.data.pipeline import train_dataset

    cfg = DataConfig(crop=(16, 16, 16))
    take = lambda ds: [(x.numpy(), y.numpy()) for x, y in ds.take(3)]  # noqa: E731
    a = take(train_dataset(entries, cfg, batch_size=2, seed=5))
    b = take(train_dataset(entries, cfg, batch_size=2, seed=5))
    c = take(train_dataset(entries, cfg, batch_size=2, seed=6))
    x, y = a[0]
    assert x.shape == (2, 16, 16, 16, 4) and x.dtype == np.float32
    assert y.shape == (2, 16, 16, 16) and y.dtype == np.uint8 and set(np.unique(y)) <= {0, 1, 2, 3}
    for (x1, y1), (x2, y2) in zip(a, b, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert any(not np.array_equal(p[0], q[0]) for p, q in zip(a, c, strict=True))
    raw = take(train_dataset(entries, cfg, batch_size=2, seed=5, augment=False))
    assert not np.allclose(raw[0][0], x)  # intensity jitter/noise/flips changed the crop
    # labels follow the image through flips: same label histogram as the raw crop
    assert np.bincount(raw[0][1].ravel(), minlength=4).tolist() == \
        np.bincount(y.ravel(), minlength=4).tolist()


def test_deep_supervision_repeats_the_label_and_shards_are_disjoint(entries):
    from unet3d.data.pipeline import train_dataset

    cfg = DataConfig(crop=(16, 16, 16), intensity_scale=0, intensity_shift=0, noise_std=0, flip_prob=0)
    x, ys = next(iter(train_dataset(entries, cfg, batch_size=2, seed=0, n_outputs=3)))
    assert isinstance(ys, tuple) and len(ys) == 3
    r0 = next(iter(train_dataset(entries, cfg, batch_size=2, seed=0, shard=(0, 2))))[0].numpy()
    r1 = next(iter(train_dataset(entries, cfg, batch_size=2, seed=0, shard=(1, 2))))[0].numpy()
    one = next(iter(train_dataset(entries, cfg, batch_size=4, seed=0)))[0].numpy()
    # rank 0 draws elements 0, 2; rank 1 draws 1, 3; together the single stream's first 4
    np.testing.assert_array_equal(r0, one[[0, 2]])
    np.testing.assert_array_equal(r1, one[[1, 3]])
