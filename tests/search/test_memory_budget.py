"""The memory budget of a search (``--memory``, ``Search(memory=...)``): a configuration the memory
model predicts over it is never started; it is a "pruned" row with its reason in the results, the
table and the report, and costs no training and no --num-samples.

The memory model's constants are being calibrated, so no test knows its numbers: each computes the
estimates of the space's configurations and picks a budget between them.

Fast: the default budget's arithmetic, option errors, the searcher's and the oracle's rule, rows.
Slow: a search through the CLI (Ray Tune) and one through the Python API (Keras Tuner) with resume.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import error_line, run_cli

from search import Search, SearchError
from search.context import SearchContext
from search.memory_budget import MAX_REFUSALS, PRUNED_FILE, MemoryGuard, load_pruned
from search.results import TrialRow, asha_savings, best_row, format_table, ranked, row_from_history
from spaces.space import space_from_dict
from unet3d.planning.budget import MemoryBudget, Placement, resolve_budget
from unet3d.planning.memory import estimate

# One choice decides the memory: crop 16 trains in seconds, crop 128 (NVIDIA's, the first point
# every engine proposes) is far bigger and must never start under a budget between the two.
SPACE = """
name: tinymem
base: cpu-small
fixed:
  train: {steps_per_epoch: 2, val_every: 1, warmup_epochs: 0}
  data: {max_val_cases: 1}
  model: {depth: 2, base_filters: 4, norm: batch}
params:
  data.crop: {type: choice, values: [16, 128]}
  train.learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
"""
SMALL, BIG = {"data.crop": 16, "train.learning_rate": 1e-3}, {"data.crop": 128,
                                                               "train.learning_rate": 1e-3}


def _space():
    import yaml

    return space_from_dict(yaml.safe_load(SPACE), source="tinymem")


def _ctx(space) -> SearchContext:
    return SearchContext(space=space, data="", cache="/nonexistent", train_ids=(), val_ids=(),
                         max_epochs=1)


def _gib(ctx: SearchContext, sample: dict) -> float:
    return estimate(ctx.run_config(sample), device="cpu").gib


def _between(ctx: SearchContext) -> float:
    """A budget (GiB, 2 decimals) between the small and the big configurations' predictions."""
    small, big = _gib(ctx, SMALL), _gib(ctx, BIG)
    assert big > small + 0.2, (small, big)
    return round((small + big) / 2, 2)


def _same(a: list[TrialRow], b: list[TrialRow]) -> bool:
    """Rows equal as saved (their NaN scores are not equal to themselves)."""
    return [json.dumps(r.to_dict(), sort_keys=True) for r in a] == \
        [json.dumps(r.to_dict(), sort_keys=True) for r in b]


def _guard(ctx: SearchContext, gib: float, sink: Path | None = None) -> MemoryGuard:
    budget = MemoryBudget(gib=gib, device="cpu", source="--memory", given=True)
    guard = MemoryGuard.for_search(ctx, budget, sink)
    assert guard is not None
    return guard


# -- the default budget ------------------------------------------------------------------------

def test_the_cpu_default_is_the_host_memory_divided_by_the_processes_at_once():
    b = resolve_budget(None, Placement(gpus=0.0, processes=2, what="2 concurrent trials"),
                       host_gib=lambda: 24.0, gpu_gib=lambda: pytest.fail("no GPU is asked for"))
    assert (b.gib, b.device, b.given) == (12.0, "cpu", False)
    assert b.describe() == "memory budget: 12.0 GiB per trial (host 24.0 GiB / 2 concurrent trials)"
    assert b.flag() == "the default --memory 12.0 GiB (host 24.0 GiB / 2 concurrent trials)"
    assert MemoryBudget.from_dict(json.loads(json.dumps(b.to_dict()))) == b


