#!/usr/bin/env python
"""Does a search beat NVIDIA's configuration trained alone, at equal compute, on held-out cases?

Issue 15's benchmark. Data: ``--cases`` hard synthetic 64^3 cases to search and train on, and
``--heldout`` hard cases from another seed that no search or training ever sees, both written once
under ``--work`` and reused (with the preprocessed cache of the training cases). Per seed in
``--seeds``, every method spends ``--budget`` trial-epochs (one trial-epoch = one epoch of the demo
space's ``steps_per_epoch`` steps) in the ``demo`` space:

  nvidia             NVIDIA's configuration projected into the space (the point every search tries
                     first), trained alone for ``--budget`` epochs on every training case.
  random             random search, no early stopping (Ray Tune, --searcher random --scheduler none).
  tpe-asha           the defaults: multivariate TPE + ASHA.
  bohb               --scheduler bohb (HyperBand with TuneBOHB's own searcher).
  kt-hyperband       Keras Tuner's Hyperband; it has no budget option, so its max-epochs and factor
                     are the ones whose Hyperband schedule is nearest the budget (what it ran is
                     read back from the search's summary).
  search-then-train  TPE + ASHA on half the budget, the winner retrained on every labelled case for
                     the other half (``retrain_share=0.5``; its model is ``retrained/all``).

Every search: the same training folder and cache, ``folds=4`` (a quarter of the cases validate),
``max_epochs`` per trial, the seed. Each method's final model (a search's ``best/``, search-then-
train's ``retrained/all``, the nvidia run's folder) predicts every held-out case as ``run_search.py
predict`` does (sliding window, overlap 0.5, the export's saved post-processing) and is scored as
``run_search.py evaluate`` scores (whole-image Dice of WT, TC, ET on the original grid; their mean),
averaged over the held-out cases. The table gives mean +- std over seeds; ``--json`` keeps every
per-seed number.

  python benchmarks/bench_search.py [--seeds 0 1 2] [--budget 24] [--methods nvidia tpe-asha ...]
  python benchmarks/bench_search.py --quick      # plumbing check in a few minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import unet3d  # noqa: E402, F401, I001  (first: runtime defaults before TensorFlow loads)

METHODS = ("nvidia", "random", "tpe-asha", "bohb", "kt-hyperband", "search-then-train")
SPACE = "demo"
FOLDS = 4
RETRAIN_SHARE = 0.5
NUM_SAMPLES = 100  # the budget, not the trial count, ends a Ray search
TRAIN_SEED, HELDOUT_SEED = 1000, 2000  # data seeds (the searches' seeds are --seeds)
QUICK = dict(cases=8, heldout=2, shape=32, budget=4, max_epochs=2, seeds=[0],
             methods=["nvidia", "search-then-train", "kt-hyperband"])
FULL = dict(cases=24, heldout=8, shape=64, budget=24, max_epochs=6, seeds=[0, 1, 2],
            methods=list(METHODS))


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every method of the run shares."""

    train: Path
    heldout: Path
    cache: Path
    results: Path
    budget: int
    max_epochs: int


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ data


def prepare(args: argparse.Namespace) -> Setup:
    """Writes (once) the training and held-out sets and the training set's preprocessed cache."""
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare_dataset
    from unet3d.data.synthetic import write_synthetic_dataset

    work, edge = Path(args.work), args.shape
    shape = (edge, edge, edge)
    train = work / "data" / f"train_hard_{edge}_s{TRAIN_SEED}_n{args.cases}"
    heldout = work / "data" / f"heldout_hard_{edge}_s{HELDOUT_SEED}_n{args.heldout}"
    t0 = time.perf_counter()
    write_synthetic_dataset(train, args.cases, shape, seed=TRAIN_SEED, difficulty="hard")
    write_synthetic_dataset(heldout, args.heldout, shape, seed=HELDOUT_SEED, difficulty="hard",
                            prefix="HeldOut")
    cache = work / "cache" / train.name
    prep = prepare_dataset(discover(train), cache, jobs=1)
    log(f"data: {args.cases} training cases {train}, {args.heldout} held-out {heldout}, cache "
        f"{cache} ({len(prep.entries) - prep.reused} preprocessed) in {time.perf_counter() - t0:.0f} s")
    results = work / "results" / time.strftime("run-%Y%m%d-%H%M%S")
    return Setup(train=train, heldout=heldout, cache=cache, results=results, budget=args.budget,
                 max_epochs=args.max_epochs)


# --------------------------------------------------------------------------------------- methods


