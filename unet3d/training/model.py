"""The parameterized 3D-UNet, built from keras layers only so that it runs on TensorFlow and JAX.

Layout (channels-last, input N x D x H x W x C, D/H/W multiples of 2**(depth-1)):
  level 0:      conv3 -> conv3                       (each conv: Conv3D -> norm -> activation)
  level i > 0:  conv3 stride 2 -> conv3
  decoder i:    upsample x2 (a k2 s2 transposed convolution with bias, no norm/act: UpConv3D),
                concat skip, conv3 -> conv3
  head:         Conv3D (k1 or k3) to the output channels, softmax (or sigmoid for region heads), float32
With NVIDIA's settings (6 levels, 32..320 filters, instance norm, k3 head) this is their network,
31,196,196 parameters.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from unet3d.config import ModelConfig

_INIT = "glorot_uniform"


@keras.saving.register_keras_serializable(package="unet3d")
class UpConv3D(layers.Conv3DTranspose):
    """Keras's ``Conv3DTranspose(filters, 2, strides=2, padding="same")`` computed as one GEMM and
    a depth-to-space: the same (2, 2, 2, filters, in) kernel and bias, the same outputs.

    With kernel = stride = 2 the output blocks do not overlap: output voxel (2d+a, 2h+b, 2w+c) is
    ``x[d, h, w] @ kernel[a, b, c].T``, so the layer is one (voxels x in) by (in x 8 filters)
    matrix product whose columns are then moved into space. Keras computes it as a convolution of
    the input dilated with zeros (``lhs_dilation`` 2 under JAX), and XLA's GPU compiler cannot map
    that convolution's weight gradient to cuDNN's backward-filter kernels: it becomes a forward
    convolution over a zero-stuffed tensor with the whole output gradient as its "filter", the
    step's dominant cost on a GPU (issue 25; jax-ml/jax#31662). The product's gradients are
    products too. Written as reshape + ``matmul`` + transpose rather than ``einsum``: tf2onnx
    exports the former at once and did not finish the latter in minutes.

    Only kernel 2, stride 2, "same", channels-last exists here: the model uses nothing else (an
    overlapping kernel would not be one product). :func:`portable` saves it as the Keras layer,
    which holds the same weights, so ``model.keras`` loads without this package.
    """

    def __init__(self, filters: int, kernel_size=2, strides=2, padding: str = "same", **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding, **kwargs)
        if (tuple(self.kernel_size) != (2, 2, 2) or tuple(self.strides) != (2, 2, 2)
                or self.padding != "same" or tuple(self.dilation_rate) != (1, 1, 1)
                or self.data_format != "channels_last" or self.output_padding is not None):
            raise ValueError("UpConv3D is the kernel 2, stride 2, 'same', channels-last transposed "
                             f"convolution only; got {self.get_config()}")

    def call(self, inputs):
        n, d, h, w = (ops.shape(inputs)[i] for i in range(4))
        k_in, f = self.kernel.shape[-1], self.filters
        # kernel (a, b, c, f, in) -> (in, a*b*c*f): column (a, b, c, f) of the product
        kernel = ops.reshape(ops.transpose(self.kernel, (4, 0, 1, 2, 3)), (k_in, 8 * f))
        y = ops.matmul(ops.reshape(inputs, (-1, k_in)), kernel)
        y = ops.transpose(ops.reshape(y, (n, d, h, w, 2, 2, 2, f)), (0, 1, 4, 2, 5, 3, 6, 7))
        y = ops.reshape(y, (n, 2 * d, 2 * h, 2 * w, f))
        return y + self.bias if self.use_bias else y


def portable(model: keras.Model) -> keras.Model:
    """``model`` with every :class:`UpConv3D` replaced by Keras's own ``Conv3DTranspose`` holding
    the same weights (an uncompiled functional copy; other layers are shared, not copied): what
    ``model.keras`` files hold, so that ``keras.saving.load_model`` reads them without this
    package, and the files written before UpConv3D existed are the same kind of file."""
    bare = keras.Model(model.input, model.output, name=model.name)
    if not any(isinstance(layer, UpConv3D) for layer in model.layers):
        return bare
    swapped: list[tuple[layers.Layer, layers.Layer]] = []

    def clone(layer: layers.Layer) -> layers.Layer:
        if not isinstance(layer, UpConv3D):
            return layer
        stock = layers.Conv3DTranspose.from_config(layer.get_config())
        swapped.append((layer, stock))
        return stock

    copy = keras.models.clone_model(bare, clone_function=clone)
    for mine, stock in swapped:
        stock.set_weights(mine.get_weights())
    return copy


def _norm(cfg: ModelConfig, name: str) -> layers.Layer | None:
    if cfg.norm == "instance":
        return layers.GroupNormalization(groups=-1, epsilon=1e-6, name=name)
    if cfg.norm == "group":
        return layers.GroupNormalization(groups=cfg.group_norm_groups, epsilon=1e-6, name=name)
    if cfg.norm == "batch":
        return layers.BatchNormalization(epsilon=1e-3, momentum=0.9, name=name)
    return None


def _act(cfg: ModelConfig, name: str) -> layers.Layer:
    if cfg.activation == "leaky_relu":
        return layers.LeakyReLU(negative_slope=0.01, name=name)
    return layers.Activation(cfg.activation, name=name)


def _conv_block(x, cfg: ModelConfig, filters: int, strides: int, name: str):
    norm = _norm(cfg, f"{name}_norm")
    x = layers.Conv3D(filters, 3, strides=strides, padding="same", use_bias=norm is None,
                      kernel_initializer=_INIT, name=f"{name}_conv")(x)
    if norm is not None:
        x = norm(x)
    return _act(cfg, f"{name}_act")(x)


def _head(x, cfg: ModelConfig, name: str, kernel: int):
    x = layers.Conv3D(cfg.out_channels, kernel, padding="same", kernel_initializer=_INIT,
                      name=f"{name}_conv")(x)
    # The head runs in float32 under mixed precision: softmax/sigmoid and the loss need the range.
    activation = "sigmoid" if cfg.head == "regions" else "softmax"
    return layers.Activation(activation, dtype="float32", name=name)(x)


def build_unet3d(cfg: ModelConfig, *, name: str = "unet3d") -> keras.Model:
    """Builds the 3D-UNet described by ``cfg``.

    Args:
        cfg: the architecture.
        name: the Keras model name.

    Returns:
        A keras.Model taking (N, D, H, W, in_channels) float inputs, D/H/W multiples of
        ``cfg.downsample_factor`` (spatial size is free: the same model serves crops and
        sliding windows). Output: (N, D, H, W, out_channels) probabilities in float32. With deep
        supervision the model returns a list: the main output first, then the auxiliary outputs
        from coarser decoder levels, each upsampled to (N, D, H, W, out_channels).
    """
    filters = cfg.filters
    inputs = keras.Input(shape=(None, None, None, cfg.in_channels), name="image")
    x = inputs
    skips = []
    for level, f in enumerate(filters):
        x = _conv_block(x, cfg, f, 1 if level == 0 else 2, f"enc{level}_a")
        x = _conv_block(x, cfg, f, 1, f"enc{level}_b")
        skips.append(x)

    aux = []
    for level in range(cfg.depth - 2, -1, -1):
        f = filters[level]
        if cfg.upsampling == "transpose":
            x = UpConv3D(f, use_bias=True, kernel_initializer=_INIT, name=f"dec{level}_up")(x)
        else:
            x = layers.UpSampling3D(2, name=f"dec{level}_up")(x)
            x = layers.Conv3D(f, 1, padding="same", kernel_initializer=_INIT,
                              name=f"dec{level}_up_proj")(x)
        x = layers.Concatenate(axis=-1, name=f"dec{level}_concat")([x, skips[level]])
        x = _conv_block(x, cfg, f, 1, f"dec{level}_a")
        if cfg.dropout > 0:
            x = layers.SpatialDropout3D(cfg.dropout, name=f"dec{level}_dropout")(x)
        x = _conv_block(x, cfg, f, 1, f"dec{level}_b")
        if cfg.deep_supervision and 1 <= level <= cfg.deep_supervision_heads:
            y = layers.Conv3D(cfg.out_channels, 1, kernel_initializer=_INIT,
                              name=f"aux{level}_conv")(x)
            y = layers.UpSampling3D(2**level, name=f"aux{level}_up")(y)
            activation = "sigmoid" if cfg.head == "regions" else "softmax"
            aux.append(layers.Activation(activation, dtype="float32", name=f"aux{level}")(y))

    main = _head(x, cfg, "probabilities", cfg.output_kernel)
    # Auxiliary heads were appended deepest first; report them shallow to deep after the main output.
    outputs = [main, *reversed(aux)] if aux else main
    return keras.Model(inputs, outputs, name=name)


def inference_model(model: keras.Model) -> keras.Model:
    """Returns a model sharing ``model``'s weights with only the main output (for prediction/export)."""
    if isinstance(model.output, (list, tuple)):
        return keras.Model(model.input, model.outputs[0], name=model.name)
    return model
