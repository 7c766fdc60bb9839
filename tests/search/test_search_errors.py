"""`run_search.py search` with an option that cannot work: one line naming the option, exit 2, no
traceback, and nothing written (no experiment folder that would block the name, no dataset)."""

from __future__ import annotations

import pytest
from conftest import error_line, run_cli


def _one_line_error(r, starts: str) -> None:
    line = error_line(r, alone=True)
    assert line.startswith(f"error: {starts}"), line


def _files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("flags,starts", [
    (["--max-epochs", "0"], "--max-epochs 0: must be an integer >= 1"),
    (["--grace-period", "7", "--max-epochs", "6"], "--grace-period 7: must not exceed --max-epochs 6"),
    (["--reduction-factor", "1"], "--reduction-factor 1: must be an integer >= 2"),
    (["--max-concurrent", "-1"], "--max-concurrent -1: must be an integer >= 0"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial 0: must be > 0"),
    (["--fold", "7", "--folds", "5"], "--fold 7: must be in 0..4"),
    (["--num-samples", "0"], "--num-samples 0: must be an integer >= 1"),
    (["--name", "../../x"], "--name '../../x': must be a plain folder name"),
    (["--engine", "keras-tuner", "--grace-period", "2"],
     "--grace-period: not an option of --engine keras-tuner"),
    (["--scheduler", "race"], "--scheduler race: needs --budget in trial-epochs"),
    (["--budget", "2"], "--budget 2.0: the race needs at least --race-epochs + 1 = 3"),
    (["--budget", "24", "--race-share", "1"], "--race-share 1.0: must be a fraction in [0, 1)"),
    (["--race-epochs", "2"], "--race-epochs: only with --scheduler race"),
    (["--budget", "24", "--searcher", "tpe", "--scheduler", "race"],
     "--searcher tpe: the race proposes its own configurations"),
    (["--budget", "24", "--objective", "dice,latency", "--scheduler", "race"],
     "--scheduler race: races one objective"),
    (["--budget", "24", "--portfolio", "missing.json"], "missing.json: portfolio file not found"),
])
def test_an_impossible_search_option_is_one_line_and_writes_nothing(tmp_path, flags, starts):
    (tmp_path / "out").mkdir()
    r = run_cli("search", "--out", str(tmp_path / "out"), "--name", "e", *flags, cwd=tmp_path,
                timeout=300)
    _one_line_error(r, starts)
    assert _files(tmp_path) == {"out"}


def test_out_below_a_file_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    r = run_cli("search", "--out", str(tmp_path / "f.txt" / "results"), "--name", "e", cwd=tmp_path,
                timeout=300)
    _one_line_error(r, "--out")
    assert _files(tmp_path) == {"f.txt"}


def test_data_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    r = run_cli("search", "--data", str(tmp_path / "f.txt"), "--out", str(tmp_path / "out"),
                "--name", "e", cwd=tmp_path, timeout=300)
    _one_line_error(r, f"{tmp_path / 'f.txt'}")
    assert "not a" in r.stderr and "does not exist" not in r.stderr
    assert _files(tmp_path) == {"f.txt"}


@pytest.mark.slow
def test_gpus_this_machine_lacks_are_one_line_not_an_endless_wait(synth16, tmp_path):
    """A local Ray has no GPU here: a trial asking for 2 would wait forever; it is refused."""
    r = run_cli("search", "--data", str(synth16), "--cache", str(tmp_path / "cache"),
                "--gpus-per-trial", "2", "--out", str(tmp_path / "out"), "--name", "e",
                cwd=tmp_path, timeout=300)
    _one_line_error(r, "--gpus-per-trial 2: a trial needs 2 GPU(s) and this machine has 0")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_resuming_a_search_that_stopped_before_ray_saved_state_is_one_line(tmp_path):
    """An experiment folder with search.json but no Ray Tune state (the search died while starting)
    cannot be resumed: one line that says so (it used to crash in pyarrow)."""
    from search.context import SearchContext
    from search.finish import save_search
    from search.spec import SearchSpec
    from spaces.presets import get_space

    exp = tmp_path / "out" / "e"
    exp.mkdir(parents=True)
    ctx = SearchContext(space=get_space("demo"), data="d", cache="c", train_ids=("a",),
                        val_ids=("b",), max_epochs=2, experiment=str(exp))
    save_search(SearchSpec(name="e", out=str(tmp_path / "out"), max_epochs=2), ctx, exp)
    r = run_cli("search", "--resume", "--out", str(tmp_path / "out"), "--name", "e", timeout=300)
    _one_line_error(r, f"{exp}: the search stopped before Ray Tune saved any state")
    assert sorted(p.name for p in exp.iterdir()) == ["search.json"]
