"""Writes this folder: a run saved by the code before UpConv3D (commit 35b1329). Run from a checkout
of that commit:  PYTHONPATH=<checkout> python make.py <this folder>"""

import sys
from pathlib import Path

import keras
import numpy as np

from unet3d.config import preset
from unet3d.training.checkpoint import save_checkpoint, save_model
from unet3d.training.model import build_unet3d

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
cfg = preset("nvidia").replace(model={"depth": 3, "base_filters": 4})
keras.utils.set_random_seed(7)
model = build_unet3d(cfg.model)
for layer in model.layers:  # non-zero biases in the up-sampling layers (they start at zero)
    if type(layer) is keras.layers.Conv3DTranspose:
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel, np.random.default_rng(1).normal(0, 0.5, bias.shape)
                           .astype("float32")])
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
model.optimizer.build(model.trainable_variables)
cfg.save(out / "config.json")
save_checkpoint(out / "checkpoint.npz", model, {"epoch": 1, "history": []})
save_model(model, out / "model.keras")
