"""What every search ends with, whatever the engine: results files, the best trial exported."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from search.context import SearchContext
from search.objective import WORDS
from search.results import (
    TrialRow,
    asha_savings,
    best_row,
    finite,
    mark_pareto,
    ranked,
    write_results,
)
from search.spec import SearchSpec
from search.storage import ExperimentFolder
from unet3d.io_utils import atomic_write_json
from unet3d.planning.budget import MemoryBudget


def save_search(spec: SearchSpec, ctx: SearchContext, experiment: Path, *,
                budget: MemoryBudget | None = None) -> None:
    """Writes ``search.json``: the whole specification (``SearchSpec``), the context trials get and
    the memory budget the search uses (``memory_budget``: GiB per trial, device, where it came
    from; a resumed search keeps it)."""
    d: dict[str, Any] = {"spec": spec.to_dict(), "context": ctx.to_dict(), "engine": spec.engine}
    if budget is not None:
        d["memory_budget"] = budget.to_dict()
    atomic_write_json(ExperimentFolder(experiment).search, d)


def load_context(experiment: Path) -> tuple[SearchContext, dict[str, Any]]:
    """The trials' context saved in ``search.json``, and the rest of that file."""
    path = ExperimentFolder(experiment).search
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; is {experiment} a search experiment folder?") \
            from None
    return SearchContext.from_dict(d.pop("context")), d


def load_search(experiment: Path) -> tuple[SearchSpec, SearchContext]:
    """(SearchSpec, SearchContext) of a saved search. A search.json written before the spec was
    saved whole gets the spec its context implies, with the engine's default options."""
    ctx, rest = load_context(experiment)
    source = str(ExperimentFolder(experiment).search)
    if "spec" in rest:
        return SearchSpec.from_dict(rest["spec"], source=source), ctx
    spec = SearchSpec(data=ctx.data, cache=ctx.cache, space=ctx.space.name, engine=rest["engine"],
                      max_epochs=ctx.max_epochs, name=experiment.name, seed=ctx.seed, fold=ctx.fold,
                      folds=ctx.folds, split_seed=ctx.split_seed,
                      workers_per_trial=ctx.workers_per_trial, objective=ctx.objective)
    return spec, ctx


def _export_row(row: TrialRow, ctx: SearchContext, experiment: Path, out: Path, *,
                held_out: bool = True) -> Path:
    """Exports ``row``'s best checkpoint to ``out`` with full validation metrics (Dice and HD95 per
    case, computed on the exported weights) and the post-processing chosen on those same
    validation predictions for the search objective (``postprocess.json``). ``held_out`` False:
    the trial trained on the validation cases too (the race's winner continued on every case):
    neither is computed, as for ``retrain-best``'s ``all``."""
    from search.storage import local_copy
    from unet3d.evaluation.evaluate import mean_scores
    from unet3d.export.exporter import export_model, validation_postprocess
    from unet3d.training.checkpoint import model_from_run

    staged = experiment / f".{out.name}_checkpoint"
    model, cfg, state = model_from_run(local_copy(row.checkpoint, staged))
    shutil.rmtree(staged, ignore_errors=True)  # only a download of a remote checkpoint lands here
    val = ctx.cases(ctx.val_ids) if held_out else []
    metrics: dict[str, Any] = {"trial_id": row.trial_id, "params": row.params,
                               "epoch": state["epoch"], "history": state["history"],
                               "backend": cfg.train.backend,  # (what it trained under)
                               "val_cases": list(ctx.val_ids) if held_out else [],
                               "train_cases": sorted(ctx.train_ids) if held_out else
                               sorted(set(ctx.train_ids) | set(ctx.val_ids))}
    choice = None
    if val:
        # chosen for cfg.train.objective: the search objective, which every trial trains with
        per_case, choice = validation_postprocess(model, cfg, val, hd95=True)
        metrics["per_case"] = per_case
        metrics["final"] = mean_scores(per_case)
    return export_model(model, cfg, metrics, out, postprocess=choice,
                        source=f"search {experiment.name}, trial {row.trial_id}, epoch {state['epoch']}")


