"""The search objective, defined once: the validation mean of the BraTS region Dice (WT, TC, ET)."""

from __future__ import annotations

METRIC = "val_dice_mean"
MODE = "max"