def train_nvidia(setup: Setup, seed: int) -> dict[str, Any]:
    """NVIDIA's point of the space trained alone for the whole budget on every training case (no
    validation cases: nothing is held out of its training, as with retrain-best's ``all``)."""
    import keras

    from spaces.presets import get_space
    from spaces.translate import nvidia_point
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare_dataset
    from unet3d.train import Trainer

    prep = prepare_dataset(discover(setup.train), setup.cache, jobs=1)  # (all reused)
    space = get_space(SPACE)
    point = nvidia_point(space)
    cfg = space.to_run_config(point).with_labels(prep.scheme, prep.channels)
    cfg = cfg.with_epochs(setup.budget).replace(train={"seed": seed})
    labelled = [e for e in prep.entries if e.meta["labelled"]]
    out = setup.results / f"nvidia_s{seed}"
    keras.backend.clear_session()
    Trainer(cfg, labelled, [], out, log=lambda m: log(f"  nvidia s{seed} {m}")).fit()
    return {"export": str(out), "compute": setup.budget, "params": point,
            "detail": {"train_cases": len(labelled), "epochs": setup.budget}}


def hyperband_schedule(budget: int, max_epochs: int) -> tuple[int, int, int]:
    """(max_epochs, factor, trial-epochs) of the Keras Tuner Hyperband schedule (one iteration,
    every trial trained from scratch as our tuner does) nearest ``budget``; ties go to the longest
    trials up to ``max_epochs``. The arithmetic is Keras Tuner's HyperbandOracle's."""
    def cost(m: int, f: int) -> int:
        brackets, e = 0, float(m)
        while e >= 1:
            e, brackets = e / f, brackets + 1
        end0 = math.ceil(1 + math.log(m, f))
        return sum(math.ceil(end0 / (b + 1) * f ** (b - r)) * math.ceil(m / f ** (b - r))
                   for b in range(brackets) for r in range(b + 1))

    options = [(abs(cost(m, f) - budget), -m, f, cost(m, f))
               for m in range(2, max(2, max_epochs) + 1) for f in range(2, 9)]
    _, neg_m, f, c = min(options)
    return -neg_m, f, c


def ray_options(method: str, budget: int) -> dict[str, Any]:
    if method == "random":
        return dict(searcher="random", scheduler="none", budget=budget)
    if method == "bohb":
        return dict(scheduler="bohb", budget=budget)
    if method == "search-then-train":
        return dict(budget=budget, retrain_share=RETRAIN_SHARE)
    return dict(budget=budget)  # tpe-asha: the defaults


def run_search(setup: Setup, method: str, seed: int) -> dict[str, Any]:
    """One search of ``method``; its final model and the compute it used (retraining included)."""
    from search import Search

    max_epochs, options = setup.max_epochs, {}
    if method == "kt-hyperband":
        max_epochs, factor, planned = hyperband_schedule(setup.budget, setup.max_epochs)
        options = dict(engine="keras-tuner", algorithm="hyperband", reduction_factor=factor)
        log(f"  kt-hyperband: max_epochs {max_epochs}, factor {factor} ({planned} trial-epochs "
            f"planned for a budget of {setup.budget})")
    else:
        options = ray_options(method, setup.budget)
    result = Search(data=setup.train, cache=setup.cache, space=SPACE, num_samples=NUM_SAMPLES,
                    max_epochs=max_epochs, out=setup.results, name=f"{method}_s{seed}", seed=seed,
                    folds=FOLDS, verbose=0, log=lambda m: log(f"  {method} s{seed} {m}"),
                    **options).run()
    if result.best is None:
        raise RuntimeError(f"{method} seed {seed}: the search exported no best model "
                           f"(interrupted={result.interrupted})")
    s = result.summary
    searched = int(s.get("trial_epochs_run", 0))
    retrain = 0
    export = result.best.export
    if method == "search-then-train":
        if result.retrained is None:
            raise RuntimeError(f"{method} seed {seed}: no retrained model")
        export, retrain = result.retrained, max(1, round(setup.budget * RETRAIN_SHARE))
    rows = [r for r in result.trials if r.status != "pruned"]
    detail = {"experiment": str(result.experiment), "trials": len(rows),
              "stopped_early": sum(r.status == "stopped" for r in rows),
              "errors": sum(r.status == "error" for r in rows),
              "best_trial": result.best.trial_id, "best_val_score": result.best.score,
              "search_trial_epochs": searched, "retrain_epochs": retrain,
              "search_seconds": result.seconds}
    if method == "kt-hyperband":
        detail.update(kt_max_epochs=max_epochs, kt_factor=options["reduction_factor"])
    return {"export": str(export), "compute": searched + retrain, "params": result.best.params,
            "detail": detail}


