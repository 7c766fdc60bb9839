"""Export a trained model as a self-describing folder, and load it back safely.

An export folder holds:
  model.keras       the network (main output only), loadable with Keras safe mode
  saved_model/      a TensorFlow SavedModel (``model.export``) for TF Serving / other runtimes
  model.onnx        the same network as ONNX (float32, free batch and spatial size) for onnxruntime,
                    checked against Keras at export (see :mod:`unet3d.inference.onnx_runtime`)
  config.json       the exact RunConfig it was trained with
  metrics.json      its metrics (validation Dice/HD95, history, ...)
  postprocess.json  the post-processing chosen on its validation cases (``predict`` applies it) and
                    every candidate's validation scores; absent when it had no validation cases
  MODEL_CARD.md     a short human-readable card
The folder is assembled under a temporary name and renamed into place, so a reader never sees a
half-written export and an earlier export at the same path survives a failed one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras

from unet3d.config import RunConfig
from unet3d.export.checks import ExportError, check_export
from unet3d.folders import ExportFolder
from unet3d.inference.onnx_runtime import OPSET as ONNX_OPSET
from unet3d.inference.onnx_runtime import check_onnx, write_onnx
from unet3d.inference.postprocess import Chooser, PostProcessChoice
from unet3d.io_utils import atomic_write_json, public
from unet3d.training.checkpoint import load_model, save_model
from unet3d.training.model import inference_model

if TYPE_CHECKING:
    from unet3d.data.preprocess import CachedCase


def validation_postprocess(model: keras.Model, cfg: RunConfig, cases: Sequence[CachedCase], *,
                           hd95: bool = True) -> tuple[list[dict[str, Any]], PostProcessChoice]:
    """Per-case validation scores of ``model`` on labelled cached ``cases`` (as
    :func:`unet3d.evaluation.evaluate.evaluate_cases`) and the post-processing chosen on those same
    predictions for ``cfg.train.objective``: each case is predicted once."""
    from unet3d.evaluation.evaluate import evaluate_cases

    chooser = Chooser(cfg.scheme, cfg.train.objective)

    def add(case: CachedCase, pred: Any) -> None:
        chooser.add(case.case_id, pred, case.classes(cfg.scheme), case.meta["spacing"])

    per_case = evaluate_cases(model, cases, cfg, hd95=hd95, on_classes=add)
    return per_case, chooser.choose()


def _postprocess_card(choice: PostProcessChoice | None) -> list[str]:
    lines = ["", "## Post-processing"]
    if choice is None:
        return lines + ["None chosen (no validation cases to choose it on); `predict` applies none "
                        "unless told to (`--min-et-volume`, `--largest-wt`)."]
    what = "mean lesion-wise Dice" if choice.objective == "lesionwise" else "mean Dice"
    lines.append(f"- chosen on validation, applied by `predict` (`--postprocess none` turns it "
                 f"off): {choice.postprocess.describe()}")
    lines.append(f"- validation {what} over {len(choice.cases)} cases: "
                 f"{choice.baseline_score:.4f} without post-processing, "
                 f"{choice.chosen_score:.4f} with the choice ({len(choice.table)} candidates "
                 f"tried; a step must improve more cases than it worsens, gain more than "
                 f"{choice.margin:g} and still gain without its best case, and may not remove a "
                 f"region from every case predicted with it; see `postprocess.json`)")
    return lines


def _model_card(cfg: RunConfig, metrics: dict[str, Any], params: int, source: str,
                postprocess: PostProcessChoice | None = None) -> str:
    m, scheme = cfg.model, cfg.scheme
    lines = [
        "# 3D-UNet for brain-tumour segmentation",
        "",
        f"Source: {source}",
        "",
        "## Architecture",
        f"- {m.depth} resolution levels, filters {list(m.filters)}, {params:,} parameters",
        f"- normalization {m.norm}, activation {m.activation}, upsampling {m.upsampling}, "
        f"deep supervision {'on' if m.deep_supervision else 'off'}, dropout {m.dropout}",
        f"- head: {m.head} ({m.out_channels} channels); input: {m.in_channels} channels "
        f"(the case's modalities in t1, t1ce, t2, flair order, e.g. t1ce alone for MEN-RT; each "
        f"z-scored over the brain), channels-last "
        f"N x D x H x W x C, "
        f"D/H/W multiples of {m.downsample_factor}",
        f"- trained on {list(cfg.data.crop)} crops, batch {cfg.train.batch_size}, loss "
        f"{cfg.train.loss}, learning rate {cfg.train.learning_rate:g}, precision "
        f"{cfg.train.precision}",
        "",
        f"- labels: {scheme.describe()}; predictions are written with these label values",
        "",
        f"## Validation (mean = {', '.join(scheme.tumour)})",
    ]
    final = metrics.get("final") or {}
    if final:
        lines.append("| region | Dice | HD95 (mm) |")
        lines.append("|---|---|---|")
        for r in (*scheme.regions, "mean"):
            d = final.get(f"dice_{r}")
            h = final.get(f"hd95_{r}")
            lines.append(f"| {r} | {d:.4f} | {h:.2f} |" if h is not None else f"| {r} | {d:.4f} | - |")
    else:
        lines.append("No validation metrics (trained on every case).")
    lines += _postprocess_card(postprocess)
    lines += ["", "## Files",
              "- `model.keras`: `keras.saving.load_model('model.keras', safe_mode=True)`",
              "- `saved_model/`: TensorFlow SavedModel, signature `serve` (float32 N x D x H x W x "
              f"{m.in_channels})",
              f"- `model.onnx`: ONNX (opset {ONNX_OPSET}, float32 N x D x H x W x "
              f"{m.in_channels}, any batch and D/H/W multiples of {m.downsample_factor}) for "
              "onnxruntime; `predict --runtime onnx` runs it",
              "- `config.json`: the exact training configuration; `metrics.json`: full metrics",
              *(["- `postprocess.json`: the post-processing choice and every candidate's "
                 "validation scores"] if postprocess is not None else []), ""]
    return "\n".join(lines)


def write_runtimes(model: keras.Model, cfg: RunConfig, folder: Path) -> None:
    """``folder/saved_model`` (TensorFlow SavedModel) and ``folder/model.onnx`` of ``model``, whose
    ``model.keras`` and ``config.json`` ``folder`` already holds.

    Under TensorFlow, in this process. Under JAX neither jax2tf nor jax2onnx can export the free
    spatial size (they cannot prove an upsampled map and its skip connection the same shape), so
    TensorFlow exports ``model.keras`` in a fresh process, both files at once (TensorFlow starts
    once): the same files either way. The ONNX file is then also checked here against the JAX
    model itself.
    """
    export = ExportFolder(folder)
    if keras.backend.backend() == "tensorflow":
        model.export(str(export.saved_model), format="tf_saved_model", verbose=False)
        write_onnx(model, cfg, export.onnx)
        return
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    r = subprocess.run([sys.executable, "-m", "unet3d.export.exporter", str(folder)],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"SavedModel/ONNX export of {export.model} under TensorFlow "
                           f"failed:\n{r.stderr[-2000:]}")
    check_onnx(model, cfg, export.onnx)


def export_model(model: keras.Model, cfg: RunConfig, metrics: dict[str, Any], out: str | Path,
                 *, source: str = "", postprocess: PostProcessChoice | None = None) -> Path:
    """Writes the export folder ``out`` (replacing an existing one only once the new one is whole);
    with ``postprocess`` (chosen on validation, see :func:`validation_postprocess`) also
    ``postprocess.json``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = inference_model(model)
    tmp = public(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    new = ExportFolder(tmp)
    try:
        save_model(model, new.model)
        cfg.save(new.config)
        write_runtimes(model, cfg, tmp)
        atomic_write_json(new.metrics, metrics)
        if postprocess is not None:
            atomic_write_json(new.postprocess, postprocess.to_dict())
        new.card.write_text(_model_card(cfg, metrics, model.count_params(), source, postprocess))
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_run(source: str | Path, out: str | Path | None = None) -> Path:
    """Exports a training run (``train --out``: its ``model.keras``, or its last checkpoint when
    it was stopped before writing one) or re-exports an earlier export folder (e.g. one from
    before exports carried ONNX: its post-processing choice is kept) like a search's best: every
    file of the module docstring, the ONNX file checked against Keras. ``out`` defaults to
    ``RUN/export`` for a run and to the folder itself for an export (replaced only once the new
    one is whole). An existing ``out`` that is not an export folder is never replaced.

    Raises:
        ExportError (or the ConfigError / CheckpointError of a bad file), naming the path, before
        anything is written.
    """
    from unet3d.training.checkpoint import model_from_run

    source, out, run = check_export(source, out)
    given = ExportFolder(source)
    cfg = RunConfig.load(given.config)
    metrics: dict[str, Any] = {}
    if given.metrics.is_file():
        try:
            metrics = json.loads(given.metrics.read_text())
        except (OSError, ValueError) as e:
            raise ExportError(f"{given.metrics}: not readable JSON ({e})") from None
    choice = None
    if not run and given.postprocess.is_file():
        try:
            choice = PostProcessChoice.from_dict(json.loads(given.postprocess.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ExportError(f"{given.postprocess}: not a post-processing choice "
                              f"({type(e).__name__}: {e})") from None
    if given.model.is_file():
        try:
            model = load_model(given.model)
        except ValueError as e:
            raise ExportError(str(e)) from None
        what = "its final model" if run else "an earlier export"
    else:  # a run stopped before its end: its last checkpoint
        model, _, state = model_from_run(source)
        metrics = metrics or {"epoch": state.get("epoch"), "history": state.get("history", [])}
        what = f"its last checkpoint (epoch {state.get('epoch')})"
    return export_model(model, cfg, metrics, out, source=f"export of {source} ({what})",
                        postprocess=choice)


def load_export(folder: str | Path) -> tuple[keras.Model, RunConfig, dict[str, Any]]:
    """(model, config, metrics) of an export folder; the model is loaded with safe mode."""
    export = ExportFolder(folder)
    cfg = RunConfig.load(export.config)
    metrics = json.loads(export.metrics.read_text())
    return load_model(export.model), cfg, metrics


if __name__ == "__main__":  # python -m unet3d.export.exporter FOLDER: write_runtimes's TensorFlow worker
    _export = ExportFolder(sys.argv[1])
    write_runtimes(load_model(_export.model), RunConfig.load(_export.config), _export.path)
