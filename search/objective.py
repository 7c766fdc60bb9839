"""The search objective, defined once: which per-epoch validation score ranks, stops and exports.

An objective name (``SearchSpec.objective``, ``--objective``; the trial's ``train.objective``) maps
to the metric the trainer reports every validated epoch:

- ``dice``: ``val_dice_mean``, the mean whole-image Dice of the label scheme's tumour regions
  (WT, TC, ET for BraTS; GTV for MEN-RT; a region such as BraTS 2024's RC is reported but not in it);
- ``lesionwise``: ``val_lesionwise_dice_mean``, the mean lesion-wise Dice of those regions (the BraTS
  2023+ ranking).

Every engine maximises it (``MODE``). ``METRIC`` is the default objective's metric.

A search may add a second objective (``--objective dice,latency``; ``SearchSpec.second_objective``):
``latency`` (``latency_s``: measured inference seconds per window on the trial's device, lower is
better), ``params`` (the model's parameter count, lower is better) or ``throughput`` (training
volumes/s, higher is better). Optuna's multi-objective samplers then search the Pareto front of
the two; the first objective still ranks trials, stops them early and picks best/.
"""

from __future__ import annotations

from collections.abc import Sequence

OBJECTIVES = {"dice": "val_dice_mean", "lesionwise": "val_lesionwise_dice_mean"}
DEFAULT = "dice"
METRIC = OBJECTIVES[DEFAULT]
MODE = "max"
SECOND = {"latency": ("latency_s", "min"), "params": ("params", "min"),
          "throughput": ("throughput_vps", "max")}
SECOND_WORDS = {"latency": "inference s/window", "params": "parameters",
                "throughput": "training volumes/s"}
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


def split(objective: str) -> tuple[str, str]:
    """``"dice,latency"`` -> ("dice", "latency"); ``"dice"`` -> ("dice", "").

    Raises:
        ValueError: not an objective, optionally followed by one second objective (the message
            names --objective and the choices).
    """
    parts = [p.strip() for p in str(objective).split(",")]
    if (len(parts) > 2 or parts[0] not in OBJECTIVES
            or (len(parts) == 2 and parts[1] not in SECOND)):
        raise ValueError(f"--objective {objective}: must be one of {', '.join(OBJECTIVES)}, "
                         f"optionally followed by a second objective ,{'|'.join(SECOND)} "
                         f"(e.g. dice,latency)")
    return parts[0], parts[1] if len(parts) == 2 else ""


def second_metric(second: str) -> tuple[str, str]:
    """(metric, "min" | "max") of a second objective ("latency" -> ("latency_s", "min"))."""
    return SECOND[second]
