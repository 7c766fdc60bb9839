from __future__ import annotations

import itertools

import numpy as np
import pytest

from unet3d.config import DataConfig
from unet3d.labels import BUILTIN

LEGACY_LUT = BUILTIN["brats-legacy"].lut()  # the synthetic data's BraTS 2021 values


@pytest.fixture(scope="module")
def entries(synth16, tmp_path_factory):
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare

    return prepare(discover(synth16).cases[:4], tmp_path_factory.mktemp("cache"))


def _crops(entries, ratio: float, n: int = 300) -> list[np.ndarray]:
    from unet3d.data.pipeline import CropSampler

    s = CropSampler(entries, (16, 16, 16), ratio, seed=3, lut=LEGACY_LUT)
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
    img, lab = CropSampler(entries[:1], big, 0.5, seed=0, lut=LEGACY_LUT).sample(0)
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


def _coded_case(folder, shape=(24, 20, 28), seed=0):
    """A cached case whose label is the argmax of its image, voxel by voxel: the winning channel
    is 10 above the others, so the intensity jitter and noise (scale 1 +- 0.1, shift +- 0.1, noise
    sigma <= 0.05) cannot change it, while a flip of the label along any other axis than the image
    breaks the rule (the labels are random, so no flip maps them onto themselves)."""
    import json

    from unet3d.data.preprocess import CachedCase

    rng = np.random.default_rng(seed)
    label = rng.integers(0, 4, shape).astype(np.uint8)
    image = (10 * np.eye(4, dtype=np.float32)[label] + rng.random((*shape, 4), np.float32))
    folder.mkdir()
    np.save(folder / "image.npy", image)
    np.save(folder / "label.npy", label)
    np.save(folder / "fg.npy", np.argwhere(label > 0).astype(np.int32))
    meta = {"case_id": folder.name, "labelled": True, "shape": list(shape)}
    (folder / "meta.json").write_text(json.dumps(meta))
    return CachedCase(folder, meta)


# flip_prob=1 flips all three axes, so it cannot see the label flipped along a permuted axis (the
# same set of axes); 0.5 flips a different subset per crop and catches that too.
@pytest.mark.parametrize(("flip_prob", "jitter"), [(1.0, False), (0.5, False), (0.5, True)])
def test_label_follows_the_image_through_every_flip(tmp_path, flip_prob, jitter):
    from unet3d.data.pipeline import train_dataset

    entries = [_coded_case(tmp_path / "a", seed=0), _coded_case(tmp_path / "b", (16, 30, 18), seed=1)]
    off = {} if jitter else {"intensity_scale": 0, "intensity_shift": 0, "noise_std": 0}
    # labels 0-3 as files of a 2023 scheme hold them (classes = values)
    cfg = DataConfig(crop=(16, 16, 16), flip_prob=flip_prob, labels="brats-2023", **off)
    raw = train_dataset(entries, cfg, batch_size=4, seed=7, augment=False)
    aug = train_dataset(entries, cfg, batch_size=4, seed=7)
    flipped = 0
    for (x0, y0), (x, y) in zip(raw.take(8), aug.take(8), strict=True):
        x0, y0, x, y = x0.numpy(), y0.numpy(), x.numpy(), y.numpy()
        np.testing.assert_array_equal(np.argmax(x, -1), y)  # label == f(image) in every crop
        np.testing.assert_array_equal(np.argmax(x0, -1), y0)
        for a, b in zip(y0, y, strict=True):
            flipped += not np.array_equal(a, b)
            # the augmented label is the raw crop's label mirrored along some set of axes
            assert any(np.array_equal(np.flip(a, axes) if axes else a, b)
                       for r in range(4) for axes in itertools.combinations((0, 1, 2), r))
    if flip_prob == 1.0:
        assert flipped == 32  # all three axes flipped in every crop
    else:
        assert 16 < flipped < 32  # 7 in 8 crops flip at least one axis


def test_a_resumed_shard_continues_its_own_share_of_the_stream(entries):
    from unet3d.data.pipeline import train_dataset

    cfg = DataConfig(crop=(16, 16, 16))  # augmented: each element's flips/jitter follow its index
    one = next(iter(train_dataset(entries, cfg, batch_size=8, seed=0)))[0].numpy()
    # Each of 2 workers drew 1 element before the resume (rank 0: #0, rank 1: #1); resumed with
    # start_index=1 they continue with #2, #4 and #3, #5 of the single stream.
    for rank, want in ((0, [2, 4]), (1, [3, 5])):
        ds = train_dataset(entries, cfg, batch_size=2, seed=0, start_index=1, shard=(rank, 2))
        np.testing.assert_array_equal(next(iter(ds))[0].numpy(), one[want])


@pytest.mark.parametrize("kind", ["scale", "shift"])
def test_intensity_jitter_stays_in_its_range_and_spans_it(entries, kind):
    from unet3d.data.pipeline import train_dataset

    s = 0.1
    cfg = DataConfig(crop=(16, 16, 16), flip_prob=0, noise_std=0, intensity_scale=s * (kind == "scale"),
                     intensity_shift=s * (kind == "shift"))
    raw = next(iter(train_dataset(entries, cfg, batch_size=16, seed=2, augment=False)))[0].numpy()
    aug = next(iter(train_dataset(entries, cfg, batch_size=16, seed=2)))[0].numpy()
    per_channel = []  # (crop, channel) -> the one factor / offset applied to the whole channel
    for r, a in zip(raw, aug, strict=True):
        for c in range(r.shape[-1]):
            big = np.abs(r[..., c]) > 0.1
            if kind == "scale" and big.any():
                v = a[..., c][big] / r[..., c][big]
            elif kind == "shift":
                v = a[..., c] - r[..., c]
            else:
                continue
            assert np.ptp(v) < 1e-4  # one value per channel and crop
            per_channel.append(float(v.mean()))
    centre = 1.0 if kind == "scale" else 0.0
    dev = np.array(per_channel) - centre
    assert len(dev) > 20 and np.all(np.abs(dev) <= s + 1e-5)
    assert dev.min() < -s / 3 and dev.max() > s / 3  # both directions, not a fixed offset


@pytest.mark.parametrize(("labels", "values", "classes"), [
    ("brats-legacy", [0, 1, 2, 4], [0, 1, 2, 3]),
    ("brats-2024-gli", [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]),
    ("brats-men-rt", [0, 1], [0, 1]),
])
def test_crops_carry_the_schemes_training_classes(tmp_path, labels, values, classes):
    """The cache keeps file values; a crop's label is the scheme's class of each (e.g. ET 4 -> 3)."""
    import json

    from unet3d.data.pipeline import train_dataset
    from unet3d.data.preprocess import CachedCase

    shape = (16, 16, 16)
    raw = np.asarray(values, np.uint8)[np.random.default_rng(0).integers(0, len(values), shape)]
    folder = tmp_path / "c"
    folder.mkdir()
    np.save(folder / "image.npy", np.zeros((*shape, 1), np.float32))
    np.save(folder / "label.npy", raw)
    np.save(folder / "fg.npy", np.argwhere(raw > 0).astype(np.int32))
    meta = {"case_id": "c", "labelled": True, "shape": list(shape)}
    (folder / "meta.json").write_text(json.dumps(meta))
    cfg = DataConfig(crop=shape, flip_prob=0.0, labels=labels)
    (_, y), = train_dataset([CachedCase(folder, meta)], cfg, batch_size=1, seed=0,
                            augment=False).take(1)
    expected = np.asarray(classes, np.uint8)[np.searchsorted(values, raw)]
    np.testing.assert_array_equal(y.numpy()[0], expected)
