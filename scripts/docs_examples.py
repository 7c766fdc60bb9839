"""Reruns the docs' examples and pastes their real output under them (issue 29): output in the
docs comes from running the example as written, never from a hand edit.

An example is a fenced code block (```python, or ```sh for shell commands) preceded by

    <!-- example: NAME; setup: SHELL COMMAND (optional) -->

and followed, after one line of prose that this script rewrites, by the fenced block of its output:

    <!-- example: api-train; setup: python run_search.py synth --out data --cases 6 --shape 48 48 48 -->
    ```python
    ...
    ```
    Its output (run by scripts/docs_examples.py, DATE, commit ABC1234, this machine: N s):
    ```
    ...
    ```

Each example runs in a fresh temporary folder (the setup first, with ``python`` the project's
interpreter and ``run_search.py`` the checkout's), its stdout pasted as it came, with the folder's
path shown as ``.`` and the checkout's as ``<checkout>``.

    python scripts/docs_examples.py                 # every example of every page
    python scripts/docs_examples.py --only api-train --list
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKOUT = "<checkout>"  # how the output shows this checkout's path
EXAMPLE = re.compile(r"<!-- example: (?P<name>[\w-]+)(?:; setup: (?P<setup>.*?))? -->\n"
                     r"```(?P<lang>python|sh)\n(?P<code>.*?)```\n"
                     r"(?P<prose>[^\n]*)\n```\n(?P<output>.*?)```", re.S)


def examples(page: Path) -> list[re.Match]:
    return list(EXAMPLE.finditer(page.read_text()))


def _here(command: str) -> str:
    """``command`` with ``python run_search.py`` as this interpreter and this checkout's CLI."""
    return command.replace("python run_search.py", f"{sys.executable} {ROOT / 'run_search.py'}")


def run(m: re.Match, timeout: float) -> tuple[str, float]:
    """Runs one example in a fresh folder; returns (its stdout, its seconds)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    with tempfile.TemporaryDirectory(prefix="docs-example-") as tmp:
        if m["setup"]:
            subprocess.run(_here(m["setup"]), shell=True, cwd=tmp, check=True, capture_output=True,
                           timeout=timeout, env=env)
        cmd = ([sys.executable, "-c", m["code"]] if m["lang"] == "python"
               else ["bash", "-e", "-c", _here(m["code"])])
        started = time.monotonic()
        r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout, env=env)
        seconds = time.monotonic() - started
        if r.returncode != 0:
            raise RuntimeError(f"example {m['name']} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
        return r.stdout.replace(tmp + "/", "").replace(tmp, ".").replace(str(ROOT), CHECKOUT), seconds


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run these examples only")
    ap.add_argument("--list", action="store_true", help="list the examples and exit")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds an example may take")
    args = ap.parse_args(argv)
    pages = sorted((ROOT / "docs").rglob("*.md"))
    found = [(p, m) for p in pages for m in examples(p)]
    if args.list:
        for p, m in found:
            print(f"{m['name']}\t{p.relative_to(ROOT)}")
        return 0
    unknown = set(args.only or ()) - {m["name"] for _, m in found}
    if unknown:
        print(f"error: --only {' '.join(sorted(unknown))}: no such example", file=sys.stderr)
        return 2
    today, commit = datetime.date.today().isoformat(), _commit()
    for page in pages:
        text = page.read_text()
        for m in reversed(examples(page)):  # (from the end: earlier offsets stay valid)
            if args.only and m["name"] not in args.only:
                continue
            output, seconds = run(m, args.timeout)
            prose = (f"Its output (run by scripts/docs_examples.py, {today}, commit {commit}, "
                     f"this machine: {seconds:.0f} s):")
            block = f"{prose}\n```\n{output.rstrip()}\n```"
            text = text[:m.start("prose")] + block + text[m.end("output") + 3:]
            print(f"{m['name']}: {seconds:.0f} s ({page.relative_to(ROOT)})")
        tmp = page.with_name(f".{page.name}.tmp")
        tmp.write_text(text)
        tmp.replace(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
