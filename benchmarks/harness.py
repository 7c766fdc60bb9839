"""What the CPU benchmark scripts share: the fresh process each measurement runs in (a worker: the
script itself with ``--worker JOB``, printing its result as a JSON line; a fresh process because
TensorFlow reads its switches once, at import) and the table they print (fixed-width columns under a
header line, then the machine the figures were measured on), so that their tables read alike and
BENCHMARKS.md can quote them as printed. (The GPU benchmarks stream records: bench_gpu.collect.)"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path


def parser(doc: str) -> argparse.ArgumentParser:
    """The script's command line: described by the first line of ``doc`` (its docstring), with the
    hidden ``--worker JOB`` :func:`run_worker` passes (``args.worker``: the job, parsed)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--worker", type=json.loads, help=argparse.SUPPRESS)
    return p


def answer(result: dict) -> int:
    """A worker's reply to :func:`run_worker`: its result as the last line of stdout. Exit 0."""
    print(json.dumps(result))
    return 0


def run_worker(script: str | Path, job: dict, *, python: str | Path | None = None,
               env: dict[str, str] | None = None) -> dict:
    """Runs ``PYTHON SCRIPT --worker JOB`` (JOB as JSON; TensorFlow's C++ log off, ``env`` on top of
    this environment) and returns the JSON of its last stdout line; RuntimeError with the end of
    its stderr when it fails."""
    r = subprocess.run([str(python or sys.executable), str(script), "--worker", json.dumps(job)],
                       capture_output=True, text=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    if r.returncode != 0:
        raise RuntimeError(f"{Path(script).name} {json.dumps(job)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


_ALIGN_WIDTH = re.compile(r"^(?P<align>[<>^]?)(?P<width>\d*)")  # (the specs here have no fill)


def print_table(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence], *extra: str) -> None:
    """Prints ``rows`` (one value a column) under their headers. ``columns``: ``(header, spec)``
    pairs, ``spec`` a format spec for the column's values (``"<7"``, ``">8.3f"``, ``">11,"``); the
    header is padded and aligned as the spec says. Then a blank line and :func:`machine_line` with
    ``extra`` (e.g. ``"3 rounds, median"``)."""
    heads = []
    for header, spec in columns:
        m = _ALIGN_WIDTH.match(spec)
        heads.append(f"{header:{m['align'] or '>'}{m['width']}}")
    print(" ".join(heads).rstrip())
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"a row of {len(row)} values for {len(columns)} columns: {row!r}")
        print(" ".join(f"{v:{spec}}" for v, (_, spec) in zip(row, columns, strict=True)).rstrip())
    print(f"\n{machine_line(*extra)}")


def machine_line(*extra: str) -> str:
    """``"N CPU cores; EXTRA; python X.Y.Z"``: what a printed figure was measured on."""
    return "; ".join([f"{os.cpu_count()} CPU cores", *extra, f"python {sys.version.split()[0]}"])
