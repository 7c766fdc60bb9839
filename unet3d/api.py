"""One training run's pipeline as library calls: what ``run_search.py prepare``, ``train``,
``predict``, ``evaluate`` and ``export`` do, with the same checks and the same messages, from
Python (a notebook, another tool) without copying the CLI. (A search is :class:`search.Search`.)

Each call checks its whole request before it writes anything (a :class:`unet3d.errors.UserError`
naming the option or file) and prints nothing: what the CLI prints goes to ``log`` (a callable
taking one line; None: silent), per-case progress to ``progress``. For example::

    from unet3d import api
    from unet3d.config import preset

    run = api.train("data/BraTS2021", out="runs/a", config=preset("cpu-small"), log=print)
    api.predict(["runs/a"], "data/new", out="pred", log=print)  # an export folder or a run
    scores = api.evaluate("pred", "data/new", log=print)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unet3d.config import RunConfig
from unet3d.errors import OptionError, UserError
from unet3d.folders import RunFolder
from unet3d.labels import LabelScheme
from unet3d.text import plural
from unet3d.training.distributed import JAX_NO_WORKERS

Log = Callable[[str], None]


def _quiet(_line: str) -> None:
    pass


def default_cache(data: str | Path) -> Path:
    """Where a dataset's preprocessed cache goes unless ``cache`` is given: ``DATA/.unet3d-cache``."""
    return Path(data) / ".unet3d-cache"


def regions_line(scores: dict[str, float], scheme: LabelScheme) -> str:
    """'WT 0.912 TC 0.874 ET 0.801 RC 0.650 mean 0.862' (the mean over the tumour regions)."""
    parts = [f"{r} {scores[f'dice_{r}']:.3f}" for r in scheme.regions if f"dice_{r}" in scores]
    return " ".join(parts + [f"mean {scores['dice_mean']:.3f}"])


# -- prepare -------------------------------------------------------------------------------------

def prepare(data: str | Path, cache: str | Path | None = None, *,
            labels: str | Path | LabelScheme | None = None, jobs: int | None = None,
            mapper: Any = None, log: Log | None = None,
            progress: Callable[[int, int, str], None] | None = None) -> Any:
    """Discovers the dataset under ``data`` (any supported layout) and preprocesses it into
    ``cache`` (default :func:`default_cache`), reusing what the cache holds; returns the
    ``unet3d.data.preprocess.PreparedDataset`` (its entries, label scheme and input channels).

    ``labels``: a scheme name, YAML file or scheme (default: detected from the layout, the BraTS
    task and the label values); resolved once, before anything is read or written. ``jobs``:
    preprocessing processes (default one per core); ``mapper``: run them elsewhere (Ray tasks).
    ``progress(done, total, case_id)`` after each case.
    """
    from unet3d import labels as labels_mod
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare_dataset
    from unet3d.io_utils import check_writable_dir

    log = log or _quiet
    scheme = labels_mod.resolve(labels) if labels is not None else None
    if jobs is not None and jobs < 1:
        raise OptionError(f"--jobs {jobs}: must be at least 1")
    ds = discover(data)
    cache = Path(cache) if cache is not None else default_cache(data)
    check_writable_dir(cache, "--cache")
    n, done = len(ds.cases), [0]

    def each(case: Any, _reused: bool) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], n, case.case_id)

    t0 = time.perf_counter()
    prep = prepare_dataset(ds, cache, scheme, each, jobs=jobs, mapper=mapper)
    seconds = time.perf_counter() - t0
    where = f" (found in {ds.root})" if ds.root.resolve() != Path(data).resolve() else ""
    log(f"{ds.layout} layout{where}: {n} cases ({len(ds.labelled)} labelled) -> {cache} "
        f"({n - prep.reused} preprocessed, {prep.reused} reused; {seconds:.1f} s)")
    log(f"labels: {prep.scheme.describe()} ({'--labels' if labels is not None else 'detected'}; "
        f"tumour mean over {', '.join(prep.scheme.tumour)})")
    return prep


# -- plan ----------------------------------------------------------------------------------------

