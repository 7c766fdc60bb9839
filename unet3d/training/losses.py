"""Segmentation losses (keras.ops only, so they run on TensorFlow and JAX).

Shapes: ``y_true`` is an integer class map (N, D, H, W) or (N, D, H, W, 1) with training classes
0..K-1; ``y_pred`` is (N, D, H, W, K) softmax probabilities, or (N, D, H, W, R) sigmoid
probabilities of the label scheme's R regions (e.g. WT, TC, ET) for the region loss.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

from keras import ops

from unet3d.labels import LabelScheme

SMOOTH = 1e-5
_SPATIAL = (1, 2, 3)


def _class_map(y_true):
    y = ops.cast(y_true, "int32")
    if len(y.shape) == 5:
        y = ops.squeeze(y, axis=-1)
    return y


def soft_dice_per_channel(target, probs, smooth: float = SMOOTH):
    """Soft Dice per sample and channel: (N, ..., C) x2 -> (N, C)."""
    target = ops.cast(target, "float32")
    probs = ops.cast(probs, "float32")
    inter = ops.sum(target * probs, axis=_SPATIAL)
    denom = ops.sum(target, axis=_SPATIAL) + ops.sum(probs, axis=_SPATIAL)
    return (2.0 * inter + smooth) / (denom + smooth)


def dice_loss(y_true, y_pred):
    """1 - mean soft Dice over the foreground classes (background excluded), per batch mean."""
    k = y_pred.shape[-1]
    onehot = ops.one_hot(_class_map(y_true), k)
    dice = soft_dice_per_channel(onehot, y_pred)[:, 1:]
    return 1.0 - ops.mean(dice)


def cross_entropy(y_true, y_pred):
    """Mean categorical cross-entropy over voxels."""
    probs = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0)
    onehot = ops.one_hot(_class_map(y_true), y_pred.shape[-1])
    return -ops.mean(ops.sum(onehot * ops.log(probs), axis=-1))


def dice_ce_loss(y_true, y_pred):
    """Soft Dice + cross-entropy (NVIDIA's and nnU-Net's default)."""
    return dice_loss(y_true, y_pred) + cross_entropy(y_true, y_pred)


def region_targets(y_true, region_classes: Mapping[str, Sequence[int]]):
    """Class map (N, D, H, W[, 1]) -> float (N, D, H, W, R) targets, one per region (region name
    -> the training classes it unites, in order; default BraTS WT, TC, ET)."""
    y = _class_map(y_true)
    masks = []
    for classes in region_classes.values():
        m = ops.zeros_like(y, dtype="bool")
        for c in classes:
            m = ops.logical_or(m, ops.equal(y, c))
        masks.append(ops.cast(m, "float32"))
    return ops.stack(masks, axis=-1)


def region_loss(y_true, y_pred,
                region_classes: Mapping[str, Sequence[int]]):
    """Region training (the scheme's regions, e.g. WT, TC, ET, as overlapping sigmoid channels):
    soft Dice + binary CE."""
    target = region_targets(y_true, region_classes)
    probs = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0 - 1e-7)
    dice = 1.0 - ops.mean(soft_dice_per_channel(target, probs))
    bce = -ops.mean(target * ops.log(probs) + (1.0 - target) * ops.log(1.0 - probs))
    return dice + bce


LOSSES: dict[str, Callable] = {"dice": dice_loss, "dice_ce": dice_ce_loss, "region": region_loss}


def get_loss(name: str, scheme: LabelScheme) -> Callable:
    """The loss function for ``TrainConfig.loss``; the region loss uses ``scheme``'s regions."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    if name == "region":
        loss = functools.partial(region_loss, region_classes=scheme.region_classes)
        loss.__name__ = "region_loss"  # Keras names the loss metric after it
        return loss
    return LOSSES[name]


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """Weights 1, 1/2, 1/4, ... for the main and auxiliary outputs, normalised to sum to 1."""
    w = [0.5**i for i in range(n_outputs)]
    s = sum(w)
    return [x / s for x in w]
