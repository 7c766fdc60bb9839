#!/usr/bin/env python3
"""Mutation check: plants each hand-written one-line bug of ``scripts/mutants.toml`` in a scratch
copy of the repository, runs the tests, and prints the share caught per module.

For each mutant, in a scratch copy (never the working tree):
1. the fast tier (``-m "not slow"``) of the mutant's own test files, stopping at the first failure;
2. if they all pass, the whole fast tier (``make test-fast``'s tests);
3. if those pass too, the slow (end-to-end) tests of the mutant's ``suite`` files (default: its own
   test files): the whole suite's tests that exercise that module end to end.
A mutant is caught by the fast tier at 1 or 2, by the whole suite at 1, 2 or 3. Before any mutant,
the unmutated copy must pass step 1 for every listed test file (else the report would be noise).

Mutation tools (mutmut, cosmic-ray) generate thousands of operator swaps and need hours on a
suite like ours; a list of the bugs developers actually write (and each real bug fixed) is
small enough to run in half an hour and says which kind of error slips through.

    python scripts/mutation_check.py                 # every mutant; table at the end
    python scripts/mutation_check.py --only plan-crop-floor postprocess-threshold
    python scripts/mutation_check.py --fast-only     # skip step 3 (minutes, not an hour)
    python scripts/mutation_check.py --json out.json # also the per-mutant results
    python scripts/mutation_check.py --check         # only validate the list

A mutant entry (``[[mutant]]``): ``id``, ``file``, ``find`` (text that occurs exactly once in the
file), ``replace``, ``tests`` (test files, run first), optional ``suite`` (files whose slow tests
count for the whole suite) and ``why`` (the bug in words).
"""

from __future__ import annotations

import argparse
import json
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIST = ROOT / "scripts" / "mutants.toml"
PYTEST = ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
FAST_TIER = ["-m", "not slow", "-n", "2", "--dist", "loadfile", "--no-loadscope-reorder"]


@dataclass
class Mutant:
    id: str
    file: str
    find: str
    replace: str
    tests: list[str]
    suite: list[str] = field(default_factory=list)
    why: str = ""

    @property
    def module(self) -> str:
        return self.file.removesuffix(".py").replace("/", ".")


def load(path: Path) -> list[Mutant]:
    """The mutants of ``path``, each checked: its file exists, ``find`` occurs exactly once,
    ``replace`` differs and its test files exist."""
    data = tomllib.loads(path.read_text())
    mutants, seen = [], set()
    for i, d in enumerate(data.get("mutant", [])):
        where = f"{path}: mutant {i + 1} ({d.get('id', '?')})"
        try:
            m = Mutant(**d)
        except TypeError as e:
            sys.exit(f"{where}: {e}")
        if m.id in seen:
            sys.exit(f"{where}: duplicate id")
        seen.add(m.id)
        source = ROOT / m.file
        if not source.is_file():
            sys.exit(f"{where}: no file {m.file}")
        n = source.read_text().count(m.find)
        if n != 1 or m.find == m.replace:
            sys.exit(f"{where}: 'find' occurs {n} times in {m.file} (must be once, and differ "
                     "from 'replace')")
        for t in [*m.tests, *m.suite]:
            if not (ROOT / t).is_file():
                sys.exit(f"{where}: no test file {t}")
        mutants.append(m)
    return mutants


def scratch_copy() -> Path:
    """The repository's tracked and untracked-but-not-ignored files, copied to a temporary folder."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    dest = Path(tempfile.mkdtemp(prefix="mutants_"))
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


def run_tests(copy: Path, args: list[str], timeout: float) -> tuple[str, float]:
    """("pass" | "fail" | "timeout", seconds) of pytest ``args`` in ``copy`` (its packages first on
    the path, in this process and the subprocesses and Ray workers the tests start)."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, *PYTEST, *args], cwd=copy, env=env, timeout=timeout,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - t0
    # 5: no test collected (a file of slow tests only, under -m "not slow"): nothing failed
    return ("pass" if r.returncode in (0, 5) else "fail"), time.monotonic() - t0


