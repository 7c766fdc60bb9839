#!/usr/bin/env python
"""Is the model a search gives better than the default configuration trained alone with the same
compute? Paired replicates on held-out cases, per budget (issue 24's benchmark).

Each replicate k draws its own data: ``--cases`` hard synthetic ``--shape``^3 cases to search and
train on (seed 1000 + k) and ``--heldout`` hard cases (seed 2000 + k) that no search or training
sees. On that data, for a budget of B trial-epochs (one trial-epoch = one epoch of the ``demo``
space's steps), every method spends B:

  default            NVIDIA's configuration projected into the space (the point every search
                     tries first), trained alone for B epochs on every training case, as
                     ``run_search.py train`` trains (cosine schedule).
  race               ``search --budget B``: the race (search.race), the default of a budget: the
                     default first, the shipped portfolio, neighbours of the incumbent, the winner
                     continued to B.
  tpe-asha           ``search --budget B --scheduler asha``: TPE + ASHA, trials of at most
                     max(6, B/4) epochs, the best trial's best epoch exported (as before issue 24).
  search-then-train  the same with ``--retrain-share 0.5``: TPE + ASHA on half of B, the winner
                     retrained from scratch on every case for the other half.

Every search: the replicate's training cases, ``folds=4`` (a quarter validates), seed k. Each
method's final model predicts every held-out case as ``run_search.py predict`` does (sliding
window, overlap 0.5, the export's saved post-processing) and is scored as ``evaluate`` scores
(whole-image Dice of WT, TC, ET on the original grid; their mean), averaged over the cases.

The default is also trained alone for every budget of ``--curve`` (its own curve). The table, per
budget and method: the held-out Dice, the paired difference to the default (its mean with a 95%
bootstrap interval over replicates, the share of replicates the method wins, the worst one), the
share of the budget a search spent before its final model's own training (the race's trials
before the continuation; TPE + ASHA's whole search; search-then-train's half); then the rank
agreement of the race's cheap fidelities with full-budget results (Kendall tau, measured by
``benchmarks/portfolio_study.py`` on other data, read from the shipped portfolio) and a figure of
held-out Dice against trial-epochs (``--figure``).

Resumable: every finished (method, budget, replicate) is appended to ``WORK/results.jsonl`` and a
rerun skips it, so the hours it takes can be spread over several sittings. ``--report`` prints the
table of what is there without running anything.

  python benchmarks/bench_search.py                      # 8 replicates at B=24, 4 at B=96
  python benchmarks/bench_search.py --report             # the table so far
  python benchmarks/bench_search.py --smoke              # plumbing check in minutes (own --work)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
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

METHODS = ("default", "race", "tpe-asha", "search-then-train")
SPACE = "demo"
FOLDS = 4
RETRAIN_SHARE = 0.5
NUM_SAMPLES = 100  # the budget, not the trial count, ends a TPE + ASHA search
TRAIN_SEED, HELDOUT_SEED = 1000, 2000  # + the replicate
PLAN = {24: 8, 96: 4}  # budget -> replicates
CURVE = (12, 24, 48, 96)  # the default alone, on the replicates of the largest budget
SMOKE = dict(cases=8, heldout=2, shape=32, plan={4: 2}, curve=(2, 4))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclasses.dataclass(frozen=True)
class Replicate:
    """One replicate's data: training cases (and their cache), held-out cases."""

    k: int
    train: Path
    heldout: Path
    cache: Path


def replicate(work: Path, k: int, cases: int, heldout: int, shape: int) -> Replicate:
    """Writes (once) replicate ``k``'s training and held-out sets and the training cache."""
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare_dataset
    from unet3d.data.synthetic import write_synthetic_dataset

    train = work / "data" / f"train_hard_{shape}_s{TRAIN_SEED + k}_n{cases}"
    held = work / "data" / f"heldout_hard_{shape}_s{HELDOUT_SEED + k}_n{heldout}"
    write_synthetic_dataset(train, cases, (shape,) * 3, seed=TRAIN_SEED + k, difficulty="hard")
    write_synthetic_dataset(held, heldout, (shape,) * 3, seed=HELDOUT_SEED + k, difficulty="hard",
                            prefix="HeldOut")
    cache = work / "cache" / train.name
    prepare_dataset(discover(train), cache, jobs=1)
    return Replicate(k=k, train=train, heldout=held, cache=cache)


# --------------------------------------------------------------------------------------- methods


