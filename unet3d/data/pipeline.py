"""tf.data training pipeline over the preprocessed cache.

Each element is drawn independently from a generator seeded by (seed, element index), so the stream
is reproducible whatever the parallelism, and a resumed run can continue with a fresh, still
deterministic stream. Crops are read from memory-mapped .npy files (only the crop is touched) and
padded with zeros where the volume is smaller than the crop. A ``foreground_ratio`` fraction of crops
is centred on a random tumour voxel; the rest are uniform over the volume.
Augmentation on the host (``data.augment_on: host``; TensorFlow ops, parallel): mirror flips per
axis, per-channel intensity scale and shift, Gaussian noise. By default the augmentation runs on
the device instead (unet3d.training.augment) and the host only slices crops, passing them on as float16, the
cache's own dtype (half the bytes to copy and to move to a GPU; cast to float32 on the device).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from unet3d.config import DataConfig
from unet3d.data.preprocess import CachedCase


class CropSampler:
    """Draws (image crop, label crop) pairs from cached cases.

    Shapes: image (D, H, W, C) ``dtype`` (float32, or float16 as cached), label (D, H, W) uint8
    training classes (the cache holds file label values; ``lut`` maps them, see LabelScheme.lut),
    (D, H, W) = ``crop``.
    """

    def __init__(self, entries: Sequence[CachedCase], crop: tuple[int, int, int],
                 foreground_ratio: float, seed: int, lut: np.ndarray,
                 dtype: type = np.float32) -> None:
        if not entries:
            raise ValueError("CropSampler: no training cases")
        missing = [e.case_id for e in entries if not e.meta["labelled"]]
        if missing:
            raise ValueError(f"CropSampler: cases without labels cannot be trained on: {missing}")
        self.images = [e.image(mmap=True) for e in entries]
        self.labels = [e.label(mmap=True) for e in entries]
        self.fg = [e.foreground() for e in entries]
        self.crop = np.array(crop)
        self.ratio = foreground_ratio
        self.seed = seed
        self.lut = lut
        self.dtype = dtype
        self.channels = self.images[0].shape[-1]

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(index)])
        k = int(rng.integers(len(self.images)))
        image, label, fg = self.images[k], self.labels[k], self.fg[k]
        shape = np.array(image.shape[:3])
        if len(fg) and rng.uniform() < self.ratio:
            centre = fg[rng.integers(len(fg))]
            start = centre - self.crop // 2 + rng.integers(-(self.crop // 4), self.crop // 4 + 1)
        else:
            start = np.array([rng.integers(min(0, s - c), max(0, s - c) + 1)
                              for s, c in zip(shape, self.crop, strict=True)])
        # Keep the crop inside the volume where the volume is large enough; otherwise centre-pad.
        start = np.where(shape >= self.crop, np.clip(start, 0, shape - self.crop),
                         (shape - self.crop) // 2)
        stop = start + self.crop
        src_lo, src_hi = np.maximum(start, 0), np.minimum(stop, shape)
        dst_lo = src_lo - start
        dst_hi = dst_lo + (src_hi - src_lo)
        img = np.zeros((*self.crop, self.channels), self.dtype)
        lab = np.zeros(tuple(self.crop), np.uint8)
        s = tuple(slice(a, b) for a, b in zip(src_lo, src_hi, strict=True))
        d = tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi, strict=True))
        img[d] = image[s]
        lab[d] = self.lut[label[s]]
        return img, lab


def _augment(image: tf.Tensor, label: tf.Tensor, index: tf.Tensor, seed: int,
             cfg: DataConfig) -> tuple[tf.Tensor, tf.Tensor]:
    base = tf.stack([tf.cast(seed, tf.int64), index])
    u = tf.random.stateless_uniform([3], seed=base)
    label = label[..., tf.newaxis]
    for axis in range(3):
        flip = u[axis] < cfg.flip_prob
        image = tf.cond(flip, lambda x=image, a=axis: tf.reverse(x, [a]), lambda x=image: x)
        label = tf.cond(flip, lambda x=label, a=axis: tf.reverse(x, [a]), lambda x=label: x)
    c = image.shape[-1]
    if cfg.intensity_scale > 0:
        scale = tf.random.stateless_uniform([c], seed=base + 1, minval=1 - cfg.intensity_scale,
                                            maxval=1 + cfg.intensity_scale)
        image = image * scale
    if cfg.intensity_shift > 0:
        shift = tf.random.stateless_uniform([c], seed=base + 2, minval=-cfg.intensity_shift,
                                            maxval=cfg.intensity_shift)
        image = image + shift
    if cfg.noise_std > 0:
        std = tf.random.stateless_uniform([], seed=base + 3, maxval=cfg.noise_std)
        image = image + std * tf.random.stateless_normal(tf.shape(image), seed=base + 4)
    return image, label[..., 0]


def train_dataset(entries: Sequence[CachedCase], cfg: DataConfig, batch_size: int, seed: int,
                  *, n_outputs: int = 1, augment: bool = True, start_index: int = 0,
                  shard: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
    """An endless, batched dataset of augmented crops.

    Args:
        entries: cached training cases (labelled).
        cfg: crop size, foreground ratio, augmentation strengths.
        batch_size: crops per batch.
        seed: seeds sampling and augmentation.
        n_outputs: number of model outputs (deep supervision): the label is repeated to match.
        augment: apply the augmentation here (off when it runs on the device: the crops then
            stay float16, as cached; unet3d.training.augment casts them).
        start_index: first element index; a resumed run passes where it stopped for a fresh stream.
        shard: (rank, workers): this worker draws indices rank, rank+workers, ... (distinct crops).

    Yields:
        (image (B, D, H, W, C) float32 (float16 without ``augment``), label (B, D, H, W) uint8, or a
        tuple of n_outputs labels).
    """
    dtype = np.float32 if augment else np.float16
    sampler = CropSampler(entries, cfg.crop, cfg.foreground_ratio, seed, lut=cfg.scheme.lut(),
                          dtype=dtype)
    crop = tuple(cfg.crop)
    rank, workers = shard

    def load(index):
        img, lab = tf.numpy_function(sampler.sample, [index], [tf.as_dtype(dtype), tf.uint8],
                                     stateful=False)
        img.set_shape((*crop, sampler.channels))
        lab.set_shape(crop)
        return img, lab, index

    ds = tf.data.Dataset.counter(start=start_index * workers + rank, step=workers)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augment:
        ds = ds.map(lambda i, lab, idx: _augment(i, lab, idx, seed, cfg),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(lambda i, lab, idx: (i, lab))
    ds = ds.batch(batch_size, drop_remainder=True)
    if n_outputs > 1:
        ds = ds.map(lambda i, lab: (i, tuple([lab] * n_outputs)))
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
