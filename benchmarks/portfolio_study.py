#!/usr/bin/env python
"""Learns, offline, what the search's race (search.race) starts from: a portfolio of configurations
of the ``demo`` space to race first, and the cheap fidelity to race them at.

Data: synthetic datasets of several difficulties from seeds the search benchmark never uses
(bench_search.py draws its training and held-out data from seeds 1000+ and 2000+; these are 3101+),
``--cases`` cases of ``--shape``^3 each, split as a search splits them (``--folds``, fold 0).
Configurations: NVIDIA's point projected into the space (the race's incumbent) and ``--configs`` - 1
drawn at random (seeded). Each configuration trains on each dataset for ``--epochs`` epochs of the
space's steps under the schedule the race uses (warmup-stable-decay, the last ``COOLDOWN`` of the
epochs cooling down), validated every half epoch (the same steps, as twice the epochs of half the
steps: the crop stream and the rates per step are identical), every validation case's score kept;
a proxy of each (half the base filters) trains its first ``PROXY_EPOCHS`` epochs.

From those runs:
- the "full-budget result" of a configuration on a dataset is its validation score after the
  cool-down; a fidelity (its score after e epochs at the constant rate, the same on half the
  validation cases, the proxy's after e epochs) is judged by its rank agreement with it: Kendall's
  tau over the configurations, per dataset, then averaged; its cost is the seconds it takes;
- the race is replayed on the runs (its own rule, ``search.race``, on the per-case scores they
  recorded): for each race length of ``RACE_EPOCHS``, the portfolio is built greedily, each step
  adding the configuration that most raises the replayed race's mean gain over NVIDIA's point
  (the winner's full-budget score minus the default's), by more than ``MIN_GAIN``, up to
  ``--portfolio`` of them and at least ``MIN_PORTFOLIO``; a configuration that wins only at the
  end (a slow starter) never wins a race. Each length is judged on a leave-one-dataset-out replay
  (portfolio learned on the other datasets, then the remaining configurations as stand-ins for
  neighbours); the length with the best held-out gain is the race's (fewer epochs on a tie), with
  its portfolio.

Every run is appended to ``WORK/runs.jsonl`` as it finishes, and a rerun skips the runs already
there, so the study can be completed across several sittings. The result goes to ``--out``
(default ``spaces/portfolios/demo.json``, which the search ships and loads), with this command line.
The runs behind the shipped file are ``benchmarks/results/portfolio_study_runs.jsonl.gz``:
``gunzip -c`` it to ``WORK/runs.jsonl`` and the study's analysis reruns without training.

  python benchmarks/portfolio_study.py [--work /tmp/portfolio_study] [--jobs 2]
  python benchmarks/portfolio_study.py --smoke    # plumbing check in a minute, writes nothing shipped
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from search.race import RaceSettings  # noqa: E402

SPACE = "demo"
MARGIN, ALPHA = RaceSettings.margin, RaceSettings.alpha  # the race's own rule
DATASETS = [("easy", 3101), ("medium", 3102), ("hard", 3103), ("hard", 3104)]
COOLDOWN = 0.2  # of the epochs
PROXY_EPOCHS = 4
FIDELITY_EPOCHS = (0.5, 1, 1.5, 2, 3, 4, 6)
MIN_GAIN = 0.002
MIN_PORTFOLIO = 2
RACE_EPOCHS = (1, 2, 3, 4)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def dataset_dir(work: Path, difficulty: str, seed: int, cases: int, shape: int) -> Path:
    return work / "data" / f"{difficulty}_{shape}_s{seed}_n{cases}"


def prepare_data(work: Path, cases: int, shape: int, datasets: list[tuple[str, int]]) -> None:
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare_dataset
    from unet3d.data.synthetic import write_synthetic_dataset

    for difficulty, seed in datasets:
        d = dataset_dir(work, difficulty, seed, cases, shape)
        write_synthetic_dataset(d, cases, (shape,) * 3, seed=seed, difficulty=difficulty)
        prepare_dataset(discover(d), work / "cache" / d.name, jobs=1)


def candidates(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """NVIDIA's point, then ``n - 1`` random configurations of the space (seeded)."""
    import numpy as np

    from spaces.presets import get_space, nvidia_point

    space = get_space(SPACE)
    rng = np.random.default_rng(seed)
    out = [nvidia_point(space)]
    while len(out) < n:
        out.append(space.sample(rng))
    return out


