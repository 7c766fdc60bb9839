"""The search report: one self-contained HTML page (inline CSS, no scripts, no network) plus PNG
figures next to it, built from what a search writes (trials.json or, while it runs, the trial
folders' progress, search.json, best/).

Sections: the results table (the objective, then the Dice of every region of the label scheme,
lesion-wise columns too when the objective is lesion-wise; a region outside the tumour mean, such as
BraTS 2024's RC, is a column and the text says it is not in the mean); learning curves (the
objective per epoch, ASHA's stops marked); the objective against trial order with the best-so-far
line; parallel coordinates of the parameters coloured by the objective; parameter importances
(Optuna's fANOVA evaluator over the finished trials, once there are IMPORTANCE_MIN_TRIALS); the
objective against training throughput with the Pareto front; the best configuration next to
NVIDIA's; the exported model's files and validation scores. "The objective" is the search's
(``search.objective``): the validation mean Dice, or mean lesion-wise Dice, of the scheme's tumour
regions.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.finish import load_context, race_summary
from search.memory_budget import load_pruned
from search.objective import DEFAULT, HEADERS, describe
from search.results import (
    TrialRow,
    best_row,
    finite,
    in_order,
    lesionwise_regions_of,
    pareto_front,
    ranked,
    regions_of,
)
from search.storage import ExperimentFolder
from unet3d.folders import ExportFolder
from unet3d.planning.budget import MemoryBudget
from unet3d.text import plural

FIGURES = ("learning_curves", "objective", "parallel", "importance", "pareto")


@dataclass
class Report:
    """The page, its figures, the trials that ran and the configurations pruned for memory."""

    html: Path
    figures: list[Path]
    trials: int
    pruned: int = 0


def _rows(experiment: Path) -> tuple[list[TrialRow], dict[str, Any], bool]:
    """(rows, summary, finished). A running search has no trials.json yet: rows then come from the
    trial folders' Ray progress (result.json lines), and the configurations pruned so far from
    pruned.json."""
    path = ExperimentFolder(experiment).trials
    if path.exists():
        d = json.loads(path.read_text())
        return [TrialRow.from_dict(t) for t in d["trials"]], d.get("summary", {}), True
    from search.results import row_from_history

    ctx, _ = load_context(experiment)
    rows = []
    for trial in sorted(experiment.glob("trial_*")):
        history = []
        params: dict[str, Any] = {}
        result = trial / "result.json"
        if result.exists():
            for line in result.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line being written
                params = rec.get("config", params)
                history.append({k: v for k, v in rec.items() if k != "config"})
        if history:
            rows.append(row_from_history(trial.name.split("_", 1)[1], params, history, ctx.max_epochs,
                                         objective=ctx.objective,
                                         regions=ctx.scheme.region_names,
                                         index=int(history[-1].get("trial_index", 0)),
                                         node=str(history[-1].get("node_ip", "")),
                                         node_id=str(history[-1].get("node_id", ""))))
    return rows + load_pruned(experiment)[0], {}, False


# fANOVA apportions the objective's variance with a random forest fitted to the finished trials;
# below this many (a search's start-up alone, a smoke test) its shares are the forest's noise, so
# the report says how many more it needs rather than drawing them. (Fewer than this also spares the
# report scikit-learn's import, 1.4 of its 3 CPU-s.)
IMPORTANCE_MIN_TRIALS = 5


def importances(rows: list[TrialRow], space: Any) -> dict[str, float]:
    """fANOVA parameter importances over the trials with a finite objective: empty with fewer than
    IMPORTANCE_MIN_TRIALS of them or when they all scored the same."""
    scored = [r for r in rows if finite(r.best_score)]
    if len(scored) < IMPORTANCE_MIN_TRIALS or len({r.best_score for r in scored}) < 2:
        return {}
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    from search.ray_factories import to_optuna

    dists = to_optuna(space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for r in scored:
        params = {k: v for k, v in r.params.items() if k in dists}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params},
                                                  value=r.best_score))
    try:
        return dict(get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0)))
    except (RuntimeError, ValueError):
        return {}


def _figures(rows: list[TrialRow], ctx: Any, out: Path, stem: str) -> dict[str, Path]:
    """Draws every figure of FIGURES into ``out/<stem>_<name>.png``; returns {name: path}.
    ``ctx``: the search's context (space, epochs, objective, label scheme)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    space = ctx.space
    # "validation mean Dice of WT, TC, ET", on lines short enough for a y axis
    what = "\n".join(textwrap.wrap(describe(ctx.objective, ctx.scheme.tumour), 36))
    ordered = sorted(rows, key=lambda r: r.index or 10**9)
    draw = {"learning_curves": lambda ax: _learning_curves(ax, ordered, ctx.max_epochs, ctx.metric,
                                                           what),
            "objective": lambda ax: _objective(ax, ordered, what),
            "parallel": lambda ax: _parallel(ax, ordered, space, what),
            "importance": lambda ax: _importance(ax, rows, space),
            "pareto": lambda ax: _pareto_figure(ax, rows, what,
                                                getattr(ctx, "second_objective", ""))}
    sizes = {"learning_curves": (8, 4.5), "objective": (8, 3.8), "parallel": (9, 4.5),
             "importance": (7, 3.5), "pareto": (7, 4.5)}
    paths: dict[str, Path] = {}
    for name in FIGURES:
        fig, ax = plt.subplots(figsize=sizes[name])
        draw[name](ax)
        p = out / f"{stem}_{name}.png"
        fig.tight_layout()
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths[name] = p
    return paths


