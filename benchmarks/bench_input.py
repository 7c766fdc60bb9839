#!/usr/bin/env python
"""The input path alone: NIfTI preprocessing (cases/s) and the tf.data pipeline (crops/s), against
the model's consumption rate measured in the same run.

1. Writes ``--cases`` synthetic full-size cases (240 x 240 x 155, BraTS-sized brain) as NIfTI and
   preprocesses them into a fresh cache, as ``run_search.py prepare`` does: cases/s.
2. Runs the training pipeline (memory-mapped crops, foreground sampling, the full augmentation:
   flips, intensity scale/shift, noise; the project's parallelism and prefetch defaults) over that
   cache for each config's crop and batch, without a model: crops/s after warm-up.
3. Measures the model's consumption for the same config (one training step of ours, as in
   bench_train.py, fresh process) and prints pipeline / consumption: above 1 the model, not the
   input, is the bottleneck.

  python benchmarks/bench_input.py [--configs mid nvidia] [--cases 6] [--batches 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import unet3d  # noqa: E402, F401, I001  (runtime defaults before TensorFlow loads)

from bench_train import CONFIGS  # noqa: E402


def consumption(config: str) -> float:
    """Volumes/s our model trains at for ``config`` (bench_train's worker, fresh process)."""
    job = {"config": config, "side": "ours", "warmup": 1,
           "steps": max(2, CONFIGS[config]["steps"] // 2)}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--worker",
                        json.dumps(job)], capture_output=True, text=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    res = json.loads(r.stdout.strip().splitlines()[-1])
    return CONFIGS[config]["batch"] / res["step_s"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["mid", "nvidia"], choices=list(CONFIGS))
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--batches", type=int, default=30)
    args = p.parse_args()

    from unet3d.config import DataConfig
    from unet3d.data.discover import discover
    from unet3d.data.pipeline import train_dataset
    from unet3d.data.preprocess import prepare
    from unet3d.data.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory(prefix="bench_input.") as tmp:
        data = Path(tmp) / "data"
        write_synthetic_dataset(data, args.cases, (240, 240, 155), seed=4, brain_size=(140, 172, 140))
        cases = discover(data).cases
        t0 = time.perf_counter()
        entries = prepare(cases, Path(tmp) / "cache")
        prep_s = time.perf_counter() - t0
        box = entries[0].meta["shape"]

        rows = []
        for name in args.configs:
            cfg = CONFIGS[name]
            dcfg = DataConfig(crop=(cfg["crop"],) * 3)  # the default augmentation
            ds = iter(train_dataset(entries, dcfg, cfg["batch"], seed=0))
            for _ in range(5):
                next(ds)
            t0 = time.perf_counter()
            for _ in range(args.batches):
                next(ds)
            crops_s = args.batches * cfg["batch"] / (time.perf_counter() - t0)
            rows.append((name, cfg, crops_s, consumption(name)))

    print(f"preprocessing: {args.cases} cases of 240x240x155 x 4 modalities from NIfTI in "
          f"{prep_s:.1f} s = {args.cases / prep_s:.2f} cases/s (brain box {'x'.join(map(str, box))})")
    print(f"{'config':<7} {'crop':>5} {'batch':>5} {'pipeline crops/s':>17} {'model vol/s':>12} "
          f"{'pipeline/model':>15}")
    for name, cfg, crops_s, vps in rows:
        print(f"{name:<7} {cfg['crop']:>4}^3 {cfg['batch']:>5} {crops_s:>17.1f} {vps:>12.2f} "
              f"{crops_s / vps:>14.1f}x")
    print(f"\n{os.cpu_count()} CPU cores; python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
