"""The model's up-sampling (unet3d.training.model.UpConv3D): Keras's k2 s2 transposed convolution computed as
one matrix product + depth-to-space, so that XLA never builds the input-dilated convolutions whose
weight gradient runs at a fraction of the GPU's speed (issue 25).

Guarded without a GPU: the same outputs and gradients as Keras's Conv3DTranspose on both backends;
no input-dilated convolution other than the stride-2 3x3x3 input gradients in the lowered JAX
training step of the `nvidia` preset (10 with Keras's layer); files saved before the change load
and predict the same labels; ``model.keras`` still needs nothing but Keras.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data" / "pre_upconv"

# The lowered step's convolutions that may be input-dilated: the input gradients of the stride-2
# 3x3x3 convolutions (cuDNN's backward-data runs them). Any other input-dilated convolution is the
# transposed-convolution form: Keras's k2 s2 forward (a 2x2x2 window) or its weight gradient (the
# output gradient as the window).
DILATED = textwrap.dedent(r"""
    import re
    def dilated_not_3x3x3(stablehlo: str) -> list[str]:
        found = []
        for line in stablehlo.splitlines():
            if "stablehlo.convolution" not in line:
                continue
            dil = re.search(r"lhs_dilate = \[([^\]]*)\]", line)
            if not dil or {d.strip() for d in dil.group(1).split(",")} == {"1"}:
                continue
            rhs = re.findall(r"tensor<([0-9x]+)x[a-z]+[0-9]*>", line)[1].split("x")
            layout = re.search(r"dim_numbers = \[[^\]]*\]x\[([^\]]*)\]", line).group(1).split(",")
            window = [int(rhs[i]) for i, d in enumerate(layout) if d.strip().isdigit()]
            if window != [3, 3, 3]:
                found.append(line.strip()[:160])
        return found
