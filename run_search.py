#!/usr/bin/env python
"""One command line for the whole project.

  python run_search.py                 the default job: a search on synthetic data (see --help)
  python run_search.py search          search the best 3D-UNet (Ray Tune + Optuna + ASHA)
  python run_search.py retrain-best    train the best configuration longer and export it
  python run_search.py synth           write a synthetic BraTS 2021-layout dataset
  python run_search.py prepare         validate and preprocess a dataset into its cache
  python run_search.py train           train one 3D-UNet
  python run_search.py predict         segment cases with one exported model or an ensemble
  python run_search.py evaluate        score predictions against reference labels (Dice, HD95)
  python run_search.py report          the HTML report of a search

Errors in the user's input (data, config) print one line naming the file or field and exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from unet3d.text import plural

EXIT_USER_ERROR = 2


def _print(msg: str) -> None:
    print(msg, flush=True)


def _tty_progress(what: str, total: int):
    """A progress callback that redraws one line on a terminal and stays quiet in logs."""
    if not sys.stdout.isatty():
        return None
    return lambda i: print(f"\r{what} {i + 1}/{total}", end="", flush=True)


def _cache_dir(args: argparse.Namespace) -> Path:
    from unet3d.api import default_cache

    return Path(args.cache) if args.cache else default_cache(args.data)


def _load_config(args: argparse.Namespace):
    from unet3d.config import RunConfig, preset

    cfg = RunConfig.load(args.config) if args.config else preset(args.preset)
    d, given = cfg.to_dict(), []
    for dest, path in TRAIN_OVERRIDES.items():
        value = getattr(args, dest)
        if value is not None:
            section, field = path.split(".")
            d[section][field] = value
            given.append(f"--{dest.replace('_', '-')} {value}")
    if not given:
        return cfg
    if args.folds is not None and args.fold is None:
        d["data"]["fold"] = min(cfg.data.fold, args.folds - 1)
    # The repair clamps the warm-up to --epochs. The loaded config is valid, so a rule broken now
    # is broken by the flags: the message names them.
    return RunConfig.repaired_from_dict(d, source=" ".join(given))


class _Progress:
    """Preprocessing progress on a terminal: one line rewritten per case, ended before the next
    line the command prints (``log``)."""

    def __init__(self) -> None:
        self.open = False

    def __call__(self, done: int, total: int, case_id: str) -> None:
        if sys.stdout.isatty():
            print(f"\rpreprocess {done}/{total} {case_id:<24}", end="", flush=True)
            self.open = True

    def log(self, line: str) -> None:
        if self.open:
            print()
            self.open = False
        _print(line)


class _Bar:
    """A tqdm bar on a terminal (none elsewhere) fed by a library call's ``progress(done, total,
    name)``; lines the command prints meanwhile (``log``) go above it. ``position`` 1, not left
    behind: a bar per item of another bar (reset when its total changes)."""

    def __init__(self, unit: str, position: int = 0) -> None:
        self.unit, self.position, self.bar = unit, position, None

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, done: int, total: int, name: str) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, unit=self.unit, disable=None, position=self.position,
                            leave=self.position == 0)
        if self.position and (self.bar.total != total or done < self.bar.n):
            self.bar.reset(total)
            self.bar.set_description(name)
        self.bar.update(done - self.bar.n)

    def log(self, line: str) -> None:
        from tqdm import tqdm

        if self.bar is not None:
            tqdm.write(line, file=sys.stdout)
        else:
            _print(line)


def cmd_plan(args: argparse.Namespace) -> int:
    """Plan crop, depth, filters and batch for a dataset and a memory budget.

    Prepare the dataset, compute its fingerprint (brain boxes, spacing, intensities, lesion
    sizes; kept in the cache) and plan a configuration nnU-Net-style: the crop as close to the
    median brain box as the memory allows, a bottleneck of 4-8 voxels, filters, batch and
    precision, with its predicted peak memory. --out writes a config file that `train --config`
    reads.
    """
    from unet3d import api

    progress = _Progress()
    api.plan(args.data, _cache_dir(args), labels=args.labels, memory=args.memory,
             device=args.device, probe=args.probe, out=args.out, jobs=args.jobs,
             log=progress.log, progress=progress)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Write a synthetic BraTS-like NIfTI dataset in a release's layout.

    Write N synthetic BraTS-like cases as .nii.gz in the folder layout and label values of a
    release: brats2021 (t1, t1ce, t2, flair, seg 0/1/2/4), brats2023 (t1n, t1c, t2w, t2f, seg
    0-3, cases with two lesions), brats2024 (GLI post-treatment, + 4 resection cavity),
    brats2024-ped, brats-men-rt (t1c, gtv) or msd (Task01). Existing complete cases are kept.
    """
    from unet3d.data.synthetic import write_synthetic_dataset
    from unet3d.io_utils import check_writable_dir

    check_writable_dir(args.out, "--out")
    t0 = time.perf_counter()
    write_synthetic_dataset(args.out, args.cases, tuple(args.shape), seed=args.seed,
                            layout=args.layout, progress=_tty_progress("synth", args.cases),
                            difficulty=args.difficulty)
    if sys.stdout.isatty():
        print()
    _print(f"wrote {args.cases} synthetic cases ({'x'.join(map(str, args.shape))}, {args.layout} "
           f"layout, {args.difficulty}) to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Validate and preprocess a dataset into its cache.

    Discover the cases, check every file (readable, modalities present, shapes/affines agree,
    finite voxels, label values), reorient to RAS, crop to the brain, z-score per modality, and
    cache the result. Re-runs reuse valid cache entries.
    """
    progress = _Progress()
    if args.address:
        from search.ray_tasks import prepare_on_cluster

        prepare_on_cluster(args.data, _cache_dir(args), address=args.address, labels=args.labels,
                           log=progress.log, progress=progress)
    else:
        from unet3d import api

        api.prepare(args.data, _cache_dir(args), labels=args.labels, jobs=args.jobs,
                    log=progress.log, progress=progress)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train one 3D-UNet.

    Train one 3D-UNet on a fold of a dataset. Writes OUT/model.keras, config.json,
    metrics.json, checkpoint.npz and tensorboard/.
    """
    from unet3d import api

    progress = _Progress()
    api.train(args.data, out=args.out, config=_load_config(args), cache=_cache_dir(args),
              labels=args.labels, workers=args.workers, resume=args.resume,
              scale_lr=args.scale_lr, jobs=args.jobs, log=progress.log, progress=progress)
    return 0


def _use_backend(name: str) -> None:
    """Keras's backend for this process, chosen before anything imports Keras."""
    from unet3d.runtime import use_backend

    use_backend(name)


def cmd_search(args: argparse.Namespace) -> int:
    """Search the best 3D-UNet (Ray Tune + Optuna + ASHA, or Keras Tuner).

    Search a space of 3D-UNet configurations on one fold of a dataset. Writes OUT/NAME/: one
    folder per trial, results.csv, trials.json, best/ (the best model exported), report.html
    and TensorBoard logs with an HParams view of every trial.
    """
    from search import Search

    if args.resume:
        if not args.name:
            raise_user("--resume needs --name (the experiment to continue)")
        search = Search.restore(f"{args.out.rstrip('/')}/{args.name}", log=_print,
                                address=args.address)
    else:
        from search.engines import ENGINES

        # The engine options given as flags; one of another engine is named as the user typed it.
        given = {ENGINE_OPTION.get(k, k): (k, v) for k, v in vars(args).items() if v is not None}
        known = {o for e in ENGINES.values() for o in e.options}
        mine = set(ENGINES[args.engine].options)
        other = sorted(flag for o, (flag, _) in given.items() if o in known - mine)
        if other:
            raise_user(f"--{other[0].replace('_', '-')}: not an option of --engine {args.engine}")
        options = {o: v for o, (_, v) in given.items() if o in mine}
        search = Search(data=args.data, cache=args.cache, space=args.space, engine=args.engine,
                        num_samples=args.num_samples, max_epochs=args.max_epochs, out=args.out,
                        name=args.name, seed=args.seed, fold=args.fold, folds=args.folds,
                        split_seed=args.split_seed, workers_per_trial=args.workers_per_trial,
                        verbose=args.verbose, objective=args.objective, labels=args.labels,
                        memory=_gib(args.memory), retrain_share=args.retrain_share,
                        backend=args.backend, mlflow=args.mlflow, wandb=args.wandb, log=_print,
                        **options)
    # The driver exports the best model (and retrains with --retrain-share) under the trials'
    # backend; Keras is not loaded in it yet.
    _use_backend(search.spec.backend)
    result = search.run()
    _print_search(result, search.spec)
    if result.interrupted:
        return 130
    return 0 if result.best is not None else 1


def cmd_slurm(args: argparse.Namespace) -> int:
    """Write (and submit) a SLURM batch job that runs a search on its nodes.

    Write an sbatch file that starts Ray on the job's nodes (head on the first, workers through
    srun, a token made for the job), runs 'search SEARCH_OPTIONS --address HEAD:PORT' with the
    experiment under --shared, and stops Ray when the search ends, is cancelled (scancel) or nears
    the time limit; resubmitting the file resumes the search. Give the search's own options after
    '--'.
    """
    from search.engines import ENGINES
    from search.slurm import SlurmJob, submit

    search_args = args.search_args[1:] if args.search_args[:1] == ["--"] else args.search_args
    parsed = build_parser().parse_args(["search", *search_args])  # (exits 2 on a wrong option)
    if "address" not in ENGINES[parsed.engine].options:  # (an engine that joins a Ray cluster)
        joins = " or ".join(n for n, e in ENGINES.items() if "address" in e.options)
        raise_user(f"--engine {parsed.engine}: a SLURM job runs the search on the Ray cluster it "
                   f"starts (--engine {joins})")
    given_out = any(a == "--out" or a.startswith("--out=") for a in search_args)
    job = SlurmJob(search_args=tuple(search_args), shared=args.shared,
                   out=parsed.out if given_out else "", name=parsed.name, nodes=args.nodes,
                   gpus_per_node=args.gpus_per_node, cpus_per_node=args.cpus_per_node,
                   mem=args.mem or "", time=args.time,
                   partition=args.partition or "", account=args.account or "",
                   setup=args.setup or "", job_name=args.job_name or "", grace_s=args.grace)
    checked = job.checked()
    script = Path(args.script) if args.script else Path(checked.shared) / f"{checked.job_name}.sbatch"
    path = checked.write(script)
    _print(f"wrote {path}: {checked.nodes} node(s), {checked.gpus_per_node} GPU(s) each, time "
           f"{checked.time}; the experiment: {checked.out}/{checked.name}")
    if args.submit:
        _print(f"submitted job {submit(path)}; watch it: squeue --me, "
               f"tail -f {checked.shared}/slurm-logs/{checked.job_name}-JOBID.out")
    else:
        _print(f"submit it: sbatch {path}")
    return 0


def _gib(value: str | None) -> float | str | None:
    """--memory as a number; anything else as typed, for the search's own one-line refusal."""
    try:
        return None if value is None else float(value)
    except ValueError:
        return value


def _print_best(result, spec, where: str, remote: bool) -> None:
    """The final model: the race's continued winner or the best trial, its parameters, where it
    was exported, and a two-objective search's Pareto front."""
    from search.objective import SECOND_WORDS, describe

    s = result.summary
    what = describe(s.get("objective", "dice"), result.best.config.scheme.tumour)
    cont = s.get("race", {}).get("continuation") or {}
    if cont.get("continuation_trial") == result.best.trial_id:
        on = ("every labelled case" if cont.get("data") == "all" else
              f"the training cases (validation {what} {result.best.score:.4f})")
        _print(f"final model: the race's winner {cont['trial_id']} ({what} "
               f"{cont.get('score', float('nan')):.4f} at its race epoch "
               f"{cont['from_epoch']}) continued on {on} to epoch {cont['epochs']} "
               f"(trial {result.best.trial_id})")
    else:
        _print(f"best trial {result.best.trial_id}: {what} {result.best.score:.4f}")
    for k, v in result.best.params.items():
        _print(f"  {k} = {v}")
    _print(f"exported: {where}/best" if remote else f"exported: {result.best.export}")
    if s.get("pareto"):
        second = spec.second_objective
        _print(f"Pareto front of {what} and {SECOND_WORDS[second]} "
               f"({plural(len(s['pareto']), 'trial')}):")
    for p in s.get("pareto", []):
        spread = (f" (interquartile range {p['spread']:.0%} of it)"
                  if p.get("spread") is not None else "")
        _print(f"  Pareto rank {p['rank']}: trial {p['trial_id']}, {p['score']:.4f}, {second} "
               f"{p[second]:.4g}{spread}" + (f" -> {where}/pareto/rank_{p['rank']}"
                                             if p.get("export") else
                                             " (no checkpoint: not exported)"))


def _print_search(result, spec) -> None:
    import collections

    from search.results import format_table
    from search.storage import ExperimentFolder

    s = result.summary
    where = result.location
    remote = where != str(result.experiment)
    _print("")
    _print(format_table(result.trials, spec.second_objective))
    _print("")
    origins = collections.Counter(r.proposed_by for r in result.trials if r.proposed_by)
    if "race" in s:
        _print_race(s, result)
    else:
        _print(f"{s['trials']} trials in {result.seconds:.0f} s; {s['trials_stopped_early']} "
               f"stopped early; {s['trial_epochs_run']} trial-epochs run of "
               f"{s['trial_epochs_without_early_stopping']} without early stopping "
               f"({s['trial_epochs_saved']} saved)")
    if origins:
        _print("proposed by: " + ", ".join(f"{k} {v}" for k, v in origins.items()))
    if s.get("trials_pruned"):
        budget = s.get("memory_budget") or {"gib": 0.0, "source": "?"}
        _print(f"{s['trials_pruned']} configuration(s) pruned for memory, never started: predicted "
               f"over the budget of {budget['gib']:.1f} GiB per trial ({budget['source']})")
    if result.interrupted:
        _print(f"interrupted: {s['trials_interrupted']} trial(s) cut off; resume with: python "
               f"run_search.py search --resume --out {spec.out} --name {spec.name}")
    elif result.best is not None:
        _print_best(result, spec, where, remote)
    else:
        _print("no trial finished an epoch: nothing exported")
    if result.retrained is not None:
        _print(f"retrained: {result.retrained}")
    _print(f"results: {where}/results.csv")
    if result.report is not None:
        _print(f"report: {where}/report.html" if remote else f"report: {result.report}")
    _print(f"tensorboard --logdir {where} --host 127.0.0.1")
    journal = ExperimentFolder(result.experiment).journal
    if not remote and journal.exists():
        _print(f"optuna-dashboard {journal} --host 127.0.0.1")
    if spec.mlflow:
        from search.tracking import mlflow_ui_command

        _print(mlflow_ui_command(spec.mlflow))


def _print_race(s: dict, result) -> None:
    """The race in a few lines: what it trained and lost, its events, the continuation."""
    race = s["race"]
    st = race["settings"]
    _print(f"race: {s['trials']} trials in {result.seconds:.0f} s, {race['trial_epochs']} of "
           f"{st['budget']:g} trial-epochs ({race['race_trial_epochs']} racing at "
           f"{plural(st['race_epochs'], 'epoch')} per trial, "
           f"{race['lost_trial_epochs']} of them lost; "
           f"{race['continuation_trial_epochs']} continuing the winner)")
    for line in race["events"]:
        _print(f"  {line}")


def _check_experiment(experiment: Path) -> None:
    from search.storage import ExperimentFolder

    if not ExperimentFolder(experiment).search.exists():
        raise_user(f"{experiment}: not a search experiment ({ExperimentFolder.SEARCH} missing)")


def cmd_report(args: argparse.Namespace) -> int:
    """Write the HTML report of a finished or running search.

    Write one self-contained HTML page (plus PNG figures next to it) about a search: results
    table, learning curves with ASHA's stops, objective by trial, parallel coordinates,
    parameter importances, Dice against throughput with the Pareto front, the best
    configuration next to NVIDIA's, the exported model. Every search writes
    EXPERIMENT/report.html at its end.
    """
    from search.report import build_report

    experiment = Path(args.experiment)
    _check_experiment(experiment)
    if args.out:
        from unet3d.io_utils import check_writable_file

        check_writable_file(args.out, "--out")
    report = build_report(experiment, args.out)
    _print(f"{report.trials} trials; figures: {', '.join(p.name for p in report.figures)}")
    _print(f"report: {report.html}")
    return 0


def cmd_retrain_best(args: argparse.Namespace) -> int:
    """Train a search's best configuration longer and export it.

    Train the best configuration of a finished search from scratch for longer: on every
    labelled case (--folds all, the default) or one model per listed fold. Exports to
    EXPERIMENT/retrained/{all,fold_K}/ like the search's best/.
    """
    import json

    from search.retrain import retrain_best
    from unet3d.folders import ExportFolder

    experiment = Path(args.experiment)
    _check_experiment(experiment)
    folds = None if args.folds in (None, ["all"]) else [_int_arg("--folds", f) for f in args.folds]
    try:
        outs = retrain_best(experiment, epochs=args.epochs, folds=folds, resume=args.resume,
                            backend=args.backend, log=_print)
    except (FileNotFoundError, ValueError) as e:
        raise_user(str(e))
    for out in outs:
        export = ExportFolder(out)
        m = json.loads(export.metrics.read_text())
        line = f"exported: {out}"
        if "final" in m:
            from unet3d.api import regions_line
            from unet3d.config import RunConfig

            scheme = RunConfig.load(export.config).scheme
            line += f" (validation Dice {regions_line(m['final'], scheme)})"
        _print(line)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a training run (or re-export an older export folder).

    Export the model of a training run (train --out; a run stopped early exports its last
    checkpoint) as a search exports its best: model.keras, a TensorFlow SavedModel, model.onnx
    checked against Keras, config.json, metrics.json and MODEL_CARD.md. Given an earlier export
    folder (e.g. one without model.onnx), writes it again in place, keeping its post-processing
    choice.
    """
    from unet3d.export.checks import check_export

    check_export(args.run, args.out)  # (before TensorFlow starts: a wrong path fails at once)
    from unet3d.export.exporter import export_run

    out = export_run(args.run, args.out)
    _print(f"exported: {out} (model.keras, saved_model/, model.onnx checked against Keras, "
           f"MODEL_CARD.md)")
    return 0


def _resolve_models(paths: list[str], top_k: int | None) -> list[Path]:
    """Export folders from --model arguments: an export folder, a folder of export folders (e.g.
    EXPERIMENT/retrained: its folds), or a search experiment (its top-k trials, exported on demand;
    without --top-k, its final model: best/, or the ensemble the search chose)."""
    from search.storage import ExperimentFolder
    from unet3d.folders import ExportFolder

    folders: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if ExperimentFolder(path).search.exists():
            from search.ensemble import final_members
            from search.finish import export_top

            chosen = final_members(path) if top_k is None else None
            if chosen:
                _print(f"--model {raw}: the ensemble the search chose on validation "
                       f"({len(chosen)} members, {ExperimentFolder(path).ensemble})")
                folders += chosen
                continue
            try:
                folders += export_top(path, top_k or 1, log=_print)
            except (FileNotFoundError, ValueError) as e:
                raise_user(f"--model {raw}: {e}")
        elif ExportFolder(path).model.exists():
            folders.append(path)
        elif path.is_dir() and any(ExportFolder(p).model.exists() for p in path.iterdir()):
            folders += sorted(p for p in path.iterdir() if ExportFolder(p).model.exists())
        else:
            raise_user(f"--model {raw}: not an export folder (model.keras + config.json), a folder "
                       f"of export folders, or a search experiment (search.json)")
    return folders


def cmd_predict(args: argparse.Namespace) -> int:
    """Segment cases with one exported model or an ensemble.

    Segment every case of INPUT (one BraTS case folder, or a dataset folder in any supported
    layout) with sliding-window inference. Writes OUT/<case_id>.nii.gz on each input's own grid
    (shape, affine and header of its images) with the label values of the model's label scheme
    (BraTS 2019-21 0/1/2/4, 2023+ 0-3, 2024 GLI 0-4, MSD 0-3), and OUT/predict.json (models and
    options). Several --model folders form an ensemble that averages probabilities. The
    post-processing chosen on validation and saved with the (first) model is applied
    (--postprocess).
    """
    from unet3d import api

    if args.top_k is not None:  # (checked now: only an experiment's models reach export_top)
        from search.finish import check_top_k

        check_top_k(args.top_k)
    with _Bar("case") as cases, _Bar("window", position=1) as windows:
        api.predict(lambda: _resolve_models(args.model, args.top_k), args.input, args.out,
                    runtime=args.runtime, precision=args.precision,
                    backend=args.backend, overlap=args.overlap, tta=args.tta,
                    batch_size=args.batch_size, postprocess=args.postprocess,
                    min_et_volume=args.min_et_volume, largest_wt=args.largest_wt,
                    probabilities=args.probabilities, log=cases.log, progress=cases,
                    windows=windows)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score predictions as the BraTS challenge does (Dice, HD95, NSD, lesion-wise).

    Score PRED/<case_id>.nii.gz against every labelled case of DATA, per region of the label
    scheme (WT, TC, ET, RC, ...) on the original grid: whole-image Dice, HD95 (mm) and
    normalized surface distance, and the lesion-wise scores of the BraTS 2023+ evaluation
    (lesions as connected components matched one-to-one; TP/FP/FN lesions, F1, lesion-wise Dice
    and HD95). Writes a per-case CSV and <stem>_summary.json (mean, std, median, quartiles) and
    prints the summary.
    """
    from unet3d import api

    with _Bar("case") as bar:
        api.evaluate(args.pred, args.data, out=args.out or None, labels=args.labels, jobs=args.jobs,
                     partial=args.partial, log=bar.log, progress=bar)
    return 0


def _int_arg(flag: str, v: str) -> int:
    try:
        return int(v)
    except ValueError:
        raise_user(f"{flag}: {v!r} is not a fold number or 'all'")
        raise


def cmd_default(args: argparse.Namespace) -> int:
    """The default job: synthetic data if absent, then a Ray Tune search of the demo space."""
    from search.spec import DEMO_BUDGET

    ns = build_parser().parse_args(["search", "--budget", str(DEMO_BUDGET)])
    return cmd_search(ns)


def raise_user(msg: str) -> None:
    from unet3d.errors import UserError

    raise UserError(msg)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once: appended by argparse unless the help text states it already or
    there is none to show (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def _command(sub, name: str, func) -> argparse.ArgumentParser:
    """The subcommand ``name`` run by ``func``: its docstring's first paragraph is the one-line help
    in the list of commands, the second the description --help shows."""
    first, _, description = func.__doc__.strip().partition("\n\n")
    help = " ".join(first.split()).removesuffix(".")
    s = sub.add_parser(name, help=help[0].lower() + help[1:], description=" ".join(description.split()),
                       formatter_class=_Help)
    s.set_defaults(func=func)
    return s


DATA_HELP = ("dataset folder: BraTS 2023-2026 (BraTS-GLI-00000-000/ case folders, any task: GLI, "
             "SSA, MEN, MET, PED, GoAT, MEN-RT; or the challenge's ...TrainingData/ folder above "
             "them), BraTS 2021 (BraTS2021_00000/), 2019/2020 (HGG/, LGG/, BraTS20_Training_001/) or "
             "MSD Task01_BrainTumour (dataset.json, imagesTr/)")


def _labels_arg(q: argparse.ArgumentParser) -> None:
    from unet3d.labels import BUILTIN

    q.add_argument("--labels", default=None, metavar="NAME|FILE",
                   help=f"label scheme: {', '.join(BUILTIN)}, or a YAML file of your own (default: "
                        f"detected from the layout, the BraTS task and the label values)")


def _data_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--data", required=True, help=DATA_HELP)
    q.add_argument("--cache", default=None,
                   help="preprocessed cache folder (default: DATA/.unet3d-cache)")
    q.add_argument("--jobs", type=int, default=None,
                   help="processes that preprocess cases in parallel, when 16 MiB or more of "
                        "source files are still to preprocess (default: one per CPU core)")
    _labels_arg(q)


def _synth_parser(sub) -> None:
    from unet3d.data.synthetic import DIFFICULTIES, LAYOUTS

    s = _command(sub, "synth", cmd_synth)
    s.add_argument("--layout", default="brats2021", choices=LAYOUTS, help="release layout to write")
    s.add_argument("--out", required=True, help="dataset folder to write")
    s.add_argument("--cases", type=int, default=16, help="number of cases")
    s.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64], metavar=("D", "H", "W"),
                   help="volume size in voxels (1 mm isotropic; hard: 1 x 1 x 2.5 mm)")
    s.add_argument("--seed", type=int, default=0, help="seed of the generator")
    s.add_argument("--difficulty", default="easy", choices=DIFFICULTIES,
                   help="easy: one lesion (layouts with extras: up to two), clear contrast, mild "
                        "bias field and noise, as always. medium: up to two more "
                        "lesions, thin enhancing rims, lesions without necrosis or enhancement, "
                        "weaker tumour contrast varying by case, stronger bias field and noise, "
                        "unlabelled FLAIR-bright spots and T1c-bright vessels. hard: all of it "
                        "stronger, 1-3 more lesions (some tiny), contrast sometimes barely above "
                        "the tissue around, and thick slices (2.5 mm along the last axis)")