def _learning_curves(ax: Any, ordered: list[TrialRow], max_epochs: int, metric: str,
                     what: str) -> None:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    for i, r in enumerate(ordered):
        pts = [(h["epoch"], h[metric]) for h in r.history if finite(h.get(metric))]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        style = "--" if r.status == "error" else "-"
        ax.plot(xs, ys, style, color=cmap(i % 10), lw=1.5, label=f"{r.index}: {r.trial_id}")
        marker = {"stopped": "x", "completed": "o", "error": "s", "interrupted": "v"}.get(r.status, ".")
        ax.plot(xs[-1], ys[-1], marker, color=cmap(i % 10), ms=8, mew=2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(what)
    ax.set_xlim(0.5, max_epochs + 0.5)
    ax.set_title("Learning curves (x = stopped by ASHA, o = completed, s = failed, v = interrupted)")
    ax.grid(alpha=0.3)
    if len(ordered) <= 12:
        ax.legend(fontsize=7, ncol=2)


def _objective(ax: Any, ordered: list[TrialRow], what: str) -> None:
    scored = [r for r in ordered if finite(r.best_score)]
    xs = [r.index for r in scored]
    ys = [r.best_score for r in scored]
    ax.scatter(xs, ys, c=["C1" if r.status == "stopped" else "C0" for r in scored])
    best, run = [], -math.inf
    for y in ys:
        run = max(run, y)
        best.append(run)
    ax.step(xs, best, where="post", color="C2", label="best so far")
    ax.set_xlabel("trial (order proposed)")
    ax.set_ylabel(f"best {what}")
    ax.set_title("Objective by trial (orange = stopped early)")
    ax.grid(alpha=0.3)
    ax.legend()


def _parallel(ax: Any, ordered: list[TrialRow], space: Any, what: str) -> None:
    import matplotlib
    import matplotlib.pyplot as plt

    names = [p.name for p in space.params]
    scored = [r for r in ordered if finite(r.best_score)]
    if scored and names:
        lo, hi = min(r.best_score for r in scored), max(r.best_score for r in scored)
        norm = matplotlib.colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
        for r in scored:
            ys = [_position(p, r.params.get(p.name)) for p in space.params]
            ax.plot(range(len(names)), ys, color=plt.get_cmap("viridis")(norm(r.best_score)), lw=1.5)
        ax.figure.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax,
                           label=f"best {what}")
    ax.set_xticks(range(len(names)), [n.split(".", 1)[-1] for n in names], rotation=20, fontsize=8)
    ax.set_yticks([0, 1], ["low / first", "high / last"])
    ax.set_title("Parameters of every trial (lines), coloured by the objective")