def plan(data: str | Path, cache: str | Path | None = None, *,
         labels: str | Path | LabelScheme | None = None, memory: float | None = None,
         device: str | None = None, probe: bool = False, out: str | Path | None = None,
         jobs: int | None = None, log: Log | None = None,
         progress: Callable[[int, int, str], None] | None = None) -> Any:
    """The training plan (``unet3d.planning.plan.Plan``) of the dataset under ``data`` for one training
    run's memory budget (``run_search.py plan``): the dataset prepared (:func:`prepare`), its
    fingerprint, then the crop, depth, filters, batch and precision that fit.

    ``memory``: GiB (default: the device's, ``unet3d.planning.budget.resolve_budget``); ``device``: "gpu"
    or "cpu" (default: the GPU if one is visible). ``probe``: trains a few steps of the plan here
    and records the measured peak memory and speed (a GPU plan needs a GPU). ``out``: the plan
    written as JSON (a RunConfig `train --config` takes). Checked before anything is read.
    """
    from unet3d.data.fingerprint import describe, load_or_compute
    from unet3d.io_utils import atomic_write_json, check_writable_file
    from unet3d.planning.budget import Placement, resolve_budget
    from unet3d.planning.plan import describe_plan, make_plan
    from unet3d.runtime import gpu_memory_gib

    log = log or _quiet
    if memory is not None and not memory > 0:
        raise OptionError(f"--memory {memory:g}: must be a positive number of GiB")
    if device not in (None, "gpu", "cpu"):
        raise OptionError(f"--device {device}: must be gpu or cpu")
    budget = resolve_budget(memory, Placement(gpus={"gpu": 1.0, "cpu": 0.0}.get(device),
                                              what="1 training run"))
    if budget.gib is None:
        raise OptionError(f"--device gpu: no GPU found ({budget.source})")
    if probe and budget.device == "gpu" and gpu_memory_gib() is None:
        raise OptionError("--probe: the plan is for a GPU and this machine has none; probe where "
                          "it trains")
    out = check_writable_file(out, "--out") if out else None
    prep = prepare(data, cache, labels=labels, jobs=jobs, log=log, progress=progress)
    fp = load_or_compute(prep.entries, prep.scheme)
    result = make_plan(fp, memory_gib=budget.gib, device=budget.device)
    for line in describe(fp) + describe_plan(result, budget.source):
        log(line)
    if probe:
        result = _probe(result, prep, data, cache, log)
    if out is not None:
        atomic_write_json(out, result.to_dict())
        log(f"wrote {out}: train with `run_search.py train --data {data} --config {out}`")
    return result


def _probe(result: Any, prep: Any, data: str | Path, cache: str | Path | None, log: Log) -> Any:
    """The plan with its probe: a few training steps and one case's validation, measured here."""
    from unet3d.planning.plan import probe

    labelled = [e.case_id for e in prep.entries if e.meta["labelled"]]
    if not labelled:
        raise OptionError(f"--probe: {data} has no labelled case to train on")
    # (its own split: any dataset can be probed; one case validates, as in the prediction)
    where = Path(cache) if cache is not None else default_cache(data)
    measured = probe(result, where.resolve(), labelled[1:] or labelled, labelled[:1])
    log(f"probe ({measured['steps']} steps and validation of one case): measured "
        f"{measured['measured_gib']:.2f} GiB, predicted {measured['predicted_gib']:.2f} "
        f"GiB; {measured['volumes_per_s']:.2f} volumes/s")
    return dataclasses.replace(result, probe=measured)


# -- train ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TrainResult:
    """A finished training run: its folder, the config it trained (sized to the data's scheme),
    its metrics (``metrics.json``), the split and the wall time."""

    run: RunFolder
    config: RunConfig
    metrics: dict[str, Any]
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    seconds: float