# --------------------------------------------------------------------------------------- scoring


def score_heldout(export: str | Path, heldout: Path) -> dict[str, Any]:
    """The export predicts every held-out case as ``run_search.py predict`` does (overlap 0.5, one
    flip, batch 2, the saved post-processing) and is scored as ``evaluate`` scores: whole-image
    Dice per region on the original grid, the tumour mean; means over cases."""
    import keras
    import numpy as np

    from unet3d.data.discover import discover
    from unet3d.data.preprocess import load_case, read_label
    from unet3d.evaluation import evaluation_scheme
    from unet3d.inference import Predictor, load_member, resolve_postprocess
    from unet3d.metrics import region_scores

    ds = discover(heldout)
    scheme = evaluation_scheme(ds)
    keras.backend.clear_session()
    members = [load_member(export)]
    post, post_line = resolve_postprocess(members, "saved")
    predictor = Predictor(members, overlap=0.5, tta=1, batch_size=2, postprocess=post)
    keys = [f"dice_{r}" for r in scheme.tumour] + ["dice_mean"]
    per_case = []
    for case in ds.labelled:
        pred = predictor.predict(load_case(dataclasses.replace(case, label=None)))
        ref, _ = read_label(case.label, case.case_id, scheme)
        s = region_scores(scheme.to_classes(pred.labels), scheme.to_classes(ref), scheme)
        per_case.append({"case_id": case.case_id, **{k: float(s[k]) for k in keys}})
    means = {k: float(np.mean([c[k] for c in per_case])) for k in keys}
    del members, predictor
    gc.collect()
    return {**means, "postprocess": post_line, "per_case": per_case}


def run_one(setup: Setup, method: str, seed: int) -> dict[str, Any]:
    log(f"{method} seed {seed}: start")
    t0 = time.perf_counter()
    try:
        out = train_nvidia(setup, seed) if method == "nvidia" else run_search(setup, method, seed)
        wall = time.perf_counter() - t0
        scores = score_heldout(out["export"], setup.heldout)
    except Exception as e:  # noqa: BLE001  (one broken method must not lose the others' numbers)
        traceback.print_exc()
        log(f"{method} seed {seed}: FAILED after {time.perf_counter() - t0:.0f} s: {e}")
        return {"method": method, "seed": seed, "error": f"{type(e).__name__}: {e}",
                "wall_s": time.perf_counter() - t0}
    rec = {"method": method, "seed": seed, "wall_s": wall,
           "score_s": time.perf_counter() - t0 - wall, **out, **scores}
    log(f"{method} seed {seed}: held-out Dice mean {rec['dice_mean']:.4f} (WT {rec['dice_WT']:.3f} "
        f"TC {rec['dice_TC']:.3f} ET {rec['dice_ET']:.3f}), {rec['compute']} trial-epochs, "
        f"{wall:.0f} s")
    return rec


# ---------------------------------------------------------------------------------------- report


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(records: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """One row per method: mean (and std of the mean Dice) over the seeds that finished."""
    rows = []
    for m in methods:
        ok = [r for r in records if r["method"] == m and "error" not in r]
        failed = [r["seed"] for r in records if r["method"] == m and "error" in r]
        mean, std = _mean_std([r["dice_mean"] for r in ok])
        rows.append({"method": m, "dice_mean": mean, "dice_std": std,
                     **{k: _mean_std([r[k] for r in ok])[0] for k in ("dice_WT", "dice_TC",
                                                                     "dice_ET", "compute", "wall_s")},
                     "seeds": [r["seed"] for r in ok], "failed_seeds": failed})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'method':<18} {'held-out Dice':>15} {'WT':>6} {'TC':>6} {'ET':>6} "
            f"{'trial-epochs':>12} {'wall s':>7}  seeds")
    lines = [head, "-" * len(head)]
    for r in rows:
        seeds = " ".join(map(str, r["seeds"])) or "-"
        if r["failed_seeds"]:
            seeds += f" (failed: {' '.join(map(str, r['failed_seeds']))})"
        lines.append(f"{r['method']:<18} {r['dice_mean']:>7.4f} ± {r['dice_std']:.4f} "
                     f"{r['dice_WT']:>6.3f} {r['dice_TC']:>6.3f} {r['dice_ET']:>6.3f} "
                     f"{r['compute']:>12.1f} {r['wall_s']:>7.0f}  {seeds}")
    return "\n".join(lines)


