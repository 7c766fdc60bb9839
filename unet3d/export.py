"""Export a trained model as a self-describing folder, and load it back safely.

An export folder holds:
  model.keras       the network (main output only), loadable with Keras safe mode
  saved_model/      a TensorFlow SavedModel (``model.export``) for TF Serving / other runtimes
  config.json       the exact RunConfig it was trained with
  metrics.json      its metrics (validation Dice/HD95, history, ...)
  MODEL_CARD.md     a short human-readable card
The folder is assembled under a temporary name and renamed into place, so a reader never sees a
half-written export and an earlier export at the same path survives a failed one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import keras

from unet3d.checkpoint import load_model, save_model
from unet3d.config import RunConfig
from unet3d.io_utils import atomic_write_json
from unet3d.model import inference_model


def _model_card(cfg: RunConfig, metrics: dict[str, Any], params: int, source: str) -> str:
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
    lines += ["", "## Files",
              "- `model.keras`: `keras.saving.load_model('model.keras', safe_mode=True)`",
              "- `saved_model/`: TensorFlow SavedModel, signature `serve` (float32 N x D x H x W x "
              f"{m.in_channels})",
              "- `config.json`: the exact training configuration; `metrics.json`: full metrics", ""]
    return "\n".join(lines)


def export_model(model: keras.Model, cfg: RunConfig, metrics: dict[str, Any], out: str | Path,
                 *, source: str = "") -> Path:
    """Writes the export folder ``out`` (replacing an existing one only once the new one is whole)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = inference_model(model)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        save_model(model, tmp / "model.keras")
        model.export(str(tmp / "saved_model"), format="tf_saved_model", verbose=False)
        cfg.save(tmp / "config.json")
        atomic_write_json(tmp / "metrics.json", metrics)
        (tmp / "MODEL_CARD.md").write_text(_model_card(cfg, metrics, model.count_params(), source))
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


def load_export(folder: str | Path) -> tuple[keras.Model, RunConfig, dict[str, Any]]:
    """(model, config, metrics) of an export folder; the model is loaded with safe mode."""
    folder = Path(folder)
    cfg = RunConfig.load(folder / "config.json")
    metrics = json.loads((folder / "metrics.json").read_text())
    return load_model(folder / "model.keras"), cfg, metrics