def train(data: str | Path, *, out: str | Path, config: RunConfig,
          cache: str | Path | None = None, labels: str | Path | LabelScheme | None = None,
          workers: int = 1, resume: bool = False, scale_lr: bool = False,
          jobs: int | None = None, log: Log | None = None,
          progress: Callable[[int, int, str], None] | None = None) -> TrainResult:
    """Prepares ``data`` (:func:`prepare`) and trains ``config`` on its fold ``config.data.fold`` of
    ``config.data.folds`` into the run folder ``out`` (``run_search.py train``). The config is
    sized to the dataset's label scheme and modalities first (a region loss becomes dice_ce where
    the scheme's regions do not nest; the log says so). ``workers`` > 1: Horovod workers on this
    machine (TensorFlow backend); ``resume``: continue ``out``'s checkpoint.

    Raises:
        UserError (OptionError, DataError, ...): naming the option or file, before ``out`` or
            the cache is created.
    """
    from unet3d.data.split import kfold
    from unet3d.io_utils import check_writable_dir
    from unet3d.runtime import use_backend

    log = log or _quiet
    if workers < 1:
        raise OptionError(f"--workers {workers}: must be at least 1")
    if workers > 1 and config.train.backend == "jax":
        raise OptionError(f"--workers {workers} with train.backend jax: {JAX_NO_WORKERS} (under "
                          f"JAX one process trains on all of a machine's GPUs)")
    use_backend(config.train.backend)
    out = check_writable_dir(out, "--out")  # (and prepare checks --cache: before either is made)
    RunFolder(out).check_start(resume)  # (before the data is prepared and TensorFlow loads)
    cache = Path(cache) if cache is not None else default_cache(data)
    prep = prepare(data, cache, labels=labels, jobs=jobs, log=log, progress=progress)
    cfg = config.with_labels(prep.scheme, prep.channels)
    if cfg.train.loss != config.train.loss:
        log(f"train.loss {config.train.loss} -> {cfg.train.loss}: the regions of {prep.scheme.name} "
            f"do not nest, so a region head cannot be decoded")
    labelled = [e for e in prep.entries if e.meta["labelled"]]
    if len(labelled) < cfg.data.folds:
        raise UserError(f"{data}: {len(labelled)} labelled cases, fewer than data.folds="
                        f"{cfg.data.folds}")
    train_ids, val_ids = kfold([e.case_id for e in labelled], cfg.data.folds, cfg.data.fold,
                               cfg.data.split_seed)
    log(f"training fold {cfg.data.fold}/{cfg.data.folds}: {len(train_ids)} train, "
        f"{len(val_ids)} validation cases; crop {list(cfg.data.crop)}, batch "
        f"{cfg.train.batch_size}, {plural(cfg.train.epochs, 'epoch')} x "
        f"{plural(cfg.train.steps_per_epoch, 'step')}")
    t0 = time.perf_counter()
    if workers > 1:
        metrics = _train_with_workers(cfg, cache, train_ids, val_ids, out, resume, scale_lr,
                                      workers, log)
    else:
        from unet3d.training.train import Trainer

        by_id = {e.case_id: e for e in labelled}
        trainer = Trainer(cfg, [by_id[i] for i in train_ids], [by_id[i] for i in val_ids], out,
                          resume=resume, log=log)
        metrics = trainer.fit()
    result = TrainResult(run=RunFolder(out), config=cfg, metrics=metrics,
                         train_ids=tuple(train_ids), val_ids=tuple(val_ids),
                         seconds=time.perf_counter() - t0)
    _log_trained(result, prep.scheme, log)
    return result


def _train_with_workers(cfg: RunConfig, cache: Path, train_ids: Sequence[str],
                        val_ids: Sequence[str], out: Path, resume: bool, scale_lr: bool,
                        workers: int, log: Log) -> dict[str, Any]:
    from unet3d.training import distributed
    from unet3d.training.worker import train_in_worker

    if not distributed.horovod_available():
        raise OptionError(f"--workers {workers}: {distributed.INSTALL_HINT}")
    log(f"launching {workers} Horovod workers (Gloo, loopback)")
    results = distributed.launch(
        train_in_worker, dict(config=cfg.to_dict(), cache=str(cache.resolve()),
                              train_ids=list(train_ids), val_ids=list(val_ids), out=str(out),
                              resume=resume, scale_lr=scale_lr), workers)
    return next(r for r in results if r is not None)


def _log_trained(result: TrainResult, scheme: LabelScheme, log: Log) -> None:
    metrics, run = result.metrics, result.run
    log(f"trained in {result.seconds:.0f} s; {metrics['parameters']:,} parameters")
    if "final" in metrics:
        f = metrics["final"]
        log(f"validation ({len(result.val_ids)} cases): Dice {regions_line(f, scheme)} | HD95 "
            f"mean {f['hd95_mean']:.2f} mm")
    log(f"model: {run.model}\nconfig: {run.config}\nmetrics: {run.metrics}\n"
        f"tensorboard --logdir {run.tensorboard} --host 127.0.0.1")


# -- evaluate ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Scores of a folder of predictions: one row per case, the summary over cases, the files
    written (per-case CSV, summary JSON), the scheme scored with and the cases skipped."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    csv: Path
    summary_json: Path
    scheme: LabelScheme
    skipped: list[str]


