"""Shape contract of build_unet3d over a grid of configs, on TensorFlow and on JAX."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from unet3d.config import ModelConfig, preset

GRID = [
    dict(depth=2, base_filters=4, norm="instance"),
    dict(depth=3, base_filters=4, norm="batch", activation="relu"),
    dict(depth=3, base_filters=8, norm="group", group_norm_groups=4, upsampling="nearest"),
    dict(depth=4, base_filters=4, norm="none", deep_supervision=True, deep_supervision_heads=2),
    dict(depth=4, base_filters=4, norm="instance", deep_supervision=True, deep_supervision_heads=1,
         dropout=0.2, activation="gelu"),
    dict(depth=3, base_filters=4, head="regions", output_kernel=1),
]


def _expected(cfg: ModelConfig, n: int, size: int) -> list[tuple[int, ...]]:
    shape = (n, size, size, size, cfg.out_channels)
    return [shape] * (1 + (cfg.deep_supervision_heads if cfg.deep_supervision else 0))


def _check_outputs(cfg: ModelConfig, outputs, n: int, size: int) -> None:
    outs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    assert [tuple(o.shape) for o in outs] == _expected(cfg, n, size)
    for o in outs:
        o = np.asarray(o)
        assert o.dtype == np.float32 and np.all(np.isfinite(o))
        if cfg.head == "softmax":
            np.testing.assert_allclose(o.sum(-1), 1.0, atol=1e-4)
        else:
            assert o.min() >= 0 and o.max() <= 1


@pytest.mark.parametrize("kw", GRID, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_shape_contract_tensorflow(kw, seed):
    from unet3d.training.model import build_unet3d, inference_model

    cfg = ModelConfig(**kw)
    model = build_unet3d(cfg)
    for size in (cfg.downsample_factor * 4, 16):
        x = np.random.rand(2, size, size, size, cfg.in_channels).astype("float32")
        _check_outputs(cfg, model(x, training=False), 2, size)
    single = inference_model(model)
    assert tuple(single(x, training=False).shape) == (2, 16, 16, 16, cfg.out_channels)


def test_deep_supervision_outputs_come_main_first_then_shallow_to_deep():
    """Outputs are the main head, then aux1 (upsampled x2 from half resolution), then aux2 (x4
    from a quarter): the order the deep-supervision weights 1, 1/2, 1/4 assume."""
    from unet3d.training.model import build_unet3d

    cfg = ModelConfig(depth=4, base_filters=4, norm="none", deep_supervision=True,
                      deep_supervision_heads=2)
    model = build_unet3d(cfg)
    assert model.output_names == ["probabilities", "aux1", "aux2"]
    x = np.random.default_rng(0).random((1, 16, 16, 16, cfg.in_channels)).astype("float32")
    _, aux1, aux2 = (np.asarray(o) for o in model(x, training=False))

    def blocky(y, k):  # constant over every k x k x k block (nearest upsampling by k)
        return np.array_equal(y, y[:, ::k, ::k, ::k].repeat(k, 1).repeat(k, 2).repeat(k, 3))

    assert blocky(aux1, 2) and not blocky(aux1, 4)
    assert blocky(aux2, 4)


def test_nvidia_architecture_has_the_reference_parameter_count():
    from unet3d.training.model import build_unet3d

    model = build_unet3d(preset("nvidia").model)
    assert model.count_params() == 31_196_196
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv3D"]
    assert all(not c.use_bias for c in convs if c.name.endswith("_conv") and "probab" not in c.name)


def test_mixed_precision_keeps_float32_probabilities():
    import keras

    from unet3d.training.model import build_unet3d

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_unet3d(ModelConfig(depth=3, base_filters=4))
        y = model(np.zeros((1, 16, 16, 16, 4), "float32"))
        assert keras.backend.standardize_dtype(y.dtype) == "float32"
        assert model.get_layer("enc0_a_conv").compute_dtype == "float16"
    finally:
        keras.config.set_dtype_policy(previous)


JAX_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from unet3d.config import ModelConfig
    from unet3d.training.model import build_unet3d
    from unet3d.training.losses import dice_ce_loss, deep_supervision_weights
    out = []
    for kw in json.loads(sys.argv[1]):
        cfg = ModelConfig(**kw)
        m = build_unet3d(cfg)
        x = np.random.rand(2, 16, 16, 16, cfg.in_channels).astype("float32")
        y = m(x, training=False)
        ys = y if isinstance(y, (list, tuple)) else [y]
        out.append({"shapes": [list(o.shape) for o in ys], "params": m.count_params(),
                    "finite": bool(all(np.isfinite(np.asarray(o)).all() for o in ys))})
    # and it trains: a few steps of fit reduce the loss on a fixed batch
    cfg = ModelConfig(depth=3, base_filters=4, deep_supervision=True, deep_supervision_heads=1)
    m = build_unet3d(cfg)
    n = len(m.outputs)
    m.compile(optimizer=keras.optimizers.Adam(1e-2), loss=[dice_ce_loss] * n,
              loss_weights=deep_supervision_weights(n))
    x = np.random.rand(2, 16, 16, 16, 4).astype("float32")
    lab = (x[..., 0] > 0.5).astype("int32")
    h = m.fit(x, tuple([lab] * n), epochs=8, verbose=0)
    print(json.dumps({"grid": out, "loss": h.history["loss"]}))
""")


@pytest.mark.slow
def test_shape_contract_and_training_on_jax():
    from unet3d.training.model import build_unet3d

    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", JAX_SCRIPT, json.dumps(GRID)], capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    for kw, got in zip(GRID, res["grid"], strict=True):
        cfg = ModelConfig(**kw)
        assert [tuple(s) for s in got["shapes"]] == _expected(cfg, 2, 16)
        assert got["finite"]
        assert got["params"] == build_unet3d(cfg).count_params()  # same network on both backends
    loss = res["loss"]
    assert loss[-1] < loss[0]
