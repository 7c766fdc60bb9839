"""Whatever wins, a search's other trained models are not thrown away: after the race, the final
model alone is compared on the validation cases with ensembles of it and the next-best trials
(probabilities averaged, as ``predict`` does with several models), case by case under the race's
paired rule (``search.race.compare``: ahead by its margin, significantly). An ensemble that
passes is written as ``EXPERIMENT/ensemble/`` (a folder of export folders: ``member_1`` is
``best/``, the others are exported to ``top/``; relative links), with ``ensemble.json`` (the
members and the comparison); ``predict --model EXPERIMENT`` then uses it. Otherwise the final model
stays alone and ``ensemble.json`` says why.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from search.context import SearchContext
from search.results import TrialRow, ranked
from search.storage import ExperimentFolder
from unet3d.folders import ExportFolder

MAX_MEMBERS = 3


def _scores(folders: Sequence[Path], ctx: SearchContext, objective: str) -> list[float]:
    """Each validation case's objective score for the ensemble of the export ``folders``
    (probabilities averaged, no post-processing: as the exports' own validation scores)."""
    import numpy as np

    from unet3d.evaluation.metrics import objective_score, region_scores
    from unet3d.inference.postprocess import PostProcess
    from unet3d.inference.predictor import Predictor, load_member

    members = [load_member(f) for f in folders]
    cfg = members[0].cfg
    predictor = Predictor(members, overlap=cfg.train.val_overlap, batch_size=cfg.train.val_batch_size,
                          postprocess=PostProcess())
    out = []
    for case in ctx.cases(ctx.val_ids):
        classes = predictor.classes(predictor.probabilities(np.asarray(case.image())))
        s = region_scores(classes, case.classes(predictor.scheme), predictor.scheme,
                          spacing=case.meta["spacing"], lesionwise=objective == "lesionwise",
                          distances=False)
        out.append(objective_score(s, objective))
    return out


def choose_ensemble(rows: Sequence[TrialRow], final: TrialRow, best: Path, ctx: SearchContext,
                    experiment: Path, export: Callable[[TrialRow, Path], Path], *,
                    margin: float, alpha: float, same: str = "") -> dict[str, Any]:
    """Compares ``best`` (the export of ``final``) with ensembles of it and the next-best trials
    that have a checkpoint (2 and then 3 members; not ``same``, the trial ``final`` continued: an
    earlier snapshot of the same model); writes the record (and the ensemble folder if one is
    chosen) and returns the record. ``export(row, folder)`` exports a trial."""
    from search.race import compare
    from unet3d.evaluation.metrics import objective_score
    from unet3d.io_utils import atomic_write_json

    metrics = json.loads(ExportFolder(best).metrics.read_text())
    alone = [objective_score(c, ctx.objective) for c in metrics.get("per_case", [])]
    others = [r for r in ranked(rows, exportable=True) if r.trial_id not in (final.trial_id, same)]
    record: dict[str, Any] = {"chosen": False, "members": [str(best)], "alone": alone,
                              "tried": []}
    if not alone or not others:
        record["why"] = "no validation cases" if not alone else "no other trial with a checkpoint"
        atomic_write_json(ExperimentFolder(experiment).ensemble_record, record)
        return record
    folders = [best]
    chosen: list[Path] = []
    for rank, row in enumerate(others[: MAX_MEMBERS - 1], start=2):
        top = ExperimentFolder(experiment).top(rank, row.trial_id)
        folder = top.path
        if not top.model.exists():
            export(row, folder)
        folders.append(folder)
        scores = _scores(folders, ctx, ctx.objective)
        c = compare(scores, alone, 0)
        passed = c.better(margin, alpha)
        record["tried"].append({"members": [str(f) for f in folders], "per_case": scores,
                                "mean_difference": c.mean, "se": c.se, "p": c.p,
                                "chosen": passed})
        if passed:
            chosen = list(folders)
    if chosen:
        _write_folder(experiment, chosen)
        record.update(chosen=True, members=[str(f) for f in chosen])
    else:
        record["why"] = (f"no ensemble beat the final model alone by more than {margin:g} at "
                         f"p < {alpha:g} (paired over {len(alone)} validation cases)")
    atomic_write_json(ExperimentFolder(experiment).ensemble_record, record)
    return record


def no_ensemble(experiment: Path, best: Path, why: str) -> dict[str, Any]:
    """Records that no ensemble was tried for the final model ``best``, and why."""
    from unet3d.io_utils import atomic_write_json

    record = {"chosen": False, "members": [str(best)], "tried": [], "why": why}
    atomic_write_json(ExperimentFolder(experiment).ensemble_record, record)
    return record


def _write_folder(experiment: Path, members: Sequence[Path]) -> None:
    """``EXPERIMENT/ensemble/member_K`` -> the members (relative links), built under a temporary
    name and renamed into place."""
    dest = ExperimentFolder(experiment).ensemble
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for k, m in enumerate(members, start=1):
        os.symlink(os.path.relpath(m, dest), tmp / f"member_{k}")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def final_members(experiment: Path) -> list[Path] | None:
    """The members of the ensemble a search chose (``ensemble.json``), None when it chose none."""
    try:
        record = json.loads(ExperimentFolder(experiment).ensemble_record.read_text())
    except FileNotFoundError:
        return None
    if not record.get("chosen"):
        return None
    return sorted(ExperimentFolder(experiment).ensemble.iterdir())