def check(m: Mutant, copy: Path, *, fast_only: bool, timeout: float) -> dict:
    """Plants ``m`` in ``copy``, runs the tiers until one fails, restores the file."""
    target = copy / m.file
    original = target.read_text()
    target.write_text(original.replace(m.find, m.replace, 1))
    result = {"id": m.id, "module": m.module, "why": m.why, "caught_by": None, "seconds": 0.0}
    try:
        py_compile.compile(str(target), doraise=True)
        steps = [("own tests", [*m.tests, "-m", "not slow"]), ("fast tier", FAST_TIER)]
        if not fast_only:
            steps.append(("slow tests", [*(m.suite or m.tests), "-m", "slow"]))
        for name, args in steps:
            outcome, seconds = run_tests(copy, args, timeout)
            result["seconds"] += seconds
            if outcome != "pass":
                result["caught_by"], result["outcome"] = name, outcome
                break
    finally:
        target.write_text(original)
    return result


def report(results: list[dict], fast_only: bool) -> str:
    """Per module: mutants, caught by the fast tier, caught by the whole suite; then survivors."""
    modules: dict[str, list[dict]] = {}
    for r in results:
        modules.setdefault(r["module"], []).append(r)

    def fast(rs):
        return sum(r["caught_by"] in ("own tests", "fast tier") for r in rs)

    def whole(rs):
        return sum(r["caught_by"] is not None for r in rs)

    width = max(len(m) for m in modules) if modules else 6
    lines = [f"{'module':<{width}}  mutants  fast tier  whole suite",
             f"{'-' * width}  -------  ---------  -----------"]
    for mod in sorted(modules):
        rs = modules[mod]
        lines.append(f"{mod:<{width}}  {len(rs):>7}  {fast(rs):>9}  "
                     f"{'-' if fast_only else whole(rs):>11}")
    n = len(results)
    lines.append(f"{'all':<{width}}  {n:>7}  {fast(results):>4} {100 * fast(results) / n:3.0f}%  "
                 + ("          -" if fast_only else f"{whole(results):>6} {100 * whole(results) / n:3.0f}%"))
    survivors = [r for r in results if r["caught_by"] is None]
    if survivors:
        lines.append("\nsurvivors:")
        lines += [f"  {r['id']} ({r['module']}): {r['why']}" for r in survivors]
    late = [r for r in results if r["caught_by"] == "slow tests"]
    if late:
        lines.append("\ncaught only by slow tests:")
        lines += [f"  {r['id']} ({r['module']}): {r['why']}" for r in late]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", type=Path, default=LIST, help="the mutants file (default: %(default)s)")
    p.add_argument("--only", nargs="+", metavar="ID", help="these mutants only")
    p.add_argument("--fast-only", action="store_true",
                   help="skip the slow tests of the fast tier's survivors")
    p.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    p.add_argument("--json", type=Path, help="also write the per-mutant results here")
    p.add_argument("--check", action="store_true", help="only check the list and print its ids")
    a = p.parse_args(argv)
    mutants = load(a.list)
    if a.check:
        print("\n".join(f"{m.id:<32} {m.file}" for m in mutants))
        print(f"{len(mutants)} mutants")
        return 0
    if a.only:
        unknown = sorted(set(a.only) - {m.id for m in mutants})
        if unknown:
            p.error(f"--only: no mutant {', '.join(unknown)} in {a.list}")
        mutants = [m for m in mutants if m.id in a.only]
    copy = scratch_copy()
    try:
        files = sorted({t for m in mutants for t in m.tests})
        outcome, seconds = run_tests(copy, [*files, "-m", "not slow"], a.timeout)
        if outcome != "pass":
            print(f"the unmutated code fails its own tests ({outcome}): "
                  f"pytest -m 'not slow' {' '.join(files)}", file=sys.stderr)
            return 1
        print(f"baseline: {len(files)} test files pass unmutated ({seconds:.0f} s)", flush=True)
        results = []
        for i, m in enumerate(mutants, 1):
            r = check(m, copy, fast_only=a.fast_only, timeout=a.timeout)
            results.append(r)
            print(f"[{i}/{len(mutants)}] {m.id}: "
                  f"{'caught by ' + r['caught_by'] if r['caught_by'] else 'SURVIVED'} "
                  f"({r['seconds']:.0f} s)", flush=True)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    print()
    print(report(results, a.fast_only))
    if a.json:
        tmp = a.json.with_name(f".{a.json.name}.tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