def _prepare_parser(sub) -> None:
    s = _command(sub, "prepare", cmd_prepare)
    _data_args(s)
    s.add_argument("--address", default=None, metavar="HOST:PORT",
                   help="preprocess as Ray tasks on this cluster's nodes (the data and --cache on "
                        "storage every node sees at the same path)")


# train's flags that override one RunConfig field each: flag dest -> "section.field".
TRAIN_OVERRIDES = {"epochs": "train.epochs", "steps_per_epoch": "train.steps_per_epoch",
                   "seed": "train.seed", "fold": "data.fold", "folds": "data.folds",
                   "precision": "train.precision", "xla": "train.xla", "backend": "train.backend",
                   "augment_on": "data.augment_on"}


def _plan_parser(sub) -> None:
    s = _command(sub, "plan", cmd_plan)
    _data_args(s)
    s.add_argument("--memory", type=float, default=None, metavar="GiB",
                   help="memory budget (default: the GPU's memory, or this machine's for --device "
                        "cpu)")
    s.add_argument("--device", choices=("gpu", "cpu"), default=None,
                   help="what the plan trains on (default: gpu when nvidia-smi finds one)")
    s.add_argument("--out", default=None, help="write the plan as a config file (JSON)")
    s.add_argument("--probe", action="store_true",
                   help="train the plan for a few steps in a fresh process and measure its peak "
                        "memory and volumes/s next to the prediction")


