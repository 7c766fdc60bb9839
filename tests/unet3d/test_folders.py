"""The file names of run and export folders (unet3d.folders): the on-disk format earlier runs were
written in, so each is pinned here by hand (a renamed constant would leave every existing run and
export unreadable)."""

from __future__ import annotations

from unet3d.folders import ExportFolder, RunFolder


def test_a_run_folders_files(tmp_path):
    run = RunFolder(tmp_path)
    assert (run.config, run.checkpoint, run.metrics, run.model, run.tensorboard) == (
        tmp_path / "config.json", tmp_path / "checkpoint.npz", tmp_path / "metrics.json",
        tmp_path / "model.keras", tmp_path / "tensorboard")
    assert not run.has_model()
    (tmp_path / "model.keras").write_bytes(b"")
    assert not run.has_model()  # (no config.json: not a model one can load)
    (tmp_path / "config.json").write_text("{}")
    assert run.has_model()


def test_an_export_folders_files(tmp_path):
    export = ExportFolder(tmp_path / "best")
    assert export.model == tmp_path / "best" / "model.keras"
    assert (export.saved_model, export.onnx, export.card, export.postprocess) == (
        tmp_path / "best" / "saved_model", tmp_path / "best" / "model.onnx",
        tmp_path / "best" / "MODEL_CARD.md", tmp_path / "best" / "postprocess.json")
    assert export.FILES == ("model.keras", "saved_model", "model.onnx", "config.json",
                            "metrics.json", "MODEL_CARD.md")
    assert export == ExportFolder(str(tmp_path / "best")) and export != RunFolder(export.path)