def test_a_fractional_gpu_divides_the_gpu_memory_and_an_unreadable_gpu_means_no_constraint():
    half = resolve_budget(None, Placement(gpus=0.5), gpu_gib=lambda: 80.0)
    assert (half.gib, half.device) == (40.0, "gpu") and "x 0.5" in half.source
    whole = resolve_budget(None, Placement(gpus=1.0), gpu_gib=lambda: 80.0)
    assert (whole.gib, whole.device) == (80.0, "gpu")
    unknown = resolve_budget(None, Placement(gpus=1.0), gpu_gib=lambda: None)
    assert unknown.gib is None and "--memory" in unknown.source
    assert unknown.describe().startswith("memory budget: none (")
    assert MemoryGuard.for_search(_ctx(_space()), unknown, None) is None
    given = resolve_budget(2.0, Placement(gpus=0.5), gpu_gib=lambda: 80.0)
    assert (given.gib, given.device, given.given, given.flag()) == (2.0, "gpu", True,
                                                                    "--memory 2 GiB")
    # Keras Tuner trains in this process: on the GPU when one is visible, else on the host alone.
    assert resolve_budget(None, Placement(gpus=None), gpu_gib=lambda: 16.0).gib == 16.0
    cpu = resolve_budget(None, Placement(gpus=None), gpu_gib=lambda: None, host_gib=lambda: 24.0)
    assert (cpu.gib, cpu.device) == (24.0, "cpu")


def test_the_ray_placement_counts_the_trials_that_run_at_once_here():
    from search.ray_cluster import placement
    from search.ray_options import RayOptions

    def at_once(workers: int = 1, **opts) -> tuple[int, str]:
        p = placement(RayOptions(**{"num_cpus": 8, "max_concurrent": 0, **opts}), workers)
        return p.processes, p.what

    assert at_once(cpus_per_trial=2) == (4, "4 concurrent trials")
    assert at_once(cpus_per_trial=2, max_concurrent=3) == (3, "3 concurrent trials")
    assert at_once(cpus_per_trial=2, num_samples=1) == (1, "1 concurrent trial")
    assert at_once(cpus_per_trial=16) == (1, "1 concurrent trial")
    assert at_once(workers=2, max_concurrent=2) == (4, "2 concurrent trials x 2 workers")
    assert placement(RayOptions(gpus_per_trial=0.25), 1).gpus == 0.25
    assert placement(RayOptions(gpus_per_trial=1.0), 2).gpus == 1.0  # a Horovod worker: one GPU


def test_a_search_specs_budget_follows_its_engine_options(tmp_path):
    gpu = Search(out=tmp_path, name="g", gpus_per_trial=0.5)
    assert gpu.memory_budget(gpu_gib=lambda: 80.0).gib == 40.0
    cpu = Search(out=tmp_path, name="c", num_cpus=4, max_concurrent=0)
    assert cpu.memory_budget(host_gib=lambda: 32.0).gib == 8.0
    given = Search(out=tmp_path, name="m", memory=3)
    assert given.memory_budget(host_gib=lambda: 32.0).gib == 3.0
    kt = Search(out=tmp_path, name="k", engine="keras-tuner")
    kt_budget = kt.memory_budget(host_gib=lambda: 32.0, gpu_gib=lambda: None)
    assert (kt_budget.gib, kt_budget.source) == (32.0, "host 32.0 GiB / 1 trial at a time")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value,shown", [(0, "0"), (-1, "-1"), ("abc", "abc"),
                                         (float("nan"), "nan"), (True, "True")])
def test_a_memory_that_is_not_a_positive_number_is_refused_when_the_search_is_built(
        tmp_path, value, shown):
    with pytest.raises(SearchError) as e:
        Search(out=tmp_path, name="x", memory=value)
    msg = str(e.value)
    assert msg.startswith(f"--memory {shown}: must be a number of GiB > 0") and "\n" not in msg
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["0", "-1", "abc"])
def test_the_cli_refuses_a_bad_memory_in_one_line_and_writes_nothing(tmp_path, value):
    (tmp_path / "out").mkdir()
    r = run_cli("search", "--out", str(tmp_path / "out"), "--name", "e", "--memory", value,
                cwd=tmp_path, timeout=300)
    assert error_line(r, alone=True) == (f"error: --memory {value}: must be a number of GiB > 0, the "
                                         f"memory one trial may use (leave it out for the default)")
    assert {p.name for p in tmp_path.rglob("*")} == {"out"}