def _train_parser(sub) -> None:
    from unet3d.config import AUGMENT_ON, BACKENDS, PRECISIONS, PRESETS, XLA_MODES

    s = _command(sub, "train", cmd_train)
    _data_args(s)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS), help="named configuration")
    g.add_argument("--config", default=None, help="a RunConfig JSON/YAML file (model/train/data)")
    for dest, field in TRAIN_OVERRIDES.items():
        choices = {"precision": PRECISIONS, "xla": XLA_MODES, "backend": BACKENDS,
                   "augment_on": AUGMENT_ON}.get(dest)
        s.add_argument(f"--{dest.replace('_', '-')}", type=None if choices else int, choices=choices,
                       default=None, help=f"override {field}")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--resume", action="store_true", help="continue the run in OUT from its last checkpoint")
    s.add_argument("--workers", type=int, default=1,
                   help="Horovod workers for this run (data parallel: each trains batch_size crops per "
                        "step, gradients averaged); on this machine Gloo over loopback")
    s.add_argument("--scale-lr", action="store_true",
                   help="multiply the learning rate by the number of workers")


# search flags named otherwise than the engine option they set (flag dest -> option); the engines'
# options themselves are listed once, in search/spec.py.
ENGINE_OPTION = {"kt_algorithm": "algorithm"}