def export_best(rows: Sequence[TrialRow], ctx: SearchContext, experiment: Path,
                final: str = "", held_out: bool = True) -> tuple[TrialRow, Path] | None:
    """Exports the best trial's best checkpoint to ``<experiment>/best``; ``final``: the trial
    whose checkpoint is the search's model whatever the ranking says (the race's winner, continued
    to the budget), when it has one; ``held_out`` False: it trained on the validation cases too."""
    chosen = next((r for r in rows if r.trial_id == final and r.checkpoint), None) if final else None
    best = chosen or best_row(rows)
    if best is None:
        return None
    return best, _export_row(best, ctx, experiment, ExperimentFolder(experiment).best.path,
                             held_out=held_out or chosen is None)


def race_summary(experiment: Path) -> dict[str, Any] | None:
    """What the race did (``race.json``; None for a search that did not race): its settings, the
    trial-epochs it trained and lost, the winner and its continuation, each trial's verdict, and
    its events in order."""
    from search.race import load_race

    race = load_race(experiment)
    if race is None:
        return None
    cont = race.get("continuation") or {}
    trials = {t["trial_id"]: t for t in race["trials"]}
    done = trials.get(cont.get("continuation_trial", ""), {}).get("epochs", 0)
    trained = max(0, done - int(cont.get("from_epoch", 0))) if cont else 0
    return {"settings": race["settings"], "incumbent": race["incumbent"],
            "winner_score": cont.get("score"),
            "race_trial_epochs": race["spent"], "lost_trial_epochs": race["lost"],
            "continuation": cont, "continuation_trial_epochs": trained,
            "trial_epochs": race["spent"] + trained,
            "final_trial": cont.get("continuation_trial") or race["incumbent"] or "",
            "verdicts": {t["trial_id"]: (t["verdict"] or ("incumbent" if t["trial_id"] ==
                                                          race["incumbent"] else ""), t["why"])
                         for t in race["trials"]},
            "events": race["events"]}


def export_pareto(front: Sequence[TrialRow], ctx: SearchContext, experiment: Path,
                  best: tuple[TrialRow, Path] | None = None) -> dict[str, Path]:
    """Exports each trial of the Pareto front that has a checkpoint (``TrialRow.pareto`` = 1, 2,
    ...: best first objective first) to ``<experiment>/pareto/rank_<K>`` (a model a user picks by
    the trade-off); returns {trial id: folder}. The trial already exported as ``best`` (usually
    rank 1) is copied from there rather than validated and exported again."""
    out = {}
    for r in front:
        if not r.checkpoint:
            continue
        dest = ExperimentFolder(experiment).pareto(r.pareto).path
        if best is not None and best[0].trial_id == r.trial_id:
            out[r.trial_id] = _copy_folder(best[1], dest)
        else:
            out[r.trial_id] = _export_row(r, ctx, experiment, dest)
    return out


def _spread(row: TrialRow, second: str) -> float | None:
    """The relative spread of a trial's measured latency (unet3d.training.train.window_latency); None for
    the other second objectives."""
    if second != "latency":
        return None
    spreads = [h["latency_spread"] for h in row.history if finite(h.get("latency_spread"))]
    return float(spreads[-1]) if spreads else None