def evaluate(pred: str | Path, data: str | Path, *, out: str | Path | None = None,
             labels: str | Path | LabelScheme | None = None, jobs: int | None = None,
             partial: bool = False, log: Log | None = None,
             progress: Callable[[int, int, str], None] | None = None) -> Evaluation:
    """Scores the predictions in ``pred`` (``<case_id>.nii.gz``) against the reference labels of
    ``data`` as BraTS does (``run_search.py evaluate``): per case and region Dice, HD95, surface
    distance and the lesion-wise scores, into ``out`` (default ``PRED/evaluation.csv``) and a
    summary JSON beside it. ``partial``: score the cases that have a prediction, skip the rest.
    ``progress(done, total, case_id)`` after each case.
    """
    from unet3d import labels as labels_mod
    from unet3d.data.discover import discover
    from unet3d.evaluation.evaluate import (
        evaluate_folder,
        evaluation_scheme,
        format_summary,
        missing_predictions,
        summary,
        write_evaluation,
    )
    from unet3d.io_utils import check_writable_dir, check_writable_file

    log = log or _quiet
    if out is not None:
        out = check_writable_file(out, "--out")
    else:  # the default --out is PRED/evaluation.csv
        out = check_writable_dir(pred, "--pred") / "evaluation.csv"
    given = labels_mod.resolve(labels) if labels is not None else None
    ds = discover(data)
    scheme = evaluation_scheme(ds, given)
    log(f"labels: {scheme.describe()} ({'--labels' if given is not None else 'detected'})")
    n = sum(1 for c in ds.cases if c.label is not None)
    skipped = missing_predictions(pred, ds.cases) if partial and Path(pred).is_dir() else []
    total, done = n - len(skipped), [0]

    def each(row: dict[str, Any]) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total, row["case_id"])

    rows = evaluate_folder(pred, ds.cases, scheme, jobs=jobs, progress=each, partial=partial)
    csv_path, summary_path = write_evaluation(rows, out, scheme, skipped)
    totals = summary(rows, scheme)
    log(f"{len(rows)} case(s) of {ds.root} scored against {pred}")
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        log(f"--partial: {len(skipped)} of {n} labelled cases skipped (no prediction): {shown}")
    log(format_summary(totals, scheme))
    log(f"per case: {csv_path}")
    log(f"summary: {summary_path}")
    return Evaluation(rows=rows, summary=totals, csv=csv_path, summary_json=summary_path,
                      scheme=scheme, skipped=list(skipped))


# -- predict -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PredictionRun:
    """What :func:`predict` wrote: the output folder, one list of files per case, the record
    (``predict.json``), the wall time."""

    out: Path
    files: dict[str, list[Path]]
    record: dict[str, Any]
    seconds: float


def _check_predict_options(overlap: float, tta: int, batch_size: int,
                           min_et_volume: float | None) -> None:
    from unet3d.inference.predictor import check_window_options

    check_window_options(overlap, tta, batch_size)
    if min_et_volume is not None and not min_et_volume >= 0:  # NaN too
        raise OptionError(f"--min-et-volume {min_et_volume}: must be >= 0 mm^3")


def _load_members(folders: Sequence[Path], runtime: str, precision: str) -> list[Any]:
    from unet3d.inference.predictor import load_member, load_onnx_member

    members = []
    for f in folders:
        try:
            members.append(load_onnx_member(f) if runtime == "onnx"
                           else load_member(f, precision=precision))
        except (FileNotFoundError, ValueError) as e:  # (a missing model.onnx is a UserError too)
            raise UserError(str(e)) from None
    return members