def _backend_arg(s: argparse.ArgumentParser, default: str | None, help: str) -> None:
    from unet3d.config import BACKENDS

    s.add_argument("--backend", choices=BACKENDS, default=default, help=help)


def _search_parser(sub) -> None:
    from search.engines import ENGINES
    from search.kt_engine import ALGORITHMS
    from search.objective import OBJECTIVES, SECOND
    from search.ray_options import RayOptions
    from search.spec import DEFAULT_DATA, SearchSpec

    spec, ray = SearchSpec(name="x"), RayOptions()
    s = _command(sub, "search", cmd_search)
    s.add_argument("--data", default=None,
                   help=f"{DATA_HELP} (default: a synthetic dataset in {DEFAULT_DATA}, written if "
                        f"absent)")
    s.add_argument("--cache", default=None, help="preprocessed cache (default: DATA/.unet3d-cache); on a "
                                                 "cluster, storage every node sees")
    _labels_arg(s)
    s.add_argument("--objective", default=spec.objective,
                   help=f"what ranks trials, stops them early and picks best/: {' | '.join(OBJECTIVES)} "
                        f"(mean whole-image Dice of the tumour regions, or mean lesion-wise Dice as "
                        f"BraTS 2023+ ranks; slower validation); add a second objective to search a "
                        f"Pareto front, exported to pareto/: dice,{'|'.join(SECOND)} (inference "
                        f"seconds per window, parameters, training volumes/s)")
    s.add_argument("--space", default=spec.space,
                   help="search space: demo | brats | nvidia | auto (built around the dataset's "
                        "plan for the memory budget), or a YAML/JSON space file")
    s.add_argument("--engine", choices=list(ENGINES), default=spec.engine, help="search engine")
    s.add_argument("--num-samples", type=int, default=spec.num_samples,
                   help="trials to run (Keras Tuner Bayesian: max trials)")
    s.add_argument("--max-epochs", type=int, default=spec.max_epochs,
                   help="epochs of a trial that is never stopped (ASHA's max_t in epochs)")
    s.add_argument("--memory", default=None, metavar="GiB",
                   help="GiB of memory one trial may use (per Horovod worker); a configuration predicted "
                        "to need more is never started and is recorded as pruned with its reason "
                        "(default: the GPU's memory times --gpus-per-trial's share of it; on CPUs "
                        "this machine's memory divided by the trials that run at once; a resumed "
                        "search keeps its budget)")
    _ray_args(s, ray)
    _backend_arg(s, spec.backend, "the Keras backend trials train on (a space may also sample "
                                  "train.backend, Ray engine); jax: one trial uses all its GPUs")
    s.add_argument("--retrain-share", type=float, default=spec.retrain_share, metavar="FRACTION",
                   help="spend this share of --budget retraining the winner on every labelled case "
                        "(exported to retrained/all) and the rest searching: how to spend a fixed "
                        "budget")
    s.add_argument("--workers-per-trial", type=int, default=spec.workers_per_trial,
                   help="Horovod workers per trial (Ray actors; one GPU each with --gpus-per-trial, else "
                        "one CPU each)")
    _tracking_args(s)
    k = s.add_argument_group("Keras Tuner engine")
    k.add_argument("--kt-algorithm", choices=ALGORITHMS, default=None,
                   help="Keras Tuner algorithm (default: hyperband)")
    _experiment_args(s, spec)


