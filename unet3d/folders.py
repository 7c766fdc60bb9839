"""The folders one training run leaves, every file name in them in one place.

A run folder (``train --out RUN``, a search trial's ``trial_*/run``)::

    config.json      the exact RunConfig (unet3d.config)
    checkpoint.npz   weights, optimizer and run state after the last epoch (unet3d.training.checkpoint)
    metrics.json     the finished run's history and final scores (unet3d.training.train)
    model.keras      the network alone, written when the run finishes
    tensorboard/     per-epoch scalars (and a search trial's HParams session)

An export folder (``export RUN``, a search's ``best/``; unet3d.export.exporter) holds the run's
``config.json``, ``metrics.json`` and ``model.keras`` and adds::

    saved_model/       the TensorFlow SavedModel (TF Serving)
    model.onnx         the ONNX graph, checked against Keras (unet3d.inference.onnx_runtime)
    MODEL_CARD.md      what it is, how it was trained and scored, how to load it
    postprocess.json   the post-processing chosen on its validation cases (unet3d.inference.postprocess)

Plain names and existence checks: any module may import this one (it loads neither Keras nor
TensorFlow), so a request is refused before they load.
"""

from __future__ import annotations

from pathlib import Path

from unet3d.errors import OptionError


class Folder:
    """A folder whose file names its class owns (as class constants); ``path`` the folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.path == self.path  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.path))


class RunFolder(Folder):
    """A training run's folder: the path of each file in it."""

    CONFIG = "config.json"
    CHECKPOINT = "checkpoint.npz"
    METRICS = "metrics.json"
    MODEL = "model.keras"
    TENSORBOARD = "tensorboard"

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def model(self) -> Path:
        return self.path / self.MODEL

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    def has_model(self) -> bool:
        """Whether the folder holds a finished model and the config it was trained with."""
        return self.model.is_file() and self.config.is_file()

    def check_start(self, resume: bool) -> None:
        """Refuses to start a run over the checkpoint of another (``resume`` continues it).

        Raises:
            OptionError: the folder holds a checkpoint and ``resume`` is False.
        """
        if not resume and self.checkpoint.exists():
            raise OptionError(f"{self.checkpoint}: a checkpoint already exists; pass --resume to "
                              f"continue that run, or choose another --out")


class ExportFolder(RunFolder):
    """An export: a run's model, config and metrics, and the formats and notes added to them."""

    SAVED_MODEL = "saved_model"
    ONNX = "model.onnx"
    CARD = "MODEL_CARD.md"
    POSTPROCESS = "postprocess.json"
    # What an export holds, in the order a reader is told about it.
    FILES = (RunFolder.MODEL, SAVED_MODEL, ONNX, RunFolder.CONFIG, RunFolder.METRICS, CARD)

    @property
    def saved_model(self) -> Path:
        return self.path / self.SAVED_MODEL

    @property
    def onnx(self) -> Path:
        return self.path / self.ONNX

    @property
    def card(self) -> Path:
        return self.path / self.CARD

    @property
    def postprocess(self) -> Path:
        return self.path / self.POSTPROCESS
