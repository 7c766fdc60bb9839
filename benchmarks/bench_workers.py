#!/usr/bin/env python
"""Data-parallel scaling: training throughput with 1 vs N Horovod workers on this machine.

Runs ``run_search.py train`` on a synthetic dataset with 1 worker and with N workers (same
per-worker batch, so the global batch grows with N) and prints the median global volumes/s over
epochs 2.. (epoch 1 includes tracing). On a 2-core machine with 1 worker TensorFlow already uses
both cores, so the figure shows Horovod's overhead more than its speed-up; on GPU nodes each worker
has its own GPU.

  python benchmarks/bench_workers.py [--workers 2] [--epochs 4] [--steps 20] [--preset cpu-small]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "run_search.py"), *args], capture_output=True,
                       text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if r.returncode != 0:
        sys.exit(r.stderr[-3000:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--preset", default="cpu-small")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        run(["synth", "--out", str(data), "--cases", "8", "--shape", "64", "64", "64"])
        rows = []
        for n in (1, a.workers):
            out = Path(tmp) / f"w{n}"
            run(["train", "--data", str(data), "--preset", a.preset, "--epochs", str(a.epochs),
                 "--steps-per-epoch", str(a.steps), "--folds", "4", "--workers", str(n),
                 "--out", str(out)])
            m = json.loads((out / "metrics.json").read_text())
            cfg = json.loads((out / "config.json").read_text())
            vps = float(np.median([h["throughput_vps"] for h in m["history"][1:]]))
            rows.append((n, cfg["train"]["batch_size"], vps))
    base = rows[0][2]
    print(f"{'workers':>7} {'batch/worker':>12} {'global batch':>12} {'vol/s':>7} {'speed-up':>8} "
          f"{'efficiency':>10}")
    for n, b, vps in rows:
        print(f"{n:>7} {b:>12} {n * b:>12} {vps:>7.2f} {vps / base:>7.2f}x {vps / base / n:>9.0%}")
    print(f"\npreset {a.preset}, {a.epochs} epochs x {a.steps} steps, {os.cpu_count()} CPU cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