def _tracking_args(s) -> None:
    """The search command's tracking flags (MLflow, W&B)."""
    t = s.add_argument_group("tracking (besides TensorBoard)")
    t.add_argument("--mlflow", default=None, metavar="URI",
                   help="log the search to MLflow: a parent run (options, best model as artifact) "
                        "and a child run per trial (parameters, per-epoch metrics, status, node); "
                        "file:FOLDER, http://HOST:PORT, sqlite:///FILE (experiment "
                        "$MLFLOW_EXPERIMENT_NAME, default unet3d-search)")
    t.add_argument("--wandb", default=None, metavar="PROJECT",
                   help="log each trial as a W&B run (Ray engine), written offline into the "
                        "trial's folder (wandb sync uploads it) unless WANDB_MODE=online")


def _experiment_args(s, spec) -> None:
    """The search command's split, seed, output and resume flags."""
    from search.spec import DEFAULT_OUT

    s.add_argument("--fold", type=int, default=spec.fold, help="validation fold")
    s.add_argument("--folds", type=int, default=spec.folds, help="number of folds")
    s.add_argument("--split-seed", type=int, default=spec.split_seed, help="seed of the fold split")
    s.add_argument("--seed", type=int, default=spec.seed, help="seed of the sampler and of every trial")
    s.add_argument("--out", default=DEFAULT_OUT, help="results root (a folder or a storage URI)")
    s.add_argument("--name", default=None, help="experiment name (default: search-<time>)")
    s.add_argument("--resume", action="store_true",
                   help="continue the interrupted experiment OUT/NAME with its saved options, keeping "
                        "finished trials")
    s.add_argument("--verbose", type=int, default=spec.verbose, choices=[0, 1, 2],
                   help="Ray Tune progress output")