# -- the rule, engine by engine ----------------------------------------------------------------

def test_nothing_that_fits_is_refused_before_the_search_starts():
    ctx = _ctx(_space())
    tiny = _gib(ctx, SMALL) / 2
    with pytest.raises(SearchError) as e:
        _guard(ctx, tiny).preflight()
    msg = str(e.value)
    assert msg.startswith(f"no configuration of space 'tinymem' fits --memory {tiny:g} GiB: the "
                          f"smallest of 258 sampled needs {_gib(ctx, SMALL):.1f} GiB"), msg
    _guard(ctx, _between(ctx)).preflight()  # one fits: no error


def test_the_preflight_draws_every_int_value_high_bound_included_and_a_single_one():
    """The preflight's random configurations take an Int's values from low to high inclusive (its
    step kept), and an Int with low == high is its one value, not an error."""
    import yaml

    space = space_from_dict(yaml.safe_load(SPACE + """\
  model.depth: {type: int, low: 2, high: 4}
  model.base_filters: {type: int, low: 4, high: 12, step: 4}
"""), source="tinymem")
    rng = np.random.default_rng(0)  # (the preflight draws with space.sample)
    draws = [space.sample(rng) for _ in range(200)]
    assert {d["model.depth"] for d in draws} == {2, 3, 4}
    assert {d["model.base_filters"] for d in draws} == {4, 8, 12}

    one = _ctx(space_from_dict(yaml.safe_load(SPACE + "  model.depth: {type: int, low: 2, high: 2}\n"),
                               source="tinymem"))
    assert {one.space.sample(rng)["model.depth"] for _ in range(20)} == {2}
    with pytest.raises(SearchError, match="the smallest of 258 sampled needs"):
        _guard(one, _gib(one, SMALL) / 2).preflight()
    _guard(one, _between(one)).preflight()  # one fits: no error


@pytest.fixture(scope="module")
def sized_cache(tmp_path_factory) -> Path:
    """A cache of three validation cases of known cached shapes, in this order: 32x32x32,
    48x40x32, 56x48x32 (a brain larger than the volume: the brain crop keeps the whole volume)."""
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare
    from unet3d.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("sized")
    cases = []
    for prefix, shape in (("Small", (32, 32, 32)), ("Big", (48, 40, 32)), ("Bigger", (56, 48, 32))):
        write_synthetic_dataset(root / prefix, 1, shape, prefix=prefix,
                                brain_size=tuple(3 * s for s in shape))
        cases += discover(root / prefix).cases
    entries = prepare(cases, root / "cache")
    assert [tuple(e.meta["shape"]) for e in entries] == [(32, 32, 32), (48, 40, 32), (56, 48, 32)]
    return root / "cache"


@pytest.mark.parametrize("max_val_cases, largest", [(0, (56, 48, 32)), (2, (48, 40, 32))])
def test_the_guard_predicts_with_the_largest_validation_case_it_would_hold(
        sized_cache, monkeypatch, max_val_cases, largest):
    """Validation holds one case at a time: the guard predicts with the largest of the cases a
    trial validates on (the first ``data.max_val_cases`` of them), not the first."""
    import yaml

    import unet3d.planning.memory

    space = space_from_dict(yaml.safe_load(SPACE.replace(
        "max_val_cases: 1", f"max_val_cases: {max_val_cases}")), source="tinymem")
    ctx = dataclasses.replace(_ctx(space), cache=str(sized_cache),
                              val_ids=("Small_00000", "Big_00000", "Bigger_00000"))
    guard = _guard(ctx, 1000.0)
    assert guard.val_shapes == ((32, 32, 32), (48, 40, 32), (56, 48, 32))
    seen = []

    def recording(cfg, **kw):
        seen.append(kw.get("volume_shape"))
        return estimate(cfg, **kw)

    monkeypatch.setattr(unet3d.planning.memory, "estimate", recording)
    verdict = guard.check(SMALL)
    assert seen == [largest] and verdict.fits
    assert verdict.gib == estimate(ctx.run_config(SMALL), device="cpu", volume_shape=largest).gib


