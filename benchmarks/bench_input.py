#!/usr/bin/env python
"""The input path alone: NIfTI preprocessing (cases/s) and the tf.data pipeline (crops/s), old and
new in the same run, against the model's consumption rate.

1. Writes ``--cases`` synthetic full-size cases (240 x 240 x 155, BraTS-sized brain) as NIfTI and
   preprocesses them into a fresh cache, as ``run_search.py prepare`` does: cases/s.
2. Runs the training pipeline (memory-mapped crops, foreground sampling; the project's parallelism
   and prefetch defaults) over that cache for each config's crop and batch, without a model, two
   ways: ``host`` (the old path, ``data.augment_on: host``: flips, intensity scale/shift and noise
   in tf.data's CPU threads) and ``device`` (the default: the host only slices crops, the
   augmentation runs inside the compiled training step, unet3d.training.augment). Reports crops/s after
   warm-up and crops per CPU-second (the process's user + system time: crops/s per core).
3. Unless ``--no-model``, measures the model's consumption for the same config (one training step
   of ours, as in bench_train.py, fresh process) and prints pipeline / consumption: above 1 the
   model, not the input, is the bottleneck.

  python benchmarks/bench_input.py [--configs mid nvidia] [--cases 6] [--batches 30] [--no-model]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import unet3d  # noqa: E402, F401, I001  (runtime defaults before TensorFlow loads)

from bench_train import CONFIGS  # noqa: E402
from harness import print_table, run_worker  # noqa: E402


def consumption(config: str) -> float:
    """Volumes/s our model trains at for ``config`` (bench_train's worker, fresh process)."""
    job = {"config": config, "side": "ours", "warmup": 1,
           "steps": max(2, CONFIGS[config]["steps"] // 2)}
    res = run_worker(ROOT / "benchmarks" / "bench_train.py", job)
    return CONFIGS[config]["batch"] / res["step_s"]


def pipeline_rate(entries, dcfg, batch: int, batches: int, *,
                  augment: bool) -> tuple[float, float]:
    """(crops/s, crops per CPU-second) of the training pipeline after 5 warm-up batches."""
    import resource

    from unet3d.data.pipeline import train_dataset

    def cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    ds = iter(train_dataset(entries, dcfg, batch, seed=0, augment=augment))
    for _ in range(5):
        next(ds)
    t0, c0 = time.perf_counter(), cpu_s()
    for _ in range(batches):
        next(ds)
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    return batches * batch / wall, batches * batch / max(cpu, 1e-9)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["mid", "nvidia"], choices=list(CONFIGS))
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--no-model", action="store_true", help="skip the model's consumption")
    args = p.parse_args()

    from unet3d.config import DataConfig
    from unet3d.data.discover import discover
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
            dcfg = DataConfig(crop=(cfg["crop"],) * 3)  # the default augmentation strengths
            rates = {way: pipeline_rate(entries, dcfg, cfg["batch"], args.batches,
                                        augment=way == "host") for way in ("host", "device")}
            rows.append((name, cfg, rates, None if args.no_model else consumption(name)))

    print(f"preprocessing: {args.cases} cases of 240x240x155 x 4 modalities from NIfTI in "
          f"{prep_s:.1f} s = {args.cases / prep_s:.2f} cases/s (brain box {'x'.join(map(str, box))})")
    table = []
    for name, cfg, rates, vps in rows:
        (h, hc), (d, dc) = rates["host"], rates["device"]
        table.append((name, f"{cfg['crop']}^3", cfg["batch"], h, hc, d, dc, f"{dc / hc:.1f}x",
                      f"{vps:.2f}" if vps else "-", f"{d / vps:.1f}x" if vps else "-"))
    print_table([("config", "<7"), ("crop", ">5"), ("batch", ">5"), ("host crops/s", ">12.1f"),
                 ("per core", ">9.1f"), ("device crops/s", ">15.1f"), ("per core", ">9.1f"),
                 ("gain/core", ">9"), ("model vol/s", ">12"), ("device/model", ">13")], table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