def _ray_args(s, ray) -> None:
    """The search command's Ray Tune engine flags (``ray``: RayOptions' defaults)."""
    from search.ray_options import SCHEDULERS, SEARCHERS, TIME_ATTRS

    r = s.add_argument_group("Ray Tune engine")
    r.add_argument("--searcher", choices=SEARCHERS, default=None,
                   help="Optuna sampler that proposes configurations: tpe (multivariate, constant liar "
                        "for trials at once), random, cmaes, gp (Gaussian process; needs PyTorch), "
                        "nsga2 (default: tpe; --scheduler bohb brings its own, pbt/pb2 draw at random)")
    r.add_argument("--scheduler", choices=SCHEDULERS, default=None,
                   help="how trials are run and stopped: race (the baseline first: NVIDIA's "
                        "configuration, the plan's with --space auto; then a portfolio and "
                        "neighbours of the incumbent, each raced against it on the same "
                        "validation cases; the winner continued to the end of --budget), asha, "
                        "hyperband, bohb (HyperBand + BOHB's searcher), pbt, pb2 (population-based: "
                        "perturb learning rate, loss, augmentation every --grace-period), median "
                        "(stopping rule), none (default: race with a --budget in trial-epochs and no "
                        "--searcher, else asha)")
    _race_args(r)
    r.add_argument("--startup-trials", type=int, default=None,
                   help="random trials before the sampler's model proposes (TPE, CMA-ES, GP; NSGA-II's "
                        "population) (default: a quarter of the trials --num-samples or --budget allows, "
                        "2 to 10)")
    r.add_argument("--warm-start", default=None, metavar="EXPERIMENT",
                   help="tell the sampler the trials of an earlier search (OUT/NAME) that lie in this "
                        "space, so it proposes from them at once")
    r.add_argument("--budget", type=float, default=None,
                   help="the whole search's compute, in trial-epochs (or seconds with --time-attr "
                        "seconds): the race spends all of it (what the trials leave goes to the "
                        "winner); other schedulers stop running trials and start no new one once it "
                        "is spent, so searches can be compared at equal compute (default: none; "
                        "--num-samples bounds it)")
    r.add_argument("--grace-period", type=int, default=None,
                   help=f"ASHA / median: epochs (or seconds) before a trial can be stopped; PBT / PB2: "
                        f"the perturbation interval (default: {ray.grace_period})")
    r.add_argument("--reduction-factor", type=int, default=None,
                   help=f"ASHA / Hyperband reduction factor (default: {ray.reduction_factor})")
    r.add_argument("--time-attr", choices=TIME_ATTRS, default=None,
                   help=f"ASHA's budget unit; 'seconds' lets faster configurations earn more epochs "
                        f"(default: {ray.time_attr})")
    r.add_argument("--max-trial-seconds", type=float, default=None,
                   help=f"ASHA's max_t with --time-attr seconds (default: {ray.max_trial_seconds:g})")
    r.add_argument("--cpus-per-trial", type=float, default=None,
                   help=f"CPUs reserved per trial (default: {ray.cpus_per_trial:g})")
    r.add_argument("--gpus-per-trial", type=float, default=None,
                   help=f"GPUs per trial; fractions share a GPU (default: {ray.gpus_per_trial:g})")
    r.add_argument("--max-concurrent", type=int, default=None,
                   help=f"trials running at once, 0: no limit (default: {ray.max_concurrent})")
    r.add_argument("--max-failures", type=int, default=None,
                   help=f"retries of a failing trial, from its last checkpoint (default: {ray.max_failures})")
    r.add_argument("--address", default=None,
                   help="an existing Ray cluster ('auto' or host:port) (default: a local Ray on 127.0.0.1)")


