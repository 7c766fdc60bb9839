"""`prepare` at dataset scale: cases per second with 1 and N preprocessing processes on full-size
synthetic BraTS cases (240 x 240 x 155, brain about 140 x 172 x 140 voxels), each into a fresh
cache, and the cache's size per case.

    python benchmarks/bench_prepare.py [--cases 8] [--jobs 1 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()

    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare
    from unet3d.data.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_synthetic_dataset(data, args.cases, (240, 240, 155), seed=0, brain_size=(140, 172, 140))
        cases = discover(data).cases
        print(f"{'jobs':>4} {'seconds':>8} {'cases/s':>8} {'cache MB/case':>14}")
        for jobs in args.jobs:
            cache = Path(tmp) / f"cache{jobs}"
            t0 = time.perf_counter()
            prepare(cases, cache, jobs=jobs)
            seconds = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20
            print(f"{jobs:>4} {seconds:>8.2f} {len(cases) / seconds:>8.2f} {size / len(cases):>14.1f}")


if __name__ == "__main__":
    main()
