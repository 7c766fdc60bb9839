from __future__ import annotations

import numpy as np
import pytest

from unet3d.inference import (
    flips,
    gaussian_weights,
    probabilities_to_classes,
    sliding_window_predict,
    window_starts,
)


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
    assert probabilities_to_classes(p, "softmax")[:, 0, 0].tolist() == [3, 0]
    r = np.array([[0.9, 0.9, 0.9], [0.9, 0.1, 0.1], [0.9, 0.9, 0.2], [0.1, 0.1, 0.1]], np.float32)
    assert probabilities_to_classes(r, "regions").tolist() == [3, 2, 1, 0]
