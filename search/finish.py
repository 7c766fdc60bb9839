"""What every search ends with, whatever the engine: results files, the best trial exported."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search.context import SearchContext
from search.results import TrialRow, asha_savings, best_row, write_results
from unet3d.io_utils import atomic_write_json


def save_context(ctx: SearchContext, experiment: Path, extra: dict[str, Any]) -> None:
    atomic_write_json(experiment / "search.json", {"context": ctx.to_dict(), **extra})


def load_context(experiment: Path) -> tuple[SearchContext, dict[str, Any]]:
    path = experiment / "search.json"
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; is {experiment} a search experiment folder?") \
            from None
    return SearchContext.from_dict(d.pop("context")), d


def export_best(rows: Sequence[TrialRow], ctx: SearchContext,
                experiment: Path) -> tuple[TrialRow, Path] | None:
    """Exports the best trial's best checkpoint to ``<experiment>/best`` with full validation
    metrics (Dice and HD95 per case, computed on the exported weights)."""
    from search.storage import local_copy
    from unet3d.export import export_model, model_from_run
    from unet3d.train import evaluate_cases, mean_scores

    best = best_row(rows)
    if best is None:
        return None
    staged = experiment / ".best_checkpoint"
    model, cfg, state = model_from_run(local_copy(best.checkpoint, staged))
    shutil.rmtree(staged, ignore_errors=True)  # only a download of a remote checkpoint lands here
    val = ctx.cases(ctx.val_ids)
    metrics: dict[str, Any] = {"trial_id": best.trial_id, "params": best.params,
                               "epoch": state["epoch"], "history": state["history"],
                               "val_cases": list(ctx.val_ids)}
    if val:
        per_case = evaluate_cases(model, val, cfg, hd95=True)
        metrics["per_case"] = per_case
        metrics["final"] = mean_scores(per_case)
    out = export_model(model, cfg, metrics, experiment / "best",
                       source=f"search {experiment.name}, trial {best.trial_id}, epoch {state['epoch']}")
    return best, out


def finish(rows: Sequence[TrialRow], ctx: SearchContext, experiment: Path, engine: str) -> dict[str, Any]:
    summary: dict[str, Any] = {"engine": engine, "trials": len(rows),
                               "max_epochs": ctx.max_epochs,
                               **asha_savings(rows, ctx.max_epochs)}
    exported = export_best(rows, ctx, experiment)
    if exported is not None:
        best, path = exported
        summary.update(best_trial=best.trial_id, best_dice_mean=best.best_dice_mean,
                       best_params=best.params, export=str(path))
    write_results(rows, experiment, summary)
    return summary
