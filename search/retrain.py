"""retrain-best: train a search's best configuration from scratch, longer, on more data.

``folds=None`` trains one model on every labelled case (all training folds; no held-out validation);
a list of folds trains one model per fold with that fold held out (a cross-validation ensemble).
Each model is exported like the search's best, to ``<experiment>/retrained/{all,fold_K}``; a fold's
export gets the post-processing chosen on its held-out fold (``postprocess.json``), the ``all`` model
none (it has no validation cases to choose on).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from search.finish import load_context
from search.storage import ExperimentFolder
from unet3d.config import RunConfig
from unet3d.data.split import kfold
from unet3d.errors import OptionError
from unet3d.io_utils import check_writable_dir


def retrain_best(experiment: Path, *, epochs: int | None = None, folds: Sequence[int] | None = None,
                 resume: bool = False, backend: str | None = None,
                 log: Callable[[str], None] = print) -> list[Path]:
    """Retrains the best configuration of ``experiment`` (see the module docstring) under
    ``backend``, by default the best trial's; where Keras already runs on another backend in this
    process (a notebook, a search's driver), under that one, as the log says."""
    from unet3d.runtime import settle_backend

    if epochs is not None and epochs < 1:  # checked before anything is read or written
        raise OptionError(f"--epochs {epochs}: must be at least 1")
    ctx, _ = load_context(experiment)
    for k in folds or ():  # (before Keras loads: a bad fold costs no TensorFlow start)
        if not 0 <= k < ctx.folds:
            raise ValueError(f"--folds: fold {k} is not in 0..{ctx.folds - 1}")
    folders = ExperimentFolder(experiment)
    check_writable_dir(folders.retrained, "retrain-best")
    best_cfg_path = folders.best.config
    if not best_cfg_path.exists():
        raise FileNotFoundError(f"{best_cfg_path}: not found; the search exported no best model")
    cfg = RunConfig.load(best_cfg_path)
    wanted = backend or cfg.train.backend
    running = settle_backend(wanted)
    if running != wanted:
        log(f"retraining under {running}: Keras already runs on it in this process ({wanted} "
            f"needs a process of its own: run_search.py retrain-best --backend {wanted})")
    cfg = cfg.replace(train={"backend": running})

    from unet3d.export.exporter import export_model, validation_postprocess
    from unet3d.training.train import Trainer

    n_epochs = epochs if epochs is not None else 2 * cfg.train.epochs
    cfg = cfg.with_epochs(n_epochs)
    all_ids = sorted(set(ctx.train_ids) | set(ctx.val_ids))
    jobs: list[tuple[str, list[str], list[str], RunConfig]] = []
    if folds is None:
        jobs.append(("all", all_ids, [], cfg))
    else:
        for k in folds:
            train_ids, val_ids = kfold(all_ids, ctx.folds, k, ctx.split_seed)
            jobs.append((f"fold_{k}", train_ids, val_ids, cfg.replace(data={"fold": k})))
    outputs = []
    for tag, train_ids, val_ids, run_cfg in jobs:
        run_dir = folders.retrained / "runs" / tag
        log(f"retrain {tag}: {len(train_ids)} train / {len(val_ids)} validation cases, "
            f"{n_epochs} epochs -> {run_dir}")
        trainer = Trainer(run_cfg, ctx.cases(tuple(train_ids)), ctx.cases(tuple(val_ids)), run_dir,
                          resume=resume, log=lambda m, t=tag: log(f"  {t} {m}"))
        metrics: dict[str, Any] = trainer.fit()
        choice = None
        if trainer.val_cases:  # the fold's held-out cases, predicted once more by the final model
            _, choice = validation_postprocess(trainer.model, run_cfg, trainer.val_cases, hd95=False)
            log(f"  {tag} post-processing chosen on {len(trainer.val_cases)} validation cases: "
                f"{choice.postprocess.describe()}")
        out = export_model(trainer.model, run_cfg, metrics, folders.retrained / tag,
                           source=f"retrain-best of {experiment.name} ({tag}, {n_epochs} epochs)",
                           postprocess=choice)
        outputs.append(out)
    return outputs
