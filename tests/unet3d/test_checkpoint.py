"""Model and checkpoint I/O: every saved model loads with plain Keras safe mode."""

from __future__ import annotations

import os

import numpy as np
import pytest

from unet3d.config import DataConfig, ModelConfig, RunConfig, TrainConfig


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Two cached 32^3 synthetic cases."""
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare
    from unet3d.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root / "data", 2, (32, 32, 32), seed=0)
    return prepare(discover(root / "data").cases, root / "cache")


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_trained_and_exported_models_load_with_plain_safe_mode(deep_supervision, cases, tmp_path,
                                                                 seed):
    import keras

    from unet3d.export.exporter import export_model
    from unet3d.training.model import inference_model
    from unet3d.training.train import Trainer

    # Without deep supervision the trained model is itself the inference model (compiled with our
    # loss); with it, the saved model is a one-output view of a two-output compiled model.
    cfg = RunConfig(model=ModelConfig(depth=3, base_filters=4, deep_supervision=deep_supervision,
                                      deep_supervision_heads=1),
                    train=TrainConfig(epochs=1, steps_per_epoch=2, warmup_epochs=0, xla="off"),
                    data=DataConfig(crop=(16, 16, 16)))
    old = os.umask(0o027)  # (files written under a temporary name used to stay 0600 whatever it)
    try:
        trainer = Trainer(cfg, cases[:1], [], tmp_path / "run")
        metrics = trainer.fit()
        export_model(trainer.model, cfg, metrics, tmp_path / "export")
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777
             for p in [*(tmp_path / "run").rglob("*"), *(tmp_path / "export").rglob("*"),
                       tmp_path / "export"]}
    assert {k: oct(m) for k, m in modes.items()
            if m != (0o750 if (tmp_path / k).is_dir() else 0o640)} == {}
    assert {"run/model.keras", "run/checkpoint.npz", "export/model.keras", "export/config.json",
            "export/metrics.json", "export/model.onnx"} <= set(modes)
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 16, 4)).astype(np.float32)
    want = np.asarray(inference_model(trainer.model).predict_on_batch(x))
    for path in (tmp_path / "run" / "model.keras", tmp_path / "export" / "model.keras"):
        loaded = keras.saving.load_model(path, safe_mode=True)
        np.testing.assert_allclose(np.asarray(loaded.predict_on_batch(x)), want, rtol=1e-6,
                                   atol=1e-7, err_msg=str(path))


def test_open_cases_reads_the_cache_in_order_and_names_a_missing_entry(cases, tmp_path):
    from unet3d.data.discover import DataError
    from unet3d.data.preprocess import open_cases

    cache = cases[0].folder.parent
    ids = [c.case_id for c in reversed(cases)]
    assert [c.case_id for c in open_cases(cache, ids)] == ids
    with pytest.raises(DataError, match=f"^{tmp_path / 'nope'}: case nope is not in the cache"):
        open_cases(tmp_path, ["nope"])
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match=f"^{tmp_path / 'half' / 'meta.json'}: not found") as e:
        open_cases(tmp_path, ["half"])
    assert "\n" not in str(e.value)
    (tmp_path / "half" / "meta.json").write_text("{")
    with pytest.raises(DataError, match=r"meta.json: unreadable \(Expecting"):
        open_cases(tmp_path, ["half"])
