from __future__ import annotations

import numpy as np
import pytest

from unet3d.inference.predictor import (
    flips,
    gaussian_weights,
    probabilities_to_classes,
    sliding_window_predict,
    window_starts,
)
from unet3d.labels import BUILTIN

LEGACY = BUILTIN["brats-legacy"]


def test_window_starts_cover_the_axis_with_the_overlap():
    assert window_starts(32, 32, 0.5) == [0]
    assert window_starts(20, 32, 0.5) == [0]
    s = window_starts(100, 32, 0.5)
    assert s[0] == 0 and s[-1] == 100 - 32
    assert all(b - a <= 16 for a, b in zip(s, s[1:], strict=False))


def test_gaussian_weights_peak_in_the_centre_and_stay_positive():
    w = gaussian_weights((8, 10, 12))
    assert w.shape == (8, 10, 12) and w.min() > 0 and w.max() == pytest.approx(1.0)
    assert w[4, 5, 6] > w[0, 0, 0]
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1], rtol=1e-6)  # symmetric


def test_a_voxelwise_model_is_reproduced_exactly_on_any_volume_size():
    rng = np.random.default_rng(0)
    image = rng.random((37, 29, 16, 2)).astype(np.float32)  # smaller than the patch in one axis

    def predict(x):  # per-voxel "probabilities": softmax over the two channels
        e = np.exp(x)
        return e / e.sum(-1, keepdims=True)

    calls = []

    def counted(x):
        calls.append(x.shape[0])
        return predict(x)

    out = sliding_window_predict(counted, image, (16, 16, 32), 2, overlap=0.5, batch_size=3)
    assert out.shape == (37, 29, 16, 2)
    np.testing.assert_allclose(out, predict(image), atol=1e-6)
    assert max(calls) <= 3  # windows are streamed in batches, never all at once


def test_flip_tta_of_a_flip_equivariant_model_changes_nothing():
    rng = np.random.default_rng(1)
    image = rng.random((24, 24, 24, 1)).astype(np.float32)

    def predict(x):
        return np.concatenate([x, 1 - x], axis=-1)

    a = sliding_window_predict(predict, image, (16, 16, 16), 2, tta=1)
    b = sliding_window_predict(predict, image, (16, 16, 16), 2, tta=8)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert len(flips(8)) == 8 and flips(1) == [()]
    with pytest.raises(ValueError):
        flips(9)


def test_flip_tta_averages_a_position_dependent_model():
    image = np.zeros((16, 16, 16, 1), np.float32)

    def predict(x):  # "probability" rises along depth: flipping depth mirrors it
        ramp = np.linspace(0, 1, x.shape[1], dtype=np.float32)[None, :, None, None, None]
        p = np.broadcast_to(ramp, (*x.shape[:4], 1))
        return np.concatenate([p, 1 - p], axis=-1)

    out = sliding_window_predict(predict, image, (16, 16, 16), 2, tta=2)  # none + flip of depth
    np.testing.assert_allclose(out[..., 0], 0.5, atol=1e-6)


def test_probabilities_to_classes_softmax_and_regions():
    p = np.zeros((2, 1, 1, 4), np.float32)
    p[0, 0, 0, 3] = 1
    p[1, 0, 0, 0] = 1
    assert probabilities_to_classes(p, "softmax", LEGACY)[:, 0, 0].tolist() == [3, 0]
    r = np.array([[0.9, 0.9, 0.9], [0.9, 0.1, 0.1], [0.9, 0.9, 0.2], [0.1, 0.1, 0.1]], np.float32)
    assert probabilities_to_classes(r, "regions", LEGACY).tolist() == [3, 2, 1, 0]


@pytest.mark.parametrize(("size", "patch", "overlap", "expected"), [
    # stride int(patch * (1 - overlap)), then the starts spread evenly over [0, size - patch]
    (100, 32, 0.5, [0, 14, 27, 41, 54, 68]),
    (100, 32, 0.25, [0, 23, 45, 68]),
    (100, 32, 0.75, [0, 8, 15, 23, 30, 38, 45, 53, 60, 68]),
    (100, 32, 0.0, [0, 23, 45, 68]),
    (96, 32, 0.0, [0, 32, 64]),  # tiles exactly, no overlap and no gap
    (40, 16, 0.75, [0, 4, 8, 12, 16, 20, 24]),
    (17, 16, 0.9, [0, 1]),
    (16, 16, 0.0, [0]),
])
def test_window_starts_exact_for_each_overlap(size, patch, overlap, expected):
    s = window_starts(size, patch, overlap)
    assert s == expected
    stride = max(1, int(patch * (1 - overlap)))
    assert s[0] == 0 and s[-1] == size - patch
    # consecutive windows overlap at least as asked, and never leave a gap
    assert all(0 < b - a <= stride for a, b in zip(s, s[1:], strict=False))