def _check_reason(reason: str, need: float, budget: float) -> None:
    m = re.fullmatch(r"needs (\d+\.\d+) GiB > (\d+\.\d+) GiB", reason)
    assert m, reason
    assert float(m[1]) == pytest.approx(need, abs=0.05) and float(m[2]) == pytest.approx(budget, abs=0.05)


def test_the_ray_searcher_suggests_only_what_fits_and_tells_optuna_the_rest_is_infeasible(tmp_path):
    from optuna.trial import TrialState

    from search.ray_factories import searcher
    from search.ray_options import RayOptions

    ctx = _ctx(_space())
    budget = _between(ctx)
    alg = searcher(ctx.space, RayOptions(max_concurrent=0), guard=_guard(ctx, budget,
                                                                          tmp_path / PRUNED_FILE))
    configs = [alg.suggest(f"t{i}") for i in range(6)]
    assert all(_gib(ctx, c) <= budget for c in configs)
    assert all(c["data.crop"] == 16 for c in configs)
    pruned, gave_up = load_pruned(tmp_path)
    assert pruned and not gave_up and _same(pruned, alg.pruned)
    assert pruned[0].params == BIG  # NVIDIA's point, the first proposed, was checked too
    for r in pruned:
        assert r.status == "pruned" and r.epochs == 0 and _gib(ctx, r.params) > budget
        _check_reason(r.reason, r.memory_gib, budget)
    assert len({json.dumps(r.params, sort_keys=True) for r in pruned}) == len(pruned)
    study = alg._ot_study  # what TPE learns from: pruned trials with a violated constraint
    refused = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert len(refused) == len(pruned) and all(t.constraints["memory_gib"] > 0 for t in refused)
    assert all(t.constraints["memory_gib"] <= 0 for t in study.trials if t.state.name == "RUNNING")

    # Ray's resume: the saved state back, pruned.json rewritten from it, where this run's guard
    # writes (the experiment may have moved since: the saved guard's folder is not used).
    alg.save(str(tmp_path / "state.pkl"))
    (tmp_path / PRUNED_FILE).unlink()
    moved = tmp_path / "moved"
    moved.mkdir()
    again = searcher(ctx.space, RayOptions(max_concurrent=0),
                     guard=_guard(ctx, budget, moved / PRUNED_FILE))
    again.restore(str(tmp_path / "state.pkl"))
    assert _same(load_pruned(moved)[0], pruned) and not (tmp_path / PRUNED_FILE).exists()


def test_a_searcher_that_finds_nothing_to_fit_stops_sampling_and_says_why(tmp_path):
    from ray.tune.search import Searcher

    from search.ray_factories import searcher
    from search.ray_options import RayOptions

    ctx = _ctx(_space())
    guard = _guard(ctx, _gib(ctx, SMALL) / 2, tmp_path / PRUNED_FILE)
    alg = searcher(ctx.space, RayOptions(max_concurrent=0), guard=guard)
    assert alg.suggest("t0") == Searcher.FINISHED
    pruned, gave_up = load_pruned(tmp_path)
    assert len(alg._ot_study.trials) == MAX_REFUSALS and 1 <= len(pruned) <= MAX_REFUSALS
    assert gave_up.startswith(f"stopped sampling: {MAX_REFUSALS} configurations in a row of space "
                              f"'tinymem' did not fit --memory")


