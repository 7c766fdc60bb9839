"""Search results in one engine-neutral form: a row per trial, the best trial, ASHA's savings.

Rows are written to ``<experiment>/results.csv`` and ``trials.json`` (atomically) and printed as a
table by the CLI.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from search.objective import METRIC
from unet3d.io_utils import atomic_write_json, atomic_write_text


@dataclass
class TrialRow:
    """One trial.

    index: the order the searcher proposed the trial in (1 = first).
    status: "completed" (ran max epochs), "stopped" (ended early by the scheduler), "error" (failed
        after its retries; ``error`` says why, e.g. a diverged loss), "interrupted" (cut off by
        Ctrl-C; a resumed search continues it).
    node / node_id: the address and Ray node ID of the node that ran the trial's last epoch.
    best_*: the validation scores at the trial's best epoch (by the objective).
    checkpoint: folder holding the best epoch's checkpoint.npz + config.json ("" if none).
    """

    trial_id: str
    params: dict[str, Any]
    status: str
    epochs: int
    best_epoch: int = 0
    best_dice_mean: float = float("nan")
    best_dice_WT: float = float("nan")
    best_dice_TC: float = float("nan")
    best_dice_ET: float = float("nan")
    last_dice_mean: float = float("nan")
    throughput_vps: float = float("nan")
    wall_s: float = 0.0
    node: str = ""
    node_id: str = ""
    error: str = ""
    checkpoint: str = ""
    run_dir: str = ""
    index: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def row_from_history(trial_id: str, params: dict[str, Any], history: Sequence[dict[str, Any]],
                     max_epochs: int, *, error: str = "", wall_s: float = 0.0, node: str = "",
                     node_id: str = "", checkpoint: str = "", run_dir: str = "",
                     index: int = 0, interrupted: bool = False) -> TrialRow:
    """Builds a row from a trial's per-epoch records (the trainer's / Ray's reported metrics)."""
    scored = [h for h in history if finite(h.get(METRIC))]
    best = max(scored, key=lambda h: h[METRIC]) if scored else {}
    epochs = int(max((h.get("epoch", 0) for h in history), default=0))
    if error:
        status = "error"
    elif epochs >= max_epochs:
        status = "completed"
    else:
        status = "interrupted" if interrupted else "stopped"
    tput = [h["throughput_vps"] for h in history[1:] or history if finite(h.get("throughput_vps"))]
    return TrialRow(
        trial_id=trial_id, params=dict(params), status=status, epochs=epochs,
        best_epoch=int(best.get("epoch", 0)),
        best_dice_mean=float(best.get(METRIC, math.nan)),
        best_dice_WT=float(best.get("val_dice_WT", math.nan)),
        best_dice_TC=float(best.get("val_dice_TC", math.nan)),
        best_dice_ET=float(best.get("val_dice_ET", math.nan)),
        last_dice_mean=float(scored[-1][METRIC]) if scored else math.nan,
        throughput_vps=float(sorted(tput)[len(tput) // 2]) if tput else math.nan,
        wall_s=wall_s, node=node, node_id=node_id, error=error, checkpoint=checkpoint, run_dir=run_dir,
        index=index, history=[dict(h) for h in history])


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def ranked(rows: Sequence[TrialRow], *, exportable: bool = False) -> list[TrialRow]:
    """Trials best first by their best epoch's objective (the one ranking of the project: the table,
    the report, best/ and top-k). Unscored trials come last, in their original order.
    ``exportable``: only trials with a score and a checkpoint (what can be exported)."""
    if exportable:
        rows = [r for r in rows if finite(r.best_dice_mean) and r.checkpoint]
    # sorted() is stable, so ties keep the order the searcher proposed them in.
    return sorted(rows, key=lambda r: -r.best_dice_mean if finite(r.best_dice_mean) else math.inf)


def best_row(rows: Sequence[TrialRow]) -> TrialRow | None:
    """The trial best/ exports: the highest best score among trials with a checkpoint."""
    top = ranked(rows, exportable=True)
    return top[0] if top else None


def asha_savings(rows: Sequence[TrialRow], max_epochs: int) -> dict[str, int]:
    """Trial-epochs actually run vs. running every (non-failed) trial to max_epochs."""
    ended = [r for r in rows if r.status in ("completed", "stopped")]
    ran = sum(r.epochs for r in ended)
    full = max_epochs * len(ended)
    return {"trial_epochs_run": ran, "trial_epochs_without_early_stopping": full,
            "trial_epochs_saved": full - ran,
            "trials_stopped_early": sum(1 for r in rows if r.status == "stopped")}


def write_results(rows: Sequence[TrialRow], experiment: Path, summary: dict[str, Any]) -> None:
    param_names = sorted({k for r in rows for k in r.params})
    cols = ["trial_id", "index", "status", "epochs", "best_epoch", "best_dice_mean", "best_dice_WT",
            "best_dice_TC", "best_dice_ET", "throughput_vps", "wall_s", "node", "node_id", "error"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols + param_names)
    for r in rows:
        d = asdict(r)
        w.writerow([d[c] for c in cols] + [r.params.get(p, "") for p in param_names])
    atomic_write_text(experiment / "results.csv", buf.getvalue())
    atomic_write_json(experiment / "trials.json",
                      {"summary": summary, "trials": [asdict(r) for r in rows]})


def format_table(rows: Sequence[TrialRow]) -> str:
    """A fixed-width table: one line per trial, parameters abbreviated to their field names; a node
    column when trials ran on several nodes; the reason of each failed trial below."""
    param_names = sorted({k for r in rows for k in r.params})
    short = [p.split(".", 1)[1] for p in param_names]
    multi_node = len({r.node_id for r in rows if r.node_id}) > 1
    head = (f"{'trial':<10} {'status':<9} {'ep':>3} {'Dice':>6} {'WT':>6} {'TC':>6} {'ET':>6} "
            f"{'vol/s':>6} " + (f"{'node':<8} " if multi_node else "")
            + " ".join(f"{s[:12]:>12}" for s in short))
    lines = [head, "-" * len(head)]
    for r in ranked(rows):
        vals = []
        for p in param_names:
            v = r.params.get(p, "")
            vals.append(f"{v:>12.3g}" if isinstance(v, float) else f"{str(v)[:12]:>12}")
        node = f"{r.node_id[:8]:<8} " if multi_node else ""
        lines.append(f"{r.trial_id[:10]:<10} {r.status:<9} {r.epochs:>3} {r.best_dice_mean:>6.3f} "
                     f"{r.best_dice_WT:>6.3f} {r.best_dice_TC:>6.3f} {r.best_dice_ET:>6.3f} "
                     f"{r.throughput_vps:>6.1f} {node}" + " ".join(vals))
    for r in rows:
        if r.status == "error":
            lines.append(f"trial {r.trial_id} failed: {r.error}")
    return "\n".join(lines)
