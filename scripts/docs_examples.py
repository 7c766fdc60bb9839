"""Reruns the docs' examples and pastes their real output under them (issue 29): output in the
docs comes from running the example as written, never from a hand edit.

An example (in README.md or a page of docs/) is a fenced code block (```python, or ```sh for
shell commands) preceded by

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
path shown as ``.`` (paths in it relative, ``file:`` URIs too) and the checkout's as
``<checkout>``. Examples of one page with the same set-up share its folder (the set-up runs once;
they run in page order).

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


def pages() -> list[Path]:
    """The pages examples may stand in: README.md, then every page of docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def examples(page: Path) -> list[re.Match]:
    return list(EXAMPLE.finditer(page.read_text()))


def _here(command: str) -> str:
    """``command`` with ``python run_search.py`` as this interpreter and this checkout's CLI."""
    return command.replace("python run_search.py", f"{sys.executable} {ROOT / 'run_search.py'}")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        # (a plain `python` in an example is the project's interpreter too)
        "PATH": os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))}


def set_up(setup: str | None, folder: str, timeout: float) -> None:
    """Runs an example's set-up command in ``folder``."""
    if setup:
        r = subprocess.run(_here(setup), shell=True, cwd=folder, capture_output=True, text=True,
                           timeout=timeout, env=_env())
        if r.returncode != 0:
            raise RuntimeError(f"set-up {setup!r} failed (exit {r.returncode}):\n"
                               f"{r.stdout[-1500:]}{r.stderr[-1500:]}")


def run(m: re.Match, timeout: float, folder: str | None = None) -> tuple[str, float]:
    """Runs one example, in ``folder`` (already set up) or a fresh one; returns (its stdout, its
    seconds)."""
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="docs-example-") as tmp:
            set_up(m["setup"], tmp, timeout)
            return run(m, timeout, tmp)
    cmd = ([sys.executable, "-c", m["code"]] if m["lang"] == "python"
           else ["bash", "-e", "-o", "pipefail", "-c", _here(m["code"])])
    started = time.monotonic()
    r = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=timeout, env=_env())
    seconds = time.monotonic() - started
    if r.returncode != 0:
        raise RuntimeError(f"example {m['name']} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    out = r.stdout.replace(f"file://{folder}/", "file:")  # (a URI as typed: file:mlruns)
    return out.replace(folder + "/", "").replace(folder, ".").replace(str(ROOT), CHECKOUT), seconds


def run_page(found: list[re.Match], timeout: float) -> dict[str, tuple[str, float]]:
    """Runs a page's examples in page order; examples with the same set-up share one folder, the
    set-up run once (a page reading one search several ways runs the search once)."""
    out: dict[str, tuple[str, float]] = {}
    folders: dict[str, tempfile.TemporaryDirectory] = {}
    try:
        for m in found:
            key = m["setup"] or ""
            if key and key not in folders:
                folders[key] = tempfile.TemporaryDirectory(prefix="docs-example-")
                set_up(key, folders[key].name, timeout)
            out[m["name"]] = run(m, timeout, folders[key].name if key else None)
            print(f"{m['name']}: {out[m['name']][1]:.0f} s", flush=True)
    finally:
        for d in folders.values():
            d.cleanup()
    return out


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run these examples only")
    ap.add_argument("--list", action="store_true", help="list the examples and exit")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds an example may take")
    args = ap.parse_args(argv)
    found = [(p, m) for p in pages() for m in examples(p)]
    if args.list:
        for p, m in found:
            print(f"{m['name']}\t{p.relative_to(ROOT)}")
        return 0
    unknown = set(args.only or ()) - {m["name"] for _, m in found}
    if unknown:
        print(f"error: --only {' '.join(sorted(unknown))}: no such example", file=sys.stderr)
        return 2
    today, commit = datetime.date.today().isoformat(), _commit()
    for page in pages():
        text = page.read_text()
        todo = [m for m in examples(page) if not args.only or m["name"] in args.only]
        if not todo:
            continue
        outputs = run_page(todo, args.timeout)
        for m in reversed(todo):  # (from the end: earlier offsets stay valid)
            output, seconds = outputs[m["name"]]
            prose = (f"Its output (run by scripts/docs_examples.py, {today}, commit {commit}, "
                     f"this machine: {seconds:.0f} s):")
            block = f"{prose}\n```\n{output.rstrip()}\n```"
            text = text[:m.start("prose")] + block + text[m.end("output") + 3:]
        tmp = page.with_name(f".{page.name}.tmp")
        tmp.write_text(text)
        tmp.replace(page)
        print(f"{page.relative_to(ROOT)}: {len(todo)} example(s) pasted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
