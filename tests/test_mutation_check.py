"""scripts/mutation_check.py on a one-mutant list: the planted bug is caught by its module's tests
and reported per module; a list whose text does not occur once is refused before anything runs."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "mutation_check.py"
MUTANT = '''
[[mutant]]
id = "plan-crop-floor"
file = "unet3d/planning/plan.py"
find = "crop = tuple(max(f, int(round(c / f)) * f) for c in crop)"
replace = "crop = tuple(max(f, int(c // f) * f) for c in crop)"
tests = ["tests/unet3d/test_plan.py"]
why = "the crop floored"
'''


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def test_a_planted_bug_is_caught_and_reported_per_module(tmp_path):
    (tmp_path / "m.toml").write_text(MUTANT)
    r = _run("--list", str(tmp_path / "m.toml"), "--fast-only", "--json", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "[1/1] plan-crop-floor: caught by own tests" in r.stdout
    assert any(line.split() == ["unet3d.planning.plan", "1", "1", "-"] for line in r.stdout.splitlines())
    assert '"caught_by": "own tests"' in (tmp_path / "r.json").read_text()
    # the working tree is never touched: the mutant went into a scratch copy
    assert "int(round(c / f)) * f" in (ROOT / "unet3d" / "planning" / "plan.py").read_text()


def test_a_text_that_does_not_occur_once_is_refused(tmp_path):
    (tmp_path / "m.toml").write_text(MUTANT.replace("for c in crop)\"", "for c in crop) \""))
    r = _run("--list", str(tmp_path / "m.toml"), "--check")
    assert r.returncode != 0 and "'find' occurs 0 times in unet3d/planning/plan.py" in r.stderr
