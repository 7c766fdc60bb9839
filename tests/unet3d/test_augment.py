"""On-device augmentation (unet3d.training.augment): the same draws as the host version, and a training step
through it equals a step on the flipped image and label."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from unet3d.config import DataConfig, ModelConfig
from unet3d.data.pipeline import _augment
from unet3d.training.augment import DeviceAugment, FlipBack, augmented_model
from unet3d.training.losses import get_loss
from unet3d.training.model import build_unet3d

N = 400  # crops per statistic
EDGE = 4


def _host(image: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """The host pipeline's augmentation of ``image`` (D, H, W, C) under N element indices."""
    label = tf.zeros(image.shape[:3], tf.uint8)
    return np.stack([_augment(tf.constant(image), label, tf.constant(i, tf.int64), 7, cfg)[0].numpy()
                     for i in range(N)])


def _device(image: np.ndarray, cfg: DataConfig) -> np.ndarray:
    layer = DeviceAugment(cfg.flip_prob, cfg.intensity_scale, cfg.intensity_shift, cfg.noise_std,
                          seed=7)
    out, _ = layer(np.repeat(image[None], N, axis=0), training=True)
    return np.asarray(out)


def _flip_rates(image: np.ndarray, out: np.ndarray) -> list[float]:
    """The share of crops flipped along each spatial axis (the image is asymmetric in each)."""
    rates = []
    for axis in range(3):
        flipped = np.flip(image, axis)
        # A crop flipped along `axis` matches `flipped` up to the other axes' flips: compare the
        # marginal profile along `axis`, which the other flips leave alone.
        other = tuple(a for a in range(3) if a != axis)
        profile = out.mean(axis=tuple(1 + a for a in other) + (4,))
        rates.append(float(np.mean(np.all(np.isclose(profile, flipped.mean(axis=other + (3,))),
                                          axis=1))))
    return rates


def test_flips_are_drawn_per_axis_with_flip_prob_on_both_paths():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(EDGE, EDGE, EDGE, 2)).astype(np.float32)
    cfg = DataConfig(crop=(EDGE,) * 3, flip_prob=0.3, intensity_scale=0.0, intensity_shift=0.0,
                     noise_std=0.0)
    host, device = _flip_rates(image, _host(image, cfg)), _flip_rates(image, _device(image, cfg))
    print("flip rates host", host, "device", device)
    for h, d in zip(host, device, strict=True):
        assert h == pytest.approx(0.3, abs=0.07) and d == pytest.approx(0.3, abs=0.07)


def test_intensity_and_noise_follow_the_host_distributions():
    image = np.ones((EDGE, EDGE, EDGE, 3), np.float32)
    cfg = DataConfig(crop=(EDGE,) * 3, flip_prob=0.0, intensity_scale=0.2, intensity_shift=0.3,
                     noise_std=0.0)
    for out in (_host(image, cfg), _device(image, cfg)):
        per_channel = out.mean(axis=(1, 2, 3))  # (N, C): scale + shift, constant over the crop
        assert np.allclose(out, per_channel[:, None, None, None, :], atol=1e-6)
        # 1 * U(0.8, 1.2) + U(-0.3, 0.3): mean 1, variance 0.2^2/3 + 0.3^2/3, range [0.5, 1.5].
        assert per_channel.mean() == pytest.approx(1.0, abs=0.02)
        assert per_channel.std() == pytest.approx(np.sqrt((0.04 + 0.09) / 3), rel=0.1)
        assert per_channel.min() >= 0.5 and per_channel.max() <= 1.5
        # The channels get draws of their own.
        assert np.corrcoef(per_channel[:, 0], per_channel[:, 1])[0, 1] == pytest.approx(0, abs=0.15)

    zeros = np.zeros((8, 8, 8, 1), np.float32)
    noisy = DataConfig(crop=(8,) * 3, flip_prob=0.0, intensity_scale=0.0, intensity_shift=0.0,
                       noise_std=0.2)
    for out in (_host(zeros, noisy), _device(zeros, noisy)):
        std = out.reshape(N, -1).std(axis=1)  # per crop: its standard deviation ~ U(0, 0.2)
        assert std.mean() == pytest.approx(0.1, abs=0.01)
        assert std.max() <= 0.22 and std.min() < 0.02
        assert abs(out.mean()) < 0.01


def test_outside_training_the_image_passes_unchanged():
    x = np.random.default_rng(1).normal(size=(2, EDGE, EDGE, EDGE, 4)).astype(np.float32)
    out, flips = DeviceAugment(1.0, 0.5, 0.5, 0.5)(x, training=False)
    assert np.array_equal(np.asarray(out), x) and not np.asarray(flips).any()


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_a_step_through_the_augmentation_is_a_step_on_the_flipped_pair(deep_supervision):
    """Flip the image, run the network, flip its outputs back: the loss against the label is the
    loss of the network's output on the flipped image against the flipped label (and so are the
    gradients), for any flips: here every crop flipped in every axis."""
    cfg = ModelConfig(depth=3, base_filters=4, max_filters=8, deep_supervision=deep_supervision,
                      deep_supervision_heads=1)
    net = build_unet3d(cfg)
    data = DataConfig(crop=(8, 8, 8), flip_prob=1.0, intensity_scale=0.0, intensity_shift=0.0,
                      noise_std=0.0)
    train = augmented_model(net, data, seed=0)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 8, 8, 8, 4)).astype(np.float32)
    y = rng.integers(0, 4, size=(2, 8, 8, 8)).astype(np.uint8)
    loss = get_loss("dice_ce", DataConfig().scheme)

    def first(o):
        return o[0] if isinstance(o, (list, tuple)) else o

    through = first(train(x, training=True))
    flip_all = (1, 2, 3)
    direct = first(net(np.flip(x, flip_all).copy(), training=True))
    assert np.allclose(np.asarray(through), np.flip(np.asarray(direct), flip_all), atol=1e-5)
    a = float(loss(tf.constant(y), through))
    b = float(loss(tf.constant(np.flip(y, flip_all).copy()), direct))
    assert a == pytest.approx(b, rel=1e-5)
    # It has no weights of its own: checkpoints are the network's either way.
    assert len(train.get_weights()) == len(net.get_weights())


def test_flip_back_undoes_the_flips_it_is_given():
    x = np.random.default_rng(3).normal(size=(3, 4, 5, 6, 2)).astype(np.float32)
    flips = np.array([[True, False, False], [False, True, True], [False, False, False]])
    expected = np.stack([np.flip(x[0], 0), np.flip(x[1], (1, 2)), x[2]])
    assert np.array_equal(np.asarray(FlipBack()([x, flips])), expected)
