"""Model and checkpoint I/O: the one place models and checkpoints are read and written.

Two kinds of file:
  ``model.keras``      the network alone (architecture + weights, no loss or optimizer), written by
                       :func:`save_model`, so ``keras.saving.load_model(path, safe_mode=True)``
                       loads it with no custom objects and no code from the file.
  ``checkpoint.npz``   model weights, optimizer variables, random-number states (the on-device
                       augmentation's) and the run state (JSON), replaced atomically after every
                       epoch so a killed run resumes from the last one where it stopped.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from unet3d.config import RunConfig
from unet3d.errors import UserError
from unet3d.folders import RunFolder
from unet3d.io_utils import atomic_path
from unet3d.training.model import build_unet3d, inference_model, portable


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message names the file."""


def save_model(model: keras.Model, path: str | Path) -> None:
    """Saves the network alone (architecture and weights, no compile state) atomically.

    A compiled model's file would name our loss functions, and Keras safe mode refuses to load a
    file that names functions it does not know; a fresh functional view over the same layers is
    uncompiled and shares the weights, and the caller's model keeps its own state. Its
    up-sampling layers are Keras's own (:func:`unet3d.training.model.portable`): the file needs Keras only.
    """
    bare = portable(model)
    with atomic_path(Path(path), suffix=".keras") as tmp:
        bare.save(tmp)


def load_model(path: str | Path) -> keras.Model:
    """Loads a saved model with Keras safe mode (no arbitrary code from the file), uncompiled.

    Raises:
        ValueError: naming the file, if it is not a readable .keras archive.
    """
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a .keras model archive (missing, truncated or corrupt)")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path}: cannot load the .keras model ({msg})") from None


def _random_states(model: keras.Model) -> list[keras.Variable]:
    """The model's random-number generator states (keras.random.SeedGenerator counters, e.g. the
    on-device augmentation's): its variables that are neither weights nor optimizer state."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def save_checkpoint(path: Path, model: keras.Model, state: dict[str, Any]) -> None:
    """Writes weights, optimizer variables, random-number states and ``state`` (JSON-able) to
    ``path`` atomically."""
    arrays = {f"w{i}": np.asarray(v) for i, v in enumerate(model.get_weights())}
    arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)})
    arrays.update({f"r{i}": np.asarray(v) for i, v in enumerate(_random_states(model))})
    arrays["state"] = np.array(json.dumps(state))
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def read_checkpoint(path: Path) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    """(model weights, optimizer variables, run state) from a checkpoint file.

    Raises:
        CheckpointError: the file is missing or not a checkpoint.
    """
    try:
        with np.load(path) as z:
            n_w = sum(1 for k in z.files if k.startswith("w"))
            n_o = sum(1 for k in z.files if k.startswith("o"))
            weights = [z[f"w{i}"] for i in range(n_w)]
            opt = [z[f"o{i}"] for i in range(n_o)]
            state = json.loads(str(z["state"]))
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from None
    return weights, opt, state


def read_state(path: Path) -> dict[str, Any]:
    """The run state alone (epoch, history) of a checkpoint file, without its arrays.

    Raises:
        CheckpointError: the file is missing or not a checkpoint.
    """
    try:
        with np.load(path) as z:  # (an .npz is a zip: only the "state" member is read)
            return json.loads(str(z["state"]))
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from None


def set_weights_checked(model: keras.Model, weights: list[np.ndarray], source: Path) -> None:
    """``model.set_weights`` that names ``source`` when the weights do not fit."""
    try:
        model.set_weights(weights)
    except ValueError as e:
        raise CheckpointError(f"{source}: checkpoint does not fit this model ({e})") from None


def load_checkpoint(path: Path, model: keras.Model) -> dict[str, Any]:
    """Restores weights and optimizer variables into a compiled ``model``; returns the run state."""
    weights, opt, state = read_checkpoint(path)
    set_weights_checked(model, weights, path)
    if not model.optimizer.built:  # (a LossScaleOptimizer built twice would double its state)
        model.optimizer.build(model.trainable_variables)
    variables = model.optimizer.variables
    if len(variables) != len(opt):
        raise CheckpointError(f"{path}: checkpoint has {len(opt)} optimizer variables, "
                              f"the optimizer has {len(variables)}")
    for v, value in zip(variables, opt, strict=True):
        v.assign(value)
    # The random-number states continue where they stopped, so a resumed run draws what the
    # uninterrupted one would have; a checkpoint of a run augmenting elsewhere has none to restore.
    with np.load(path) as z:
        saved = [z[k] for k in sorted((k for k in z.files if k.startswith("r")),
                                      key=lambda k: int(k[1:]))]
    states = _random_states(model)
    if len(saved) == len(states):
        for v, value in zip(states, saved, strict=True):
            v.assign(value)
    return state


def model_from_run(run_dir: str | Path) -> tuple[keras.Model, RunConfig, dict[str, Any]]:
    """Rebuilds the model of a run folder from its config.json and checkpoint.npz.

    Returns (inference model, config, the checkpoint's run state).
    """
    run = RunFolder(run_dir)
    cfg = RunConfig.load(run.config)
    model = build_unet3d(cfg.model)
    weights, _, state = read_checkpoint(run.checkpoint)
    set_weights_checked(model, weights, run.checkpoint)
    return inference_model(model), cfg, state