""")

JAX_SCRIPT = DILATED + textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np, keras
    assert keras.backend.backend() == "jax"
    from unet3d.config import preset
    from unet3d.training.model import UpConv3D, build_unet3d

    rng = np.random.default_rng(0)
    out = {}
    # forward and gradients against Keras's layer, the same weights, random everything
    x = rng.standard_normal((2, 3, 5, 4, 6)).astype("float32")
    ref = keras.layers.Conv3DTranspose(5, 2, strides=2, padding="same")
    mine = UpConv3D(5)
    ref.build(x.shape); mine.build(x.shape)
    w = [rng.standard_normal(v.shape).astype("float32") for v in ref.weights]
    ref.set_weights(w); mine.set_weights(w)
    probe = rng.standard_normal((2, 6, 10, 8, 5)).astype("float32")
    def grads(layer):
        def f(tv, x):
            return jnp.sum(layer.stateless_call(tv, [], x)[0] * probe)
        return jax.grad(f, argnums=(0, 1))([v.value for v in layer.trainable_variables], x)
    (gk_r, gb_r), gx_r = grads(ref)
    (gk_m, gb_m), gx_m = grads(mine)
    out["forward"] = float(np.abs(np.asarray(ref(x)) - np.asarray(mine(x))).max())
    out["grad"] = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                      for a, b in ((gk_r, gk_m), (gb_r, gb_m), (gx_r, gx_m)))
    out["scale"] = float(np.abs(np.asarray(gk_r)).max())

    def lowered(model, shape):
        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]
        xs = jnp.zeros(shape)
        def loss(tv):
            return jnp.mean(model.stateless_call(tv, ntv, xs)[0] ** 2)
        return jax.jit(jax.value_and_grad(loss)).lower(tv).as_text()

    # the detector sees Keras's layer (its forward and its weight gradient) ...
    inp = keras.Input((None, None, None, 6))
    stock = keras.Model(inp, keras.layers.Conv3DTranspose(5, 2, strides=2, padding="same")(inp))
    out["stock_layer"] = len(dilated_not_3x3x3(lowered(stock, (1, 4, 4, 4, 6))))
    # ... and nothing of the kind in NVIDIA's network's training step (32^3: 5 decoder levels).
    # (Zero initial weights: the lowering reads shapes only, and JAX compiles Glorot's sampler
    # once per weight shape, 25 s of this test.)
    import unet3d.training.model
    unet3d.training.model._INIT = "zeros"
    text = lowered(build_unet3d(preset("nvidia").model), (1, 32, 32, 32, 4))
    out["nvidia"] = dilated_not_3x3x3(text)
    out["nvidia_convolutions"] = text.count("stablehlo.convolution")
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_under_jax_the_layer_is_keras_s_and_the_training_step_has_no_transposed_convolution():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", JAX_SCRIPT], capture_output=True, text=True,
                       timeout=600, env=env, cwd=Path(__file__).parents[2])
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["forward"] < 1e-5 and got["grad"] < 1e-5 * max(1.0, got["scale"])
    assert got["stock_layer"] == 2  # its forward and its weight gradient
    assert got["nvidia"] == [] and got["nvidia_convolutions"] > 50


def test_under_tensorflow_forward_and_gradients_equal_keras_s_layer():
    import keras
    import tensorflow as tf

    from unet3d.training.model import UpConv3D

    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((2, 4, 3, 5, 7)).astype("float32"))
    probe = tf.constant(rng.standard_normal((2, 8, 6, 10, 3)).astype("float32"))
    ref = keras.layers.Conv3DTranspose(3, 2, strides=2, padding="same")
    mine = UpConv3D(3)
    ref.build(x.shape)
    mine.build(x.shape)
    mine.set_weights([rng.standard_normal(v.shape).astype("float32") for v in ref.weights])
    ref.set_weights(mine.get_weights())
    results = []
    for layer in (ref, mine):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * probe)
        results.append([layer(x), *tape.gradient(loss, [x, *layer.trainable_variables])])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
    # unknown spatial size (a model's input; sliding windows of any size)
    inp = keras.Input((None, None, None, 7))
    model = keras.Model(inp, mine(inp))
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(ref(x)), rtol=1e-5, atol=1e-5)


def test_only_the_non_overlapping_transposed_convolution_exists():
    from unet3d.training.model import UpConv3D

    for bad in ({"kernel_size": 3}, {"strides": 1}, {"padding": "valid"}):
        with pytest.raises(ValueError, match="kernel 2, stride 2"):
            UpConv3D(4, **bad)


def test_a_run_saved_before_the_change_loads_and_predicts_the_same_labels(tmp_path):
    """tests/unet3d/data/pre_upconv was written by the code before UpConv3D (its make.py): its
    checkpoint.npz loads into today's network (UpConv3D) and its model.keras (Keras's layers)
    into Keras; both predict what the old network predicts."""
    import keras

    from unet3d.training.checkpoint import load_model, model_from_run
    from unet3d.training.model import UpConv3D

    old = load_model(DATA / "model.keras")
    assert any(type(layer) is keras.layers.Conv3DTranspose for layer in old.layers)
    new, cfg, state = model_from_run(DATA)
    assert sum(isinstance(layer, UpConv3D) for layer in new.layers) == cfg.model.depth - 1
    x = np.random.default_rng(2).standard_normal((2, 16, 16, 16, 4)).astype("float32")
    p_old, p_new = np.asarray(old(x)), np.asarray(new(x))
    np.testing.assert_allclose(p_new, p_old, atol=1e-5)
    assert (p_new.argmax(-1) == p_old.argmax(-1)).all() and len(np.unique(p_old.argmax(-1))) > 1


def test_model_keras_holds_keras_s_own_layer_and_loads_in_plain_keras(tmp_path):
    """What the project writes as model.keras names no class of this package (safe mode, a
    colleague without unet3d installed), and predicts what the network predicts."""
    import zipfile

    import keras

    from unet3d.config import ModelConfig
    from unet3d.training.checkpoint import save_model
    from unet3d.training.model import UpConv3D, build_unet3d

    model = build_unet3d(ModelConfig(depth=3, base_filters=4))
    for layer in model.layers:  # (biases start at zero: make them count)
        if isinstance(layer, UpConv3D):
            layer.bias.assign(np.linspace(-1, 1, layer.filters).astype("float32"))
    save_model(model, tmp_path / "model.keras")
    config = zipfile.ZipFile(tmp_path / "model.keras").read("config.json").decode()
    assert "UpConv3D" not in config and "unet3d>" not in config and "Conv3DTranspose" in config
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False, safe_mode=True)
    x = np.random.default_rng(3).standard_normal((1, 16, 16, 16, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-5)