def test_bohb_and_pbts_population_go_through_the_same_refusal(tmp_path):
    """The other two ways Ray's searchers propose (BOHB's own searcher behind BudgetedSearcher,
    PBT's population drawn up front) refuse through the same filter: only what fits, every
    refusal a pruned row, and when nothing fits, the same give-up line."""
    from ray.tune.search import Searcher

    from search.ray_factories import population, searcher
    from search.ray_options import RayOptions

    ctx = _ctx(_space())
    budget = _between(ctx)
    bohb = searcher(ctx.space, RayOptions(scheduler="bohb", max_concurrent=0),
                    guard=_guard(ctx, budget, tmp_path / PRUNED_FILE))
    configs = [bohb.suggest(f"t{i}") for i in range(4)]
    assert all(c["data.crop"] == 16 for c in configs)
    pruned, gave_up = load_pruned(tmp_path)
    assert pruned and not gave_up and pruned[0].params["data.crop"] == 128  # NVIDIA's, first
    (tmp_path / "pbt").mkdir()
    guard = _guard(ctx, budget, tmp_path / "pbt" / PRUNED_FILE)
    points = population(ctx.space, RayOptions(scheduler="pbt", num_samples=5), guard)
    assert len(points) == 5 and all(p["data.crop"] == 16 for p in points)
    pruned, gave_up = load_pruned(tmp_path / "pbt")
    assert pruned[0].params == BIG and not gave_up

    for name in ("none_bohb", "none_pbt"):
        (tmp_path / name).mkdir()
    tiny = _gib(ctx, SMALL) / 2
    bohb = searcher(ctx.space, RayOptions(scheduler="bohb", max_concurrent=0),
                    guard=_guard(ctx, tiny, tmp_path / "none_bohb" / PRUNED_FILE))
    assert bohb.suggest("t0") == Searcher.FINISHED
    assert population(ctx.space, RayOptions(scheduler="pbt", num_samples=5),
                      _guard(ctx, tiny, tmp_path / "none_pbt" / PRUNED_FILE)) == []
    for name in ("none_bohb", "none_pbt"):
        assert load_pruned(tmp_path / name)[1].startswith(f"stopped sampling: {MAX_REFUSALS} "
                                                          f"configurations in a row")


@pytest.mark.parametrize("algorithm", ["hyperband", "bayesian"])
def test_the_keras_tuner_oracle_never_proposes_what_does_not_fit(tmp_path, algorithm):
    from search.kt_engine import KerasTunerOptions, _tuner

    ctx = _ctx(_space())
    budget = _between(ctx)
    guard = _guard(ctx, budget, tmp_path / PRUNED_FILE)
    opts = KerasTunerOptions(algorithm=algorithm, max_trials=3, max_epochs=2)
    tuner = _tuner(ctx, tmp_path, opts, overwrite=True, log=lambda m: None, guard=guard)
    oracle, started = tuner.oracle, []
    for score in (0.1, 0.2, 0.3):
        trial = oracle.create_trial("t")
        started.append({k: trial.hyperparameters.values[k] for k in ctx.space.names})
        oracle.update_trial(trial.trial_id, {"val_dice_mean": score})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    assert all(_gib(ctx, s) <= budget for s in started)
    assert len(oracle.trials) == 3  # refused configurations are no trials (no --num-samples)
    assert oracle.pruned and oracle.pruned[0].params == BIG  # NVIDIA's point: refused, not forced
    assert all(_gib(ctx, r.params) > budget for r in oracle.pruned)
    assert _same(load_pruned(tmp_path)[0], oracle.pruned)
    state = json.loads(json.dumps(oracle.get_state()))  # as Keras Tuner saves it
    assert _same([TrialRow.from_dict(r) for r in state["pruned"]], oracle.pruned)


# -- rows, table, report -----------------------------------------------------------------------