def _race_args(r) -> None:
    """The race's flags (--scheduler race), in the Ray Tune group ``r``."""
    from search.race import FINAL_DATA

    r.add_argument("--race-epochs", type=int, default=None,
                   help="race: epochs every trial races, compared with the incumbent at each "
                        "(default: the portfolio's, learned by its rank agreement with full-budget "
                        "results; 2 without one)")
    r.add_argument("--race-share", type=float, default=None,
                   help="race: the share of --budget challengers may lose (default: 0.15)")
    r.add_argument("--final-data", choices=FINAL_DATA, default=None,
                   help="race: what the winner is continued on: all (every labelled case, as a "
                        "configuration trained alone would use them; no held-out case is then left to "
                        "choose a post-processing or an ensemble on) or train (the validation "
                        "cases stay held out for those choices) (default: all)")
    r.add_argument("--portfolio", default=None, metavar="FILE|none",
                   help="race: configurations tried first, after the baseline (a JSON file as "
                        "benchmarks/portfolio_study.py writes; default: the one shipped for the "
                        "space, spaces/portfolios/SPACE.json, if any)")


def _retrain_parser(sub) -> None:
    s = _command(sub, "retrain-best", cmd_retrain_best)
    s.add_argument("experiment", help="the search's experiment folder (OUT/NAME)")
    s.add_argument("--epochs", type=int, default=None,
                   help="epochs (default: twice the search's max epochs)")
    s.add_argument("--folds", nargs="+", default=None, metavar="K",
                   help="'all' (one model on all cases; the default) or fold numbers (one model per fold)")
    s.add_argument("--resume", action="store_true", help="continue interrupted retraining runs")
    _backend_arg(s, None, "the Keras backend to retrain on (default: the best trial's)")


def _export_parser(sub) -> None:
    s = _command(sub, "export", cmd_export)
    s.add_argument("run", help="a train --out folder, a search trial's run/ folder, or an export folder")
    s.add_argument("--out", default=None,
                   help="export folder (default: RUN/export for a run, the folder itself for an export); "
                        "an existing folder is replaced only if it is an export")


