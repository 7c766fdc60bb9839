"""Losses (keras.ops): hand-computed values on tiny volumes, label-shape handling, JAX vs TF."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unet3d.labels import BUILTIN
from unet3d.training import losses
from unet3d.training.losses import (
    SMOOTH,
    cross_entropy,
    deep_supervision_weights,
    dice_ce_loss,
    dice_loss,
    get_loss,
    region_loss,
    region_targets,
)

ROOT = Path(__file__).resolve().parents[2]
S = SMOOTH
LEGACY = BUILTIN["brats-legacy"]
WT_TC_ET = LEGACY.region_classes  # WT {1, 2, 3}, TC {1, 3}, ET {3} (training classes)


def _f(x) -> float:
    return float(np.asarray(x))


def _tiny_case() -> tuple[np.ndarray, np.ndarray]:
    """A 1x2x2x2 volume, 3 classes. Flat labels 0,0,0,0,1,1,2,2 and softmax-like predictions:

    label 0 voxels -> (1, 0, 0); label 1 voxels -> (0, .5, .5); label 2 voxels -> (0, 0, 1).
    """
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2], dtype=np.int32)
    probs = np.array([[1, 0, 0]] * 4 + [[0, 0.5, 0.5]] * 2 + [[0, 0, 1]] * 2, dtype=np.float32)
    return labels.reshape(1, 2, 2, 2), probs.reshape(1, 2, 2, 2, 3)


# Hand computation for _tiny_case:
#   class 1: |T| = 2, sum(P) = 0.5 + 0.5 = 1, inter = 1        -> Dice (2*1 + s) / (3 + s)
#   class 2: |T| = 2, sum(P) = 0.5 + 0.5 + 1 + 1 = 3, inter = 2 -> Dice (2*2 + s) / (5 + s)
#   class 0 (excluded): would be (2*4 + s) / (8 + s) = 1
TINY_DICE_1 = (2.0 + S) / (3.0 + S)
TINY_DICE_2 = (4.0 + S) / (5.0 + S)
TINY_DICE_LOSS = 1.0 - (TINY_DICE_1 + TINY_DICE_2) / 2.0  # ~ 4/15
# CE: only the two label-1 voxels contribute, each -log(0.5); mean over 8 voxels.
TINY_CE = 2.0 * math.log(2.0) / 8.0


def test_dice_loss_hand_value_excludes_background():
    y, p = _tiny_case()
    got = _f(dice_loss(y, p))
    assert got == pytest.approx(TINY_DICE_LOSS, abs=1e-6)
    assert got == pytest.approx(4.0 / 15.0, abs=1e-5)
    with_background = 1.0 - (1.0 + TINY_DICE_1 + TINY_DICE_2) / 3.0  # 8/45, if bg were included
    assert abs(got - with_background) > 0.05


def test_soft_dice_per_channel_shape_and_values():
    y, p = _tiny_case()
    onehot = np.eye(3, dtype=np.float32)[y]
    d = np.asarray(losses.soft_dice_per_channel(onehot, p))
    assert d.shape == (1, 3)
    np.testing.assert_allclose(d[0], [1.0, TINY_DICE_1, TINY_DICE_2], atol=1e-6)


def test_cross_entropy_hand_value():
    y, p = _tiny_case()
    assert _f(cross_entropy(y, p)) == pytest.approx(TINY_CE, abs=1e-6)


def test_dice_ce_is_dice_plus_ce():
    y, p = _tiny_case()
    got = _f(dice_ce_loss(y, p))
    assert got == pytest.approx(_f(dice_loss(y, p)) + _f(cross_entropy(y, p)), abs=1e-6)
    assert got == pytest.approx(TINY_DICE_LOSS + TINY_CE, abs=1e-6)


def test_perfect_prediction_gives_zero_losses():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=(2, 3, 3, 3)).astype(np.int32)
    p = np.eye(4, dtype=np.float32)[y]
    assert _f(dice_loss(y, p)) == pytest.approx(0.0, abs=1e-6)
    assert _f(cross_entropy(y, p)) == pytest.approx(0.0, abs=1e-6)
    assert _f(dice_ce_loss(y, p)) == pytest.approx(0.0, abs=1e-6)
    perfect = np.asarray(region_targets(y, WT_TC_ET))
    assert _f(region_loss(y, perfect, WT_TC_ET)) == pytest.approx(0.0, abs=1e-5)


def test_wrong_prediction_gives_large_dice_loss():
    y, _ = _tiny_case()
    # Predict everything as background: foreground Dice ~ 0 -> loss ~ 1.
    p = np.zeros(y.shape + (3,), dtype=np.float32)
    p[..., 0] = 1.0
    assert _f(dice_loss(y, p)) == pytest.approx(1.0, abs=1e-4)


def test_dice_loss_is_mean_over_samples():
    y, p = _tiny_case()
    y2 = np.zeros_like(y)
    y2[0, 0, 0, 0] = 2
    p2 = np.full(y2.shape + (3,), 1.0 / 3.0, dtype=np.float32)
    yb, pb = np.concatenate([y, y2]), np.concatenate([p, p2])
    # Sample 2: class 1 absent, sum(P) = 8/3 -> (s)/(8/3 + s); class 2: inter 1/3, |T| 1 -> (2/3+s)/(1+8/3+s)
    d21 = S / (8.0 / 3.0 + S)
    d22 = (2.0 / 3.0 + S) / (1.0 + 8.0 / 3.0 + S)
    expected = 1.0 - (TINY_DICE_1 + TINY_DICE_2 + d21 + d22) / 4.0
    assert _f(dice_loss(yb, pb)) == pytest.approx(expected, abs=1e-6)


def test_region_targets_maps_classes_to_wt_tc_et():
    y = np.array([0, 1, 2, 3], dtype=np.int32).reshape(1, 1, 2, 2)
    t = np.asarray(region_targets(y, WT_TC_ET))
    assert t.shape == (1, 1, 2, 2, 3)
    expected = np.array([[0, 0, 0],   # background
                         [1, 1, 0],   # NCR: WT, TC
                         [1, 0, 0],   # ED: WT
                         [1, 1, 1]],  # ET: WT, TC, ET
                        dtype=np.float32)
    np.testing.assert_array_equal(t.reshape(4, 3), expected)
    np.testing.assert_array_equal(np.asarray(region_targets(y[..., None], WT_TC_ET)), t)


def test_region_loss_hand_value():
    # Two voxels: label 3 (all regions on) and label 0 (all off). Sigmoid outputs per channel:
    y = np.array([3, 0], dtype=np.int32).reshape(1, 1, 1, 2)
    p = np.array([[0.9, 0.6, 0.5], [0.1, 0.2, 0.5]], dtype=np.float32).reshape(1, 1, 1, 2, 3)
    # WT: inter .9, denom 1 + 1.0 -> (1.8+s)/(2+s) = .9
    # TC: inter .6, denom 1 + 0.8 -> (1.2+s)/(1.8+s) = 2/3
    # ET: inter .5, denom 1 + 1.0 -> (1.0+s)/(2+s) = .5
    dice = ((1.8 + S) / (2.0 + S) + (1.2 + S) / (1.8 + S) + (1.0 + S) / (2.0 + S)) / 3.0
    bce = -(math.log(0.9) + math.log(0.6) + math.log(0.5)      # voxel 1: targets 1
            + math.log(0.9) + math.log(0.8) + math.log(0.5)) / 6.0  # voxel 2: targets 0
    expected = (1.0 - dice) + bce
    assert _f(region_loss(y, p, WT_TC_ET)) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("name", ["dice", "dice_ce", "region"])
def test_label_shape_with_or_without_channel_axis(name):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, size=(2, 3, 4, 5)).astype(np.int32)
    k = 3 if name == "region" else 4
    logits = rng.normal(size=y.shape + (k,)).astype(np.float32)
    if name == "region":
        p = 1.0 / (1.0 + np.exp(-logits))
    else:
        p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    fn = get_loss(name, LEGACY)
    a, b = _f(fn(y, p)), _f(fn(y[..., None], p))
    assert np.isfinite(a) and a > 0.1
    assert a == pytest.approx(b, abs=1e-7)


def test_get_loss_known_and_unknown():
    assert get_loss("dice", LEGACY) is dice_loss
    assert get_loss("dice_ce", LEGACY) is dice_ce_loss
    y = np.array([3, 0], dtype=np.int32).reshape(1, 1, 1, 2)
    p = np.full((1, 1, 1, 2, 3), 0.4, np.float32)
    assert _f(get_loss("region", LEGACY)(y, p)) == pytest.approx(_f(region_loss(y, p, WT_TC_ET)), abs=1e-7)
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("focal", LEGACY)


def test_region_loss_follows_the_scheme_regions():
    """BraTS 2024 GLI: a fourth sigmoid channel for RC (class 4), in no tumour region."""
    from unet3d.labels import BUILTIN

    y = np.array([0, 1, 2, 3, 4], dtype=np.int32).reshape(1, 1, 1, 5)
    t = np.asarray(region_targets(y, BUILTIN["brats-2024-gli"].region_classes)).reshape(5, 4)
    np.testing.assert_array_equal(t, [[0, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0],
                                      [0, 0, 0, 1]])
    fn = get_loss("region", BUILTIN["brats-2024-gli"])
    assert _f(fn(y, t.reshape(1, 1, 1, 5, 4))) == pytest.approx(0.0, abs=1e-5)  # perfect -> 0


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_deep_supervision_weights_sum_to_one_and_halve(n):
    w = deep_supervision_weights(n)
    assert len(w) == n
    assert sum(w) == pytest.approx(1.0, abs=1e-12)
    for a, b in zip(w, w[1:], strict=False):
        assert b == pytest.approx(a / 2.0, rel=1e-12)


def test_deep_supervision_weights_values():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])


_BACKEND_SNIPPET = r"""
import json
import numpy as np
import unet3d, keras
from unet3d.labels import BUILTIN
from unet3d.training.losses import dice_ce_loss, region_loss