def verdict(records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """Whether the best search method beats nvidia at equal compute, by how much, per seed."""
    by = {(r["method"], r["seed"]): r for r in records if "error" not in r}
    base = next((r for r in rows if r["method"] == "nvidia" and r["seeds"]), None)
    searches = [r for r in rows if r["method"] != "nvidia" and r["seeds"]]
    if base is None or not searches:
        return "verdict: needs nvidia and at least one search method that finished"
    best = max(searches, key=lambda r: r["dice_mean"])
    seeds = [s for s in best["seeds"] if ("nvidia", s) in by]
    diffs = [by[(best["method"], s)]["dice_mean"] - by[("nvidia", s)]["dice_mean"] for s in seeds]
    delta = best["dice_mean"] - base["dice_mean"]
    wins = sum(d > 0 for d in diffs)
    spread = _mean_std(diffs)[1] if len(diffs) > 1 else float("nan")
    word = "BEATS" if delta > 0 and wins == len(diffs) else (
        "does not clearly beat" if delta > 0 else "does NOT beat")
    per_seed = ", ".join(f"seed {s}: {by[(best['method'], s)]['dice_mean']:.4f} vs "
                         f"{by[('nvidia', s)]['dice_mean']:.4f} ({d:+.4f})"
                         for s, d in zip(seeds, diffs, strict=True))
    return (f"verdict: the best search method, {best['method']} ({best['dice_mean']:.4f}, "
            f"{best['compute']:.1f} trial-epochs), {word} nvidia trained alone ({base['dice_mean']:.4f}, "
            f"{base['compute']:.1f} trial-epochs) on held-out data: {delta:+.4f} mean region Dice "
            f"(paired std over seeds {spread:.4f}; better on {wins}/{len(diffs)} seeds). "
            f"Per seed: {per_seed}"
            + (f". Only {len(diffs)} seed(s): no claim either way" if len(diffs) < 3 else ""))


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, help=f"training cases (default {FULL['cases']})")
    p.add_argument("--heldout", type=int, help=f"held-out cases (default {FULL['heldout']})")
    p.add_argument("--shape", type=int, help=f"case edge in voxels (default {FULL['shape']})")
    p.add_argument("--seeds", type=int, nargs="+", help=f"default {FULL['seeds']}")
    p.add_argument("--budget", type=int, help=f"trial-epochs per method (default {FULL['budget']})")
    p.add_argument("--max-epochs", type=int, help=f"per trial (default {FULL['max_epochs']})")
    p.add_argument("--methods", nargs="+", choices=METHODS, help="default: all")
    p.add_argument("--work", default="/tmp/bench_search", help="data, cache and results folder")
    p.add_argument("--json", help="write every per-seed number here")
    p.add_argument("--quick", action="store_true",
                   help=f"plumbing check: {QUICK['cases']}+{QUICK['heldout']} cases of "
                        f"{QUICK['shape']}^3, budget {QUICK['budget']}, seed 0, "
                        f"{', '.join(QUICK['methods'])}")
    args = p.parse_args(argv)
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.budget < 1 or args.max_epochs < 1 or args.cases < 2 * FOLDS or args.heldout < 1:
        p.error(f"--budget/--max-epochs/--heldout must be >= 1 and --cases >= {2 * FOLDS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import search

    log(f"code: {Path(search.__file__).parent.parent} (python {sys.executable}); methods "
        f"{' '.join(args.methods)}; seeds {args.seeds}; budget {args.budget} trial-epochs, "
        f"max {args.max_epochs} epochs per trial, space {SPACE}, folds {FOLDS}")
    setup = prepare(args)
    records: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for seed in args.seeds:
        for method in args.methods:
            records.append(run_one(setup, method, seed))
            if args.json:
                write_json(args, setup, records)
    rows = aggregate(records, args.methods)
    print(f"\nbench_search: {args.cases} training / {args.heldout} held-out hard "
          f"{args.shape}^3 cases, space {SPACE}, budget {args.budget} trial-epochs, max "
          f"{args.max_epochs} epochs per trial, seeds {args.seeds}, "
          f"{time.perf_counter() - t0:.0f} s in all")
    print(table(rows))
    print(verdict(records, rows))
    if args.json:
        write_json(args, setup, records, rows)
        print(f"per-seed numbers: {args.json}")
    return 1 if any("error" in r for r in records) else 0


def write_json(args: argparse.Namespace, setup: Setup, records: list[dict[str, Any]],
               rows: list[dict[str, Any]] | None = None) -> None:
    out = {"args": vars(args), "setup": {k: str(v) for k, v in dataclasses.asdict(setup).items()},
           "records": records, "table": rows}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
