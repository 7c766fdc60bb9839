"""Augmentation inside the compiled training step, on the device (keras.ops: TensorFlow and JAX).

The host then only slices crops from the memory-mapped cache; flips, intensity jitter and noise run
where the model runs (NVIDIA augments on the GPU with DALI for the same reason: at 128^3 the CPU
work per crop, above all drawing the noise, caps a GPU's input; BENCHMARKS.md, "Input path").

Labels are not touched. A mirror flip is its own inverse and every loss here sums or averages over
voxels, so training the network on a flipped image against the unflipped label, with its outputs
flipped back, is the same step as training it on the flipped pair: :func:`augmented_model` flips the
image, runs the network, and flips each output back (deep-supervision outputs are full-size too).
The draws follow the host version (``unet3d.data.pipeline``): per crop a flip per axis with
probability ``flip_prob``, a scale in [1-s, 1+s] and a shift in [-s, s] per channel, then Gaussian
noise of a standard deviation drawn from [0, noise_std]. They come from a Keras SeedGenerator seeded
by the run's seed, so a run is reproducible on a given device and backend (not bit-identical to the
host stream).
"""

from __future__ import annotations

import keras
from keras import ops

from unet3d.config import DataConfig

_SPATIAL_AXES = (1, 2, 3)  # (N, D, H, W, C)


def _flip_where(x, flips, axis_index: int):
    """Flips the crops of ``x`` whose ``flips[:, axis_index]`` is set along that spatial axis."""
    mask = ops.reshape(flips[:, axis_index], (-1, 1, 1, 1, 1))
    return ops.where(mask, ops.flip(x, axis=_SPATIAL_AXES[axis_index]), x)


class DeviceAugment(keras.layers.Layer):
    """Training only: (image (N, D, H, W, C)) -> (augmented image, flips (N, 3) bool).

    Outside training the image passes unchanged and no axis is flipped. Runs in float32 whatever
    the global precision policy (the jitter and noise are small next to the data's range).
    """

    def __init__(self, flip_prob: float = 0.5, intensity_scale: float = 0.1,
                 intensity_shift: float = 0.1, noise_std: float = 0.05, seed: int = 0,
                 **kwargs) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.flip_prob = float(flip_prob)
        self.intensity_scale = float(intensity_scale)
        self.intensity_shift = float(intensity_shift)
        self.noise_std = float(noise_std)
        self.seed = int(seed)
        self.generator = keras.random.SeedGenerator(self.seed)

    def call(self, image, training=None):
        image = ops.cast(image, "float32")  # (the host passes crops as cached, float16)
        n = ops.shape(image)[0]
        if not training:
            return image, ops.zeros((n, 3), dtype="bool")
        flips = keras.random.uniform((n, 3), seed=self.generator) < self.flip_prob
        for a in range(3):
            image = _flip_where(image, flips, a)
        c = ops.shape(image)[-1]
        if self.intensity_scale > 0:
            s = self.intensity_scale
            image = image * keras.random.uniform((n, 1, 1, 1, c), 1 - s, 1 + s, seed=self.generator)
        if self.intensity_shift > 0:
            s = self.intensity_shift
            image = image + keras.random.uniform((n, 1, 1, 1, c), -s, s, seed=self.generator)
        if self.noise_std > 0:
            std = keras.random.uniform((n, 1, 1, 1, 1), 0.0, self.noise_std, seed=self.generator)
            image = image + std * keras.random.normal(ops.shape(image), seed=self.generator)
        return image, flips

    def compute_output_spec(self, image, training=None):
        return (keras.KerasTensor(image.shape, "float32"),
                keras.KerasTensor((image.shape[0], 3), "bool"))

    def get_config(self) -> dict:
        return {**super().get_config(), "flip_prob": self.flip_prob,
                "intensity_scale": self.intensity_scale, "intensity_shift": self.intensity_shift,
                "noise_std": self.noise_std, "seed": self.seed}


class FlipBack(keras.layers.Layer):
    """(output (N, D, H, W, K), flips (N, 3)) -> the output flipped back where the input was."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        out, flips = inputs
        for a in range(3):
            out = _flip_where(out, flips, a)
        return out

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(inputs[0].shape, inputs[0].dtype)


def augmented_model(net: keras.Model, cfg: DataConfig, seed: int) -> keras.Model:
    """The model ``fit`` trains when the augmentation runs on the device: ``net`` between a
    :class:`DeviceAugment` and a :class:`FlipBack` per output. It shares ``net``'s weights and has
    none of its own (``get_weights()`` is ``net``'s, in the same order), so checkpoints are the same
    either way; save and predict with ``net``. Its input may be float16 (crops as cached).
    """
    image = keras.Input(shape=net.input.shape[1:], name="image")
    x, flips = DeviceAugment(cfg.flip_prob, cfg.intensity_scale, cfg.intensity_shift,
                             cfg.noise_std, seed=seed, name="device_augment")(image)
    out = net(x)
    if isinstance(out, (list, tuple)):
        out = [FlipBack(name=f"flip_back_{i}")([o, flips]) for i, o in enumerate(out)]
    else:
        out = FlipBack(name="flip_back")([out, flips])
    return keras.Model(image, out, name=f"{net.name}_augmented")
