"""Sliding-window inference over a whole volume with Gaussian importance blending.

Windows of the model's patch size are streamed in batches (never all materialised at once); each
window's probabilities are weighted by a Gaussian centred on the window (sigma = patch/8, as nnU-Net),
so voxels near window borders, where the network sees little context, count less. Optional mirror
test-time augmentation averages over flips of the input.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

import numpy as np

PredictFn = Callable[[np.ndarray], np.ndarray]


def gaussian_weights(patch: Sequence[int], sigma_scale: float = 1 / 8) -> np.ndarray:
    """(D, H, W) float32 importance map, max 1, strictly positive."""
    axes = []
    for p in patch:
        x = np.arange(p, dtype=np.float64) - (p - 1) / 2
        axes.append(np.exp(-0.5 * (x / (p * sigma_scale)) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    w /= w.max()
    return np.maximum(w, 1e-3).astype(np.float32)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Window start offsets covering [0, size) with at least ``overlap`` fractional overlap."""
    if size <= patch:
        return [0]
    stride = max(1, int(patch * (1 - overlap)))
    n = int(np.ceil((size - patch) / stride)) + 1
    return sorted({int(round(x)) for x in np.linspace(0, size - patch, n)})


def _windows(shape: Sequence[int], patch: Sequence[int], overlap: float) -> Iterator[tuple[slice, ...]]:
    starts = [window_starts(s, p, overlap) for s, p in zip(shape, patch, strict=True)]
    for corner in itertools.product(*starts):
        yield tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))


def flips(tta: int) -> list[tuple[int, ...]]:
    """The first ``tta`` of the 8 mirror combinations (1 = no TTA), axes given as (1, 2, 3) batch axes."""
    combos = [c for r in range(4) for c in itertools.combinations((1, 2, 3), r)]
    if not 1 <= tta <= 8:
        raise ValueError(f"tta={tta} must be in 1..8")
    return combos[:tta]


def sliding_window_predict(predict: PredictFn, image: np.ndarray, patch: Sequence[int],
                           n_out: int, *, overlap: float = 0.5, batch_size: int = 2,
                           tta: int = 1) -> np.ndarray:
    """Probabilities for a whole volume.

    Args:
        predict: maps a (B, pd, ph, pw, C) float32 batch to (B, pd, ph, pw, n_out) probabilities.
        image: (D, H, W, C) float32 volume (any size; padded with zeros to at least ``patch``).
        patch: window size (pd, ph, pw), a size the model accepts.
        n_out: output channels.
        overlap: fractional overlap of neighbouring windows in [0, 1).
        batch_size: windows per ``predict`` call.
        tta: number of mirror flips to average (1 = none, up to 8).

    Returns:
        (D, H, W, n_out) float32 blended probabilities.
    """
    patch = tuple(int(p) for p in patch)
    shape = image.shape[:3]
    padded_shape = tuple(max(s, p) for s, p in zip(shape, patch, strict=True))
    if padded_shape != shape:
        pad = [((ps - s) // 2, ps - s - (ps - s) // 2) for s, ps in zip(shape, padded_shape, strict=True)]
        image = np.pad(image, pad + [(0, 0)])
    else:
        pad = [(0, 0)] * 3
    weights = gaussian_weights(patch)
    acc = np.zeros((*padded_shape, n_out), np.float32)
    norm = np.zeros(padded_shape, np.float32)
    flip_axes = flips(tta)

    def run(batch_slices: list[tuple[slice, ...]]) -> None:
        x = np.stack([image[s] for s in batch_slices]).astype(np.float32, copy=False)
        prob = np.zeros((*x.shape[:4], n_out), np.float32)
        for axes in flip_axes:
            xf = np.flip(x, axes) if axes else x
            p = np.asarray(predict(np.ascontiguousarray(xf)), dtype=np.float32)
            prob += np.flip(p, axes) if axes else p
        prob /= len(flip_axes)
        for s, p in zip(batch_slices, prob, strict=True):
            acc[s] += p * weights[..., None]
            norm[s] += weights

    batch: list[tuple[slice, ...]] = []
    for s in _windows(padded_shape, patch, overlap):
        batch.append(s)
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    out = acc / norm[..., None]
    crop = tuple(slice(a, a + s) for (a, _), s in zip(pad, shape, strict=True))
    return out[crop]


def keras_predict_fn(model) -> PredictFn:
    """A PredictFn for a Keras model (main output only when the model has deep supervision)."""

    def predict(x: np.ndarray) -> np.ndarray:
        y = model.predict_on_batch(x)
        if isinstance(y, (list, tuple)):
            y = y[0]
        return np.asarray(y)

    return predict


def probabilities_to_classes(probs: np.ndarray, head: str) -> np.ndarray:
    """(…, K) probabilities -> (…) uint8 training classes (softmax argmax, or nested regions > 0.5)."""
    if head == "regions":
        from unet3d.regions import regions_to_classes

        return regions_to_classes(probs > 0.5)
    return np.argmax(probs, axis=-1).astype(np.uint8)