def test_window_starts_zero_overlap_tiles_without_gaps_or_explosion():
    for size in range(16, 200, 7):
        s = window_starts(size, 16, 0.0)
        assert len(s) == int(np.ceil((size - 16) / 16)) + 1  # the fewest windows that cover
        covered = np.zeros(size, bool)
        for a in s:
            covered[a:a + 16] = True
        assert covered.all()


def _gauss_1d(p: int) -> np.ndarray:
    sigma = p / 8
    return np.array([np.exp(-0.5 * ((i - (p - 1) / 2) / sigma) ** 2) for i in range(p)])


def _gauss(patch) -> np.ndarray:
    d, h, w = patch
    g = np.einsum("i,j,k->ijk", _gauss_1d(d), _gauss_1d(h), _gauss_1d(w))
    return np.maximum(g / g.max(), 1e-3)


def test_gaussian_weights_match_the_formula():
    w = gaussian_weights((4, 6, 8))
    assert w.shape == (4, 6, 8) and w.dtype == np.float32
    np.testing.assert_allclose(w, _gauss((4, 6, 8)), rtol=1e-6, atol=1e-9)
    # values written out: sigma = (0.5, 0.75, 1), centre (1.5, 2.5, 3.5), so the peak is at the
    # four (eight) middle voxels and w = exp(-((d^2 - 1/4) / sigma^2) / 2) summed over the axes
    assert w[1, 2, 3] == pytest.approx(1.0) and w[2, 3, 4] == pytest.approx(1.0)
    assert w[0, 2, 3] == pytest.approx(np.exp(-4.0), rel=1e-5)  # (2.25 - .25) / .25 = 8
    assert w[1, 1, 3] == pytest.approx(np.exp(-1 / 0.5625), rel=1e-5)  # (2.25 - .25) / .5625
    assert w[1, 2, 1] == pytest.approx(np.exp(-3.0), rel=1e-5)  # (6.25 - .25) / 1
    assert w[0, 0, 0] == pytest.approx(1e-3)  # exp(-15.3) is floored at 1e-3
    big = gaussian_weights((32, 32, 32))
    assert big[15, 15, 15] == pytest.approx(1.0) and big[16, 16, 16] == pytest.approx(1.0)
    assert big[4, 15, 15] == pytest.approx(np.exp(-4.125), rel=1e-5)  # (11.5^2 - .25) / 16 / 2
    assert big[0, 15, 15] == pytest.approx(1e-3)  # exp(-7.5) = 5.5e-4, floored


def test_blending_of_a_position_dependent_model_matches_brute_force():
    patch = (12, 10, 8)
    image = np.ones((20, 17, 6, 1), np.float32)  # x smaller than the patch: padded 1 + 1

    def predict(x):  # channel c = the voxel's index along axis c inside its window
        b = x.shape[0]
        idx = np.stack(np.meshgrid(*[np.arange(p) for p in patch], indexing="ij"), -1)
        return np.broadcast_to(idx, (b, *patch, 3)).astype(np.float32)

    out = sliding_window_predict(predict, image, patch, 3, overlap=0.5, batch_size=3)
    # independent expectation on the padded grid (20, 17, 8): window starts written out
    starts = ([0, 4, 8], [0, 4, 7], [0])  # stride 6 / 5 / -: n = ceil(8/6)+1, ceil(7/5)+1, 1
    g = _gauss(patch)
    acc = np.zeros((20, 17, 8, 3))
    norm = np.zeros((20, 17, 8))
    idx = np.stack(np.meshgrid(*[np.arange(p) for p in patch], indexing="ij"), -1)
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                sl = (slice(z, z + 12), slice(y, y + 10), slice(x, x + 8))
                acc[sl] += g[..., None] * idx
                norm[sl] += g
    expected = (acc / norm[..., None])[:, :, 1:7]
    assert out.shape == (20, 17, 6, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # the blend really mixes windows: z = 6 is index 6 of the first window, 2 of the second
    assert 2 < out[6, 0, 0, 0] < 6


def test_count_windows_is_the_number_of_windows_run_and_reported():
    from unet3d.inference.predictor import count_windows

    image = np.zeros((37, 29, 10, 1), np.float32)  # padded to 16 along the last axis: 1 window
    calls, done = [], []

    def predict(x):
        calls.append(x.shape[0])
        return np.zeros((*x.shape[:4], 2), np.float32)

    sliding_window_predict(predict, image, (16, 16, 16), 2, overlap=0.5, batch_size=5, tta=2,
                           progress=done.append)
    # starts: 37 -> [0, 7, 14, 21] (4), 29 -> [0, 6, 13] (3), 10 -> [0] (1)
    assert count_windows(image.shape[:3], (16, 16, 16), 0.5) == 12
    assert sum(calls) == 12 * 2 and sum(done) == 12  # every window once per flip; progress per window
    assert count_windows((64, 64, 64), (32, 32, 32), 0.75) == 5 ** 3