def run_one(task: dict[str, Any]) -> dict[str, Any]:
    """Trains one configuration on one dataset (in a worker process); returns its record."""
    from unet3d.runtime import limit_cpu_threads

    limit_cpu_threads(task["threads"])
    import keras

    from spaces.presets import get_space
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import open_cases, prepare_dataset
    from unet3d.data.split import kfold
    from unet3d.training.train import Trainer

    data, cache = Path(task["data"]), Path(task["cache"])
    prep = prepare_dataset(discover(data), cache, jobs=1)  # (reused)
    ids = sorted(e.case_id for e in prep.entries if e.meta["labelled"])
    train_ids, val_ids = kfold(ids, task["folds"], 0, 0)
    space = get_space(SPACE)
    cfg = space.to_run_config(task["params"]).with_labels(prep.scheme, prep.channels)
    spe = cfg.train.steps_per_epoch
    half = max(1, spe // 2)
    epochs = task["epochs"]
    if task["variant"] == "proxy":
        cfg = cfg.replace(model={"base_filters": max(2, cfg.model.base_filters // 2)})
        total, cooldown = 2 * epochs, 0
    else:
        total, cooldown = 2 * epochs, 2 * max(1, round(COOLDOWN * epochs))
    cfg = cfg.replace(train={"steps_per_epoch": half, "epochs": total, "schedule": "wsd",
                             "cooldown_epochs": cooldown, "val_every": 1,
                             "warmup_epochs": 2 * cfg.train.warmup_epochs, "seed": task["seed"]},
                      data={"folds": task["folds"], "fold": 0, "split_seed": 0})
    keras.backend.clear_session()
    out = Path(task["out"])
    t0 = time.perf_counter()
    metrics = Trainer(cfg, open_cases(cache, tuple(train_ids)), open_cases(cache, tuple(val_ids)),
                      out, resume=(out / "checkpoint.npz").exists()).fit()
    hist = [{"epoch": h["epoch"] / 2, "score": h["val_dice_mean"], "per_case": h["val_per_case"],
             "train_s": h["epoch_seconds"], "val_s": h.get("val_seconds", 0.0)}
            for h in metrics["history"]]
    return {**{k: task[k] for k in ("key", "dataset", "config", "variant", "params")},
            "epochs": epochs, "steps_per_half_epoch": half, "history": hist,
            "final": hist[-1]["score"], "wall_s": time.perf_counter() - t0}


def load_runs(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[r["key"]] = r
    return out


# ---------------------------------------------------------------------------------------- analysis


def _at(run: dict[str, Any], epoch: float, half_cases: bool = False) -> float | None:
    h = next((h for h in run["history"] if abs(h["epoch"] - epoch) < 1e-9), None)
    if h is None:
        return None
    if half_cases:
        cases = h["per_case"][: max(1, len(h["per_case"]) // 2)]
        return statistics.fmean(cases)
    return h["score"]


def _cost(run: dict[str, Any], epoch: float) -> float:
    return sum(h["train_s"] + h["val_s"] for h in run["history"] if h["epoch"] <= epoch + 1e-9)


def fidelities(runs: dict[str, dict[str, Any]], datasets: list[str],
               configs: int) -> list[dict[str, Any]]:
    """Kendall's tau of each cheap fidelity with the full-budget result, per dataset and mean."""
    from scipy.stats import kendalltau

    kinds = ([("epochs", e, False) for e in FIDELITY_EPOCHS]
             + [("epochs, half the validation cases", e, True) for e in FIDELITY_EPOCHS]
             + [("proxy (half the filters)", e, False) for e in (1, 2, PROXY_EPOCHS)])
    rows = []
    for name, e, half in kinds:
        variant = "proxy" if name.startswith("proxy") else "full"
        taus, costs = {}, []
        for d in datasets:
            xs, ys = [], []
            for c in range(configs):
                full, run = runs.get(f"{d}/{c}/full"), runs.get(f"{d}/{c}/{variant}")
                if full is None or run is None or _at(run, e, half) is None:
                    continue
                xs.append(_at(run, e, half))
                ys.append(full["final"])
                costs.append(_cost(run, e) if not half else _cost(run, e) - 0.5 * sum(
                    h["val_s"] for h in run["history"] if h["epoch"] <= e + 1e-9))
            if len(xs) >= 3:
                taus[d] = float(kendalltau(xs, ys).statistic)
        if taus:
            rows.append({"fidelity": name, "epochs": e, "tau": taus,
                         "mean_tau": statistics.fmean(taus.values()),
                         "mean_seconds": statistics.fmean(costs) if costs else float("nan")})
    return rows


def _curve(runs: dict[str, dict[str, Any]], d: str, c: int) -> dict[int, list[float]]:
    """Per-case scores of configuration ``c`` on dataset ``d`` after each whole epoch."""
    return {int(h["epoch"]): h["per_case"] for h in runs[f"{d}/{c}/full"]["history"]
            if float(h["epoch"]).is_integer()}


def replay(runs: dict[str, dict[str, Any]], d: str, order: list[int], race_epochs: int,
           margin: float = MARGIN, alpha: float = ALPHA) -> dict[str, Any]:
    """The race's rules (``search.race``) replayed on dataset ``d``'s runs: NVIDIA's point
    (configuration 0) is the first incumbent, the configurations of ``order`` race it in turn on
    the per-case scores the runs recorded (behind by more than one standard error before the last
    race epoch: lost; at it, ahead by ``margin`` at ``alpha``: the new incumbent). Returns the
    winner, its full-budget score's gain over the default's, and the epochs the losers trained."""
    from search.race import compare

    inc, lost = 0, 0
    for c in order:
        ch, ic = _curve(runs, d, c), _curve(runs, d, inc)
        for e in range(1, race_epochs + 1):
            cmp = compare(ch[e], ic[e], e)
            if e < race_epochs and cmp.behind():
                lost += e
                break
            if e == race_epochs:
                if cmp.better(margin, alpha):
                    lost += race_epochs  # (the dethroned incumbent's epochs)
                    inc = c
                else:
                    lost += race_epochs
    final = runs[f"{d}/{inc}/full"]["final"] - runs[f"{d}/0/full"]["final"]
    return {"dataset": d, "winner": inc, "gain": final, "lost": lost}


def portfolio(runs: dict[str, dict[str, Any]], datasets: list[str], configs: int, size: int,
              race_epochs: int) -> tuple[list[int], list[dict[str, Any]]]:
    """Greedy portfolio for a race of ``race_epochs``: each step appends the configuration that
    most raises the mean over ``datasets`` of the replayed race's gain (:func:`replay`: what the
    race would have made of the portfolio so far, then it), by more than MIN_GAIN. So a
    configuration enters only if the race can tell it is better early and it is better at the end
    (a slow starter that wins at the end never wins a race)."""
    complete = [c for c in range(1, configs)
                if all(f"{d}/{c}/full" in runs for d in datasets)]

    def value(order: list[int]) -> float:
        return statistics.fmean(replay(runs, d, order, race_epochs)["gain"] for d in datasets)

    def mean_final(c: int) -> float:
        return statistics.fmean(runs[f"{d}/{c}/full"]["final"] for d in datasets)

    chosen: list[int] = []
    steps = [{"config": 0, "value": 0.0}]
    while len(chosen) < size:
        # (ties: the better full-budget mean; below MIN_PORTFOLIO, a step that adds nothing on
        # these datasets still gives the race a second configuration to try)
        options = [(value(chosen + [c]), mean_final(c), c) for c in complete if c not in chosen]
        if not options:
            break
        v, _, c = max(options)
        if v - steps[-1]["value"] <= MIN_GAIN and len(chosen) >= MIN_PORTFOLIO:
            break
        chosen.append(c)
        steps.append({"config": c, "value": v})
    return chosen, steps


def choose_race(runs: dict[str, dict[str, Any]], datasets: list[str], configs: int,
                size: int) -> dict[str, Any]:
    """The race epochs and portfolio: for each epoch count, the greedy portfolio and its
    leave-one-dataset-out replay (the portfolio learned on the other datasets, raced on the
    held-out one, then the remaining configurations as stand-ins for neighbours, in a seeded
    order); the epochs with the best held-out gain win (fewer epochs on a tie within MIN_GAIN)."""
    import random

    table = []
    for r in RACE_EPOCHS:
        picks, steps = portfolio(runs, datasets, configs, size, r)
        held = []
        for d in datasets:
            others = [x for x in datasets if x != d]
            own, _ = portfolio(runs, others, configs, size, r)
            rest = [c for c in range(1, configs) if c not in own]
            random.Random(0).shuffle(rest)
            held.append(replay(runs, d, own + rest, r))
        table.append({"epochs": r, "portfolio": picks, "greedy": steps,
                      "held_out": held,
                      "held_out_gain": statistics.fmean(x["gain"] for x in held),
                      "held_out_worst": min(x["gain"] for x in held),
                      "held_out_lost": statistics.fmean(x["lost"] for x in held)})
    best = max(t["held_out_gain"] for t in table)
    pick = min((t for t in table if t["held_out_gain"] >= best - MIN_GAIN),
               key=lambda t: t["epochs"])
    return {"epochs": pick["epochs"], "portfolio": pick["portfolio"], "table": table,
            "rule": f"the race epochs whose leave-one-dataset-out replay gains most (the fewest "
                    f"within {MIN_GAIN} of the best), with the greedy portfolio for them"}


def report(runs: dict[str, dict[str, Any]], args: argparse.Namespace, cands: list[dict[str, Any]],
           datasets: list[str]) -> dict[str, Any]:
    rows = fidelities(runs, datasets, len(cands))
    print(f"\nfull-budget validation Dice ({args.epochs} epochs, cool-down {COOLDOWN:.0%}) per "
          f"configuration and dataset:")
    print(f"{'config':>6} " + " ".join(f"{d:>16}" for d in datasets) + "    mean  params")
    for c, params in enumerate(cands):
        vals = [runs.get(f"{d}/{c}/full", {}).get("final") for d in datasets]
        mean = statistics.fmean(v for v in vals if v is not None) if any(vals) else float("nan")
        short = {k.split(".", 1)[1]: (f"{v:.2g}" if isinstance(v, float) else v)
                 for k, v in params.items()}
        print(f"{c:>6} " + " ".join(f"{v:>16.4f}" if v is not None else f"{'-':>16}" for v in vals)
              + f"  {mean:.4f}  {short}")
    print("\nrank agreement with the full-budget result (Kendall tau over configurations):")
    print(f"{'fidelity':<36} {'epochs':>6} {'mean tau':>8} {'seconds':>8}  per dataset")
    for r in rows:
        per = " ".join(f"{d.split('_')[0]}:{t:+.2f}" for d, t in r["tau"].items())
        print(f"{r['fidelity']:<36} {r['epochs']:>6g} {r['mean_tau']:>8.3f} "
              f"{r['mean_seconds']:>8.1f}  {per}")
    race = choose_race(runs, datasets, len(cands), args.portfolio)
    print(f"\nthe race replayed on these runs (search.race's rules: behind by one standard error "
          f"before its last epoch, or not ahead by {MARGIN} at p < {ALPHA} at it, a challenger "
          f"loses); per race length, the greedy portfolio and its leave-one-dataset-out replay:")
    print(f"{'epochs':>6} {'portfolio':<14} {'held-out gain':>13} {'worst':>8} {'lost':>6}  "
          f"winners per dataset")
    for t in race["table"]:
        print(f"{t['epochs']:>6} {str(t['portfolio']):<14} {t['held_out_gain']:>+13.4f} "
              f"{t['held_out_worst']:>+8.4f} {t['held_out_lost']:>6.1f}  "
              f"{[x['winner'] for x in t['held_out']]}")
    print(f"race epochs: {race['epochs']}, portfolio (race order): {race['portfolio']} "
          f"({race['rule']})")
    return {"space": SPACE, "configs": [cands[c] for c in race["portfolio"]],
            "race": {"epochs": race["epochs"], "rule": race["rule"],
                     "margin": MARGIN, "alpha": ALPHA},
            "race_replays": race["table"], "fidelities": rows,
            "full_budget": {f"{d}/{c}": runs[f"{d}/{c}/full"]["final"]
                            for d in datasets for c in range(len(cands)) if f"{d}/{c}/full" in runs},
            "candidates": cands, "datasets": datasets}


# ---------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/portfolio_study", help="data, runs and results.jsonl")
    p.add_argument("--datasets", type=int, default=len(DATASETS),
                   help=f"how many of {DATASETS} (difficulty, seed)")
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--shape", type=int, default=48)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--configs", type=int, default=12, help="NVIDIA's point + this many - 1 random")
    p.add_argument("--epochs", type=int, default=24, help="the full budget per configuration")
    p.add_argument("--portfolio", type=int, default=3, help="configurations to pick at most")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one CPU thread each)")
    p.add_argument("--seed", type=int, default=0, help="training seed of every run")
    p.add_argument("--out", default=str(ROOT / "spaces" / "portfolios" / f"{SPACE}.json"))
    p.add_argument("--smoke", action="store_true",
                   help="2 datasets of 8 cases of 32^3, 3 configurations, 2 epochs; writes under "
                        "--work only")
    args = p.parse_args(argv)
    if args.smoke:
        args.datasets, args.cases, args.shape, args.configs, args.epochs = 2, 8, 32, 3, 2
        args.work = str(Path(args.work) / "smoke")
        args.out = str(Path(args.work) / "portfolio.json")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    datasets = DATASETS[: args.datasets]
    names = [dataset_dir(work, d, s, args.cases, args.shape).name for d, s in datasets]
    log(f"preparing {len(datasets)} datasets under {work}")
    prepare_data(work, args.cases, args.shape, datasets)
    cands = candidates(args.configs)
    runs_file = work / "runs.jsonl"
    done = load_runs(runs_file)
    tasks = []
    for (difficulty, seed), name in zip(datasets, names, strict=True):
        data = dataset_dir(work, difficulty, seed, args.cases, args.shape)
        for c, params in enumerate(cands):
            for variant, epochs in (("full", args.epochs), ("proxy", min(PROXY_EPOCHS, args.epochs))):
                key = f"{name}/{c}/{variant}"
                if key in done:
                    continue
                tasks.append({"key": key, "dataset": name, "config": c, "variant": variant,
                              "params": params, "data": str(data), "cache": str(work / "cache" / name),
                              "out": str(work / "runs" / key.replace("/", "_")), "epochs": epochs,
                              "folds": args.folds, "seed": args.seed, "threads": 1 if args.jobs > 1 else 2})
    log(f"{len(done)} runs done before, {len(tasks)} to run, {args.jobs} at once")
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        futures = {pool.submit(run_one, t): t for t in tasks}
        for f in cf.as_completed(futures):
            rec = f.result()
            with runs_file.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            done[rec["key"]] = rec
            log(f"{rec['key']}: final {rec['final']:.4f} in {rec['wall_s']:.0f} s "
                f"({len(done)} runs done)")
    result = report(done, args, cands, names)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    result.update(produced_by="python benchmarks/portfolio_study.py "
                  + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
                  date=time.strftime("%Y-%m-%d"), commit=commit,
                  settings={k: getattr(args, k) for k in ("cases", "shape", "folds", "configs",
                                                           "epochs", "seed")})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
