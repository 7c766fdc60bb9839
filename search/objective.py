"""The search objective, defined once: which per-epoch validation score ranks, stops and exports.

An objective name (``SearchSpec.objective``, ``--objective``; the trial's ``train.objective``) maps
to the metric the trainer reports every validated epoch:

- ``dice``: ``val_dice_mean``, the mean whole-image Dice of the label scheme's tumour regions
  (WT, TC, ET for BraTS; GTV for MEN-RT; a region such as BraTS 2024's RC is reported but not in it);
- ``lesionwise``: ``val_lesionwise_dice_mean``, the mean lesion-wise Dice of those regions (the BraTS
  2023+ ranking).

Every engine maximises it (``MODE``). ``METRIC`` is the default objective's metric.
"""

from __future__ import annotations

from collections.abc import Sequence

OBJECTIVES = {"dice": "val_dice_mean", "lesionwise": "val_lesionwise_dice_mean"}
DEFAULT = "dice"
METRIC = OBJECTIVES[DEFAULT]
MODE = "max"
# Short column headers (the CLI's table) and the words of figure labels, per objective.
HEADERS = {"dice": "Dice", "lesionwise": "LW Dice"}
WORDS = {"dice": "Dice", "lesionwise": "lesion-wise Dice"}


def metric_of(objective: str) -> str:
    """The per-epoch metric of ``objective`` ("dice" -> "val_dice_mean").

    Raises:
        ValueError: an unknown objective (the message names ``--objective`` and the choices).
    """
    try:
        return OBJECTIVES[objective]
    except (KeyError, TypeError):
        raise ValueError(f"--objective {objective}: must be one of {', '.join(OBJECTIVES)}") \
            from None


def describe(objective: str, tumour: Sequence[str]) -> str:
    """What the objective's score is, for labels: "validation mean Dice of WT, TC, ET"."""
    metric_of(objective)
    return f"validation mean {WORDS[objective]} of {', '.join(tumour)}"