def _importance(ax: Any, rows: list[TrialRow], space: Any) -> None:
    imp = importances(rows, space)
    if imp:
        items = sorted(imp.items(), key=lambda kv: kv[1])
        ax.barh([k.split(".", 1)[-1] for k, _ in items], [v for _, v in items], color="C0")
        ax.set_xlabel("importance (fANOVA, sums to 1)")
    else:
        scored = sum(finite(r.best_score) for r in rows)
        ax.text(0.5, 0.5, f"needs at least {IMPORTANCE_MIN_TRIALS} finished trials with different "
                          f"scores ({scored} so far)", ha="center")
        ax.set_axis_off()
    ax.set_title("Parameter importance for the objective")


def _pareto_figure(ax: Any, rows: list[TrialRow], what: str, second: str = "") -> None:
    """The objective against the second objective of a two-objective search (its front as
    ``finish`` marked it), else against training throughput."""
    from search.objective import SECOND_WORDS, second_metric

    if second:
        sign = -1.0 if second_metric(second)[1] == "min" else 1.0
        pts = [(r.second, r.best_score, r) for r in rows
               if not r.pruned and finite(r.second) and finite(r.best_score)]
        front = sorted((i for i, p in enumerate(pts) if p[2].pareto), key=lambda i: pts[i][0])
        xlabel = SECOND_WORDS[second] + (" (lower is better)" if sign < 0 else "")
    else:
        pts = [(r.throughput_vps, r.best_score, r) for r in rows
               if finite(r.throughput_vps) and finite(r.best_score)]
        front = sorted(pareto_front([(p[0], p[1]) for p in pts]), key=lambda i: pts[i][0])
        xlabel = "training throughput (volumes/s)"
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="C0", label="trial")
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-o", color="C3",
                label="Pareto front")
        for i in front:
            ax.annotate(pts[i][2].trial_id[:8], (pts[i][0], pts[i][1]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"best {what}")
    ax.set_title("Accuracy against " + (SECOND_WORDS[second] if second else "speed"))
    ax.grid(alpha=0.3)
    if pts:  # (a legend of nothing warns: every trial failed, or every configuration was pruned)
        ax.legend()


def _position(param: Any, value: Any) -> float:
    """A parameter value on [0, 1] for the parallel-coordinates plot."""
    return float("nan") if value is None else param.unit(value)


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.{digits}g}" if abs(v) < 1e-2 else f"{v:.{digits}f}"
    return _e(v)


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f2f2f2}td.l,th.l{text-align:left}tr.best td{background:#e8f5e9}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}code{background:#f4f4f4;padding:1px 4px}
.muted{color:#777}"""


def build_report(experiment: str | Path, out: str | Path | None = None) -> Report:
    """Writes the report of ``experiment`` to ``out`` (default ``<experiment>/report.html``) and its
    PNGs next to it, each under a temporary name first."""
    experiment = Path(experiment)
    ctx, extra = load_context(experiment)
    rows, summary, finished = _rows(experiment)
    out = Path(out) if out else ExperimentFolder(experiment).report
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    try:
        figs = _figures(rows, ctx, tmp, out.stem)
        # The exported trial (the race's continued winner); while none is exportable yet, the best
        # scored one.
        race = race_summary(experiment)
        final = next((r for r in rows if race and r.trial_id == race["final_trial"]), None)
        best = final or best_row(rows) or next((r for r in ranked(rows) if finite(r.best_score)),
                                               None)
        parts = [*_header(experiment, ctx, extra, rows, summary, finished),
                 *_results_table(rows, ctx, best), *_race_section(race)]
        for key in FIGURES:
            parts.append(f"<h2 id='{key}'>{TITLES[key]}</h2><img src='{figs[key].name}' "
                         f"alt='{TITLES[key]}'>")
        parts += [*_best_section(best, ctx.space), *_export_section(ExperimentFolder(experiment).best, ctx),
                  "</body></html>\n"]
        (tmp / out.name).write_text("\n".join(parts))
        placed = []
        for p in figs.values():
            (tmp / p.name).replace(out.parent / p.name)
            placed.append(out.parent / p.name)
        (tmp / out.name).replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pruned = sum(r.pruned for r in rows)
    return Report(html=out, figures=placed, trials=len(rows) - pruned, pruned=pruned)


def _race_section(race: dict[str, Any] | None) -> list[str]:
    """What the race did with the budget (``search.race``): its spending and its events."""
    if race is None:
        return []
    st = race["settings"]
    parts = ["<h2 id='race'>The race</h2>",
             f"<p id='race-budget'>{race['trial_epochs']} of {st['budget']:g} trial-epochs: "
             f"{race['race_trial_epochs']} racing ({plural(st['race_epochs'], 'epoch')} "
             f"per trial, compared "
             f"with the incumbent case by case: ahead by more than {st['margin']:g} at p &lt; "
             f"{st['alpha']:g} to replace it), {race['lost_trial_epochs']} of them lost (at most "
             f"{st['race_share']:.0%} of the budget), {race['continuation_trial_epochs']} "
             f"continuing the winner.</p>", "<ol id='race-events'>"]
    parts += [f"<li>{_e(line)}</li>" for line in race["events"]]
    parts.append("</ol>")
    return parts


TITLES = {"learning_curves": "Learning curves", "objective": "Objective by trial",
          "parallel": "Parameters against the objective", "importance": "Parameter importance",
          "pareto": "Objective against throughput (Pareto front)"}


def _header(experiment: Path, ctx: Any, extra: dict[str, Any], rows: list[TrialRow],
            summary: dict[str, Any], finished: bool) -> list[str]:
    state = "finished" if finished else "running: partial results"
    if summary.get("trials_interrupted"):
        state = f"interrupted: {summary['trials_interrupted']} trial(s) cut off"
    ran = sum(not r.pruned for r in rows)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Search report: "
             f"{_e(experiment.name)}</title><link rel='icon' href='data:,'><style>{CSS}</style>"
             "</head><body>",
             f"<h1>Search report: {_e(experiment.name)}</h1>",
             f"<p>{ran} trials ({state}); engine {_e(extra.get('engine', '?'))}; space "
             f"<code>{_e(ctx.space.name)}</code>; {len(ctx.train_ids)} training / {len(ctx.val_ids)} "
             f"validation cases; up to {ctx.max_epochs} epochs per trial.</p>",
             f"<p id='objective-line'>Objective (ranks, stops and exports trials): the "
             f"{_e(describe(ctx.objective, ctx.scheme.tumour))} (<code>{_e(ctx.metric)}</code>); "
             f"label scheme <code>{_e(ctx.scheme.name)}</code>.{_outside_note(ctx, rows)}</p>",
             *_memory_line(summary.get("memory_budget") or extra.get("memory_budget"), rows)]
    if summary:
        parts.append(f"<p>{summary.get('trials_stopped_early', 0)} stopped early by ASHA; "
                     f"{summary.get('trial_epochs_run', 0)} trial-epochs run of "
                     f"{summary.get('trial_epochs_without_early_stopping', 0)} without early "
                     f"stopping.</p>")
    return parts


def _memory_line(budget: dict[str, Any] | None, rows: list[TrialRow]) -> list[str]:
    """The memory budget and the configurations it refused (none for a search before budgets)."""
    if not budget:
        return []
    b = MemoryBudget.from_dict(budget)
    pruned = sum(r.pruned for r in rows)
    text = (f"{b.gib:.1f} GiB per trial ({_e(b.source)}), predicted for the {_e(b.device.upper())}"
            if b.gib is not None else f"none ({_e(b.source)})")
    refused = (f" {pruned} configuration(s) predicted over it were pruned: never started (their "
               f"reasons are in the table)." if pruned else " No configuration was over it.")
    return [f"<p id='memory'>Memory budget: {text}.{refused if b.gib is not None else ''}</p>"]


def _regions(ctx: Any, rows: list[TrialRow]) -> list[str]:
    """The region columns: those the trials reported, else the scheme's (in its order)."""
    return regions_of(rows, ctx.scheme.region_names) or list(ctx.scheme.regions)


def _outside_note(ctx: Any, rows: list[TrialRow] | None = None,
                  regions: list[str] | None = None) -> str:
    """' RC is shown but not in the mean.' for the regions outside the scheme's tumour mean."""
    shown = regions if regions is not None else _regions(ctx, rows or [])
    outside = [r for r in shown if r not in ctx.scheme.tumour]
    if not outside:
        return ""
    verb = "is" if len(outside) == 1 else "are"
    return f" {_e(', '.join(outside))} {verb} shown but not in the mean."


def _results_table(rows: list[TrialRow], ctx: Any, best: TrialRow | None) -> list[str]:
    """Trials best first: the objective's column, the mean Dice (when the objective is another),
    the Dice of each region, the lesion-wise Dice of each region (lesion-wise objective), then
    throughput, time, node and the parameters; a note says what the columns mean."""
    names = [p.name for p in ctx.space.params]
    regions = _regions(ctx, rows)
    lw_regions = lesionwise_regions_of(rows, ctx.scheme.region_names)
    lesionwise = ctx.objective != DEFAULT
    if lesionwise and not lw_regions:
        lw_regions = list(regions)
    cols: list[tuple[str, Any]] = [(HEADERS[ctx.objective], lambda r: r.best_score)]
    if lesionwise:
        cols.append(("Dice", lambda r: r.best_dice_mean))
    cols += [(g, lambda r, g=g: r.best_regions.get(g, math.nan)) for g in regions]
    if lesionwise:
        cols += [(f"LW {g}", lambda r, g=g: r.best_lesionwise_regions.get(g, math.nan))
                 for g in lw_regions]
    second = getattr(ctx, "second_objective", "")
    if second:
        from search.objective import SECOND_WORDS

        cols += [(SECOND_WORDS[second], lambda r: r.second),
                 ("Pareto", lambda r: r.pareto or "")]
    parts = ["<h2 id='results'>Results</h2><table id='results-table'><tr><th>#</th>"
             "<th class='l'>trial</th><th class='l'>status</th><th>epochs</th>"
             + "".join(f"<th>{_e(c)}</th>" for c, _ in cols)
             + "<th>vol/s</th><th>wall s</th><th>GiB predicted</th><th>GiB measured</th>"
             "<th class='l'>node</th><th class='l'>proposed by</th>"
             + "".join(f"<th>{_e(n.split('.', 1)[-1])}</th>" for n in names) + "</tr>"]
    for r in ranked(rows):
        cls = " class='best'" if best is not None and r.trial_id == best.trial_id else ""
        node = r.node + (f" ({r.node_id[:8]})" if r.node_id else "")
        status = r.status + (f": {r.error}" if r.error else "") + (f": {r.reason}" if r.reason else "")
        parts.append(f"<tr{cls}><td>{r.index or '-'}</td><td class='l'>{_e(r.trial_id)}</td>"
                     f"<td class='l'>{_e(status)}</td><td>{r.epochs}</td>"
                     + "".join(f"<td>{_fmt(get(r))}</td>" for _, get in cols)
                     + f"<td>{_fmt(r.throughput_vps, 3)}</td><td>{_fmt(r.wall_s, 3)}</td>"
                     f"<td>{_fmt(r.memory_gib, 2)}</td><td>{_fmt(r.measured_gib, 2)}</td>"
                     f"<td class='l'>{_e(node)}</td><td class='l'>{_e(r.proposed_by)}</td>"
                     + "".join(f"<td>{_fmt(r.params.get(n, ''))}</td>" for n in names) + "</tr>")
    parts.append("</table>")
    tumour = ", ".join(ctx.scheme.tumour)
    note = (f"{_e(cols[0][0])}: the {_e(describe(ctx.objective, ctx.scheme.tumour))} at the "
            f"trial's best epoch, which ranks the trials")
    if lesionwise:
        note += (f"; Dice: the mean whole-image Dice of {_e(tumour)}; LW: lesion-wise Dice of "
                 f"the region")
    parts.append(f"<p class='muted' id='results-note'>{note}; {_e(', '.join(regions))}: the "
                 f"region's Dice at that epoch.{_outside_note(ctx, regions=regions)} GiB: the "
                 f"configuration's predicted peak memory (when the search had a budget); "
                 f"proposed by: NVIDIA's point, the sampler's random start-up, or its model"
                 + (f"; Pareto: the trial's place on the front of the objective and "
                    f"{_e(SECOND_WORDS[second])} (1 = best objective), exported to pareto/"
                    if second else "") + ".</p>")
    return parts


def _best_section(best: TrialRow | None, space: Any) -> list[str]:
    from spaces.presets import nvidia_point

    parts = ["<h2 id='best'>Best configuration and NVIDIA's</h2>"]
    if best is None:
        return [*parts, "<p class='muted'>No trial has a score yet.</p>"]
    ref = nvidia_point(space)
    parts.append("<table id='best-table'><tr><th class='l'>parameter</th><th>best trial "
                 f"{_e(best.trial_id)}</th><th>NVIDIA (projected into the space)</th></tr>")
    for p in space.params:
        parts.append(f"<tr><td class='l'>{_e(p.name)}</td><td>{_fmt(best.params.get(p.name, ''))}</td>"
                     f"<td>{_fmt(ref.get(p.name, ''))}</td></tr>")
    parts.append("</table>")
    return parts


def _export_section(exported: ExportFolder, ctx: Any) -> list[str]:
    parts = ["<h2 id='export'>Exported model</h2>"]
    if not exported.model.exists():
        return [*parts, "<p class='muted'>Not exported yet (the search is running or no trial "
                        "finished an epoch).</p>"]
    final = json.loads(exported.metrics.read_text()).get("final", {})
    parts.append("<ul>" + "".join(f"<li><code>{_e((exported.path / f).resolve())}</code></li>"
                                  for f in exported.FILES if (exported.path / f).exists()) + "</ul>")
    if final:
        parts.append(f"<p id='export-validation'>{_validation_line(final, ctx)}</p>")
    return parts


def _validation_line(final: dict[str, Any], ctx: Any) -> str:
    """'Validation of the exported weights: Dice WT 0.9000, TC 0.8000, ET 0.7000, RC 0.5000, mean
    0.8000; HD95 mean 4.20 mm. The means are over WT, TC, ET; RC is shown but not in the mean.'
    The regions are the keys present (``dice_<R>``); a lesion-wise sentence when they were scored
    so (``lesionwise_dice_<R>``, ``lesionwise_dice_mean``)."""
    def scores(prefix: str, mean_key: str) -> tuple[list[str], str]:
        regions = in_order([k[len(prefix):] for k in final if k.startswith(prefix) and k != mean_key],
                           ctx.scheme.region_names)
        values = [f"{_e(g)} {_num(final[prefix + g])}" for g in regions]
        if mean_key in final:
            values.append(f"mean {_num(final[mean_key])}")
        return regions, ", ".join(values)

    regions, dice = scores("dice_", "dice_mean")
    text = f"Validation of the exported weights: Dice {dice}"
    if "hd95_mean" in final:
        text += f"; HD95 mean {_num(final['hd95_mean'], 2)} mm"
    text += "."
    lw_regions, lesionwise = scores("lesionwise_dice_", "lesionwise_dice_mean")
    if lesionwise:
        text += f" Lesion-wise Dice {lesionwise}."
    shown = list(dict.fromkeys(regions + lw_regions))
    inside = [g for g in ctx.scheme.tumour if g in shown] or list(ctx.scheme.tumour)
    return (f"{text} The means are over {_e(', '.join(inside))};"
            f"{_outside_note(ctx, regions=shown) or ' every region is in them.'}")


def _num(v: Any, digits: int = 4) -> str:
    return f"{float(v):.{digits}f}" if finite(v) else "-"