def compute():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, size=(2, 4, 4, 4)).astype(np.int32)
    z = rng.normal(size=y.shape + (4,)).astype(np.float32)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    s = (1.0 / (1.0 + np.exp(-z[..., :3]))).astype(np.float32)
    return {"backend": keras.backend.backend(),
            "dice_ce": float(np.asarray(dice_ce_loss(y, p))),
            "region": float(np.asarray(region_loss(y, s,
                                                   BUILTIN["brats-legacy"].region_classes)))}
"""


def _losses_on_backend(backend: str) -> dict:
    """The snippet's losses computed on ``backend``: in this process if it already runs that
    backend, else in a subprocess (KERAS_BACKEND must be set before keras is first imported)."""
    import keras

    if keras.backend.backend() == backend:
        ns: dict = {}
        exec(_BACKEND_SNIPPET, ns)
        return ns["compute"]()
    env = {**os.environ, "KERAS_BACKEND": backend}
    code = _BACKEND_SNIPPET + "\nprint(json.dumps(compute()))\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_loss_same_value_on_jax_and_tensorflow():
    pytest.importorskip("jax")
    tf_vals = _losses_on_backend("tensorflow")
    jax_vals = _losses_on_backend("jax")
    assert tf_vals["backend"] == "tensorflow"
    assert jax_vals["backend"] == "jax"
    assert tf_vals["dice_ce"] > 0.5 and tf_vals["region"] > 0.5
    assert jax_vals["dice_ce"] == pytest.approx(tf_vals["dice_ce"], abs=1e-5)
    assert jax_vals["region"] == pytest.approx(tf_vals["region"], abs=1e-5)
