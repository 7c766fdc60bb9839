"""ONNX: every export carries a model.onnx that onnxruntime runs as Keras does (any batch, any valid
window), export refuses a file that computes something else, and ``predict --runtime onnx`` writes
the labels ``predict`` does."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import error_line, run_cli

from unet3d.config import RunConfig, preset
from unet3d.data.discover import discover
from unet3d.data.preprocess import load_case
from unet3d.data.synthetic import write_synthetic_dataset
from unet3d.errors import UserError
from unet3d.inference.onnx_runtime import OnnxMissingError, float32_model, session, session_predict_fn
from unet3d.inference.predictor import Predictor, load_member, load_onnx_member


def _cfg(depth: int = 2, **model) -> RunConfig:
    loss = "region" if model.get("head") == "regions" else "dice_ce"
    precision = model.pop("precision", "fp32")
    return preset("cpu-small").replace(
        model={"base_filters": 4, "max_filters": 16, "depth": depth, **model},
        data={"crop": (16, 16, 16)}, train={"precision": precision, "loss": loss})


def _build(cfg: RunConfig, seed: int = 0):
    """An untrained model whose head is sharpened (kernel x 20), so that its class map has no
    near-ties that a 1e-6 difference between runtimes could flip."""
    import keras

    from unet3d.training.model import build_unet3d

    keras.utils.set_random_seed(seed)
    previous = keras.config.dtype_policy()
    if cfg.train.precision != "fp32":
        keras.config.set_dtype_policy(cfg.train.precision)
    try:
        model = build_unet3d(cfg.model)
    finally:
        keras.config.set_dtype_policy(previous)
    head = model.get_layer("probabilities_conv")
    head.set_weights([w * 20 for w in head.get_weights()])
    return model


def _export(model, cfg: RunConfig, out: Path) -> Path:
    from unet3d.export.exporter import export_model

    return export_model(model, cfg, {}, out)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    cfg = _cfg(depth=3)
    return _export(_build(cfg), cfg, tmp_path_factory.mktemp("onnx") / "export")


@pytest.fixture(scope="module")
def case_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("onnx_data")
    write_synthetic_dataset(root, 1, (48, 40, 32), seed=3)
    return root


@pytest.mark.parametrize("model", [
    {},  # instance norm, leaky ReLU, transposed convolutions, softmax head
    # exact GELU (TensorFlow's Erfc, unknown to tf2onnx), batch norm, nearest upsampling, regions,
    # deep supervision and a model trained in mixed precision (written in float32)
    {"depth": 3, "norm": "batch", "activation": "gelu", "upsampling": "nearest", "head": "regions",
     "deep_supervision": True, "deep_supervision_heads": 1, "precision": "mixed_bfloat16"},
], ids=["default", "gelu-regions-mixed"])
def test_onnxruntime_computes_what_keras_does_on_any_batch_and_window(tmp_path, model):
    import onnx

    from unet3d.training.model import inference_model

    cfg = _cfg(**model)
    keras_model = inference_model(_build(cfg))
    out = _export(keras_model, cfg, tmp_path / "export")
    assert (out / "model.onnx").is_file() and "model.onnx" in (out / "MODEL_CARD.md").read_text()
    dims = [d.dim_param or d.dim_value for d in
            onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "depth", "height", "width", 4]
    run = session_predict_fn(session(out / "model.onnx", ["CPUExecutionProvider"]))
    keras_model = float32_model(keras_model, cfg)  # (itself unless it computes in bfloat16)
    assert keras_model.layers[1].compute_dtype == "float32"
    rng = np.random.default_rng(1)
    for shape in [(1, 16, 16, 16, 4), (2, 16, 16, 16, 4), (1, 32, 16, 24, 4)]:
        x = rng.standard_normal(shape).astype(np.float32)
        got = run(x)
        want = np.asarray(keras_model.predict_on_batch(x), dtype=np.float32)
        assert got.shape == want.shape == (*shape[:4], cfg.model.out_channels)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_export_refuses_an_onnx_file_that_differs_and_keeps_the_earlier_export(
        exported, tmp_path, monkeypatch):
    import shutil

    import onnx
    from onnx import numpy_helper

    import unet3d.inference.onnx_runtime as ort_mod

    name_axes = ort_mod._name_axes

    def corrupt(path: Path) -> None:  # a "converter bug": the first 3D kernel transposed
        name_axes(path)
        m = onnx.load(str(path))
        w = next(t for t in m.graph.initializer if len(t.dims) == 5)
        w.CopyFrom(numpy_helper.from_array(
            np.ascontiguousarray(np.swapaxes(numpy_helper.to_array(w), 2, 3)), w.name))
        onnx.save(m, str(path))

    out = tmp_path / "export"
    shutil.copytree(exported, out)
    monkeypatch.setattr(ort_mod, "_name_axes", corrupt)
    cfg = _cfg(depth=3)
    with pytest.raises(RuntimeError, match=r"model\.onnx: onnxruntime's output differs from "
                                           r"Keras's by [\d.e-]+ \(max abs, tolerance 0.001\)"):
        _export(_build(cfg, seed=1), cfg, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary leftovers
    assert (out / "model.onnx").read_bytes() == (exported / "model.onnx").read_bytes()


def test_an_onnx_member_predicts_the_labels_a_keras_member_does(exported, case_data):
    loaded = load_case(discover(case_data).cases[0])
    onnx_member = load_onnx_member(exported)
    assert onnx_member.providers[-1] == "CPUExecutionProvider" and onnx_member.policy == "float32"
    preds = [Predictor([m], tta=2, keep_probabilities=True).predict(loaded)
             for m in (load_member(exported), onnx_member)]
    np.testing.assert_allclose(preds[1].probabilities, preds[0].probabilities, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(preds[1].labels, preds[0].labels)
    assert len(np.unique(preds[0].labels)) > 1  # (not a trivial map)
    assert preds[0].windows == preds[1].windows


def test_an_export_without_model_onnx_is_a_user_error_naming_the_folder(exported, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(exported, old)
    (old / "model.onnx").unlink()
    with pytest.raises(OnnxMissingError, match=f"^{old}: no model.onnx") as e:
        load_onnx_member(old)
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)


@pytest.mark.slow
def test_cli_predict_runtime_onnx_writes_the_labels_predict_does(exported, case_data, tmp_path):
    outs = {}
    for runtime in ("keras", "onnx"):
        outs[runtime] = tmp_path / runtime
        r = run_cli("predict", "--model", str(exported), "--input", str(case_data), "--out",
                    str(outs[runtime]), "--runtime", runtime, "--tta", "2", timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        info = json.loads((outs[runtime] / "predict.json").read_text())
        assert info["runtime"] == runtime
    assert "onnxruntime CPUExecutionProvider" in r.stdout
    assert info["onnx_providers"][-1] == "CPUExecutionProvider"
    (case,) = discover(case_data).cases
    labels = [np.asarray(nib.load(str(outs[rt] / f"{case.case_id}.nii.gz")).dataobj)
              for rt in ("keras", "onnx")]
    np.testing.assert_array_equal(labels[1], labels[0])

    old = tmp_path / "old"
    import shutil

    shutil.copytree(exported, old)
    (old / "model.onnx").unlink()
    r = run_cli("predict", "--model", str(old), "--input", str(case_data), "--out",
                str(tmp_path / "none"), "--runtime", "onnx", timeout=300)
    assert error_line(r, alone=True) == (
        f"error: {old}: no model.onnx (exported before exports carried ONNX); re-export it "
        f"(run_search.py export {old}) or predict with --runtime keras")
    assert not (tmp_path / "none").exists()

    # The command the message names re-exports the folder in place (with a post-processing
    # choice saved beside the old export, kept), and the ONNX runtime then predicts the same.
    from unet3d.folders import ExportFolder
    from unet3d.inference.postprocess import PostProcess, PostProcessChoice

    POSTPROCESS_FILE = ExportFolder.POSTPROCESS

    table = tuple({**p.to_dict(), "score": 0.5 + 0.1 * p.largest_wt, "chosen": p.largest_wt}
                  for p in (PostProcess(), PostProcess(largest_wt=True)))
    choice = PostProcessChoice(PostProcess(largest_wt=True), "dice", "brats-legacy", 0.001,
                               ("a", "b"), table)
    (old / POSTPROCESS_FILE).write_text(json.dumps(choice.to_dict()))
    r = run_cli("export", str(old), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"exported: {old} (model.keras, saved_model/, model.onnx checked against Keras" in r.stdout
    assert {"model.onnx", "saved_model", "model.keras", "config.json", "MODEL_CARD.md",
            POSTPROCESS_FILE} <= {p.name for p in old.iterdir()}
    assert json.loads((old / POSTPROCESS_FILE).read_text()) == choice.to_dict()
    assert "largest" in (old / "MODEL_CARD.md").read_text().lower()
    r = run_cli("predict", "--model", str(old), "--input", str(case_data), "--out",
                str(tmp_path / "again"), "--runtime", "onnx", "--tta", "2", "--postprocess", "none",
                timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    again = np.asarray(nib.load(str(tmp_path / "again" / f"{case.case_id}.nii.gz")).dataobj)
    np.testing.assert_array_equal(again, labels[0])