def _copy_folder(src: Path, dest: Path) -> Path:
    """``src`` copied to ``dest`` under a temporary name, then renamed into place."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def load_rows(experiment: Path) -> list[TrialRow]:
    """The trial rows a finished search wrote to ``trials.json`` (an older file's too)."""
    path = ExperimentFolder(experiment).trials
    try:
        trials = json.loads(path.read_text())["trials"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; has the search {experiment} finished?") from None
    return [TrialRow.from_dict(t) for t in trials]


def check_top_k(k: int) -> None:
    """--top-k: at least one model (an OptionError, a ValueError)."""
    from unet3d.errors import OptionError

    if k < 1:
        raise OptionError(f"--top-k {k}: must be at least 1")


def export_top(experiment: Path, k: int,
               log: Callable[[str], None] | None = None) -> list[Path]:
    """Export folders of the ``k`` best trials of a finished search, best first, for an ensemble.

    Rank 1 is ``<experiment>/best``; ranks 2..k are exported on first use to
    ``<experiment>/top/rank<r>_<trial_id>`` and reused afterwards.

    Raises:
        FileNotFoundError: the search has not finished (no trials.json / best/).
        ValueError: k < 1 or fewer than k trials have a checkpoint.
    """
    check_top_k(k)
    ctx, _ = load_context(experiment)
    top = ranked(load_rows(experiment), exportable=True)
    if len(top) < k:
        raise ValueError(f"--top-k {k}: {experiment} has only {len(top)} trials with a checkpoint")
    folders = ExperimentFolder(experiment)
    if not folders.best.model.exists():
        raise FileNotFoundError(f"{folders.best.path}: no exported best model")
    out = [folders.best.path]
    for rank, row in enumerate(top[1:k], start=2):
        folder = folders.top(rank, row.trial_id).path
        if not folders.top(rank, row.trial_id).model.exists():
            if log is not None:
                log(f"exporting trial {row.trial_id} (rank {rank}, validation "
                    f"{WORDS[row.objective]} {row.best_score:.4f}) -> {folder}")
            _export_row(row, ctx, experiment, folder)
        out.append(folder)
    return out


def finish(rows: Sequence[TrialRow], ctx: SearchContext, experiment: Path, engine: str, *,
           export: bool = True, budget: MemoryBudget | None = None) -> dict[str, Any]:
    """Writes results.csv and trials.json and (``export``) exports the best trial; the summary
    (``best_score``: the best trial's objective, ``objective`` which one; ``best_dice_mean`` too;
    ``trials``: the trials that ran, ``trials_pruned``: the configurations refused for memory,
    ``memory_budget``: the budget, as search.json has it; ``pareto``: a two-objective search's
    front, each trial exported to pareto/rank_K)."""
    pruned = sum(r.pruned for r in rows)
    summary: dict[str, Any] = {"engine": engine, "objective": ctx.objective,
                               "trials": len(rows) - pruned, "trials_pruned": pruned,
                               "max_epochs": ctx.max_epochs,
                               "trials_interrupted": sum(r.status == "interrupted" for r in rows),
                               # (a search ended by Ctrl-C exports nothing: --resume finishes it)
                               "interrupted": not export,
                               **asha_savings(rows, ctx.max_epochs)}
    if budget is not None:
        summary["memory_budget"] = budget.to_dict()
    race = race_summary(experiment)
    if race is not None:
        summary["race"] = race
        summary["trial_epochs_run"] = race["trial_epochs"]
    final = race["final_trial"] if race is not None else ""
    held_out = race is None or race["continuation"].get("data", "train") != "all"
    exported = export_best(rows, ctx, experiment, final, held_out) if export else None
    if exported is not None:
        best, path = exported
        summary.update(best_trial=best.trial_id, best_score=best.best_score,
                       best_dice_mean=best.best_dice_mean, best_params=best.params, export=str(path))
        if race is not None:  # the race's other trained models may still help, as an ensemble
            from search.ensemble import choose_ensemble, no_ensemble

            settings = race["settings"]
            record = (choose_ensemble(
                rows, best, path, ctx, experiment,
                lambda r, folder: _export_row(r, ctx, experiment, folder),
                margin=settings["margin"], alpha=settings["alpha"],
                same=race["continuation"].get("trial_id", "")) if held_out else
                no_ensemble(experiment, path, "the final model was continued on every labelled "
                            "case: no held-out validation case is left to compare an ensemble on"))
            summary["ensemble"] = {k: record.get(k) for k in ("chosen", "members", "why")}
    second = getattr(ctx, "second_objective", "")
    if second:
        front = mark_pareto(rows, second)
        paths = export_pareto(front, ctx, experiment, exported) if export else {}
        summary["second_objective"] = second
        summary["pareto"] = [{"rank": r.pareto, "trial_id": r.trial_id, "score": r.best_score,
                              second: r.second, "spread": _spread(r, second),
                              "export": str(paths.get(r.trial_id, ""))}
                             for r in front]
    write_results(rows, experiment, summary)
    return summary