def _rows() -> list[TrialRow]:
    epoch = {"epoch": 1, "val_dice_mean": 0.5, "val_dice_WT": 0.6, "val_dice_TC": 0.5,
             "val_dice_ET": 0.4, "throughput_vps": 3.0}
    ran = row_from_history("a", {"data.crop": 16}, [epoch], 1, checkpoint="ck/a")
    ran.memory_gib = 1.0
    pruned = TrialRow(trial_id="pruned_1", params={"data.crop": 128}, status="pruned", epochs=0,
                      reason="needs 2.8 GiB > 1.9 GiB", memory_gib=2.8)
    return [pruned, ran]


def test_pruned_rows_round_trip_and_are_never_ranked_exported_or_counted(tmp_path):
    from search.finish import load_rows
    from search.results import write_results

    rows = _rows()
    assert [r.trial_id for r in ranked(rows)] == ["a", "pruned_1"]
    assert best_row(rows).trial_id == "a" and ranked(rows, exportable=True) == [rows[1]]
    assert asha_savings(rows, 1)["trial_epochs_without_early_stopping"] == 1
    write_results(rows, tmp_path, {})
    back = load_rows(tmp_path)
    assert _same(back, rows)
    table = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert (table[0]["status"], table[0]["reason"], table[0]["memory_gib"]) == \
        ("pruned", "needs 2.8 GiB > 1.9 GiB", "2.8")
    assert table[1]["reason"] == "" and table[1]["memory_gib"] == "1.0"

    lines = format_table(rows).splitlines()
    assert lines[2].split()[:2] == ["a", "completed"]
    last = lines[3]
    assert last.split()[:3] == ["pruned_1", "pruned", "0"] and "needs 2.8 GiB > 1.9 GiB" in last
    assert last.split()[-1] == "128"  # the refused parameters, in their column
    assert len(last) == len(lines[2])


@pytest.mark.timeout(300)
def test_the_report_shows_the_budget_and_each_pruned_configurations_reason(tmp_path):
    from search.finish import finish, save_search
    from search.report import build_report
    from search.spec import SearchSpec

    exp = tmp_path / "exp"
    exp.mkdir()
    ctx = _ctx(_space())
    budget = MemoryBudget(gib=1.9, device="cpu", source="--memory", given=True)
    save_search(SearchSpec(name="exp", out=str(tmp_path), memory=1.9), ctx, exp, budget=budget)
    summary = finish(_rows(), ctx, exp, "ray", export=False, budget=budget)
    assert (summary["trials"], summary["trials_pruned"]) == (1, 1)
    assert summary["memory_budget"]["gib"] == 1.9
    report = build_report(exp)
    page = report.html.read_text()
    assert (report.trials, report.pruned) == (1, 1)
    assert "<td class='l'>pruned: needs 2.8 GiB &gt; 1.9 GiB</td>" in page
    memory = page.split("<p id='memory'>", 1)[1].split("</p>", 1)[0]
    assert "1.9 GiB per trial (--memory)" in memory and "1 configuration(s)" in memory


# -- end to end --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tinymem(tmp_path_factory) -> dict:
    from unet3d.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("tinymem")
    write_synthetic_dataset(root / "data", 8, (32, 32, 32), seed=5)
    (root / "tinymem.yaml").write_text(SPACE)
    ctx = _ctx(_space())
    return {"root": root, "data": root / "data", "space": root / "tinymem.yaml",
            "cache": root / "cache", "budget": _between(ctx)}