def train_default(rep: Replicate, budget: int, out: Path) -> dict[str, Any]:
    """NVIDIA's point of the space trained alone for ``budget`` epochs on every training case."""
    import keras

    from spaces.presets import first_point, get_space
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare_dataset
    from unet3d.training.train import Trainer

    prep = prepare_dataset(discover(rep.train), rep.cache, jobs=1)  # (all reused)
    space = get_space(SPACE)
    point, _ = first_point(space)
    cfg = space.to_run_config(point).with_labels(prep.scheme, prep.channels)
    cfg = cfg.with_epochs(budget).replace(train={"seed": rep.k})
    labelled = [e for e in prep.entries if e.meta["labelled"]]
    keras.backend.clear_session()
    Trainer(cfg, labelled, [], out, resume=(out / "checkpoint.npz").exists(),
            log=lambda m: log(f"    default {m}")).fit()
    return {"export": str(out), "compute": budget, "params": point, "before_final": 0.0,
            "detail": {"train_cases": len(labelled), "epochs": budget}}


def run_search(rep: Replicate, method: str, budget: int, out: Path) -> dict[str, Any]:
    """One search of ``method``; its final model, its compute and what it spent before it."""
    from search import Search

    options: dict[str, Any] = {"budget": budget}
    if method in ("tpe-asha", "search-then-train"):
        options.update(scheduler="asha", max_epochs=max(6, budget // 4))
    if method == "search-then-train":
        options["retrain_share"] = RETRAIN_SHARE
    exp = out.parent / out.name
    restore = (exp / "search.json").exists() and not (exp / "trials.json").exists()
    search = (Search.restore(exp, log=lambda m: log(f"    {m}")) if restore else
              Search(data=rep.train, cache=rep.cache, space=SPACE, num_samples=NUM_SAMPLES,
                     out=out.parent, name=out.name, seed=rep.k, folds=FOLDS, verbose=0,
                     log=lambda m: log(f"    {m}"), **options))
    result = search.run()
    if result.best is None:
        raise RuntimeError(f"{method}: the search exported no best model "
                           f"(interrupted={result.interrupted})")
    s = result.summary
    searched = int(s.get("trial_epochs_run", 0))
    export, retrain, before = result.best.export, 0, 1.0
    if method == "search-then-train":
        if result.retrained is None:
            raise RuntimeError(f"{method}: no retrained model")
        export, retrain = result.retrained, budget - searched
        before = searched / budget
    race = s.get("race")
    if race is not None:
        before = race["race_trial_epochs"] / budget
    detail = {"experiment": str(result.experiment), "trials": len(result.trials),
              "best_trial": result.best.trial_id, "best_val_score": result.best.score,
              "search_trial_epochs": searched, "retrain_epochs": retrain,
              "search_seconds": result.seconds,
              "proposed_by": [r.proposed_by for r in result.trials]}
    if race is not None:
        detail["race"] = {k: race[k] for k in ("race_trial_epochs", "lost_trial_epochs",
                                               "continuation", "events")}
    return {"export": str(export), "compute": searched + retrain, "params": result.best.params,
            "before_final": before, "detail": detail}


# --------------------------------------------------------------------------------------- scoring


def score_heldout(export: str | Path, heldout: Path) -> dict[str, Any]:
    """The export predicts every held-out case as ``run_search.py predict`` does (overlap 0.5,
    batch 2, its saved post-processing) and is scored as ``evaluate`` scores: whole-image Dice
    per region on the original grid, the tumour mean; means over cases."""
    import keras
    import numpy as np

    from unet3d.data.discover import discover
    from unet3d.data.preprocess import load_case, read_label
    from unet3d.evaluation.evaluate import evaluation_scheme
    from unet3d.evaluation.metrics import region_scores
    from unet3d.inference.predictor import Predictor, load_member, resolve_postprocess

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


def run_one(rep: Replicate, method: str, budget: int, work: Path) -> dict[str, Any]:
    key = f"{method}/B{budget}/r{rep.k}"
    out = work / "runs" / f"{method}_B{budget}_r{rep.k}"
    log(f"{key}: start")
    t0 = time.perf_counter()
    try:
        res = (train_default(rep, budget, out) if method == "default"
               else run_search(rep, method, budget, out))
        wall = time.perf_counter() - t0
        scores = score_heldout(res["export"], rep.heldout)
    except Exception as e:  # noqa: BLE001  (one broken run must not lose the others)
        traceback.print_exc()
        log(f"{key}: FAILED after {time.perf_counter() - t0:.0f} s: {e}")
        return {"key": key, "method": method, "budget": budget, "replicate": rep.k,
                "error": f"{type(e).__name__}: {e}", "wall_s": time.perf_counter() - t0}
    rec = {"key": key, "method": method, "budget": budget, "replicate": rep.k, "wall_s": wall,
           **res, **scores}
    log(f"{key}: held-out Dice {rec['dice_mean']:.4f} (WT {rec['dice_WT']:.3f} TC "
        f"{rec['dice_TC']:.3f} ET {rec['dice_ET']:.3f}), {rec['compute']} trial-epochs, "
        f"{wall:.0f} s")
    return rec


# ---------------------------------------------------------------------------------------- report


def bootstrap_ci(values: list[float], n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """The 95% percentile interval of the mean of ``values`` (resampled with replacement)."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


def paired(records: list[dict[str, Any]], method: str, budget: int) -> dict[str, Any] | None:
    """``method`` - default at ``budget`` over the replicates both finished."""
    ok = {(r["method"], r["budget"], r["replicate"]): r for r in records if "error" not in r}
    reps = sorted(k for (m, b, k) in ok if m == method and b == budget
                  and ("default", budget, k) in ok)
    if not reps:
        return None
    diffs = [ok[(method, budget, k)]["dice_mean"] - ok[("default", budget, k)]["dice_mean"]
             for k in reps]
    lo, hi = bootstrap_ci(diffs)
    return {"method": method, "budget": budget, "replicates": reps, "diffs": diffs,
            "mean": statistics.fmean(diffs), "ci": (lo, hi),
            "wins": sum(d > 0 for d in diffs) / len(diffs), "worst": min(diffs),
            "dice": statistics.fmean(ok[(method, budget, k)]["dice_mean"] for k in reps),
            "default": statistics.fmean(ok[("default", budget, k)]["dice_mean"] for k in reps),
            "before_final": statistics.fmean(ok[(method, budget, k)].get("before_final", 0.0)
                                             for k in reps),
            "compute": statistics.fmean(ok[(method, budget, k)]["compute"] for k in reps)}


def table(records: list[dict[str, Any]], plan: dict[int, int], curve: tuple[int, ...]) -> str:
    ok = [r for r in records if "error" not in r]
    lines = ["default trained alone (its curve): held-out Dice mean over replicates"]
    for b in sorted({*curve, *plan}):
        vals = [r["dice_mean"] for r in ok if r["method"] == "default" and r["budget"] == b]
        if vals:
            lines.append(f"  B={b:<4} {statistics.fmean(vals):.4f}  ({len(vals)} replicates)")
    head = (f"{'budget':>6} {'method':<18} {'reps':>4} {'held-out':>8} {'default':>8} "
            f"{'diff':>8} {'95% CI':>18} {'wins':>5} {'worst':>8} {'spent before final':>18} "
            f"{'compute':>7}")
    lines += ["", head, "-" * len(head)]
    for b in sorted(plan):
        for m in METHODS[1:]:
            p = paired(records, m, b)
            if p is None:
                continue
            lines.append(f"{b:>6} {m:<18} {len(p['replicates']):>4} {p['dice']:>8.4f} "
                         f"{p['default']:>8.4f} {p['mean']:>+8.4f} "
                         f"[{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}] {p['wins']:>5.0%} "
                         f"{p['worst']:>+8.4f} {p['before_final']:>18.0%} {p['compute']:>7.1f}")
    failed = [r["key"] for r in records if "error" in r]
    if failed:
        lines.append(f"failed: {', '.join(failed)}")
    return "\n".join(lines)


def verdict(records: list[dict[str, Any]]) -> str:
    """Issue 24's acceptance: non-inferior at B=24 (CI low end >= -0.01), a win at B=96 (mean
    >= +0.01 and ahead in >= 75% of the replicates)."""
    out = []
    small, large = paired(records, "race", 24), paired(records, "race", 96)

    def so_far(pair: dict[str, Any], budget: int) -> str:  # (the issue's replicate count)
        n = len(pair["replicates"])
        return "" if n >= PLAN[budget] else f" so far ({n} of the {PLAN[budget]} replicates)"

    if small is not None:
        ok = small["ci"][0] >= -0.01
        out.append(f"B=24: race - default {small['mean']:+.4f}, 95% CI [{small['ci'][0]:+.4f}, "
                   f"{small['ci'][1]:+.4f}] over {len(small['replicates'])} replicates: "
                   f"{'non-inferior' if ok else 'NOT shown non-inferior'}{so_far(small, 24)} "
                   f"(needs CI low >= -0.01)")
    if large is not None:
        ok = large["mean"] >= 0.01 and large["wins"] >= 0.75
        out.append(f"B=96: race - default {large['mean']:+.4f}, ahead in {large['wins']:.0%} of "
                   f"{len(large['replicates'])} replicates: {'a win' if ok else 'NOT a win'}"
                   f"{so_far(large, 96)} (needs mean >= +0.01 and >= 75%)")
    return "\n".join(out) or "verdict: no race and default pair finished yet"


def fidelity_table() -> str:
    """The race's cheap fidelities' rank agreement, from the shipped portfolio's study."""
    path = ROOT / "spaces" / "portfolios" / f"{SPACE}.json"
    if not path.exists():
        return "(no shipped portfolio: no fidelity study)"
    d = json.loads(path.read_text())
    lines = [f"rank agreement with full-budget results ({d.get('produced_by', '?')}, "
             f"{len(d.get('datasets', []))} datasets, {len(d.get('candidates', []))} "
             f"configurations; Kendall tau mean over datasets):"]
    for r in d.get("fidelities", []):
        lines.append(f"  {r['fidelity']:<36} {r['epochs']:>4g} epochs  tau {r['mean_tau']:+.3f}  "
                     f"{r['mean_seconds']:.0f} s")
    race = d.get("race", {})
    lines.append(f"race epochs chosen: {race.get('epochs')} ({race.get('rule', '')})")
    return "\n".join(lines)


def figure(records: list[dict[str, Any]], plan: dict[int, int], curve: tuple[int, ...],
           path: Path) -> None:
    """Held-out Dice against trial-epochs: the default's curve, each method at each budget (mean
    over replicates with the bootstrap interval of the mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if "error" not in r]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, m in enumerate(METHODS):
        budgets = sorted({*curve, *plan}) if m == "default" else sorted(plan)
        xs, ys, lo, hi = [], [], [], []
        for b in budgets:
            vals = [r["dice_mean"] for r in ok if r["method"] == m and r["budget"] == b]
            if vals:
                c = bootstrap_ci(vals)
                xs.append(b * (1 + 0.03 * (i - 1.5)))
                ys.append(statistics.fmean(vals))
                lo.append(ys[-1] - c[0])
                hi.append(c[1] - ys[-1])
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=m,
                        linestyle="-" if m == "default" else "none")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("trial-epochs spent (budget B)")
    ax.set_ylabel("held-out mean region Dice")
    ax.set_title("search vs the default trained alone, hard synthetic data")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ main


def load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[r["key"]] = r  # (a later line of a key replaces an earlier failure)
    return list(out.values())


def schedule(plan: dict[int, int], curve: tuple[int, ...],
             methods: list[str]) -> list[tuple[str, int, int]]:
    """(method, budget, replicate) in the order they run: the smaller budgets' replicates first
    (each replicate's methods together), then the default's curve on the largest budget's."""
    runs = []
    for b in sorted(plan):
        for k in range(plan[b]):
            runs += [(m, b, k) for m in methods]
    if "default" in methods:
        for k in range(max(plan.values())):
            for b in curve:
                if b not in plan and k < plan[max(plan)]:
                    runs.append(("default", b, k))
    return runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=24, help="training cases per replicate")
    p.add_argument("--heldout", type=int, default=16, help="held-out cases per replicate")
    p.add_argument("--shape", type=int, default=48, help="case edge in voxels")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--work", default="/tmp/bench_search24", help="data, runs and results.jsonl")
    p.add_argument("--report", action="store_true", help="print the table of what is there")
    p.add_argument("--figure", default=None, help="write the figure here (PNG)")
    p.add_argument("--only-budget", type=int, default=None, help="run this budget's runs only")
    p.add_argument("--smoke", action="store_true",
                   help=f"{SMOKE['cases']}+{SMOKE['heldout']} cases of {SMOKE['shape']}^3, budget "
                        f"4 twice, the curve at 2 and 4 (own --work/smoke)")
    args = p.parse_args(argv)
    args.plan, args.curve = dict(PLAN), CURVE
    if args.smoke:
        args.cases, args.heldout, args.shape = SMOKE["cases"], SMOKE["heldout"], SMOKE["shape"]
        args.plan, args.curve = dict(SMOKE["plan"]), SMOKE["curve"]
        args.work = str(Path(args.work) / "smoke")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    results = work / "results.jsonl"
    records = load(results)
    if not args.report:
        done = {r["key"] for r in records if "error" not in r}
        todo = [(m, b, k) for m, b, k in schedule(args.plan, args.curve, args.methods)
                if f"{m}/B{b}/r{k}" not in done
                and (args.only_budget is None or b == args.only_budget)]
        log(f"bench_search: {len(done)} runs done, {len(todo)} to run; work {work}")
        reps: dict[int, Replicate] = {}
        for m, b, k in todo:
            if k not in reps:
                reps[k] = replicate(work, k, args.cases, args.heldout, args.shape)
            rec = run_one(reps[k], m, b, work)
            results.parent.mkdir(parents=True, exist_ok=True)
            with results.open("a") as f:
                f.write(json.dumps(rec, default=str) + "\n")
            records = load(results)
    print(f"\nbench_search ({args.cases} training / {args.heldout} held-out hard {args.shape}^3 "
          f"cases per replicate, space {SPACE}, folds {FOLDS}; {results}):")
    print(table(records, args.plan, args.curve))
    print(verdict(records))
    print(fidelity_table())
    if args.figure:
        figure(records, args.plan, args.curve, Path(args.figure))
        print(f"figure: {args.figure}")
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