def _slurm_parser(sub) -> None:
    from search.slurm import SlurmJob

    job = SlurmJob(search_args=(), shared="")
    s = _command(sub, "slurm", cmd_slurm)
    s.add_argument("--shared", required=True, metavar="DIR",
                   help="a folder every node mounts at the same path: the experiment (the "
                        "search's --out, default DIR/results), the job's logs (DIR/slurm-logs) and "
                        "the sbatch file go there")
    s.add_argument("--nodes", type=int, default=job.nodes, help="nodes of the job (Ray's head on "
                                                                 "the first, a worker on each other)")
    s.add_argument("--gpus-per-node", type=int, default=job.gpus_per_node,
                   help="GPUs asked of each node (GRES gpu)")
    s.add_argument("--cpus-per-node", type=int, default=None,
                   help="CPUs asked of each node (default: what the partition gives one task)")
    s.add_argument("--mem", default=None, help="memory per node, as sbatch takes it (64G; default: "
                                               "the partition's)")
    s.add_argument("--time", default=job.time, help="time limit (MINUTES, HH:MM:SS, DAYS-HH:MM)")
    s.add_argument("--partition", default=None,
                   help="partition (default: the cluster's own choice)")
    s.add_argument("--account", default=None, help="account charged (default: yours)")
    s.add_argument("--setup", default=None, metavar="SHELL",
                   help="shell lines run first in the job, e.g. 'module load cuda; source "
                        "/shared/unet3d/.venv/bin/activate'; the job then runs the python they "
                        "put on PATH (default: none: this Python; it and this checkout must be on "
                        "a path every node sees)")
    s.add_argument("--job-name", default=None, help="the job's name (default: unet3d-NAME)")
    s.add_argument("--grace", type=int, default=job.grace_s, metavar="SECONDS",
                   help="stop the search (as on Ctrl-C) this long before the time limit, so that "
                        "it ends resumable")
    s.add_argument("--script", default=None, metavar="FILE",
                   help="where to write the sbatch file (default: DIR/JOB_NAME.sbatch)")
    s.add_argument("--submit", action="store_true", help="submit it with sbatch after writing it")
    s.add_argument("search_args", nargs=argparse.REMAINDER, metavar="-- SEARCH_OPTIONS",
                   help="the search command's options (run_search.py search --help)")


def _report_parser(sub) -> None:
    s = _command(sub, "report", cmd_report)
    s.add_argument("experiment", help="the search's experiment folder (OUT/NAME)")
    s.add_argument("--out", default=None, help="HTML file (default: EXPERIMENT/report.html)")


def _predict_parser(sub) -> None:
    s = _command(sub, "predict", cmd_predict)
    s.add_argument("--model", action="append", required=True, metavar="DIR",
                   help="an export folder (EXPERIMENT/best, a train --out folder), a folder of exports "
                        "(EXPERIMENT/retrained: every fold), or a search experiment (its --top-k best "
                        "trials); repeat to ensemble")
    s.add_argument("--top-k", type=int, default=None,
                   help="with a search experiment as --model: ensemble its K best trials (ranks 2..K "
                        "are exported to EXPERIMENT/top/ on first use) (default: the search's final "
                        "model, best/, or the ensemble it chose on validation, EXPERIMENT/ensemble)")
    s.add_argument("--input", required=True, help="a case folder or a dataset folder")
    s.add_argument("--out", required=True, help="output folder for <case_id>.nii.gz")
    s.add_argument("--tta", type=int, nargs="?", const=8, default=1, metavar="N",
                   help="mirror test-time augmentation: average N flips (--tta alone: all 8)")
    s.add_argument("--overlap", type=float, default=0.5, help="fractional overlap of windows")
    s.add_argument("--batch-size", type=int, default=2, help="windows per model call")
    s.add_argument("--precision", choices=["auto", "fp32", "trained"], default="auto",
                   help="auto: the training precision on a GPU, float32 on a CPU (--runtime keras)")
    s.add_argument("--runtime", choices=["keras", "onnx"], default="keras",
                   help="keras: the network runs on the Keras backend; onnx: each export's "
                        "model.onnx runs on onnxruntime (CUDA where it lists it, else the CPU; "
                        "float32), with the same windows, TTA and post-processing")
    _backend_arg(s, "tensorflow", "the Keras backend to predict on (a model trained under either "
                                  "loads under both)")
    s.add_argument("--probabilities", action="store_true",
                   help="also write OUT/<case_id>_probabilities.nii.gz (X, Y, Z, K; quantised to 1/255): "
                        "class probabilities, or region ones (e.g. WT/TC/ET) if any model has a region "
                        "head")
    s.add_argument("--postprocess", choices=["saved", "none"], default="saved",
                   help="saved: the post-processing chosen on validation and saved with the (first) "
                        "model's export (its postprocess.json; an export without one: none); none: "
                        "no post-processing. --min-et-volume / --largest-wt override either")
    s.add_argument("--min-et-volume", type=float, default=None, metavar="MM3",
                   help="post-processing: enhancing-tumour components smaller than this become necrotic "
                        "core (0: off; 500 is a common BraTS choice); overrides the saved choice")
    s.add_argument("--largest-wt", action=argparse.BooleanOptionalAction, default=None,
                   help="post-processing: keep only the largest connected whole-tumour component "
                        "(--no-largest-wt: do not); overrides the saved choice")


def _evaluate_parser(sub) -> None:
    s = _command(sub, "evaluate", cmd_evaluate)
    s.add_argument("--pred", required=True, help="folder of predictions")
    s.add_argument("--data", required=True, help="the dataset with the reference labels")
    _labels_arg(s)
    s.add_argument("--out", default=None, help="per-case CSV (default: PRED/evaluation.csv)")
    s.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPU count)")
    s.add_argument("--partial", action="store_true",
                   help="score only the cases PRED has a prediction for (the others are listed as "
                        "skipped); without it every labelled case must have one")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_search.py", formatter_class=_Help,
        description="Automated search for the best 3D-UNet for brain-tumour MRI segmentation. With no "
                    "command: write a synthetic BraTS-like dataset to data/synthetic-medium (if absent) and "
                    "search the demo space on it with Ray Tune + Optuna + ASHA on a local Ray instance "
                    "(same as 'run_search.py search').")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for builder in (_synth_parser, _prepare_parser, _plan_parser, _train_parser, _search_parser,
                    _slurm_parser, _retrain_parser, _export_parser,
                    _report_parser, _predict_parser, _evaluate_parser):
        builder(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from unet3d.errors import UserError
    from unet3d.runtime import lean_keras

    lean_keras()  # (a command's Keras without the two libraries it never uses: 1.5 s sooner)

    try:
        if args.command is None:
            return cmd_default(args)
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
