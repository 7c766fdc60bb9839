"""Search results in one engine-neutral form: a row per trial, the best trial, ASHA's savings.

Rows are written to ``<experiment>/results.csv`` and ``trials.json`` (atomically) and printed as a
table by the CLI.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from search.objective import DEFAULT, HEADERS, SECOND, metric_of
from search.storage import ExperimentFolder
from unet3d.io_utils import atomic_write_json, atomic_write_text

_DICE, _LESIONWISE = "val_dice_", "val_lesionwise_dice_"  # + region name, or "mean" for _DICE
_LESIONWISE_MEAN = "val_lesionwise_dice_mean"
PRUNED = "pruned"  # the status of a configuration refused before it started (memory budget)


@dataclass
class TrialRow:
    """One trial.

    index: the order the searcher proposed the trial in (1 = first).
    status: "completed" (ran max epochs), "stopped" (ended early by the scheduler), "error" (failed
        after its retries; ``error`` says why, e.g. a diverged loss), "interrupted" (cut off by
        Ctrl-C; a resumed search continues it), "pruned" (never started: predicted over the memory
        budget, ``reason`` says by how much; no scores, never ranked above a trial that ran, never
        exported; ``search.memory_budget``).
    node / node_id: the address and Ray node ID of the node that ran the trial's last epoch.
    objective: what ranks the trial ("dice" | "lesionwise", ``search.objective``).
    best_*: the validation scores at the trial's best epoch (by the objective): ``best_score`` the
        objective's metric, ``best_dice_mean`` the mean Dice of the scheme's tumour regions,
        ``best_regions`` region -> Dice of every region of the scheme in its order (a region
        outside the mean, e.g. RC, too); ``best_lesionwise_*`` likewise, when the trial reported
        lesion-wise scores (NaN / empty otherwise).
    last_score: the objective at the last scored epoch.
    checkpoint: folder holding the best epoch's checkpoint.npz + config.json ("" if none).
    reason: why a pruned configuration was refused ("needs 31.2 GiB > 24.0 GiB"; "" otherwise).
    memory_gib: the configuration's predicted peak memory (GiB) when the search had a budget.
    proposed_by: where the configuration came from: "nvidia" (NVIDIA's point, enqueued first),
        "random" (the sampler's random start-up, or a random searcher), or the model-based sampler
        that proposed it ("tpe", "cmaes", "gp", "nsgaii"); "" when the engine does not say.
    second: a two-objective search's second objective at the best epoch (latency_s, params or
        throughput_vps; ``search.objective.SECOND``), NaN otherwise (:func:`mark_pareto`).
    pareto: the trial's place on the Pareto front of the two objectives, 1 = best first objective,
        0 = not on it (or a one-objective search).
    """

    trial_id: str
    params: dict[str, Any]
    status: str
    epochs: int
    best_epoch: int = 0
    objective: str = DEFAULT
    best_score: float = float("nan")
    best_dice_mean: float = float("nan")
    best_regions: dict[str, float] = field(default_factory=dict)
    best_lesionwise_mean: float = float("nan")
    best_lesionwise_regions: dict[str, float] = field(default_factory=dict)
    last_score: float = float("nan")
    throughput_vps: float = float("nan")
    wall_s: float = 0.0
    node: str = ""
    node_id: str = ""
    error: str = ""
    checkpoint: str = ""
    run_dir: str = ""
    index: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    memory_gib: float = float("nan")
    proposed_by: str = ""
    second: float = float("nan")
    pareto: int = 0

    @property
    def pruned(self) -> bool:
        return self.status == PRUNED

    @property
    def measured_gib(self) -> float:
        """The trial's measured peak memory (GiB; GPU: device, CPU: resident), from its epochs'
        ``memory_peak_gib`` (NaN when it reported none), to compare with ``memory_gib``."""
        peaks = [h["memory_peak_gib"] for h in self.history if finite(h.get("memory_peak_gib"))]
        return max(peaks) if peaks else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (``trials.json``); :meth:`from_dict` reads it back. ``regions`` keeps
        the regions' order: trials.json is written with sorted keys."""
        return {**asdict(self), "regions": list(self.best_regions)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialRow:
        """A row from :meth:`to_dict`, or from a trials.json written before label schemes (fixed
        ``best_dice_WT/TC/ET`` and ``last_dice_mean``, ranked by ``best_dice_mean``)."""
        d = dict(d)
        order = d.pop("regions", [])
        for key in ("best_regions", "best_lesionwise_regions"):
            if isinstance(d.get(key), dict):
                d[key] = {r: d[key][r] for r in in_order(d[key], order)}
        old = {r: d.pop(f"best_dice_{r}") for r in ("WT", "TC", "ET") if f"best_dice_{r}" in d}
        if "best_regions" not in d and old:
            d["best_regions"] = old
        if "last_dice_mean" in d:
            d.setdefault("last_score", d.pop("last_dice_mean"))
        if "best_score" not in d:  # an old row: its objective was the mean Dice
            d["best_score"] = d.get("best_dice_mean", math.nan)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def region_names(history: Sequence[dict[str, Any]], prefix: str = _DICE,
                 order: Sequence[str] = ()) -> list[str]:
    """The regions a trial reported (``val_dice_<R>`` keys, "mean" aside): those of ``order`` (the
    label scheme's regions) in that order, then any others in first-seen order (the trainer's
    order; Ray's result.json and trials.json sort their keys, so the scheme's order is the one to
    trust when it is known)."""
    names: dict[str, None] = {}
    for h in history:
        for k in h:
            if k.startswith(prefix) and k != prefix + "mean":
                names.setdefault(k[len(prefix):], None)
    return in_order(names, order)


def in_order(names: Any, order: Sequence[str]) -> list[str]:
    """``names`` with those in ``order`` (a label scheme's regions) first, in that order, then the
    rest as they come (JSON files written with sorted keys lose the scheme's order)."""
    return [r for r in order if r in names] + [r for r in names if r not in order]


def _nan(v: Any) -> float:
    return float(v) if finite(v) else math.nan


def latest_per_epoch(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``history`` with one record per epoch, the last one reported for it, in the order reported.

    A trial restored after an interruption resumes from its last checkpoint and reports again
    the epochs it had reported after it (Ray appends them to the same progress file): the
    earlier report belongs to weights no checkpoint holds, so it must neither be the trial's
    best epoch nor count twice. Records without an epoch are kept where they are.
    """
    last: dict[Any, int] = {}
    for i, h in enumerate(history):
        if "epoch" in h:
            last[h["epoch"]] = i
    return [h for i, h in enumerate(history) if "epoch" not in h or last[h["epoch"]] == i]


def row_from_history(trial_id: str, params: dict[str, Any], history: Sequence[dict[str, Any]],
                     max_epochs: int, *, objective: str = DEFAULT, error: str = "",
                     wall_s: float = 0.0, node: str = "", node_id: str = "", checkpoint: str = "",
                     run_dir: str = "", index: int = 0, interrupted: bool = False,
                     best_is_last: bool = False, regions: Sequence[str] = ()) -> TrialRow:
    """Builds a row from a trial's per-epoch records (the trainer's / Ray's reported metrics).

    The best epoch is the one with the highest ``objective`` metric (``best_is_last``: the last
    validated epoch, for an engine that keeps and scores a trial's last weights, as Keras Tuner
    does; a non-finite score there leaves the trial unscored). ``regions``: the label scheme's
    regions, the order of ``best_regions`` (see :func:`region_names`). An epoch reported twice
    (a restored trial re-runs the epochs after its last checkpoint) counts once, as its last
    report: see :func:`latest_per_epoch`.
    """
    metric = metric_of(objective)
    history = latest_per_epoch(history)
    scored = [h for h in history if finite(h.get(metric))]
    if best_is_last:
        best = next((h for h in reversed(history) if metric in h), {})
    else:
        best = max(scored, key=lambda h: h[metric]) if scored else {}
    epochs = int(max((h.get("epoch", 0) for h in history), default=0))
    if error:
        status = "error"
    elif epochs >= max_epochs:
        status = "completed"
    else:
        status = "interrupted" if interrupted else "stopped"
    tput = [h["throughput_vps"] for h in history[1:] or history if finite(h.get("throughput_vps"))]
    dice_names = region_names(history, order=regions) if best else []
    lesionwise_names = region_names(history, _LESIONWISE, regions) if best else []
    return TrialRow(
        trial_id=trial_id, params=dict(params), status=status, epochs=epochs,
        best_epoch=int(best.get("epoch", 0)), objective=objective,
        best_score=_nan(best.get(metric)),
        best_dice_mean=_nan(best.get(_DICE + "mean")),
        best_regions={r: _nan(best.get(_DICE + r)) for r in dice_names},
        best_lesionwise_mean=_nan(best.get(_LESIONWISE_MEAN)),
        best_lesionwise_regions={r: _nan(best.get(_LESIONWISE + r)) for r in lesionwise_names},
        last_score=float(scored[-1][metric]) if scored else math.nan,
        throughput_vps=float(sorted(tput)[len(tput) // 2]) if tput else math.nan,
        wall_s=wall_s, node=node, node_id=node_id, error=error, checkpoint=checkpoint, run_dir=run_dir,
        index=index, history=[dict(h) for h in history])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (higher is better in both),
    ordered by the first coordinate, best first. (Optuna's own non-dominated sort is private API;
    this is the textbook definition, on a few dozen trials.)"""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(x2 >= x and y2 >= y and (x2 > x or y2 > y)
                        for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: -points[i][0])


def mark_pareto(rows: Sequence[TrialRow], second: str) -> list[TrialRow]:
    """Sets each row's ``second`` (the second objective: its inference latency or parameters, or
    its median training throughput) and ``pareto`` (its place
    on the front of the first and second objectives: 1 = best first objective; 0 = off it), and
    returns the front's rows in that order. Only trials that ran with both values take part."""
    from search.objective import second_metric

    metric, mode = second_metric(second)
    for r in rows:
        if metric == "throughput_vps":
            # The row's median without epoch 1 (which includes compilation), as its table column:
            # a trial ASHA stops after one epoch would otherwise look several times slower.
            r.second = r.throughput_vps if finite(r.throughput_vps) else math.nan
        else:  # (latency and parameters are the same at every validated epoch)
            values = [h[metric] for h in r.history if finite(h.get(metric))]
            r.second = float(values[-1]) if values else math.nan
        r.pareto = 0
    sign = -1.0 if mode == "min" else 1.0
    scored = [r for r in rows if not r.pruned and finite(r.best_score) and finite(r.second)]
    front = [scored[i] for i in pareto_front([(r.best_score, sign * r.second) for r in scored])]
    for place, r in enumerate(front, 1):
        r.pareto = place
    return front


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def ranked(rows: Sequence[TrialRow], *, exportable: bool = False) -> list[TrialRow]:
    """Trials best first by their best epoch's objective, ``best_score`` (the one ranking of the
    project: the table, the report, best/ and top-k). Unscored trials come last, in their original
    order. ``exportable``: only trials with a score and a checkpoint (what can be exported)."""
    if exportable:
        rows = [r for r in rows if finite(r.best_score) and r.checkpoint and not r.pruned]
    # sorted() is stable, so ties keep the order the searcher proposed them in; configurations
    # refused for memory (never run) come after every trial that ran.
    return sorted(rows, key=lambda r: (r.pruned, -r.best_score if finite(r.best_score) else math.inf))


def best_row(rows: Sequence[TrialRow]) -> TrialRow | None:
    """The trial best/ exports: the highest best score among trials with a checkpoint."""
    top = ranked(rows, exportable=True)
    return top[0] if top else None


def regions_of(rows: Sequence[TrialRow], order: Sequence[str] = ()) -> list[str]:
    """Every region the rows have scores for: those of ``order`` (the label scheme's regions) in
    that order, then the rest in the order the trials reported them."""
    return in_order(dict.fromkeys(r for row in rows for r in row.best_regions), order)


def lesionwise_regions_of(rows: Sequence[TrialRow], order: Sequence[str] = ()) -> list[str]:
    """Every region the rows have lesion-wise scores for (empty unless trials reported them)."""
    return in_order(dict.fromkeys(r for row in rows for r in row.best_lesionwise_regions), order)


def objective_of(rows: Sequence[TrialRow]) -> str:
    """The objective the rows were ranked by (a search has one; "dice" for no rows)."""
    return rows[0].objective if rows else DEFAULT


def asha_savings(rows: Sequence[TrialRow], max_epochs: int) -> dict[str, int]:
    """Trial-epochs actually run vs. running every (non-failed) trial to max_epochs."""
    ended = [r for r in rows if r.status in ("completed", "stopped")]
    ran = sum(r.epochs for r in ended)
    full = max_epochs * len(ended)
    return {"trial_epochs_run": ran, "trial_epochs_without_early_stopping": full,
            "trial_epochs_saved": full - ran,
            "trials_stopped_early": sum(1 for r in rows if r.status == "stopped")}


def write_results(rows: Sequence[TrialRow], experiment: Path, summary: dict[str, Any]) -> None:
    """``results.csv`` (columns below, then one per parameter) and ``trials.json`` (the summary and
    every row whole, :meth:`TrialRow.to_dict`)."""
    param_names = sorted({k for r in rows for k in r.params})
    regions, lesionwise = regions_of(rows), lesionwise_regions_of(rows)
    has_lw = bool(lesionwise) or any(finite(r.best_lesionwise_mean) for r in rows)
    scores = (["best_score", "best_dice_mean"] + [f"best_dice_{g}" for g in regions]
              + (["best_lesionwise_mean"] if has_lw else [])
              + [f"best_lesionwise_dice_{g}" for g in lesionwise])
    # A two-objective search's second objective, named by its metric (latency_s, params, ...),
    # and each trial's place on the Pareto front (1 = best first objective, 0 = off it).
    second = summary.get("second_objective") or ""
    metric = SECOND[second][0] if second else ""
    second_cols = ([] if metric in ("", "throughput_vps") else [metric]) + (["pareto"] if second else [])
    cols = (["trial_id", "index", "status", "epochs", "best_epoch"] + scores
            + ["throughput_vps", "wall_s", "node", "node_id", "error", "memory_gib",
               "measured_gib", "reason", "proposed_by"] + second_cols)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols + param_names)
    for r in rows:
        d = asdict(r)
        d["measured_gib"] = r.measured_gib
        if metric:
            d[metric] = r.second
        d.update({f"best_dice_{g}": r.best_regions.get(g, math.nan) for g in regions})
        d.update({f"best_lesionwise_dice_{g}": r.best_lesionwise_regions.get(g, math.nan)
                  for g in lesionwise})
        w.writerow([d[c] for c in cols] + [r.params.get(p, "") for p in param_names])
    atomic_write_text(ExperimentFolder(experiment).results, buf.getvalue())
    atomic_write_json(ExperimentFolder(experiment).trials,
                      {"summary": summary, "trials": [r.to_dict() for r in rows]})


def _cell(value: float, width: int, spec: str) -> str:
    """A number right-aligned in its column; "-" where there is none (a failed trial, a race's
    winner continued on every labelled case, with no held-out case left to score)."""
    return f"{'-' if math.isnan(value) else format(value, spec):>{width}} "


def format_table(rows: Sequence[TrialRow], second: str = "") -> str:
    """A fixed-width table, best first: the objective (headed "Dice" or "LW Dice"; with the mean
    Dice beside it when the objective is lesion-wise), one Dice column per region of the label
    scheme (a region outside the mean, e.g. RC, too), throughput and the parameters (abbreviated to
    their field names); a node column when trials ran on several nodes; the reason of each failed
    trial below. A configuration pruned for memory comes last, its reason ("needs 31.2 GiB > 24.0
    GiB") where its scores would be, so the parameters that were refused stay in their columns.
    ``second``: a two-objective search's second objective, its column and the Pareto rank ("P",
    1 = best first objective; "-" off the front) after the scores."""
    param_names = sorted({k for r in rows for k in r.params})
    short = [p.split(".", 1)[1] if "." in p else p for p in param_names]
    multi_node = len({r.node_id for r in rows if r.node_id}) > 1
    objective = objective_of([r for r in rows if not r.pruned] or rows)
    scores: list[tuple[str, Any]] = [(HEADERS.get(objective, objective), lambda r: r.best_score)]
    if objective != DEFAULT:
        scores.append((HEADERS[DEFAULT], lambda r: r.best_dice_mean))
    scores += [(g, lambda r, g=g: r.best_regions.get(g, math.nan)) for g in regions_of(rows)]
    widths = [max(6, len(name)) for name, _ in scores]
    extra_w = max(8, len(second))
    head = (f"{'trial':<10} {'status':<9} {'ep':>3} "
            + "".join(f"{name:>{w}} " for (name, _), w in zip(scores, widths, strict=True))
            + f"{'vol/s':>6} " + (f"{second:>{extra_w}} {'P':>2} " if second else "")
            + (f"{'node':<8} " if multi_node else "")
            + " ".join(f"{s[:12]:>12}" for s in short))
    lines = [head, "-" * len(head)]
    span = sum(w + 1 for w in widths) + 7 + (extra_w + 4 if second else 0)  # scores to vol/s, P
    for r in ranked(rows):
        vals = []
        for p in param_names:
            v = r.params.get(p, "")
            vals.append(f"{v:>12.3g}" if isinstance(v, float) else f"{str(v)[:12]:>12}")
        node = f"{r.node_id[:8]:<8} " if multi_node else ""
        if r.pruned:  # the whole reason, even where it is wider than the columns it replaces
            measured = f"{r.reason:<{span - 1}} "
        else:
            measured = ("".join(_cell(get(r), w, ".3f") for (_, get), w in zip(scores, widths, strict=True))
                        + _cell(r.throughput_vps, 6, ".1f"))
            if second:
                measured += _cell(r.second, extra_w, ".4g") + f"{r.pareto or '-':>2} "
        lines.append(f"{r.trial_id[:10]:<10} {r.status:<9} {r.epochs:>3} {measured}{node}"
                     + " ".join(vals))
    for r in rows:
        if r.status == "error":
            lines.append(f"trial {r.trial_id} failed: {r.error}")
    return "\n".join(lines)