def _check_rows(exp: Path, trials: list[dict], budget: float) -> tuple[list[dict], list[dict]]:
    """Every row that ran fits the budget and has a trial folder; every pruned one does not fit,
    says why, and has none. Predictions are recomputed here from the search's saved context."""
    from search.finish import load_context

    ctx, saved = load_context(exp)
    assert saved["memory_budget"]["gib"] == budget and saved["memory_budget"]["given"]
    ran = [t for t in trials if t["status"] != "pruned"]
    pruned = [t for t in trials if t["status"] == "pruned"]
    assert ran and pruned
    for t in ran:
        assert _gib(ctx, t["params"]) <= budget and (exp / f"trial_{t['trial_id']}").is_dir()
        assert t["epochs"] >= 1 and math.isfinite(t["best_score"])
    for t in pruned:
        assert _gib(ctx, t["params"]) > budget and t["epochs"] == 0 and not t["history"]
        _check_reason(t["reason"], t["memory_gib"], budget)
        assert not list(exp.glob(f"trial_{t['trial_id']}*"))
    assert len(list(exp.glob("trial_*"))) == len(ran)
    assert any(t["params"]["data.crop"] == 128 for t in pruned)  # NVIDIA's point, refused
    return ran, pruned


@pytest.mark.slow
def test_a_cli_search_with_a_small_memory_never_starts_an_over_budget_trial(tinymem):
    out = tinymem["root"] / "ray"
    budget = tinymem["budget"]
    r = run_cli("search", "--data", str(tinymem["data"]), "--cache", str(tinymem["cache"]),
                "--space", str(tinymem["space"]), "--out", str(out), "--name", "e", "--verbose",
                "0", "--num-samples", "2", "--max-epochs", "1", "--max-concurrent", "1",
                "--memory", str(budget), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = out / "e"
    trials = json.loads((exp / "trials.json").read_text())
    ran, pruned = _check_rows(exp, trials["trials"], budget)
    assert len(ran) == 2  # refused configurations do not count against --num-samples
    assert (trials["summary"]["trials"], trials["summary"]["trials_pruned"]) == (2, len(pruned))
    assert f"memory budget: {budget:.1f} GiB per trial (--memory)" in r.stdout
    assert f"{len(pruned)} configuration(s) pruned for memory, never started" in r.stdout
    table = r.stdout.split("-----", 1)[1]
    for t in pruned:
        assert any(ln.split()[:2] == [t["trial_id"], "pruned"] and t["reason"] in ln
                   for ln in table.splitlines())
    rows = list(csv.DictReader((exp / "results.csv").open()))
    assert sorted(row["reason"] for row in rows if row["status"] == "pruned") == \
        sorted(t["reason"] for t in pruned)
    # each trial that ran measured its peak (resident memory here) next to the prediction
    assert all(float(row["measured_gib"]) > 0 for row in rows if row["status"] != "pruned")
    page = (exp / "report.html").read_text()
    for t in pruned:
        assert f"pruned: {t['reason'].replace('>', '&gt;')}" in page
    assert (exp / "best" / "model.keras").exists()


@pytest.mark.slow
def test_a_python_api_search_with_keras_tuner_prunes_and_resumes_without_duplicates(tinymem):
    budget = tinymem["budget"]
    lines: list[str] = []
    common = dict(data=tinymem["data"], cache=tinymem["cache"], space=tinymem["space"],
                  engine="keras-tuner", algorithm="bayesian", num_samples=2, max_epochs=1,
                  out=tinymem["root"] / "kt")
    result = Search(name="e", memory=budget, log=lines.append, **common).run()
    assert any(ln == f"memory budget: {budget:.1f} GiB per trial (--memory)" for ln in lines)
    trials = [t.to_dict() for t in result.trials]
    ran, pruned = _check_rows(result.experiment, trials, budget)
    assert len(ran) == 2 and result.summary["trials_pruned"] == len(pruned)
    assert result.best is not None and result.best.config.data.crop == (16, 16, 16)
    assert "needs" in format_table(result.trials)

    again = Search.restore(result.experiment).run()  # nothing left to do: the same rows, once
    assert [t.to_dict()["trial_id"] for t in again.trials] == [t["trial_id"] for t in trials]
    assert again.summary["trials_pruned"] == len(pruned)

    # None of the space fits: refused before the experiment folder is created.
    with pytest.raises(SearchError, match="no configuration of space 'tinymem' fits --memory"):
        Search(name="none", memory=0.01, **common).run()
    assert not (tinymem["root"] / "kt" / "none").exists()
