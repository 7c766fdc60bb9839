"""ONNX: writing an export's ``model.onnx`` and running it with onnxruntime.

Every export folder carries ``model.onnx`` so that the network runs where neither TensorFlow nor JAX
is installed (onnxruntime alone, on CPU or CUDA). It is the inference graph (main output only) in
float32 with free batch and spatial sizes (N x D x H x W x C, D/H/W multiples of 2**(depth-1)),
written by Keras's own exporter (``model.export(format="onnx")``, tf2onnx under TensorFlow). Under
JAX that exporter cannot handle this network (jax2onnx can neither prove an upsampled map and its
skip connection the same free size nor lower 3D convolutions), so :mod:`unet3d.export.exporter` has
TensorFlow write it in a fresh process, as it does the SavedModel.

An export that ran but computes something else is worse than none, so :func:`write_onnx` runs the
file on a random window with onnxruntime and compares it with the Keras model it came from.
onnxruntime computes in float32 as Keras does, but sums in another order: on large windows the
two differ by more than on small ones (see :func:`check_window`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet3d.errors import UserError

if TYPE_CHECKING:
    import keras

    from unet3d.config import RunConfig

OPSET = 17
# Max abs difference of onnxruntime's probabilities from Keras's at export. 1e-4 held for untrained
# networks (see check_window) but not for trained ones: a race winner trained 82 epochs (instance
# norm, 16 filters, 5 levels) differed by 1.44e-4 on its 48^3 window, and its export, the search's
# result, failed (issue 24's benchmark, 2026-12-06). A probability 1e-3 off changes no label a
# sliding window blends; a wrong conversion (a kernel transposed) is off by far more.
TOLERANCE = 1e-3
CHECK_SIZE = 64  # voxels per axis of the window export checks on, at most (see check_window)
AXES = ("batch", "depth", "height", "width")  # names of the free input/output dimensions


class OnnxMissingError(UserError, FileNotFoundError):
    """``--runtime onnx`` on an export folder without ``model.onnx`` (exported before ONNX was)."""


def providers() -> list[str]:
    """onnxruntime's execution providers to use: CUDA first where this onnxruntime build has it
    (onnxruntime-gpu), then the CPU, which every build has."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def session(path: str | Path, use: Sequence[str] | None = None) -> Any:
    """An onnxruntime InferenceSession of ``path`` on ``use`` (default: :func:`providers`), with its
    per-node warnings muted (they are about graph fusions, not the user's input)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts,
                                providers=list(use) if use is not None else providers())


def session_predict_fn(sess: Any) -> Any:
    """A PredictFn (float32 batch -> probabilities) over an onnxruntime session."""
    name = sess.get_inputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return predict


def float32_model(model: keras.Model, cfg: RunConfig) -> keras.Model:
    """``model`` itself where every layer computes in float32, else a float32 copy rebuilt from
    ``cfg`` with its weights: ONNX is written in float32 (onnxruntime's CPU convolutions have no
    bfloat16), whatever precision the model trained in."""
    import keras

    from unet3d.training.model import build_unet3d

    if all(layer.compute_dtype == "float32" for layer in model.layers):
        return model
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        copy = build_unet3d(dataclasses.replace(cfg.model, deep_supervision=False), name=model.name)
    finally:
        keras.config.set_dtype_policy(previous)
    for layer in copy.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return copy


def _register_erfc() -> None:
    """Teaches tf2onnx TensorFlow's Erfc (exact GELU uses it; tf2onnx has no handler and ONNX no
    Erfc op) as 1 - Erf(x); registered once per process, and never over a handler of tf2onnx's."""
    from tf2onnx.handler import tf_op

    if any("Erfc" in ops for ops in tf_op.get_opsets().get("", [])):
        return

    class Erfc:
        @classmethod
        def version_9(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
            x, out, name = node.input[0], node.output[0], node.name
            shapes, dtypes = node.output_shapes, node.output_dtypes
            ctx.remove_node(name)
            erf = ctx.make_node("Erf", [x], op_name_scope=name, name="erf")
            one = ctx.make_const(f"{name}/one", np.array(1.0, dtype=np.float32))
            ctx.make_node("Sub", [one.output[0], erf.output[0]], outputs=[out], name=name,
                          shapes=shapes, dtypes=dtypes)

    tf_op("Erfc")(Erfc)


def _name_axes(path: Path) -> None:
    """Names the free dimensions of the input and output (tf2onnx leaves them unk__N), so that the
    file says what it takes: N x D x H x W x C."""
    import onnx

    m = onnx.load(str(path))
    for value in (*m.graph.input, *m.graph.output):
        for dim, axis in zip(value.type.tensor_type.shape.dim, AXES, strict=False):
            if not dim.HasField("dim_value"):
                dim.dim_param = axis
    onnx.save(m, str(path))


def max_difference(model: keras.Model, path: Path, window: Sequence[int], *,
                   batch: int = 1, seed: int = 0) -> float:
    """Max abs difference between onnxruntime's (CPU) and Keras's output on a random standard-normal
    (batch, *window, C) input, as z-scored images are."""
    import keras

    x = np.random.default_rng(seed).standard_normal(
        (batch, *window, model.input_shape[-1])).astype(np.float32)
    want = keras.ops.convert_to_numpy(model(x, training=False))
    got = session_predict_fn(session(path, ["CPUExecutionProvider"]))(x)
    return float(np.max(np.abs(got - want)))


def check_window(cfg: RunConfig) -> tuple[int, ...]:
    """The window export checks ONNX on: the training crop, at most :data:`CHECK_SIZE` per axis.

    Why capped: the instance/group norms average over every voxel of a window, and onnxruntime's
    float32 sums drift from TensorFlow's with the count (NVIDIA's network, untrained: 7e-6 at 32^3,
    4e-5 at 64^3, 1.8e-4 at 96^3, 6.5e-4 at its 128^3 crop; a float64 run puts Keras's own error
    there at 9e-5), while a wrong conversion is wrong at any size; 128^3 also takes 30 s on a CPU.
    """
    cap = max(CHECK_SIZE, cfg.model.downsample_factor)  # a multiple of the factor (depth <= 7)
    return tuple(min(int(c), cap) for c in cfg.data.crop)


def check_onnx(model: keras.Model, cfg: RunConfig, path: Path) -> float:
    """The max abs difference of ``path`` run by onnxruntime from ``model`` (in float32) on a
    random window (:func:`check_window`).

    Raises:
        RuntimeError: it is more than :data:`TOLERANCE` (or NaN).
    """
    diff = max_difference(float32_model(model, cfg), path, check_window(cfg))
    if not diff <= TOLERANCE:
        raise RuntimeError(f"{path}: onnxruntime's output differs from Keras's by {diff:.3g} "
                           f"(max abs, tolerance {TOLERANCE:g}) on a random window")
    return diff


def write_onnx(model: keras.Model, cfg: RunConfig, path: Path) -> float:
    """Writes ``model`` (in float32, see :func:`float32_model`) as ONNX to ``path``, under the
    TensorFlow backend, and checks it (:func:`check_onnx`); returns the difference."""
    import keras

    fp32 = float32_model(model, cfg)
    spec = keras.InputSpec(shape=(None, None, None, None, fp32.input_shape[-1]),
                           dtype="float32", name="image")
    _register_erfc()
    with warnings.catch_warnings():  # Keras's tf2onnx patch for numpy 2 warns about np.object
        warnings.simplefilter("ignore", FutureWarning)
        fp32.export(str(path), format="onnx", verbose=False, input_signature=[spec],
                    opset_version=OPSET)
    _name_axes(path)
    return check_onnx(fp32, cfg, path)


def missing(folder: str | Path) -> OnnxMissingError:
    """The one-line error for an export folder without ``model.onnx``."""
    from unet3d.folders import ExportFolder

    return OnnxMissingError(f"{folder}: no {ExportFolder.ONNX} (exported before exports carried ONNX); "
                            f"re-export it (run_search.py export {folder}) or predict with "
                            f"--runtime keras")