def predict(models: Sequence[str | Path] | Callable[[], Sequence[Path]], input: str | Path,  # noqa: A002
            out: str | Path, *,
            runtime: str = "keras", precision: str = "auto", backend: str = "tensorflow",
            overlap: float = 0.5, tta: int = 1, batch_size: int = 2, postprocess: str = "saved",
            min_et_volume: float | None = None, largest_wt: bool | None = None,
            probabilities: bool = False, log: Log | None = None,
            progress: Callable[[int, int, str], None] | None = None,
            windows: Callable[[int, int, str], None] | None = None) -> PredictionRun:
    """Segments every case of ``input`` (a case folder or a dataset in any supported layout) with
    the export folders ``models`` (several: an ensemble averaging probabilities) into ``out``:
    ``<case_id>.nii.gz`` on each input's own grid with the scheme's label values, and
    ``predict.json`` (``run_search.py predict``). ``models`` may be a callable that returns the
    folders, called once the rest of the request is checked (the CLI's: a search experiment's
    top-k trials, exported on first use). ``postprocess``: "saved" (the choice
    saved with the first model) or "none"; ``min_et_volume`` / ``largest_wt`` override it.
    ``progress(done, total, case_id)`` after each case, ``windows(done, total, case_id)`` after
    each window evaluation.
    """
    from unet3d.data.discover import discover_input
    from unet3d.inference.predictor import Predictor, resolve_postprocess
    from unet3d.io_utils import atomic_write_json, check_writable_dir
    from unet3d.runtime import peak_memory_gib, use_backend

    log = log or _quiet
    use_backend(backend)
    _check_predict_options(overlap, tta, batch_size, min_et_volume)
    out = check_writable_dir(out, "--out")
    cases = discover_input(input)
    folders = [Path(f) for f in (models() if callable(models) else models)]
    members = _load_members(folders, runtime, precision)
    post, post_line = resolve_postprocess(members, postprocess, min_et_volume=min_et_volume,
                                          largest_wt=largest_wt)
    predictor = Predictor(members, overlap=overlap, tta=tta, batch_size=batch_size,
                          postprocess=post, keep_probabilities=probabilities)
    if post.min_et_volume > 0 and predictor.scheme.enhancing is None:
        raise OptionError(f"--min-et-volume {min_et_volume}: the models' labels "
                          f"({predictor.scheme.name}) have no enhancing tumour")
    _check_modalities(cases, members[0].in_channels)  # (before anything is written)
    out.mkdir(parents=True, exist_ok=True)
    _log_members(members, runtime, log)
    log(f"post-processing: {post_line}")
    log(f"predicting {len(cases)} case(s) with {len(members)} model(s), overlap {overlap}, "
        f"{tta} flip(s) -> {out}")
    record = {
        "models": [str(f.resolve()) for f in folders], "input": str(Path(input).resolve()),
        "overlap": overlap, "tta": tta, "precision": [m.policy for m in members],
        "backend": backend, "runtime": runtime,
        "onnx_providers": members[0].providers if runtime == "onnx" else None,
        "postprocess": post.to_dict(), "postprocess_source": post_line,
        "probabilities": predictor.channels if probabilities else None}
    atomic_write_json(out / "predict.json", record)
    t0 = time.perf_counter()
    written = _predict_cases(predictor, cases, out, log, progress, windows)
    seconds = time.perf_counter() - t0
    log(f"{len(cases)} case(s) in {seconds:.1f} s; peak memory {peak_memory_gib(gpu=False):.2f} "
        f"GiB; predictions in {out}")
    return PredictionRun(out=out, files=written, record=record, seconds=seconds)


def _check_modalities(cases: Sequence[Any], want: int) -> None:
    """Every input case has the modalities the models read."""
    for case in cases:
        if len(case.modalities) != want:
            raise UserError(f"case {case.case_id}: has {len(case.modalities)} modalities "
                            f"({', '.join(case.modalities)}); the model reads {want}")


def _log_members(members: Sequence[Any], runtime: str, log: Log) -> None:
    for m in members:
        where = f", onnxruntime {'/'.join(m.providers)}" if runtime == "onnx" else ""
        log(f"model {m.name}: {m.cfg.model.depth} levels, filters {list(m.cfg.model.filters)}, "
            f"{m.cfg.model.head} head, windows {list(m.patch)}, {m.policy}{where}")


def _predict_cases(predictor: Any, cases: Sequence[Any], out: Path, log: Log,
                   progress: Callable[[int, int, str], None] | None,
                   windows: Callable[[int, int, str], None] | None) -> dict[str, list[Path]]:
    """Predicts and writes each case (``progress`` after each); case ID -> files written."""
    from unet3d.data.preprocess import load_case
    from unet3d.inference.predictor import write_prediction

    written = {}
    for k, case in enumerate(cases, start=1):
        pred = _predict_case(predictor, dataclasses.replace(case, label=None), load_case, windows)
        files = write_prediction(pred, out)
        written[case.case_id] = files
        log(f"{case.case_id}: {pred.windows} window evaluations, {pred.seconds:.1f} s -> "
            f"{', '.join(f.name for f in files)}")
        if progress is not None:
            progress(k, len(cases), case.case_id)
    return written


def _predict_case(predictor: Any, case: Any, load_case: Any,
                  windows: Callable[[int, int, str], None] | None) -> Any:
    """One case (its label left out: prediction never needs or validates it), reporting windows."""
    if windows is None:
        return predictor.predict(load_case(case))
    state = {"done": 0, "total": 0}

    def start(shape: Any) -> None:
        state["done"], state["total"] = 0, predictor.windows(shape)

    def step(n: int = 1) -> None:
        state["done"] += n
        windows(state["done"], state["total"], case.case_id)

    return predictor.predict(load_case(case), progress=step, on_preprocessed=start)
